"""The stage plan: which mode every scale of a schedule runs in (DESIGN.md section 3).

Modes: CFG (cond + null rows, CFG on logits), UNCOND (null rows only), LOWRANK (UNCOND with
random projection and representative-token restoration per block chunk), SKIP (not run).
The fidelity stage is the last three scales *by index*, so every aspect template works.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Iterable, Sequence

from .errors import StagevarError
from .rank_table import NONE, TABLE_CHUNKS, RankTable, released_table
from .schedules import ScaleSchedule


class Mode(str, enum.Enum):
    """How one scale runs."""

    CFG = "cfg"
    UNCOND = "uncond"
    LOWRANK = "lowrank"
    SKIP = "skip"


PLAN_PRESETS = ("exact", "stagevar", "stagevar-full", "cfg-off")
DEFAULT_PLAN = "stagevar"
DEFAULT_ALPHA = "0.96"
NUM_FIDELITY_SCALES = 3


@dataclass(frozen=True)
class StagePlan:
    """Per-scale modes and, for LOWRANK scales, per-chunk ranks (None elsewhere)."""

    name: str
    modes: tuple[Mode, ...]
    ranks: tuple[tuple[int, ...] | None, ...]
    alpha: str | None
    #: Where the ranks came from (RankTable.describe()), None for plans without LOWRANK scales.
    rank_table: str | None = None

    @property
    def num_scales(self) -> int:
        """Number of scales the plan covers."""
        return len(self.modes)

    @property
    def executed_scales(self) -> tuple[int, ...]:
        """Indices of the scales that run (not SKIP)."""
        return tuple(k for k, m in enumerate(self.modes) if m is not Mode.SKIP)

    @property
    def first_uncond_scale(self) -> int | None:
        """First executed non-CFG scale: where the K/V cache is compacted to its null rows (or None)."""
        for k in self.executed_scales:
            if self.modes[k] is not Mode.CFG:
                return k
        return None

    def cache_source(self, k: int) -> int:
        """For LOWRANK scale k: the previous executed scale, whose chunk outputs are the RTR cache."""
        if self.modes[k] is not Mode.LOWRANK:
            raise ValueError(f"scale {k} is {self.modes[k].value}, not lowrank")
        earlier = [j for j in self.executed_scales if j < k]
        if not earlier:
            raise ValueError(f"lowrank scale {k} has no executed scale before it")
        return earlier[-1]

    def token_passes(self, schedule: ScaleSchedule) -> float:
        """Token passes through the linear layers per image: CFG 2L, UNCOND L, LOWRANK mean r_c, SKIP 0."""
        if len(self.modes) != schedule.num_scales:
            raise ValueError(f"plan has {len(self.modes)} scales, schedule has {schedule.num_scales}")
        total = 0.0
        for mode, ranks, n in zip(self.modes, self.ranks, schedule.token_counts):
            if mode is Mode.CFG:
                total += 2 * n
            elif mode is Mode.UNCOND:
                total += n
            elif mode is Mode.LOWRANK:
                total += sum(ranks) / len(ranks)
        return total


def fidelity_scales(num_scales: int) -> tuple[int, ...]:
    """Indices of the fidelity stage: the last three scales."""
    if num_scales < NUM_FIDELITY_SCALES + 1:
        raise ValueError(f"a schedule needs more than {NUM_FIDELITY_SCALES} scales, got {num_scales}")
    return tuple(range(num_scales - NUM_FIDELITY_SCALES, num_scales))


def parse_mode(mode: Mode | str) -> Mode:
    """A Mode from itself or its name ("cfg", "uncond", "lowrank", "skip", any case)."""
    if isinstance(mode, Mode):
        return mode
    try:
        return Mode(str(mode).strip().lower())
    except ValueError:
        raise StagevarError(
            f"Stage mode {mode!r} is not known; use one of {', '.join(m.value for m in Mode)}."
        ) from None


def _check_table(table: RankTable, num_chunks: int, plan_name: str) -> None:
    """A LOWRANK plan needs a table with one ratio per block chunk (refused before any work)."""
    if table.source == NONE:
        raise StagevarError(
            f"Plan {plan_name!r} needs a StageVAR rank table, and this model ({num_chunks} block chunks) has none "
            f"(the released table has {TABLE_CHUNKS} ratios per scale); run `stagevar-export calibrate DIR` to "
            f"measure one, or use plan exact or cfg-off.")
    if table.num_chunks != num_chunks:
        raise StagevarError(
            f"Plan {plan_name!r} needs {num_chunks} ratios per scale (one per block chunk) but the {table.source} "
            f"rank table has {table.num_chunks}; run `stagevar-export calibrate DIR` for this model.")


def _check_modes(modes: Sequence[Mode], schedule: ScaleSchedule, num_chunks: int) -> None:
    n = schedule.num_scales
    if len(modes) != n:
        raise StagevarError(f"The stage plan gives {len(modes)} modes but the schedule has {n} scales; give one mode per scale.")
    if modes[0] in (Mode.SKIP, Mode.LOWRANK):
        raise StagevarError(f"The first scale cannot be {modes[0].value}; run it as cfg or uncond.")
    fidelity = fidelity_scales(n)
    executed_before = False
    non_cfg_seen = False
    for k, mode in enumerate(modes):
        if k > 0 and modes[k - 1] is Mode.SKIP and mode is not Mode.SKIP:
            raise StagevarError(f"Scale {k} is {mode.value} after a skipped scale; skipped scales may only be followed by skipped scales.")
        if mode is Mode.LOWRANK:
            if not executed_before:
                raise StagevarError(f"Lowrank scale {k} needs an executed scale before it to restore tokens from.")
            if k not in fidelity:
                raise StagevarError(
                    f"Scale {k} cannot be lowrank: the rank table only covers the last three scales ({', '.join(map(str, fidelity))})."
                )
        if mode is Mode.CFG and non_cfg_seen:
            raise StagevarError(
                f"Scale {k} cannot be cfg after an uncond or lowrank scale, because the cond K/V rows are dropped at the first one."
            )
        if mode is not Mode.SKIP:
            executed_before = True
            non_cfg_seen = non_cfg_seen or mode is not Mode.CFG


def _lowrank_ranks(k: int, schedule: ScaleSchedule, ratios) -> tuple[int, ...]:
    # Position among the fidelity scales picks the table row (40/48/64 on 1:1 1M).
    row = ratios[fidelity_scales(schedule.num_scales).index(k)]
    m = schedule.token_counts[k]
    return tuple(min(m, int(r * m) + 1) for r in row)


def validate(plan: StagePlan, schedule: ScaleSchedule, num_chunks: int = TABLE_CHUNKS) -> None:
    """Check a plan against a schedule; raise StagevarError (one sentence) if it cannot run."""
    _check_modes(plan.modes, schedule, num_chunks)
    if len(plan.ranks) != len(plan.modes):
        raise StagevarError(f"The stage plan has {len(plan.ranks)} rank entries for {len(plan.modes)} scales.")
    for k, (mode, ranks) in enumerate(zip(plan.modes, plan.ranks)):
        if mode is not Mode.LOWRANK:
            if ranks is not None:
                raise StagevarError(f"Scale {k} is {mode.value} but has ranks; only lowrank scales take ranks.")
            continue
        m = schedule.token_counts[k]
        if ranks is None or len(ranks) != num_chunks or not all(0 < int(r) <= m for r in ranks):
            raise StagevarError(f"Lowrank scale {k} needs {num_chunks} ranks between 1 and {m}, got {ranks}.")


def plan_from_modes(
    modes: Iterable[Mode | str],
    schedule: ScaleSchedule,
    num_chunks: int = TABLE_CHUNKS,
    alpha: str | float = DEFAULT_ALPHA,
    name: str = "custom",
    table: RankTable | None = None,
) -> StagePlan:
    """Build and validate a plan from one mode per scale; LOWRANK ranks come from `table`
    (default: the released table)."""
    modes = tuple(parse_mode(m) for m in modes)
    _check_modes(modes, schedule, num_chunks)
    uses_table = Mode.LOWRANK in modes
    ratios = None
    if uses_table:
        table = released_table() if table is None else table
        _check_table(table, num_chunks, name)
        ratios = table.ratios(alpha)
    ranks = tuple(_lowrank_ranks(k, schedule, ratios) if m is Mode.LOWRANK else None for k, m in enumerate(modes))
    plan = StagePlan(name, modes, ranks, table.canonical_alpha(alpha) if uses_table else None,
                     table.describe() if uses_table else None)
    validate(plan, schedule, num_chunks)
    return plan


def make_plan(
    preset: str,
    schedule: ScaleSchedule,
    num_chunks: int = TABLE_CHUNKS,
    alpha: str | float = DEFAULT_ALPHA,
    table: RankTable | None = None,
) -> StagePlan:
    """The plan of a named preset (exact, stagevar, stagevar-full, cfg-off) for a schedule;
    LOWRANK ranks come from `table` (default: the released table)."""
    key = preset.strip().lower() if isinstance(preset, str) else preset
    if key not in PLAN_PRESETS:
        raise StagevarError(f"Stage plan {preset!r} is not known; choose one of {', '.join(PLAN_PRESETS)}.")
    n = schedule.num_scales
    fid = fidelity_scales(n)
    modes = [Mode.CFG] * n
    if key == "stagevar":
        modes[fid[0]] = Mode.LOWRANK
        modes[fid[1]] = modes[fid[2]] = Mode.SKIP
    elif key == "stagevar-full":
        for k in fid:
            modes[k] = Mode.LOWRANK
    elif key == "cfg-off":
        for k in fid:
            modes[k] = Mode.UNCOND
    return plan_from_modes(modes, schedule, num_chunks=num_chunks, alpha=alpha, name=key, table=table)


def runnable_plans(schedule: ScaleSchedule, num_chunks: int, table: RankTable,
                   alpha: str | float = DEFAULT_ALPHA) -> tuple[str, ...]:
    """The plan presets this model can run with `table` at `alpha` (exact and cfg-off always can)."""
    names = []
    for name in PLAN_PRESETS:
        try:
            make_plan(name, schedule, num_chunks=num_chunks, alpha=alpha, table=table)
        except StagevarError:
            continue
        names.append(name)
    return tuple(names)
