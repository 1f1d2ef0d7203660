import numpy as np
import pytest

from stagevar.runtime.image_metrics import psnr, ssim


def test_psnr_and_ssim_on_known_cases():
    # Guards against a wrong peak/MSE formula (PSNR of a uniform error of 5 levels is
    # 20*log10(255/5)) and an SSIM that is not 1 for equal images or does not drop for noise.
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    b = np.clip(a.astype(int) + 5, 0, 255).astype(np.uint8)
    mask = a < 251
    assert psnr(a, a) == float("inf") and ssim(a, a) == pytest.approx(1.0)
    flat = np.full((32, 32, 3), 100, np.uint8)
    assert psnr(flat, flat + 5) == pytest.approx(20 * np.log10(255 / 5))
    noisy = np.clip(a + rng.normal(0, 120, a.shape), 0, 255).astype(np.uint8)
    assert ssim(a, noisy) < 0.8 < ssim(a, b) and mask.any()
