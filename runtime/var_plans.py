"""Stage plans for VAR exports. `exact` (every scale CFG) and `cfg-off` (the last three scales
UNCOND, null rows only) always run; `stagevar` (scale 7 LOWRANK, 8 and 9 SKIP) and
`stagevar-full` (7, 8, 9 LOWRANK) take their ranks from the export's rank table, which for VAR
must be measured by `stagevar-export calibrate DIR` (no released table exists for VAR).
The fidelity stage is the last three scales by index, as for Infinity.
"""

from __future__ import annotations

from .errors import StagevarError
from .rank_table import NONE, RankTable
from .stage_plan import PLAN_PRESETS, StagePlan, make_plan, validate
from .var_schedule import as_scale_schedule

VAR_PLAN_PRESETS = ("exact", "cfg-off")  # the plans every VAR export runs (and its engine entries)
DEFAULT_VAR_PLAN = "exact"


def make_var_plan(plan: str | StagePlan, patch_nums, num_chunks: int, table: RankTable | None = None,
                  alpha: str | float | None = None) -> StagePlan:
    schedule = as_scale_schedule(patch_nums)
    if isinstance(plan, StagePlan):
        validate(plan, schedule, num_chunks)
        return plan
    key = plan.strip().lower() if isinstance(plan, str) else plan
    if key not in PLAN_PRESETS:
        raise StagevarError(f"Stage plan {plan!r} is not known; choose one of {', '.join(PLAN_PRESETS)}.")
    if key in VAR_PLAN_PRESETS:
        return make_plan(key, schedule, num_chunks=num_chunks)
    if table is None or table.source == NONE:
        raise StagevarError(f"Plan {plan!r} for a VAR export needs a calibrated rank table, which this export does "
                            f"not have; run `stagevar-export calibrate DIR`, or use plan 'exact' or 'cfg-off'.")
    alpha = table.alphas[0] if alpha is None else alpha
    return make_plan(key, schedule, num_chunks=num_chunks, alpha=alpha, table=table)
