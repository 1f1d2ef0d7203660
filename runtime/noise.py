"""All randomness of a request, drawn from one numpy Generator (DESIGN.md section 5).

The tensors are inputs of the graphs/host code, never in-graph RNG, so the same seed gives the
same image on every backend. Draw order (fixed; changing it changes every image of a seed):

for each scale k in schedule order:
    SKIP     -> nothing is drawn
    otherwise-> uniforms  = rng.random((B, L, d), dtype=float32)          bit sampling
    LOWRANK  -> then, for each chunk c in order:
                  u       = rng.random((B, M)) (float64), clipped to [1e-20, 1 - 1e-16]
                  gumbel  = float32(-log(-log(u)))                        representative indices
                  Q       = rng.standard_normal((B, M, r_c), float32) * float32(1/sqrt(r_c))   projection
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .errors import StagevarError
from .schedules import ScaleSchedule
from .stage_plan import Mode, StagePlan, parse_mode


@dataclass(frozen=True, eq=False)
class ScaleNoise:
    """Noise of one executed scale: uniforms (B, L, d); for LOWRANK per-chunk Gumbel (B, M) and Q (B, M, r_c)."""

    uniforms: np.ndarray
    gumbel: tuple[np.ndarray, ...] | None = None
    projections: tuple[np.ndarray, ...] | None = None


def draw_scale_noise(
    rng: np.random.Generator,
    mode: Mode | str,
    batch: int,
    num_tokens: int,
    bits_per_token: int,
    ranks: Sequence[int] | None = None,
) -> ScaleNoise | None:
    """Draw the noise of one scale in the documented order; None for SKIP (nothing is drawn)."""
    mode = parse_mode(mode)
    if mode is Mode.SKIP:
        return None
    uniforms = rng.random((batch, num_tokens, bits_per_token), dtype=np.float32)
    if mode is not Mode.LOWRANK:
        return ScaleNoise(uniforms)
    if not ranks:
        raise ValueError("a lowrank scale needs its per-chunk ranks")
    gumbels, projections = [], []
    for r in ranks:
        # float64 uniforms clipped away from 0 and 1 keep both logs finite.
        u = np.clip(rng.random((batch, num_tokens)), 1e-20, 1.0 - 1e-16)
        gumbels.append((-np.log(-np.log(u))).astype(np.float32))
        # float32 draws: half the cost of float64 at the same statistics (this is per request).
        projections.append(rng.standard_normal((batch, num_tokens, int(r)), dtype=np.float32) * np.float32(1.0 / np.sqrt(r)))
    return ScaleNoise(uniforms, tuple(gumbels), tuple(projections))


def make_rng(seed_or_rng: int | np.random.Generator) -> np.random.Generator:
    """A Generator from a non-negative integer seed (PCG64 via default_rng), or the Generator itself."""
    if isinstance(seed_or_rng, np.random.Generator):
        return seed_or_rng
    if isinstance(seed_or_rng, (bool, np.bool_)) or not isinstance(seed_or_rng, (int, np.integer)) or seed_or_rng < 0:
        raise StagevarError(f"Seed {seed_or_rng!r} is not valid; give a non-negative integer.")
    return np.random.default_rng(int(seed_or_rng))


def draw_request_noise(
    seed_or_rng: int | np.random.Generator,
    plan: StagePlan,
    schedule: ScaleSchedule,
    batch: int,
    bits_per_token: int,
) -> list[ScaleNoise | None]:
    """Noise for every scale of a request, in schedule order (None for skipped scales)."""
    if plan.num_scales != schedule.num_scales:
        raise ValueError(f"plan has {plan.num_scales} scales, schedule has {schedule.num_scales}")
    rng = make_rng(seed_or_rng)
    return [
        draw_scale_noise(rng, mode, batch, n, bits_per_token, ranks)
        for mode, ranks, n in zip(plan.modes, plan.ranks, schedule.token_counts)
    ]


def draw_batch_noise(
    seeds: Sequence[int],
    plan: StagePlan,
    schedule: ScaleSchedule,
    bits_per_token: int,
) -> list[ScaleNoise | None]:
    """Noise for a batch where image i has its own generator seeded `seeds[i]`, stacked on axis 0.

    Per-image generators make a batch equal to its images run alone (image i of a request with
    seed s uses s + i by the pipelines' convention), whatever the batch composition.
    """
    per_image = [draw_request_noise(s, plan, schedule, 1, bits_per_token) for s in seeds]
    stacked: list[ScaleNoise | None] = []
    for k in range(schedule.num_scales):
        items = [noise[k] for noise in per_image]
        if items[0] is None:
            stacked.append(None)
            continue
        first = items[0]
        gumbel = None if first.gumbel is None else tuple(
            np.concatenate([it.gumbel[c] for it in items]) for c in range(len(first.gumbel))
        )
        proj = None if first.projections is None else tuple(
            np.concatenate([it.projections[c] for it in items]) for c in range(len(first.projections))
        )
        stacked.append(ScaleNoise(np.concatenate([it.uniforms for it in items]), gumbel, proj))
    return stacked
