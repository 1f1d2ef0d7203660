"""Agreement between two images: PSNR and SSIM (numpy only, small documented implementations).

PSNR = 10 log10(255^2 / MSE) over all pixels and channels of uint8 images (inf when equal).
SSIM follows Wang et al. 2004: per channel, local means/variances/covariance under a Gaussian
window (sigma 1.5, 7x7 - the 11x11 of the paper is too wide for 32x32 images), 'valid' borders,
C1 = (0.01 * 255)^2, C2 = (0.03 * 255)^2, the mean SSIM map averaged over the channels.
"""

from __future__ import annotations

import numpy as np

_C1 = (0.01 * 255) ** 2
_C2 = (0.03 * 255) ** 2


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two uint8 images of the same shape."""
    if a.shape != b.shape:
        raise ValueError(f"image shapes differ: {a.shape} vs {b.shape}")
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(255.0**2 / mse)


def _gaussian_window(size: int = 7, sigma: float = 1.5) -> np.ndarray:
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2
    g = np.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def _filter(x: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Separable 'valid' filtering of (H, W) with the 1-D window g on both axes."""
    k = len(g)
    rows = sum(g[i] * x[i : x.shape[0] - k + 1 + i] for i in range(k))
    return sum(g[j] * rows[:, j : rows.shape[1] - k + 1 + j] for j in range(k))


def ssim(a: np.ndarray, b: np.ndarray, window: int = 7) -> float:
    """Mean SSIM of two (H, W, C) uint8 images (1.0 when equal)."""
    if a.shape != b.shape:
        raise ValueError(f"image shapes differ: {a.shape} vs {b.shape}")
    g = _gaussian_window(window)
    vals = []
    for c in range(a.shape[2]):
        x, y = a[:, :, c].astype(np.float64), b[:, :, c].astype(np.float64)
        mx, my = _filter(x, g), _filter(y, g)
        sxx = _filter(x * x, g) - mx * mx
        syy = _filter(y * y, g) - my * my
        sxy = _filter(x * y, g) - mx * my
        m = ((2 * mx * my + _C1) * (2 * sxy + _C2)) / ((mx * mx + my * my + _C1) * (sxx + syy + _C2))
        vals.append(m.mean())
    return float(np.mean(vals))
