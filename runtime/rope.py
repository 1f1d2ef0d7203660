"""2-D RoPE tables of Infinity (`rope2d_normalized_by_hw=2`), in token order of a schedule.

Every scale's (row, col) grid positions are normalised to the template's 1M final grid
(`schedule.rope_grid_hw`), for every resolution preset, and rounded half-to-even in float32
exactly as `torch.round` does in the official code (45/2 = 22.5 -> 22, 67.5 -> 68).
The model rotates channel pairs (2i, 2i+1) of each head by angle i: the first half of the
angles belong to the row position, the second half to the column position.
"""

from __future__ import annotations

import numpy as np

from .schedules import ScaleSchedule

ROPE_BASE = 10000.0


def _axis_positions(n: int, full: int) -> np.ndarray:
    # float32 product, then round-half-to-even: the official computation, bit for bit.
    return np.rint(np.arange(n, dtype=np.float32) * np.float32(full / n)).astype(np.int64)


def rope_indices(schedule: ScaleSchedule) -> np.ndarray:
    """(total_tokens, 2) int64 (row, col) positions of every token, scale by scale, row-major."""
    uh, uw = schedule.rope_grid_hw
    parts = []
    for ph, pw in schedule.scales:
        rows = _axis_positions(ph, uh)
        cols = _axis_positions(pw, uw)
        rr, cc = np.meshgrid(rows, cols, indexing="ij")
        parts.append(np.stack([rr.reshape(-1), cc.reshape(-1)], axis=1))
    return np.concatenate(parts, axis=0)


def rope_inv_freq(head_dim: int) -> np.ndarray:
    """float32 inverse frequencies: head_dim//4 of them, 10000^(-2k/(head_dim//2))."""
    if head_dim <= 0 or head_dim % 4 != 0:
        raise ValueError(f"head_dim must be a positive multiple of 4 for 2-D RoPE, got {head_dim}")
    half = head_dim // 2
    exponent = np.arange(0, half, 2, dtype=np.float32) / np.float32(half)
    # The power is rounded once from float64 (numpy's float32 pow can be 1 ulp off torch's,
    # which at positions ~100 moves cos/sin by ~4e-6); the reciprocal stays float32 like torch.
    power = (np.float64(ROPE_BASE) ** exponent.astype(np.float64)).astype(np.float32)
    return (np.float32(1.0) / power).astype(np.float32)


def rope_cos_sin(schedule: ScaleSchedule, head_dim: int) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin tables, each float32 (total_tokens, head_dim//2), in token order.

    Angles are float32 (position * inv_freq), [row angles, col angles]; cos/sin are taken in
    float64 from those float32 angles so the result is correctly rounded on every machine.
    """
    inv_freq = rope_inv_freq(head_dim)
    pos = rope_indices(schedule).astype(np.float32)
    angles = np.concatenate([pos[:, :1] * inv_freq, pos[:, 1:] * inv_freq], axis=1).astype(np.float32)
    ang64 = angles.astype(np.float64)
    return np.cos(ang64).astype(np.float32), np.sin(ang64).astype(np.float32)


def rope_slice(
    cos: np.ndarray,
    sin: np.ndarray,
    schedule: ScaleSchedule,
    scale_index: int,
    count: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Rows [offset, offset+count) of the tables for one scale.

    `count` defaults to the scale's token count; the LOWRANK path passes its rank r, because the
    released code gives the r pseudo-tokens the RoPE of the scale's first r raster positions.
    """
    if not 0 <= scale_index < schedule.num_scales:
        raise ValueError(f"scale_index {scale_index} out of range for {schedule.num_scales} scales")
    n = schedule.token_counts[scale_index]
    count = n if count is None else int(count)
    if not 0 < count <= n:
        raise ValueError(f"count must be in 1..{n} for scale {scale_index}, got {count}")
    start = schedule.offsets[scale_index]
    return cos[start : start + count], sin[start : start + count]
