"""Requirements for runtime/resize.py: torch F.interpolate parity (bilinear and area)."""

import numpy as np
import pytest

from stagevar.runtime.resize import area_matrix, area_resize_tokens, bilinear_matrix, resize_bilinear

torch = pytest.importorskip("torch")
F = torch.nn.functional

# torch's bilinear source index is float32 and its vectorised CPU kernels (AVX2, AVX512, NEON)
# compute it with a fused multiply-add; we reproduce that. Its scalar DEFAULT kernel rounds twice,
# which moves its own output by up to ~5e-6, so the tolerance is wider only there.
BILINEAR_ATOL = 1e-5 if torch.backends.cpu.get_cpu_capability() == "DEFAULT" else 1e-6

SIZES = [((64, 64), (2, 2)), ((64, 64), (45, 90)), ((32, 32), (40, 40)), ((1, 1), (64, 64)),
         ((45, 90), (19, 38)), ((2, 4), (45, 90)), ((37, 111), (64, 21)), ((7, 5), (7, 5)),
         ((48, 48), (64, 64)), ((3, 2), (111, 37))]


@pytest.mark.parametrize("src,dst", SIZES)
def test_resize_bilinear_matches_torch(src, dst):
    x = np.random.default_rng(1).standard_normal((2, 3, *src)).astype(np.float32)
    expected = F.interpolate(torch.from_numpy(x), size=dst, mode="bilinear", align_corners=False, antialias=False)
    y = resize_bilinear(x, dst)
    assert y.dtype == np.float32 and y.shape == (2, 3, *dst)
    np.testing.assert_allclose(y, expected.numpy(), rtol=0, atol=BILINEAR_ATOL)


def test_resize_bilinear_matches_torch_trilinear_on_a_unit_depth_axis():
    # The official code resizes (B, C, 1, H, W) with mode="trilinear"; it must be the same thing.
    x = np.random.default_rng(2).standard_normal((1, 4, 1, 12, 12)).astype(np.float32)
    expected = F.interpolate(torch.from_numpy(x), size=(1, 64, 64), mode="trilinear")
    np.testing.assert_allclose(resize_bilinear(x[:, :, 0], (64, 64)), expected[:, :, 0].numpy(), atol=1e-6)


def test_bilinear_downsample_samples_without_antialias():
    m = bilinear_matrix(64, 2)
    assert m.shape == (2, 64) and m.dtype == np.float64
    assert np.nonzero(m[0])[0].tolist() == [15, 16] and np.nonzero(m[1])[0].tolist() == [47, 48]
    np.testing.assert_allclose(m.sum(axis=1), 1.0)


def test_resize_bilinear_identity_returns_a_float32_copy():
    x = np.arange(12, dtype=np.float64).reshape(1, 1, 3, 4)
    y = resize_bilinear(x, (3, 4))
    assert y.dtype == np.float32 and np.array_equal(y, x) and not np.shares_memory(x, y)


@pytest.mark.parametrize("n_in,n_out", [(64, 2), (32, 40), (48, 64), (1, 64), (90, 45), (7, 3), (3, 7), (5, 5)])
def test_area_matrix_matches_torch_area(n_in, n_out):
    # Area-resizing the identity (channels = input positions) yields the weights, column-wise.
    eye = torch.eye(n_in, dtype=torch.float64).reshape(1, n_in, n_in, 1)
    cols = F.interpolate(eye, size=(n_out, 1), mode="area")[0, :, :, 0]  # (in, out)
    m = area_matrix(n_in, n_out)
    assert m.shape == (n_out, n_in) and m.dtype == np.float64
    np.testing.assert_allclose(m, cols.T.numpy(), rtol=0, atol=1e-12)


@pytest.mark.parametrize("n_in,n_out", [(64, 45), (64, 2), (32, 40), (2, 45), (111, 37), (5, 5)])
def test_bilinear_matrix_matches_torch_weights(n_in, n_out):
    eye = torch.eye(n_in, dtype=torch.float32).reshape(1, n_in, n_in, 1)
    cols = F.interpolate(eye, size=(n_out, 1), mode="bilinear", align_corners=False)[0, :, :, 0]
    m = bilinear_matrix(n_in, n_out)
    assert m.shape == (n_out, n_in) and m.dtype == np.float64
    np.testing.assert_allclose(m, cols.T.numpy(), rtol=0, atol=BILINEAR_ATOL)
    np.testing.assert_allclose(m.sum(axis=1), 1.0, atol=1e-7)


def test_area_32_to_40_copies_16_rows_and_averages_24():
    m = area_matrix(32, 40)
    counts = (m > 0).sum(axis=1)
    assert (counts == 1).sum() == 16 and (counts == 2).sum() == 24


@pytest.mark.parametrize("src,dst", [((32, 32), (40, 40)), ((40, 40), (48, 48)), ((48, 48), (64, 64)),
                                     ((30, 60), (37, 74)), ((64, 64), (2, 2)), ((5, 3), (9, 11))])
def test_area_resize_tokens_matches_torch(src, dst):
    b, c = 2, 5
    x = np.random.default_rng(3).standard_normal((b, src[0] * src[1], c)).astype(np.float32)
    grid = torch.from_numpy(x).reshape(b, *src, c).permute(0, 3, 1, 2)
    expected = F.interpolate(grid, size=dst, mode="area").permute(0, 2, 3, 1).reshape(b, dst[0] * dst[1], c)
    y = area_resize_tokens(x, src, dst)
    assert y.shape == (b, dst[0] * dst[1], c) and y.dtype == np.float32
    np.testing.assert_allclose(y, expected.numpy(), rtol=0, atol=1e-6)


def test_area_resize_tokens_rejects_wrong_token_count():
    with pytest.raises(ValueError):
        area_resize_tokens(np.zeros((1, 10, 2), np.float32), (3, 3), (4, 4))
