"""VAR sampling re-derived from reference var.md §4.2-§4.3 and §6, and compared with the torch
reference's statement (exporter/var/sampler.py). Each test names the bug it guards against."""

import numpy as np
import pytest
import torch

from stagevar.exporter.var.sampler import torch_draw, torch_filter
from stagevar.runtime.errors import StagevarError
from stagevar.runtime.var_sampling import (cfg_ramp, check_filters, draw_uniforms, filter_logits, guidance_pair,
                                           inverse_cdf, sample_ids)


def test_cfg_ramp_counts_all_scales():
    """t = cfg * si / (S - 1): 0 at scale 0, cfg at the last; guards constant cfg (Infinity's rule)
    and si / S."""
    assert cfg_ramp(1.5, 0, 10) == 0.0 and cfg_ramp(1.5, 9, 10) == 1.5 and cfg_ramp(1.5, 3, 10) == pytest.approx(0.5)
    assert guidance_pair(1.5, 9, 10) == (2.5, -1.5)


def test_top_k_keeps_ties_at_the_threshold():
    """Guards: keeping exactly k tokens (argsort) instead of every logit >= the k-th value."""
    logits = np.array([[5.0, 3.0, 3.0, 3.0, 1.0, 0.0]], np.float32)
    out = filter_logits(logits, top_k=2, top_p=0.0)
    assert np.isfinite(out).tolist() == [[True, True, True, True, False, False]]


def test_top_p_on_ascending_sort_and_largest_kept():
    """probs (softmax) of [0, 0, ln 2, ln 16] = [1, 1, 2, 16] / 20; top_p 0.9 removes the
    ascending prefix with cumsum <= 0.1: tokens 0 and 1 (0.05, 0.1), keeps 2. top_p 0 off;
    a peaked row never loses its largest token. Guards: descending sort, '<' instead of '<='."""
    logits = np.log(np.array([[1, 1, 2, 16]], np.float32))
    assert np.isfinite(filter_logits(logits, 0, 0.9)).tolist() == [[False, False, True, True]]
    assert np.isfinite(filter_logits(logits, 0, 0.0)).all()
    peaked = np.array([[0.0, 0.0, 50.0]], np.float32)
    assert np.isfinite(filter_logits(peaked, 0, 0.96)).tolist() == [[False, False, True]]


def test_filters_match_torch_reference_with_both_active():
    """On random logits (V = 4096, k = 900, p = 0.96) both filters bite and the kept sets equal
    the torch statement's."""
    rng = np.random.default_rng(0)
    logits = (rng.standard_normal((3, 20, 4096)) * 3).astype(np.float32)
    ours = np.isfinite(filter_logits(logits, 900, 0.96))
    theirs = torch.isfinite(torch_filter(torch.from_numpy(logits), 900, 0.96)).numpy()
    assert (ours == theirs).all()
    kept = ours.sum(-1)
    assert kept.max() < 900 and kept.min() > 1


def test_inverse_cdf_rule():
    """id = first index whose cumulative probability exceeds u * total; zero-probability tokens
    are never drawn. Guards: side='left' (u on a boundary), unnormalised targets."""
    p = np.array([[0.2, 0.0, 0.5, 0.3]] * 4)
    u = np.array([[0.1], [0.2], [0.69], [0.99999999]]).reshape(4)
    assert inverse_cdf(p, u).tolist() == [0, 2, 2, 3]
    assert inverse_cdf(np.array([[0.0, 2.0, 0.0]]), np.array([0.999999999999])).tolist() == [1]
    t = torch_draw(torch.log(torch.tensor(p, dtype=torch.float32)), torch.tensor(u))
    assert t.tolist() == [0, 2, 2, 3]


def test_sample_ids_matches_torch_draw():
    rng = np.random.default_rng(3)
    logits = (rng.standard_normal((2, 50, 4096)) * 3).astype(np.float32)
    u = rng.random((2, 50))
    want = torch_draw(torch_filter(torch.from_numpy(logits), 900, 0.96), torch.from_numpy(u)).numpy()
    assert (sample_ids(logits, u, 900, 0.96) == want).all()


def test_uniforms_batch_equals_single_images():
    """Guards: one generator for the whole batch (image 1 would depend on image 0)."""
    pns = (1, 2, 3)
    both = draw_uniforms([5, 9], pns)
    single = draw_uniforms([9], pns)
    for a, b in zip(both, single):
        assert (a[1] == b[0]).all()
    assert [u.shape for u in both] == [(2, 1), (2, 4), (2, 9)]


def test_filter_arguments_refused_in_one_sentence():
    with pytest.raises(StagevarError, match="top_k"):
        check_filters(5000, 0.96, 4096)
    with pytest.raises(StagevarError, match="top_p"):
        check_filters(900, 1.5, 4096)
