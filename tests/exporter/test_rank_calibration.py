"""The calibration core (exporter/rank_calibration.py): energy ranks of chunk inputs."""

import numpy as np
import pytest

from stagevar.exporter.rank_calibration import (
    RankAccumulator,
    calibrate_ratios,
    centred_energies,
    energy_rank,
    energy_ranks,
)


def tokens_of_rank(m: int, c: int, k: int, seed: int = 0, offset: float = 50.0, noise: float = 1e-4) -> np.ndarray:
    """(m, c) tokens whose centred part has k equal-energy directions (+ tiny noise) and a large
    common offset (a shared token, like lvl_embed, which centring must remove)."""
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((m, k))
    a -= a.mean(axis=0)
    a, _ = np.linalg.qr(a)  # orthonormal, still centred (columns of a centred matrix span centred vectors)
    b, _ = np.linalg.qr(rng.standard_normal((c, k)))
    x = a @ b.T * 10.0 + offset * rng.standard_normal(c)[None, :]
    return x + noise * rng.standard_normal((m, c))


@pytest.mark.parametrize("k", [1, 3, 10, 20])
def test_recovers_the_rank_of_synthetic_chunk_inputs(k):
    # Guards: ranking raw instead of centred tokens (the common offset would add one rank) and
    # an off-by-one in the threshold search. k equal energies: (k-1)/k < 0.96 for k <= 24.
    x = tokens_of_rank(256, 48, k, seed=k)
    assert energy_ranks(x, [0.96]) == [k]


def test_threshold_reached_exactly_counts_and_higher_alphas_need_more():
    # Energies 50, 30, 15, 4, 1 -> cumulative 0.5, 0.8, 0.95, 0.99, 1.0. Guards: a strict '>'
    # (0.95 would give 4) and a search that ignores the alpha (same rank for all).
    energies = np.array([50.0, 30.0, 15.0, 4.0, 1.0])
    assert [energy_rank(energies, a) for a in (0.5, 0.95, 0.96, 0.99, 0.999)] == [1, 3, 4, 4, 5]
    assert energy_rank(np.zeros(4), 0.96) == 0


def test_energies_are_the_centred_squared_singular_values():
    # Guards the Gram shortcut (both orientations) against a plain SVD of the centred matrix.
    rng = np.random.default_rng(1)
    for shape in ((40, 12), (12, 40)):
        x = rng.standard_normal(shape)
        s = np.linalg.svd(x - x.mean(axis=0), compute_uv=False)
        got = centred_energies(x)[: len(s)]
        np.testing.assert_allclose(got, s**2, rtol=1e-9, atol=1e-9)


def test_ratios_are_rank_over_tokens_averaged_per_scale_and_chunk():
    # Guards: averaging over the wrong axis, dividing by C instead of M, mixing chunks/scales.
    acc = RankAccumulator([0.96], num_scales=2, num_chunks=2)
    acc.add(0, 0, np.stack([tokens_of_rank(64, 16, 4, seed=1), tokens_of_rank(64, 16, 8, seed=2)]))
    acc.add(0, 1, tokens_of_rank(64, 16, 2, seed=3))
    acc.add(1, 0, tokens_of_rank(128, 16, 5, seed=4))
    acc.add(1, 1, tokens_of_rank(128, 16, 10, seed=5))
    got = acc.ratios()[0.96]
    assert got[0] == pytest.approx([(4 / 64 + 8 / 64) / 2, 2 / 64])
    assert got[1] == pytest.approx([5 / 128, 10 / 128])


def test_every_cell_must_be_measured_and_alphas_checked():
    with pytest.raises(ValueError, match="scale 1, chunk 0"):
        calibrate_ratios({(0, 0): [tokens_of_rank(32, 8, 2)]}, [0.96], num_scales=2, num_chunks=1)
    with pytest.raises(ValueError):
        RankAccumulator([1.0], 1, 1)
