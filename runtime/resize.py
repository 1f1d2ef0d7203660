"""Resampling as fixed matrices: torch-compatible bilinear and area (adaptive average) resizes.

Both are separable, so a 2-D resize is Y = A_h X A_w^T. Fixed matrices are what the graphs embed
(adaptive pooling to a larger size is not a safe ONNX op) and what the host glue applies.
"""

from __future__ import annotations

import functools

import numpy as np


@functools.lru_cache(maxsize=256)
def _bilinear(in_size: int, out_size: int) -> np.ndarray:
    # torch computes the source index and lambdas in float32 (opmath of a float tensor):
    # scale = float32(in)/out, src = scale*(dst+0.5) - 0.5 with one rounding (its vectorised
    # CPU kernels contract it to a fused multiply-add), then lambda = src - floor(src).
    # Reproducing that rounding keeps us within float32 rounding of torch; exact real-number
    # weights would differ by up to ~2e-5 on non-integer ratios such as 64 -> 45.
    scale = np.float64(np.float32(in_size) / np.float32(out_size))
    one, zero = np.float32(1.0), np.float32(0.0)
    mat = np.zeros((out_size, in_size), dtype=np.float64)
    for dst in range(out_size):
        # float64 product and difference are exact here, so the cast is the single fma rounding.
        src = max(np.float32(scale * (dst + 0.5) - 0.5), zero)  # align_corners=False, clamp at 0
        i0 = min(int(src), in_size - 1)
        i1 = min(i0 + 1, in_size - 1)
        lam = min(max(src - np.float32(i0), zero), one)
        mat[dst, i0] += one - lam
        mat[dst, i1] += lam
    mat.setflags(write=False)
    return mat


def bilinear_matrix(in_size: int, out_size: int) -> np.ndarray:
    """(out, in) float64 weights of torch bilinear interpolation (align_corners=False, antialias=False).

    The values are torch's float32 lambdas, so a float64 product with them matches torch to rounding.
    """
    _check_sizes(in_size, out_size)
    return _bilinear(int(in_size), int(out_size)).copy()


@functools.lru_cache(maxsize=256)
def _area(in_size: int, out_size: int) -> np.ndarray:
    mat = np.zeros((out_size, in_size), dtype=np.float64)
    for i in range(out_size):
        # Integer arithmetic as adaptive_avg_pool: [floor(i*in/out), ceil((i+1)*in/out)).
        start = (i * in_size) // out_size
        end = -((-(i + 1) * in_size) // out_size)
        mat[i, start:end] = 1.0 / (end - start)
    mat.setflags(write=False)
    return mat


def area_matrix(in_size: int, out_size: int) -> np.ndarray:
    """(out, in) float64 weights of torch `interpolate(mode="area")` (adaptive average pooling)."""
    _check_sizes(in_size, out_size)
    return _area(int(in_size), int(out_size)).copy()


def _check_sizes(in_size: int, out_size: int) -> None:
    if int(in_size) <= 0 or int(out_size) <= 0:
        raise ValueError(f"sizes must be positive, got {in_size} -> {out_size}")


def resize_bilinear(x_BCHW: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of (B, C, H, W) to (B, C, *size_hw), float64 math, float32 result."""
    x = np.asarray(x_BCHW)
    if x.ndim != 4:
        raise ValueError(f"expected (B, C, H, W), got shape {x.shape}")
    h_in, w_in = x.shape[2:]
    h_out, w_out = size_hw
    if (h_in, w_in) == (h_out, w_out):
        return x.astype(np.float32, copy=True)
    _check_sizes(h_in, h_out)
    _check_sizes(w_in, w_out)
    ah, aw = _bilinear(h_in, h_out), _bilinear(w_in, w_out)
    # Two broadcast matmuls (BLAS) instead of einsum: this runs between every pair of scales.
    y = np.matmul(np.matmul(ah, x.astype(np.float64)), aw.T)
    return y.astype(np.float32)


def area_resize_tokens(x_BMC: np.ndarray, in_hw: tuple[int, int], out_hw: tuple[int, int]) -> np.ndarray:
    """Area resize of a token-major map (B, h*w, C), row-major tokens, to (B, H*W, C).

    float64 math; the result has the input's float dtype (float32 for non-float input).
    """
    x = np.asarray(x_BMC)
    h, w = in_hw
    oh, ow = out_hw
    if x.ndim != 3 or x.shape[1] != h * w:
        raise ValueError(f"expected (B, {h}*{w}, C), got shape {x.shape}")
    ah, aw = area_matrix(h, oh), area_matrix(w, ow)
    grid = x.reshape(x.shape[0], h, w, x.shape[2]).astype(np.float64)
    y = np.einsum("iH,bHWc,jW->bijc", ah, grid, aw, optimize=True)
    dtype = x.dtype if np.issubdtype(x.dtype, np.floating) else np.float32
    return y.reshape(x.shape[0], oh * ow, x.shape[2]).astype(dtype)
