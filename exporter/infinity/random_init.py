"""Deterministic random initialisation of an Infinity transformer, for tests and demos.

Real checkpoints cannot be downloaded here, so tests build models with these weights and save
them in the official key layout. Scales are chosen so that activations and bit logits have a
realistic spread (most bits sampled, some snapped by top-p), not to match trained statistics.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .config import InfinityConfig
from .transformer import InfinityTransformer


def official_cfg_uncond_rows(rows: int, text_channels: int) -> torch.Tensor:
    """The official deterministic init of the null text (reference/infinity.md §2 loader notes).

    Truncated normal (std 1.2, absolute bounds +-2) from a CPU generator seeded 0, divided by
    sqrt(Ct5). The loader appends these rows when a checkpoint stores fewer than text_maxlen.
    """
    rng = torch.Generator(device="cpu").manual_seed(0)
    t = torch.empty(rows, text_channels)
    nn.init.trunc_normal_(t, std=1.2, generator=rng)
    return t / text_channels**0.5


@torch.no_grad()
def randomize_(model: InfinityTransformer, seed: int) -> InfinityTransformer:
    """Fill every parameter of `model` from a generator seeded `seed`, in place."""
    cfg: InfinityConfig = model.config
    rng = torch.Generator(device="cpu").manual_seed(seed)
    std = math.sqrt(1 / cfg.embed_dim / 3)
    for name, p in model.named_parameters():
        leaf = name.rsplit(".", 1)[-1]
        if name == "cfg_uncond":
            p.copy_(official_cfg_uncond_rows(p.shape[0], p.shape[1]))
        elif leaf == "scale_mul_1H11":
            p.fill_(math.log(4.0))
        elif name.endswith("norm.weight") or name.endswith("ca_norm.weight"):
            p.copy_(1 + 0.1 * torch.randn(p.shape, generator=rng))
        elif leaf == "ada_gss":
            p.copy_(torch.randn(p.shape, generator=rng) / cfg.embed_dim**0.5)
        elif leaf in ("bias", "q_bias", "v_bias"):
            p.copy_(0.02 * torch.randn(p.shape, generator=rng))
        elif name.startswith("head.weight"):
            # Wider head so bit logits spread over a few units: sampled bits, not all snapped.
            p.copy_(torch.randn(p.shape, generator=rng) * 2.0 / p.shape[1] ** 0.5)
        elif p.dim() >= 2 and "mat_q" in name and "text_proj_for_sos" in name:
            p.copy_(torch.randn(p.shape, generator=rng) * std)
        elif p.dim() >= 2:
            p.copy_(torch.randn(p.shape, generator=rng) / p.shape[-1] ** 0.5)
        else:
            p.copy_(torch.randn(p.shape, generator=rng) * std)
    return model


def random_transformer(config: InfinityConfig, seed: int = 0) -> InfinityTransformer:
    """A new eval-mode transformer with deterministic random weights."""
    return randomize_(InfinityTransformer(config), seed).eval()
