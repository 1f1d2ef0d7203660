"""Bit sampling of the Infinity family with injected uniform noise (DESIGN.md section 5).

The official sampler applies top-p 0.97 to the two-way softmax of each bit and draws with
`torch.multinomial`. For two categories the top-p filter removes the minority category iff its
probability is <= 1 - top_p, compared in float32, so the bit becomes the argmax. We restate it as
an inverse CDF over the categories in order (0, 1) with a supplied uniform u, which any backend
can reproduce: bit = 0 if u < p0 else 1, after snapping p0.
"""

from __future__ import annotations

import numpy as np

TOP_P = 0.97
# The official comparison happens in float32 (float32 cumsum <= python float 1 - top_p).
_SNAP = np.float32(1.0 - TOP_P)


def prob_bit0(logits: np.ndarray) -> np.ndarray:
    """float32 P(bit = 0) = sigmoid(l0 - l1) for logits (..., 2d) laid out as pairs (l0, l1)."""
    logits = np.asarray(logits, dtype=np.float32)
    if logits.shape[-1] % 2:
        raise ValueError(f"logits last axis must hold (l0, l1) pairs, got size {logits.shape[-1]}")
    pairs = logits.reshape(*logits.shape[:-1], logits.shape[-1] // 2, 2)
    x = pairs[..., 0] - pairs[..., 1]
    # Stable sigmoid: exp of a non-positive argument only, so nothing overflows.
    e = np.exp(-np.abs(x))
    one = np.float32(1.0)
    return np.where(x >= 0, one / (one + e), e / (one + e)).astype(np.float32)


def apply_top_p(p0: np.ndarray) -> np.ndarray:
    """Snap p0 to 1 or 0 where the minority probability min(p0, 1-p0) is <= float32(1 - TOP_P)."""
    p0 = np.asarray(p0, dtype=np.float32)
    one = np.float32(1.0)
    p1 = one - p0
    snapped = np.where(p0 >= p1, one, np.float32(0.0)).astype(np.float32)
    return np.where(np.minimum(p0, p1) <= _SNAP, snapped, p0).astype(np.float32)


def sample_bits(logits: np.ndarray, uniforms: np.ndarray) -> np.ndarray:
    """uint8 bits (..., d) from logits (..., 2d) and uniforms (..., d) in [0, 1): 0 iff u < p0."""
    p0 = apply_top_p(prob_bit0(logits))
    uniforms = np.asarray(uniforms)
    if uniforms.shape != p0.shape:
        raise ValueError(f"uniforms shape {uniforms.shape} does not match bits shape {p0.shape}")
    return (uniforms >= p0).astype(np.uint8)


def bits_to_codes(bits: np.ndarray, code_dim: int) -> np.ndarray:
    """float32 codes (2*bit - 1)/sqrt(code_dim), same shape as `bits`."""
    mag = np.float32(1.0 / np.sqrt(code_dim))
    return np.where(np.asarray(bits) != 0, mag, -mag).astype(np.float32)
