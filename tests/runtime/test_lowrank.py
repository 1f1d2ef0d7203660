"""Requirements for runtime/lowrank.py (stagevar.md sections 3-4)."""

import numpy as np
import pytest

from stagevar.runtime.lowrank import representative_indices, restore_tokens
from stagevar.runtime.resize import area_resize_tokens


def test_representative_indices_are_topk_of_log_norm_plus_gumbel_in_ascending_position_order():
    x = np.array([[[1.0, 0.0], [3.0, 0.0], [0.0, 2.0], [0.5, 0.5]]], dtype=np.float32)
    g = np.zeros((1, 4), dtype=np.float32)
    # The top 3 scores are positions 1, 2, 0 (descending); returned in raster order.
    assert representative_indices(x, g, 3).tolist() == [[0, 1, 2]]
    # noise can override norms: log(1) + 5 beats log(9)
    g2 = np.array([[5.0, 0.0, 0.0, 0.0]], dtype=np.float32)
    idx = representative_indices(x, g2, 2)
    assert idx.dtype == np.int64 and idx.tolist() == [[0, 1]]


def test_representative_indices_are_distinct_and_cover_all_when_r_equals_m():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 50, 8)).astype(np.float32)
    g = rng.gumbel(size=(3, 50)).astype(np.float32)
    idx = representative_indices(x, g, 50)
    for row in idx:
        assert sorted(row.tolist()) == list(range(50))


def test_zero_norm_tokens_are_picked_last():
    x = np.zeros((1, 4, 3), np.float32)
    x[0, 2] = 1.0
    g = np.array([[9.0, 8.0, -9.0, 7.0]], dtype=np.float32)
    assert representative_indices(x, g, 1).tolist() == [[2]]


def test_gumbel_topk_picks_high_norm_tokens_much_more_often():
    rng = np.random.default_rng(1)
    m, r, trials = 20, 3, 4000
    x = np.ones((1, m, 4), np.float32)
    x[0, 0] *= 3.0  # squared norm 9x the others
    hits = np.zeros(m)
    for _ in range(trials):
        g = rng.gumbel(size=(1, m)).astype(np.float32)
        hits[representative_indices(x, g, r)[0]] += 1
    # Sampling without replacement, weights 9 vs 1 (total 28): token 0 is drawn first w.p. 9/28
    # and almost always within 3 draws (about 0.72), a low-norm token about 0.12.
    assert hits[0] / trials > 0.6
    assert hits[1:].max() / trials < 0.2
    assert hits[0] > 4 * hits[1:].mean()


def test_restore_tokens_overwrites_only_the_sampled_positions():
    rng = np.random.default_rng(2)
    b, c = 2, 6
    prev = rng.standard_normal((b, 4 * 4, c)).astype(np.float32)
    rows = rng.standard_normal((b, 5, c)).astype(np.float32)
    idx = np.stack([rng.permutation(25)[:5] for _ in range(b)])
    out = restore_tokens(prev, (4, 4), (5, 5), rows, idx)
    base = area_resize_tokens(prev, (4, 4), (5, 5))
    assert out.shape == (b, 25, c) and out.dtype == np.float32
    for bi in range(b):
        mask = np.zeros(25, bool)
        mask[idx[bi]] = True
        assert np.array_equal(out[bi, ~mask], base[bi, ~mask])
        for j in range(5):
            assert np.array_equal(out[bi, idx[bi, j]], rows[bi, j])


def test_restore_tokens_with_r_equal_m_is_a_permutation_of_rows():
    rng = np.random.default_rng(3)
    prev = rng.standard_normal((1, 9, 2)).astype(np.float32)
    rows = rng.standard_normal((1, 16, 2)).astype(np.float32)
    perm = rng.permutation(16)[None]
    out = restore_tokens(prev, (3, 3), (4, 4), rows, perm)
    assert np.array_equal(out[0, perm[0]], rows[0])


def test_restore_tokens_rejects_out_of_range_indices():
    with pytest.raises(ValueError):
        restore_tokens(np.zeros((1, 4, 2), np.float32), (2, 2), (3, 3), np.zeros((1, 1, 2), np.float32), np.array([[9]]))
