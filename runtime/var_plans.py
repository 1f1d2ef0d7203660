"""Stage plans for VAR exports: `exact` (every scale CFG) and `cfg-off` (the last three scales
UNCOND, null rows only). `stagevar` / `stagevar-full` need LOWRANK ranks, which for VAR must come
from a calibrated rank table (no released one exists); an export without one refuses them.
"""

from __future__ import annotations

from .errors import StagevarError
from .stage_plan import Mode, StagePlan, make_plan, validate
from .var_schedule import as_scale_schedule

VAR_PLAN_PRESETS = ("exact", "cfg-off")
DEFAULT_VAR_PLAN = "exact"
_NEEDS_TABLE = ("stagevar", "stagevar-full")


def make_var_plan(plan: str | StagePlan, patch_nums, num_chunks: int) -> StagePlan:
    schedule = as_scale_schedule(patch_nums)
    if isinstance(plan, StagePlan):
        validate(plan, schedule, num_chunks)
        if Mode.LOWRANK in plan.modes or Mode.SKIP in plan.modes:
            raise StagevarError("Lowrank and skipped scales for a VAR export need a calibrated rank table, "
                                "which this export does not have; use cfg and uncond modes only.")
        return plan
    key = plan.strip().lower() if isinstance(plan, str) else plan
    if key in _NEEDS_TABLE:
        raise StagevarError(f"Plan {plan!r} for a VAR export needs a calibrated rank table, which this export does "
                            f"not have; use plan 'exact' or 'cfg-off'.")
    if key not in VAR_PLAN_PRESETS:
        raise StagevarError(f"Stage plan {plan!r} is not known for VAR exports; choose one of {', '.join(VAR_PLAN_PRESETS)}.")
    return make_plan(key, schedule, num_chunks=num_chunks)
