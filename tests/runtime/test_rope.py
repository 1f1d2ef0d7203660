"""Requirements for runtime/rope.py (infinity.md section 3.4)."""

import numpy as np
import pytest

from stagevar.runtime.rope import rope_cos_sin, rope_indices, rope_inv_freq, rope_slice
from stagevar.runtime.schedules import all_templates, get_schedule

torch = pytest.importorskip("torch")


def _scale_rows_cols(schedule, k):
    idx = rope_indices(schedule)
    start, n = schedule.offsets[k], schedule.token_counts[k]
    ph, pw = schedule.scales[k]
    block = idx[start:start + n].reshape(ph, pw, 2)
    return block[:, 0, 0], block[0, :, 1], block


def test_rope_indices_shape_and_dtype():
    s = get_schedule()
    idx = rope_indices(s)
    assert idx.shape == (10521, 2) and idx.dtype == np.int64


def test_rope_indices_square_examples():
    s = get_schedule("1:1", "1M")
    rows, cols, _ = _scale_rows_cols(s, 1)
    assert list(rows) == [0, 32] and list(cols) == [0, 32]
    rows, _, _ = _scale_rows_cols(s, 3)
    assert list(rows) == [0, 11, 21, 32, 43, 53]
    rows, _, _ = _scale_rows_cols(s, 5)
    assert list(rows[:8]) == [0, 5, 11, 16, 21, 27, 32, 37]


def test_rope_indices_final_scale_is_identity():
    s = get_schedule("1:1", "1M")
    _, _, block = _scale_rows_cols(s, 12)
    rr, cc = np.meshgrid(np.arange(64), np.arange(64), indexing="ij")
    assert np.array_equal(block[..., 0], rr) and np.array_equal(block[..., 1], cc)


def test_rope_indices_are_row_major_within_a_scale():
    s = get_schedule("2:1")
    idx = rope_indices(s)
    start = s.offsets[2]  # scale (2, 4)
    assert idx[start:start + 8].tolist() == [[0, 0], [0, 22], [0, 45], [0, 68],
                                             [22, 0], [22, 22], [22, 45], [22, 68]]


def test_rope_indices_round_half_to_even():
    # h/w 0.5, final (45, 90): scale (2, 4) has rows 0, 22.5 and cols 0, 22.5, 45, 67.5.
    s = get_schedule(0.5)
    assert s.scales[2] == (2, 4)
    rows, cols, _ = _scale_rows_cols(s, 2)
    assert list(rows) == [0, 22]  # 22.5 -> 22 (half to even), not 23
    assert list(cols) == [0, 22, 45, 68]  # 67.5 -> 68


def test_low_resolution_uses_1m_normalised_positions():
    s = get_schedule("1:1", "0.25M")
    rows, cols, _ = _scale_rows_cols(s, 9)
    assert s.scales[9] == (32, 32)
    assert list(rows) == list(range(0, 64, 2)) and list(cols) == list(range(0, 64, 2))


@pytest.mark.parametrize("res", ["1M", "0.25M"])
def test_rope_indices_match_torch_for_every_template(res):
    for s in all_templates(res):
        uh, uw = s.rope_grid_hw
        parts = []
        for ph, pw in s.scales:
            r = (torch.arange(ph) * (uh / ph)).round().long()
            c = (torch.arange(pw) * (uw / pw)).round().long()
            rr, cc = torch.meshgrid(r, c, indexing="ij")
            parts.append(torch.stack([rr.reshape(-1), cc.reshape(-1)], 1))
        expected = torch.cat(parts).numpy()
        assert np.array_equal(rope_indices(s), expected), s.aspect_name


