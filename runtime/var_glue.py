"""The VAR glue between scales, on the host in numpy (reference var.md §4.4-§4.6).

ids of scale si -> codebook rows h (B, Cv, pn, pn) -> bicubic up to the last grid (A = -0.75,
align_corners False, border clamp; none at the last scale) -> phi_k (k from the hard-coded
table) -> f_hat += ... -> area down to the next grid (adaptive-average windows, also for the
non-integer ratios 16 -> 13, 10, 6, 5, 3) -> the next scale's tokens (B, pn_next^2, Cv).

It is a few MFLOP per scale: numpy on the host costs less than a graph launch, and the upload
per scale stays O(l x Cv). Every resize is a fixed matrix (float64 weights, torch's float32
source coordinates), so it matches torch's `F.interpolate` to float32 rounding.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from .errors import StagevarError
from .resize import area_matrix
from .var_schedule import phi_index

BICUBIC_A = -0.75


def _cc1(x, A=BICUBIC_A):  # |x| <= 1
    return ((A + 2) * x - (A + 3)) * x * x + 1


def _cc2(x, A=BICUBIC_A):  # 1 < |x| < 2
    return ((A * x - 5 * A) * x + 8 * A) * x - 4 * A


@functools.lru_cache(maxsize=64)
def _bicubic(in_size: int, out_size: int) -> np.ndarray:
    # torch (align_corners=False): src = scale * (dst + 0.5) - 0.5 in float32, NOT clamped for
    # cubic; taps at floor(src) - 1 .. + 2, indices clamped to the border.
    scale = np.float32(in_size) / np.float32(out_size)
    mat = np.zeros((out_size, in_size), np.float64)
    for dst in range(out_size):
        src = np.float32(scale * np.float32(dst + 0.5) - np.float32(0.5))
        base = int(np.floor(src))
        t = float(np.float32(src - np.float32(base)))
        weights = (_cc2(t + 1), _cc1(t), _cc1(1 - t), _cc2(2 - t))
        for tap, w in zip(range(base - 1, base + 3), weights):
            mat[dst, min(max(tap, 0), in_size - 1)] += w
    mat.setflags(write=False)
    return mat


def bicubic_matrix(in_size: int, out_size: int) -> np.ndarray:
    """(out, in) weights of torch bicubic interpolation (A = -0.75, align_corners False)."""
    return _bicubic(int(in_size), int(out_size)).copy()


def resize2d(x_BCHW: np.ndarray, mat_h: np.ndarray, mat_w: np.ndarray) -> np.ndarray:
    """Separable resize Y = M_h X M_w^T in float64, returned as float32."""
    y = np.matmul(np.matmul(mat_h, np.asarray(x_BCHW, np.float64)), mat_w.T)
    return y.astype(np.float32)


def conv3x3(x_BCHW: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """Conv2d(k=3, padding=1, zero padding) in float64 -> float32 (the phi convs are 32x32)."""
    B, C, H, W = x_BCHW.shape
    xp = np.pad(np.asarray(x_BCHW, np.float64), ((0, 0), (0, 0), (1, 1), (1, 1)))
    # im2col: (B, C, 9, H*W) with tap t = 3 dy + dx, the (C, 3, 3) order of the weight.
    cols = np.stack([xp[:, :, dy:dy + H, dx:dx + W] for dy in range(3) for dx in range(3)], axis=2)
    out = np.matmul(weight.astype(np.float64).reshape(weight.shape[0], C * 9), cols.reshape(B, C * 9, H * W))
    out += bias.astype(np.float64)[None, :, None]
    return out.reshape(B, weight.shape[0], H, W).astype(np.float32)


class VarGlue:
    """The codebook and phi convs of an export, and the f_hat recurrence of one request."""

    def __init__(self, codebook: np.ndarray, phi_weights: np.ndarray, phi_biases: np.ndarray, patch_nums):
        self.codebook = np.asarray(codebook, np.float32)  # (V, Cv)
        self.phi_weights = np.asarray(phi_weights, np.float32)  # (K, Cv, Cv, 3, 3)
        self.phi_biases = np.asarray(phi_biases, np.float32)  # (K, Cv)
        self.patch_nums = tuple(int(p) for p in patch_nums)
        self.phi_table = phi_index(self.patch_nums)

    @classmethod
    def load(cls, path: Path, patch_nums) -> "VarGlue":
        try:
            with np.load(path, allow_pickle=False) as data:
                return cls(data["codebook"], data["phi_weights"], data["phi_biases"], patch_nums)
        except (OSError, KeyError, ValueError) as exc:
            raise StagevarError(f"The VAR glue file {path} cannot be read ({type(exc).__name__}); export again.") from None

    @property
    def code_dim(self) -> int:
        return self.codebook.shape[1]

    def start(self, batch: int) -> np.ndarray:
        """The zero f_hat (B, Cv, HW, HW) of a request."""
        hw = self.patch_nums[-1]
        return np.zeros((batch, self.code_dim, hw, hw), np.float32)

    def phi(self, si: int, h: np.ndarray) -> np.ndarray:
        """phi_k(h) = h * (1 - 0.5) + conv3x3_k(h) * 0.5 with k = phi table[si]."""
        k = self.phi_table[si]
        conv = conv3x3(h, self.phi_weights[k], self.phi_biases[k])
        return (h * np.float32(0.5) + conv * np.float32(0.5)).astype(np.float32)

    def add(self, si: int, ids_Bl: np.ndarray, f_hat: np.ndarray) -> np.ndarray | None:
        """f_hat += phi(up(codebook[ids])) in place; return the next scale's tokens (B, l', Cv)
        (None after the last scale)."""
        B = ids_Bl.shape[0]
        pn, hw = self.patch_nums[si], self.patch_nums[-1]
        h = self.codebook[np.asarray(ids_Bl, np.int64)]  # (B, l, Cv), tokens row-major
        h = np.ascontiguousarray(h.transpose(0, 2, 1)).reshape(B, self.code_dim, pn, pn)
        if si < len(self.patch_nums) - 1:
            up = bicubic_matrix(pn, hw)
            h = resize2d(h, up, up)
        f_hat += self.phi(si, h)
        if si == len(self.patch_nums) - 1:
            return None
        nxt = self.patch_nums[si + 1]
        down = area_matrix(hw, nxt)
        small = resize2d(f_hat, down, down)  # (B, Cv, pn', pn')
        return np.ascontiguousarray(small.reshape(B, self.code_dim, nxt * nxt).transpose(0, 2, 1))
