"""Requirements for runtime/codes.py (infinity.md section 4.2 steps 5-6)."""

import numpy as np
import pytest

from stagevar.runtime.codes import CodeAccumulator, pixel_shuffle, pixel_unshuffle, tokens_bits_to_code_map
from stagevar.runtime.schedules import get_schedule

torch = pytest.importorskip("torch")
F = torch.nn.functional


def test_pixel_shuffle_and_unshuffle_match_torch():
    x = np.random.default_rng(0).standard_normal((2, 56, 3, 5)).astype(np.float32)
    shuffled = pixel_shuffle(x)
    assert np.array_equal(shuffled, F.pixel_shuffle(torch.from_numpy(x), 2).numpy())
    assert np.array_equal(pixel_unshuffle(shuffled), F.pixel_unshuffle(torch.from_numpy(shuffled), 2).numpy())
    assert np.array_equal(pixel_unshuffle(shuffled), x)


def test_code_map_without_patchify_is_channels_first_grid():
    rng = np.random.default_rng(1)
    bits = rng.integers(0, 2, (2, 3 * 4, 32), dtype=np.uint8)
    m = tokens_bits_to_code_map(bits, (3, 4), 32, patchify=False)
    assert m.shape == (2, 32, 3, 4) and m.dtype == np.float32
    v = np.float32(1 / np.sqrt(32))
    # token (row 1, col 2) = index 1*4+2, channel 5
    assert m[1, 5, 1, 2] == (v if bits[1, 6, 5] else -v)
    assert set(np.unique(m).tolist()) == {-v, v}


def test_code_map_with_patchify_matches_official_pixel_shuffle():
    rng = np.random.default_rng(2)
    h, w = 3, 6
    bits = rng.integers(0, 2, (1, h * w, 56), dtype=np.uint8)
    m = tokens_bits_to_code_map(bits, (h, w), 14, patchify=True)
    assert m.shape == (1, 14, 2 * h, 2 * w)
    # official: (B,h,w,56) -> permute (B,56,h,w) -> pixel_shuffle(2), code = (2b-1)/sqrt(14)
    t = torch.from_numpy(bits.astype(np.float32)).reshape(1, h, w, 56).permute(0, 3, 1, 2)
    expected = (2 * F.pixel_shuffle(t, 2) - 1) / np.sqrt(14)
    np.testing.assert_allclose(m, expected.numpy(), rtol=0, atol=1e-7)


def test_code_map_rejects_wrong_bit_width():
    with pytest.raises(ValueError):
        tokens_bits_to_code_map(np.zeros((1, 4, 14), np.uint8), (2, 2), 14, patchify=True)


def _torch_chain(bit_maps, final_hw, next_hws, patchify):
    """The official accumulate/downsample loop with trilinear interpolation on (B, C, 1, H, W)."""
    summed, inputs = None, []
    for k, codes in enumerate(bit_maps):
        c = torch.from_numpy(codes).unsqueeze(2)
        up = F.interpolate(c, size=(1, *final_hw), mode="trilinear") if c.shape[-2:] != final_hw else c
        summed = up if summed is None else summed + up
        if k < len(next_hws):
            h, w = next_hws[k]
            f = 2 if patchify else 1
            nxt = F.interpolate(summed, size=(1, h * f, w * f), mode="trilinear").squeeze(2)
            if patchify:
                nxt = F.pixel_unshuffle(nxt, 2)
            inputs.append(nxt.reshape(nxt.shape[0], nxt.shape[1], -1).permute(0, 2, 1).numpy())
    return summed.squeeze(2).numpy(), inputs


@pytest.mark.parametrize("aspect,res,code_dim,patchify", [("1:1", "0.25M", 32, False), ("2:1", "0.06M", 14, True),
                                                           ("3:4", "0.06M", 32, False)])
def test_accumulator_matches_official_trilinear_chain(aspect, res, code_dim, patchify):
    s = get_schedule(aspect, res)
    rng = np.random.default_rng(3)
    d = code_dim * 4 if patchify else code_dim
    acc = CodeAccumulator(s, batch=2, code_dim=code_dim, patchify=patchify)
    f = 2 if patchify else 1
    assert acc.summed.shape == (2, code_dim, s.final_hw[0] * f, s.final_hw[1] * f)
    maps, ours = [], []
    for k, hw in enumerate(s.scales):
        bits = rng.integers(0, 2, (2, hw[0] * hw[1], d), dtype=np.uint8)
        m = tokens_bits_to_code_map(bits, hw, code_dim, patchify)
        maps.append(m)
        acc.add(m)
        if k + 1 < s.num_scales:
            nxt = acc.next_input(s.scales[k + 1])
            assert nxt.shape == (2, s.token_counts[k + 1], d) and nxt.dtype == np.float32
            ours.append(nxt)
    ref_sum, ref_inputs = _torch_chain(maps, tuple(acc.grid_hw), s.scales[1:], patchify)
    np.testing.assert_allclose(acc.summed, ref_sum, rtol=0, atol=1e-5)
    for a, b in zip(ours, ref_inputs):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)


def test_next_input_downsample_is_bilinear_not_area():
    # 64 -> 2 samples rows/cols 15,16 and 47,48 only: a map that is nonzero elsewhere gives zeros.
    s = get_schedule("1:1", "1M")
    acc = CodeAccumulator(s, batch=1, code_dim=1)
    grid = np.ones((1, 1, 64, 64), np.float32)
    grid[..., 14:18, :] = 0.0
    grid[..., 46:50, :] = 0.0
    acc.add(grid)
    assert np.all(acc.next_input((2, 2)) == 0.0)


def test_add_at_final_size_is_plain_addition():
    s = get_schedule("1:1", "0.06M")
    acc = CodeAccumulator(s, batch=1, code_dim=2)
    m = np.random.default_rng(4).standard_normal((1, 2, 16, 16)).astype(np.float32)
    acc.add(m)
    acc.add(m)
    assert np.array_equal(acc.summed, m + m)
