"""Family-independent core of `stagevar-export calibrate`: energy ranks of chunk-input tokens.

For one image, one scale and one block chunk, the chunk's input tokens X (M tokens x C
channels) are centred (the mean token subtracted, as `torch.pca_lowrank` does in the released
"predetermination" code) and their squared singular values s_1^2 >= s_2^2 >= ... are the
energies. The energy rank at threshold alpha is the smallest r with
sum_{i<=r} s_i^2 >= alpha * sum_i s_i^2, and the table's ratio is r / M, averaged over the
calibration images. Plans turn a ratio back into a rank as min(M, int(ratio * M) + 1).

Nothing here knows the model: a driver feeds token matrices per (scale position, chunk); a VAR
or STAR driver can use the same accumulator with per-block inputs.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def centred_energies(tokens_MC: np.ndarray) -> np.ndarray:
    """Squared singular values (descending, float64) of the centred token matrix (M, C)."""
    x = np.asarray(tokens_MC, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 1:
        raise ValueError(f"tokens must be a non-empty (M, C) matrix, got shape {x.shape}")
    x = x - x.mean(axis=0, keepdims=True)
    m, c = x.shape
    # The eigenvalues of the smaller Gram matrix are the squared singular values, and cost
    # O(min(M,C)^3) instead of an SVD of the whole matrix.
    gram = x.T @ x if m >= c else x @ x.T
    energies = np.linalg.eigvalsh(gram)[::-1]
    return np.clip(energies, 0.0, None)


def energy_rank(energies: np.ndarray, alpha: float) -> int:
    """Smallest r whose top-r energies reach `alpha` of the total (0 for an all-zero matrix)."""
    total = float(np.sum(energies))
    if total <= 0.0:
        return 0
    cumulative = np.cumsum(energies) / total
    # A tiny tolerance so a spectrum that reaches alpha exactly is not pushed one rank further
    # by float rounding in the cumulative sum.
    return int(np.searchsorted(cumulative, alpha - 1e-12) + 1)


def energy_ranks(tokens_MC: np.ndarray, alphas: Sequence[float]) -> list[int]:
    """The energy rank of one token matrix at each alpha (one eigen-decomposition for all)."""
    energies = centred_energies(tokens_MC)
    return [min(energy_rank(energies, a), len(energies)) for a in alphas]


class RankAccumulator:
    """Mean energy-rank ratio r/M per (alpha, scale position, chunk) over calibration images."""

    def __init__(self, alphas: Sequence[float], num_scales: int, num_chunks: int) -> None:
        if not alphas or any(not 0.0 < a < 1.0 for a in alphas):
            raise ValueError(f"alphas must lie strictly between 0 and 1, got {list(alphas)}")
        self.alphas = tuple(float(a) for a in alphas)
        self.sums = np.zeros((len(self.alphas), num_scales, num_chunks), np.float64)
        self.counts = np.zeros((num_scales, num_chunks), np.int64)

    def add(self, scale: int, chunk: int, tokens_BMC: np.ndarray) -> None:
        """Add the chunk inputs of a batch of images (B, M, C) at scale position `scale`."""
        batch = np.asarray(tokens_BMC)
        if batch.ndim == 2:
            batch = batch[None]
        m = batch.shape[1]
        for tokens in batch:
            for a, r in enumerate(energy_ranks(tokens, self.alphas)):
                self.sums[a, scale, chunk] += r / m
            self.counts[scale, chunk] += 1

    def ratios(self) -> dict[float, list[list[float]]]:
        """alpha -> [scale][chunk] mean ratios; every cell must have been fed at least once."""
        if (self.counts == 0).any():
            scale, chunk = map(int, np.argwhere(self.counts == 0)[0])
            raise ValueError(f"no tokens were added for scale {scale}, chunk {chunk}")
        means = self.sums / self.counts[None]
        return {a: means[i].tolist() for i, a in enumerate(self.alphas)}


def calibrate_ratios(
    inputs: dict[tuple[int, int], Sequence[np.ndarray]], alphas: Sequence[float], num_scales: int, num_chunks: int
) -> dict[float, list[list[float]]]:
    """One call for drivers that hold every input: {(scale, chunk): [(B, M, C) or (M, C), ...]}."""
    acc = RankAccumulator(alphas, num_scales, num_chunks)
    for (scale, chunk), batches in inputs.items():
        for batch in batches:
            acc.add(scale, chunk, batch)
    return acc.ratios()
