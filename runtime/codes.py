"""Glue between scales for the Infinity family (bits -> codes -> running sum -> next input).

Codes are +-1/sqrt(code_dim). Every scale's code map is bilinearly upsampled onto the final grid
of the schedule being run and added to a running sum; the next scale's input is that sum
bilinearly downsampled (align_corners=False, no antialias: what the official code and training
use since Infinity commit d542c51). For Infinity-8B (patchify) a transformer token carries a
2x2 block of 14-channel latent pixels: 56 = 14 channels x 4 sub-pixels, channel-major.
"""

from __future__ import annotations

import numpy as np

from .resize import resize_bilinear
from .sampling import bits_to_codes
from .schedules import ScaleSchedule

PATCH = 2  # sub-pixel factor of the 8B spatial patchify


def pixel_shuffle(x_BCHW: np.ndarray, r: int = PATCH) -> np.ndarray:
    """torch.pixel_shuffle: out[b, c, r*i+di, r*j+dj] = in[b, c*r*r + di*r + dj, i, j]."""
    b, c, h, w = x_BCHW.shape
    if c % (r * r):
        raise ValueError(f"channels {c} not divisible by {r * r}")
    y = x_BCHW.reshape(b, c // (r * r), r, r, h, w).transpose(0, 1, 4, 2, 5, 3)
    return np.ascontiguousarray(y.reshape(b, c // (r * r), h * r, w * r))


def pixel_unshuffle(x_BCHW: np.ndarray, r: int = PATCH) -> np.ndarray:
    """torch.pixel_unshuffle, the inverse of `pixel_shuffle`."""
    b, c, h, w = x_BCHW.shape
    if h % r or w % r:
        raise ValueError(f"spatial size {h}x{w} not divisible by {r}")
    y = x_BCHW.reshape(b, c, h // r, r, w // r, r).transpose(0, 1, 3, 5, 2, 4)
    return np.ascontiguousarray(y.reshape(b, c * r * r, h // r, w // r))


def tokens_bits_to_code_map(bits_BLd: np.ndarray, hw: tuple[int, int], code_dim: int, patchify: bool) -> np.ndarray:
    """(B, code_dim, H', W') float32 code map of one scale from its bits (B, h*w, d).

    Without patchify d == code_dim and (H', W') = (h, w); with it d == 4*code_dim and the 2x2
    pixel shuffle gives (2h, 2w).
    """
    bits = np.asarray(bits_BLd)
    h, w = hw
    d = code_dim * PATCH * PATCH if patchify else code_dim
    if bits.ndim != 3 or bits.shape[1:] != (h * w, d):
        raise ValueError(f"expected bits (B, {h * w}, {d}), got {bits.shape}")
    codes = bits_to_codes(bits, code_dim).reshape(bits.shape[0], h, w, d).transpose(0, 3, 1, 2)
    codes = np.ascontiguousarray(codes)
    return pixel_shuffle(codes) if patchify else codes


class CodeAccumulator:
    """Running sum of the code maps of all scales so far, on the schedule's final grid."""

    def __init__(self, schedule: ScaleSchedule, batch: int, code_dim: int, patchify: bool = False):
        self.schedule = schedule
        self.code_dim = code_dim
        self.patchify = patchify
        fh, fw = schedule.final_hw
        f = PATCH if patchify else 1
        self.summed = np.zeros((batch, code_dim, fh * f, fw * f), dtype=np.float32)

    @property
    def grid_hw(self) -> tuple[int, int]:
        """Spatial size of the running sum (VAE latent grid)."""
        return self.summed.shape[2], self.summed.shape[3]

    def add(self, code_map: np.ndarray) -> None:
        """Add one scale's code map (B, code_dim, H', W'), bilinearly upsampled to the final grid."""
        if code_map.shape[:2] != self.summed.shape[:2]:
            raise ValueError(f"code map {code_map.shape} does not match running sum {self.summed.shape}")
        self.summed += resize_bilinear(code_map, self.grid_hw)

    def next_input(self, hw: tuple[int, int]) -> np.ndarray:
        """(B, h*w, d) float32 channels-last tokens: the running sum bilinearly downsampled to (h, w)."""
        h, w = hw
        f = PATCH if self.patchify else 1
        x = resize_bilinear(self.summed, (h * f, w * f))
        if self.patchify:
            x = pixel_unshuffle(x)
        b, d = x.shape[:2]
        return np.ascontiguousarray(x.reshape(b, d, h * w).transpose(0, 2, 1))
