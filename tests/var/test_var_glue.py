"""The numpy VAR glue re-derived from reference var.md §4.5 and compared with torch.

numpy (float64 matrices, float32 results) vs torch's float32 kernels: equal to ~1e-6, hence the
tolerances. Each test names the bug it guards against.
"""

from fractions import Fraction

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from stagevar.runtime.resize import area_matrix
from stagevar.runtime.var_glue import VarGlue, bicubic_matrix, conv3x3, resize2d
from stagevar.runtime.var_schedule import PATCH_NUMS_256, PATCH_NUMS_512, PHI_INDEX_10, phi_index


@pytest.mark.parametrize("pn,hw", [(p, 16) for p in PATCH_NUMS_256[:-1]] + [(p, 32) for p in PATCH_NUMS_512[:-1]])
def test_bicubic_matches_torch(pn, hw):
    """Guards: A = -0.5 instead of -0.75, align_corners True, clamping the source coordinate at
    0 (bilinear's rule, not cubic's), no border clamp of the taps."""
    x = np.random.default_rng(pn).standard_normal((2, 3, pn, pn)).astype(np.float32)
    want = F.interpolate(torch.from_numpy(x), size=(hw, hw), mode="bicubic", align_corners=False).numpy()
    m = bicubic_matrix(pn, hw)
    np.testing.assert_allclose(resize2d(x, m, m), want, atol=2e-6, rtol=1e-5)


def test_bicubic_weights_from_the_formula():
    """Re-derivation: 2 -> 16, output 8: src = 2/16 * 8.5 - 0.5 = 0.5625, t = 0.5625; the four
    Keys weights (A = -0.75) on taps -1, 0, 1, 2 clamped to {0, 1}; a 1x1 map stays constant."""
    A, t = -0.75, 0.5625
    cc1 = lambda x: ((A + 2) * x - (A + 3)) * x * x + 1
    cc2 = lambda x: ((A * x - 5 * A) * x + 8 * A) * x - 4 * A
    w = (cc2(t + 1), cc1(t), cc1(1 - t), cc2(2 - t))
    row = bicubic_matrix(2, 16)[8]
    np.testing.assert_allclose(row, [w[0] + w[1], w[2] + w[3]], atol=1e-7)
    np.testing.assert_allclose(bicubic_matrix(1, 16), np.ones((16, 1)), atol=1e-12)


@pytest.mark.parametrize("out", [13, 10, 8, 6, 5, 4, 3, 2, 1])
def test_area_windows_non_integer_ratios(out):
    """Guards: windows [i*16/n, (i+1)*16/n) rounded the wrong way (floor end), bilinear instead
    of area. 16 -> 13: window 0 is rows {0, 1} (ceil(16/13) = 2)."""
    m = area_matrix(16, out)
    for i in range(out):
        start, end = (i * 16) // out, -((-(i + 1) * 16) // out)
        assert np.count_nonzero(m[i]) == end - start and m[i, start] == pytest.approx(1 / (end - start))
    x = np.random.default_rng(out).standard_normal((2, 32, 16, 16)).astype(np.float32)
    want = F.interpolate(torch.from_numpy(x), size=(out, out), mode="area").numpy()
    np.testing.assert_allclose(resize2d(x, m, m), want, atol=2e-6)


def test_phi_table_and_its_ties():
    """The hard-coded table [0,0,1,1,1,2,2,3,3,3]: float64 argmin gives it, and si = 2 and 7 are
    exact ties in real arithmetic (an exact-fraction recomputation would pick 0 and 2 there)."""
    ticks = np.linspace(1 / 12, 11 / 12, 4)
    assert tuple(int(np.argmin(np.abs(ticks - si / 9))) for si in range(10)) == PHI_INDEX_10 == phi_index(PATCH_NUMS_256)
    exact = [Fraction(1, 12) + Fraction(10, 12) * Fraction(j, 3) for j in range(4)]
    for si, (a, b) in ((2, (0, 1)), (7, (2, 3))):
        assert abs(exact[a] - Fraction(si, 9)) == abs(exact[b] - Fraction(si, 9)) == Fraction(5, 36)
    assert PHI_INDEX_10[2] == 1 and PHI_INDEX_10[7] == 3


def test_conv3x3_matches_torch():
    """Guards: missing zero padding, transposed kernel (cross-correlation vs convolution), no bias."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 32, 16, 16)).astype(np.float32)
    w = rng.standard_normal((32, 32, 3, 3)).astype(np.float32) * 0.1
    b = rng.standard_normal(32).astype(np.float32)
    want = F.conv2d(torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b), padding=1).numpy()
    np.testing.assert_allclose(conv3x3(x, w, b), want, atol=1e-5)


def test_glue_recurrence_matches_torch_statement():
    """The whole 10-scale recurrence against torch (F.interpolate + conv2d) written from §4.5.
    Guards: phi before the upsample, residual instead of accumulated f_hat downsampled, column-major
    tokens, resampling at the last scale, wrong phi index."""
    rng = np.random.default_rng(1)
    V, Cv, pns = 64, 32, PATCH_NUMS_256
    codebook = rng.standard_normal((V, Cv)).astype(np.float32)
    pw = (rng.standard_normal((4, Cv, Cv, 3, 3)) * 0.1).astype(np.float32)
    pb = rng.standard_normal((4, Cv)).astype(np.float32)
    glue = VarGlue(codebook, pw, pb, pns)
    f_np = glue.start(2)
    f_t = torch.zeros(2, Cv, 16, 16)
    for si, pn in enumerate(pns):
        ids = rng.integers(0, V, (2, pn * pn))
        nxt = glue.add(si, ids, f_np)
        h = torch.from_numpy(codebook)[torch.from_numpy(ids)].transpose(1, 2).reshape(2, Cv, pn, pn)
        if si < 9:
            h = F.interpolate(h, size=(16, 16), mode="bicubic", align_corners=False)
        k = PHI_INDEX_10[si]
        f_t = f_t + h * 0.5 + F.conv2d(h, torch.from_numpy(pw[k]), torch.from_numpy(pb[k]), padding=1) * 0.5
        np.testing.assert_allclose(f_np, f_t.numpy(), atol=5e-5, rtol=1e-5)
        if si < 9:
            want = F.interpolate(f_t, size=(pns[si + 1],) * 2, mode="area").view(2, Cv, -1).transpose(1, 2)
            np.testing.assert_allclose(nxt, want.numpy(), atol=5e-5, rtol=1e-5)
        else:
            assert nxt is None
