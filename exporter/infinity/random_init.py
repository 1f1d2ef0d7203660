"""Deterministic random initialisation of an Infinity transformer, for tests and demos.

Real checkpoints cannot be downloaded here, so tests build models with these weights and save
them in the official key layout. Scales are chosen so that activations and bit logits have a
realistic spread (most bits sampled, some snapped by top-p), not to match trained statistics.
"""

from __future__ import annotations

import math
import zlib

import torch

from .config import InfinityConfig
from ..lazy_weights import LazyWeights, meta_shapes
from .transformer import InfinityTransformer


def official_cfg_uncond_rows(rows: int, text_channels: int) -> torch.Tensor:
    """The official deterministic init of the null text (reference/infinity.md §2 loader notes).

    Truncated normal (std 1.2, absolute bounds +-2) from a CPU generator seeded 0, divided by
    sqrt(Ct5). The loader appends these rows when a checkpoint stores fewer than text_maxlen.
    """
    # The inverse-CDF sampler of nn.init.trunc_normal_ as the release's torch had it, written
    # out: torch 2.12 replaced it with rejection sampling (pytorch#174997), which draws other
    # values from the same seed, and the appended rows would no longer be the official ones.
    std, bound = 1.2, 2.0
    low, high = (_normal_cdf(-bound / std), _normal_cdf(bound / std))
    rng = torch.Generator(device="cpu").manual_seed(0)
    t = torch.empty(rows, text_channels).uniform_(2 * low - 1, 2 * high - 1, generator=rng)
    t.erfinv_().mul_(std * math.sqrt(2.0)).clamp_(-bound, bound)
    return t / text_channels**0.5


def _normal_cdf(x: float) -> float:
    return (1.0 + math.erf(x / math.sqrt(2.0))) / 2.0


def _seed(seed: int, name: str) -> int:
    # Per-tensor seeds make each weight independent of construction order, so a weight can be
    # generated alone at save time (large-model export) and still equal the eager model's.
    return (seed * 1_000_003 + zlib.crc32(name.encode())) % (2**63)


def random_tensor(name: str, shape: tuple[int, ...], config: InfinityConfig, seed: int) -> torch.Tensor:
    """The fp32 value of parameter or buffer `name` in a model randomised with `seed`."""
    rng = torch.Generator(device="cpu").manual_seed(_seed(seed, name))
    leaf = name.rsplit(".", 1)[-1]
    std = math.sqrt(1 / config.embed_dim / 3)
    if leaf == "zero_k_bias":
        return torch.zeros(shape)
    if name == "cfg_uncond":
        return official_cfg_uncond_rows(shape[0], shape[1])
    if leaf == "scale_mul_1H11":
        return torch.full(shape, math.log(4.0))
    if name.endswith("norm.weight"):
        return 1 + 0.1 * torch.randn(shape, generator=rng)
    if leaf == "ada_gss":
        return torch.randn(shape, generator=rng) / config.embed_dim**0.5
    if leaf in ("bias", "q_bias", "v_bias"):
        return 0.02 * torch.randn(shape, generator=rng)
    if name == "head.weight":
        # Wider head so bit logits spread over a few units: sampled bits, not all snapped.
        return torch.randn(shape, generator=rng) * 1.0 / shape[1] ** 0.5
    if "text_proj_for_sos" in name and leaf == "mat_q":
        return torch.randn(shape, generator=rng) * std
    if len(shape) >= 2:
        return torch.randn(shape, generator=rng) / shape[-1] ** 0.5
    return torch.randn(shape, generator=rng) * std


@torch.no_grad()
def randomize_(model: InfinityTransformer, seed: int) -> InfinityTransformer:
    """Fill every parameter of `model` from per-name generators derived from `seed`, in place."""
    for name, p in model.named_parameters():
        p.copy_(random_tensor(name, tuple(p.shape), model.config, seed))
    return model


def random_transformer(config: InfinityConfig, seed: int = 0) -> InfinityTransformer:
    """A new eval-mode transformer with deterministic random weights."""
    return randomize_(InfinityTransformer(config), seed).eval()


def lazy_random_transformer(config: InfinityConfig, seed: int = 0) -> tuple[InfinityTransformer, LazyWeights]:
    """The transformer on the meta device plus the source of its random weights."""
    with torch.device("meta"):
        model = InfinityTransformer(config).eval()
    source = LazyWeights(meta_shapes(model), lambda key, shape: random_tensor(key, shape, config, seed), f"{config.depth}-block transformer")
    return model, source
