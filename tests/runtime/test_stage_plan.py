"""Requirements for runtime/stage_plan.py (DESIGN.md section 3)."""

import pytest

from stagevar.runtime.errors import StagevarError
from stagevar.runtime.schedules import all_templates, get_schedule
from stagevar.runtime.stage_plan import (
    DEFAULT_ALPHA,
    DEFAULT_PLAN,
    PLAN_PRESETS,
    Mode,
    StagePlan,
    fidelity_scales,
    make_plan,
    plan_from_modes,
    validate,
)

C, U, L, S = Mode.CFG, Mode.UNCOND, Mode.LOWRANK, Mode.SKIP
SQ = get_schedule("1:1", "1M")


def test_presets_and_defaults():
    assert PLAN_PRESETS == ("exact", "stagevar", "stagevar-full", "cfg-off")
    assert DEFAULT_PLAN == "stagevar" and DEFAULT_ALPHA == "0.96"
    assert Mode("lowrank") is L and Mode.CFG == "cfg"


def test_fidelity_scales_are_the_last_three_by_index():
    assert fidelity_scales(13) == (10, 11, 12)
    assert fidelity_scales(10) == (7, 8, 9)


def test_exact_plan_is_all_cfg_with_21042_token_passes():
    p = make_plan("exact", SQ)
    assert p.modes == (C,) * 13 and p.ranks == (None,) * 13 and p.alpha is None
    assert p.token_passes(SQ) == 21042
    assert p.first_uncond_scale is None
    assert p.executed_scales == tuple(range(13))


def test_stagevar_plan_ranks_for_square_1m_scale_40():
    p = make_plan("stagevar", SQ)
    assert p.modes == (C,) * 10 + (L, S, S)
    assert p.ranks[10] == (27, 219, 337, 401, 410, 317, 252, 306)
    assert p.ranks[11] is None and p.ranks[:10] == (None,) * 10
    assert p.alpha == "0.96" and p.name == "stagevar"


def test_stagevar_token_passes():
    p = make_plan("stagevar", SQ)
    assert p.token_passes(SQ) == pytest.approx(2 * 2521 + 283.625)


def test_stagevar_helpers_cache_source_and_compaction_point():
    p = make_plan("stagevar", SQ)
    assert p.executed_scales == tuple(range(11))
    assert p.first_uncond_scale == 10
    assert p.cache_source(10) == 9
    with pytest.raises(ValueError):
        p.cache_source(9)


def test_stagevar_full_runs_three_lowrank_scales_chained():
    p = make_plan("stagevar-full", SQ)
    assert p.modes[10:] == (L, L, L)
    assert p.ranks[11][0] == min(2304, int(0.01340312164472197 * 2304) + 1)
    assert p.ranks[12][0] == int(0.008212925943716094 * 4096) + 1
    assert p.cache_source(11) == 10 and p.cache_source(12) == 11


def test_cfg_off_runs_fidelity_scales_unconditional():
    p = make_plan("cfg-off", SQ)
    assert p.modes == (C,) * 10 + (U, U, U)
    assert p.token_passes(SQ) == 2 * 2521 + 1600 + 2304 + 4096
    assert p.first_uncond_scale == 10


def test_every_preset_works_for_every_template_and_resolution():
    for res in ("0.06M", "0.25M", "0.60M", "1M"):
        for s in all_templates(res):
            for name in PLAN_PRESETS:
                p = make_plan(name, s)
                assert len(p.modes) == s.num_scales
                for k, ranks in enumerate(p.ranks):
                    if ranks is not None:
                        assert all(1 <= r <= s.token_counts[k] for r in ranks)


def test_alpha_changes_ranks():
    a = make_plan("stagevar", SQ, alpha="0.90").ranks[10]
    b = make_plan("stagevar", SQ).ranks[10]
    assert a != b and sum(a) < sum(b)


def test_unknown_preset_lists_presets():
    with pytest.raises(StagevarError, match="stagevar-full"):
        make_plan("fast", SQ)


def test_unknown_alpha_is_a_user_error():
    with pytest.raises(StagevarError):
        make_plan("stagevar", SQ, alpha="0.5")


def test_plan_from_modes_accepts_strings():
    p = plan_from_modes(["cfg"] * 11 + ["uncond", "lowrank"], SQ, name="mine")
    assert p.modes[-2:] == (U, L) and p.name == "mine"
    assert p.cache_source(12) == 11
    assert p.ranks[12] == make_plan("stagevar-full", SQ).ranks[12]


def _bad(modes, schedule=SQ, **kw):
    with pytest.raises(StagevarError) as info:
        plan_from_modes(modes, schedule, **kw)
    msg = str(info.value)
    assert msg.endswith(".") and "\n" not in msg
    return msg


def test_validate_rejects_wrong_mode_count():
    _bad([C] * 12)


def test_validate_rejects_skip_or_lowrank_first_scale():
    _bad([S] * 13)
    _bad([L] + [C] * 12)


def test_validate_rejects_execution_after_skip():
    _bad([C] * 10 + [S, C, C])
    _bad([C] * 10 + [S, U, U])


def test_validate_rejects_cfg_after_uncond():
    _bad([C] * 10 + [U, C, C])
    _bad([C] * 5 + [U] + [C] * 7)


def test_validate_rejects_lowrank_outside_fidelity_stage():
    _bad([C] * 9 + [L, S, S, S])


def test_validate_rejects_lowrank_with_other_chunk_count():
    _bad([C] * 10 + [L, S, S], num_chunks=4)
    # without lowrank the chunk count does not matter
    assert make_plan("cfg-off", SQ, num_chunks=4).modes[10] is U


def test_validate_rejects_unknown_mode_name():
    _bad(["cfg"] * 12 + ["fast"])


def test_validate_checks_ranks_of_a_handmade_plan():
    good = make_plan("stagevar", SQ)
    validate(good, SQ)
    bad = StagePlan("x", good.modes, good.ranks[:10] + ((0,) * 8, None, None), "0.96")
    with pytest.raises(StagevarError):
        validate(bad, SQ)
    extra = StagePlan("x", (C,) * 13, ((1,),) + (None,) * 12, None)
    with pytest.raises(StagevarError):
        validate(extra, SQ)
    with pytest.raises(StagevarError):
        validate(good, get_schedule("1:1", "0.25M"))