@pytest.mark.parametrize("aspect", ["1:1", "2:1", "3:4", "1:3"])
def test_rope_cos_sin_match_torch_float32(aspect):
    s = get_schedule(aspect)
    head_dim = 128
    cos, sin = rope_cos_sin(s, head_dim)
    assert cos.shape == sin.shape == (s.total_tokens, 64)
    assert cos.dtype == sin.dtype == np.float32
    half = head_dim // 2
    inv_freq = 1.0 / (10000 ** (torch.arange(0, half, 2, dtype=torch.int64).float() / half))
    pos = torch.from_numpy(rope_indices(s)).float()
    angles = torch.cat([pos[:, :1] * inv_freq, pos[:, 1:] * inv_freq], dim=1)
    np.testing.assert_allclose(cos, angles.cos().numpy(), rtol=0, atol=1e-6)
    np.testing.assert_allclose(sin, angles.sin().numpy(), rtol=0, atol=1e-6)


def test_rope_angle_layout_is_rows_then_columns():
    s = get_schedule("2:1")
    cos, sin = rope_cos_sin(s, 16)
    inv = rope_inv_freq(16).astype(np.float64)
    assert inv.shape == (4,)
    k = s.offsets[2] + 3  # position (0, 68)
    np.testing.assert_allclose(np.arccos(np.clip(cos[k, :4], -1, 1)), 0.0, atol=1e-3)
    np.testing.assert_allclose(sin[k, 4:], np.sin(68 * inv), atol=1e-6)


def test_rope_slice_returns_a_scales_rows_and_a_prefix_for_lowrank():
    s = get_schedule()
    cos, sin = rope_cos_sin(s, 32)
    c10, s10 = rope_slice(cos, sin, s, 10)
    assert c10.shape == (1600, 16)
    assert np.array_equal(c10, cos[4121 - 1600:4121]) and np.array_equal(s10, sin[2521:4121])
    c_r, _ = rope_slice(cos, sin, s, 10, count=27)
    assert np.array_equal(c_r, cos[2521:2548])
    with pytest.raises(ValueError):
        rope_slice(cos, sin, s, 10, count=1601)
    with pytest.raises(ValueError):
        rope_slice(cos, sin, s, 13)


def test_rope_head_dim_must_split_into_two_axes():
    with pytest.raises(ValueError):
        rope_cos_sin(get_schedule(), 66)


def _inv_freq_reference(head_dim):
    """The correctly rounded float32 inverse frequencies, computed in pure Python float64.

    The same on every x86-64 CPU: the float32 exponent is exact in float64, the float64 power is
    rounded once to float32, and the reciprocal is one IEEE float32 division."""
    half = head_dim // 2
    out = []
    for k in range(0, half, 2):
        exponent = float(np.float32(k) / np.float32(half))
        out.append(np.float32(1.0) / np.float32(10000.0 ** exponent))
    return np.array(out, dtype=np.float32)


@pytest.mark.parametrize("head_dim", [128, 96, 64, 32])
def test_rope_inv_freq_equals_the_correctly_rounded_reference(head_dim):
    # Guards against a different rounding path than torch's float32 exponent (e.g. the exponent
    # k/half in float64: 1 ulp off for head_dim 96), and against a CPU-dependent float32 pow
    # (torch's vectorised one): cos/sin at position ~100 would move by ~4e-6.
    assert np.array_equal(rope_inv_freq(head_dim), _inv_freq_reference(head_dim))


@pytest.mark.parametrize("head_dim", [128, 96, 64, 32])
def test_rope_inv_freq_is_within_one_ulp_of_torch(head_dim):
    # Two libraries: torch's float32 pow is vectorised and differs between CPUs (1 ulp from the
    # correctly rounded value for head_dim 96 on AMD EPYC / AVX2), so allow exactly 1 ulp. A wrong
    # base or exponent (e.g. head_dim instead of head_dim // 2) is millions of ulps off.
    half = head_dim // 2
    expected = (1.0 / (10000 ** (torch.arange(0, half, 2, dtype=torch.int64).float() / half))).numpy()
    ulps = np.abs(rope_inv_freq(head_dim).view(np.int32).astype(np.int64) - expected.view(np.int32))
    assert ulps.max() <= 1
