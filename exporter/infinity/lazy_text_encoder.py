"""A randomly initialised T5 encoder on the meta device, with its weights generated at save time."""

from __future__ import annotations

import zlib

import torch

from ..lazy_weights import LazyWeights, meta_shapes
from .text_encoder import T5TextEncoder, TextEncoderConfig, _eager


def _random_t5_tensor(name: str, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    rng = torch.Generator(device="cpu").manual_seed((seed * 1_000_003 + zlib.crc32(name.encode())) % (2**63))
    if "layer_norm" in name:
        return torch.ones(shape)
    if len(shape) == 2:
        return torch.randn(shape, generator=rng) / shape[-1] ** 0.5
    return 0.02 * torch.randn(shape, generator=rng)


def lazy_random_text_encoder(config: TextEncoderConfig, seed: int = 0) -> tuple[T5TextEncoder, LazyWeights]:
    """T5 encoder with meta parameters (no memory) and the source of its random weights."""
    from transformers import T5EncoderModel

    with torch.device("meta"):
        t5 = T5EncoderModel(config.to_hf())
    _eager(t5)
    encoder = T5TextEncoder(t5.eval(), config).eval()
    source = LazyWeights(meta_shapes(encoder), lambda key, shape: _random_t5_tensor(key, shape, seed), "T5 text encoder")
    return encoder, source
