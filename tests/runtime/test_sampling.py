"""Requirements for runtime/sampling.py (DESIGN.md section 5, infinity.md section 4.4)."""

import numpy as np
import pytest

from stagevar.runtime.sampling import TOP_P, apply_top_p, bits_to_codes, prob_bit0, sample_bits

THR = np.float32(1 - TOP_P)


def _official_p0(logits_np):
    """Torch re-statement of the official rule: top-p on the sorted softmax, then softmax."""
    torch = pytest.importorskip("torch")
    logits = torch.from_numpy(logits_np.reshape(-1, 2))
    sorted_logits, sorted_idx = torch.sort(logits, descending=False)
    cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    remove_sorted = cum <= (1 - TOP_P)
    remove_sorted[..., -1:] = False
    remove = remove_sorted.scatter(1, sorted_idx, remove_sorted)
    probs = logits.masked_fill(remove, -torch.inf).softmax(dim=-1)
    return probs[:, 0].numpy(), sorted_logits.softmax(dim=-1)[:, 0].numpy()


def test_sample_bits_matches_official_rule_on_random_logits():
    rng = np.random.default_rng(0)
    b, l, d = 3, 257, 32
    logits = (rng.standard_normal((b, l, 2 * d)) * 3).astype(np.float32)
    u = rng.random((b, l, d), dtype=np.float32)
    bits = sample_bits(logits, u)
    p0_ref, pmin_ref = _official_p0(logits)
    ref_bits = (u.reshape(-1) >= p0_ref).astype(np.uint8)
    differ = bits.reshape(-1) != ref_bits
    # Only ulp-level ties with the uniform or the snap threshold may decide differently.
    near = (np.abs(u.reshape(-1) - p0_ref) < 1e-6) | (np.abs(pmin_ref - THR) < 1e-6)
    assert not np.any(differ & ~near)
    assert differ.sum() <= 2
    snapped = (p0_ref == 0) | (p0_ref == 1)
    assert 0.1 < snapped.mean() < 0.9  # the test really exercises both branches


def test_sample_bits_shape_and_dtype():
    logits = np.zeros((2, 5, 7, 8), dtype=np.float32)
    bits = sample_bits(logits, np.full((2, 5, 7, 4), 0.25, dtype=np.float32))
    assert bits.shape == (2, 5, 7, 4) and bits.dtype == np.uint8
    assert np.all(bits == 0)  # p0 = 0.5 > 0.25
    assert np.all(sample_bits(logits, np.full((2, 5, 7, 4), 0.5, np.float32)) == 1)  # u >= p0 -> 1


def test_sample_bits_rejects_mismatched_uniforms():
    with pytest.raises(ValueError):
        sample_bits(np.zeros((1, 4, 8), np.float32), np.zeros((1, 4, 3), np.float32))
    with pytest.raises(ValueError):
        sample_bits(np.zeros((1, 4, 7), np.float32), np.zeros((1, 4, 3), np.float32))


def test_pairs_are_consecutive_l0_l1_per_bit():
    logits = np.array([[5.0, 0.0, 0.0, 5.0, 0.3, 0.0]], dtype=np.float32)
    u = np.array([[0.9999, 0.0, 0.5]], dtype=np.float32)
    # bit0: l0 >> l1 -> snapped p0 = 1 -> 0 even for u ~ 1; bit1: p0 snapped to 0 -> 1 even for u = 0.
    assert sample_bits(logits, u).tolist() == [[0, 1, 0]]


def test_prob_bit0_is_stable_for_extreme_logits():
    logits = np.array([[1e30, -1e30, -1e30, 1e30, 100.0, -100.0]], dtype=np.float32)
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        p0 = prob_bit0(logits)
    assert p0.tolist() == [[1.0, 0.0, 1.0]]
    assert prob_bit0(np.array([0.0, 0.0], np.float32)).tolist() == [0.5]


def test_top_p_snaps_at_exactly_the_threshold():
    assert apply_top_p(np.float32(THR)) == 0.0
    assert apply_top_p(np.nextafter(THR, np.float32(1))) == np.nextafter(THR, np.float32(1))
    # the other side: min(p0, 1 - p0) is 1 - p0 computed in float32
    hi = np.float32(1) - THR
    candidates = np.nextafter(hi, np.float32(0)) + np.arange(-4, 5, dtype=np.float32) * np.float32(6e-8)
    for p in candidates.astype(np.float32):
        expected = np.float32(1.0) if np.float32(1) - p <= THR else p
        assert apply_top_p(p) == expected
    assert any(np.float32(1) - p <= THR for p in candidates) and any(np.float32(1) - p > THR for p in candidates)


def test_snapping_decides_the_bit_at_the_threshold_boundary():
    # Walk logit differences across logit(0.03) and check that snapping flips exactly where
    # the computed p0 crosses the float32 threshold (u = 0 gives bit 0 unless p0 snapped to 0).
    x = np.float32(np.log(0.03 / 0.97))
    xs = x + np.arange(-50, 51, dtype=np.float32) * np.float32(4e-7)
    logits = np.stack([xs, np.zeros_like(xs)], axis=-1).reshape(1, -1).astype(np.float32)
    p0 = prob_bit0(logits)[0]
    bits = sample_bits(logits, np.zeros((1, xs.size), np.float32))[0]
    assert np.array_equal(bits == 1, p0 <= THR)
    assert 0 < (p0 <= THR).sum() < xs.size


def test_bits_to_codes_are_plus_minus_inverse_sqrt_dim():
    bits = np.array([[0, 1], [1, 1]], dtype=np.uint8)
    codes = bits_to_codes(bits, 32)
    assert codes.dtype == np.float32 and codes.shape == (2, 2)
    m = np.float32(1 / np.sqrt(32))
    assert codes.tolist() == [[-m, m], [m, m]]
    assert np.allclose(np.linalg.norm(bits_to_codes(np.ones((14,), np.uint8), 14)), 1.0)
