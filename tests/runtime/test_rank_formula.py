"""Ranks of LOWRANK scales against values derived independently of runtime/stage_plan.py.

The released rule (stagevar.md section 3, FasterVAR `rank_ratio.py`): rank = int(ratio * M) + 1
with M the token count of the scale, capped at M. The expected values here never go through the
implementation's formula or its TSV parser: the golden rows were worked out by hand from
infinity_rank_ratios.tsv and the latent grids of infinity.md section "schedules", and the sweep
re-reads the TSV text itself and multiplies in exact decimal arithmetic.

Bug guarded against: an off-by-one rank formula such as int(ratio * (M - 1)) + 1, which changes
2,935 of the 17,280 ranks of the table over every template and resolution and leaves the
1:1 1M alpha-0.96 goldens of test_stage_plan.py unchanged; and a missing or misplaced cap.
"""

from decimal import Decimal
from importlib import resources

import pytest

from stagevar.runtime.rank_table import RankTable, available_alphas
from stagevar.runtime.schedules import all_templates, get_schedule
from stagevar.runtime.stage_plan import fidelity_scales, make_plan

# (alpha, aspect, resolution, tokens of the three fidelity scales, expected ranks per scale).
# Tokens from infinity.md: 1:1 0.06M ends 8x8, 12x12, 16x16; h/w 0.5 1M ends 30x60, 37x74,
# 45x90 (h/w 2.0 is the same grids transposed); 0.06M is the first 7 scales of a template.
# e.g. 0.999 / 64 tokens / chunk 1: 0.6004991 * 64 = 38.43 -> 38 + 1 = 39.
GOLDEN = [
    ("0.999", "1:1", "0.06M", (64, 144, 256), (
        (2, 39, 47, 50, 51, 45, 36, 44),
        (3, 79, 96, 103, 106, 93, 68, 88),
        (5, 123, 160, 169, 177, 134, 110, 149))),
    ("0.90", "2:1", "1M", (1800, 2738, 4050), (
        (24, 115, 213, 274, 297, 231, 193, 241),
        (31, 152, 254, 265, 271, 238, 182, 204),
        (52, 181, 343, 350, 345, 364, 255, 304))),
    ("0.96", "1:2", "1M", (1800, 2738, 4050), (
        (31, 246, 379, 451, 461, 357, 283, 344),
        (37, 322, 519, 608, 643, 501, 367, 447),
        (34, 221, 338, 270, 230, 121, 155, 226))),
    ("0.80", "2:1", "0.06M", (50, 128, 242), (
        (1, 2, 3, 4, 4, 4, 4, 4),
        (1, 4, 6, 8, 9, 8, 7, 9),
        (3, 6, 11, 13, 15, 16, 13, 17))),
]


@pytest.mark.parametrize("alpha,aspect,resolution,tokens,expected", GOLDEN)
def test_stagevar_full_ranks_equal_hand_derived_values(alpha, aspect, resolution, tokens, expected):
    schedule = get_schedule(aspect, resolution)
    fid = fidelity_scales(schedule.num_scales)
    assert tuple(schedule.token_counts[k] for k in fid) == tokens
    plan = make_plan("stagevar-full", schedule, alpha=alpha)
    assert tuple(plan.ranks[k] for k in fid) == expected


def _decimal_table() -> dict[str, dict[int, list[Decimal]]]:
    """The packaged TSV read as exact decimals (the test's own reader, not rank_table.py's)."""
    text = resources.files("stagevar.runtime.data").joinpath("infinity_rank_ratios.tsv").read_text()
    table: dict[str, dict[int, list[Decimal]]] = {}
    for line in text.splitlines():
        if not line or line.startswith("#") or line.startswith("alpha"):
            continue
        alpha, side, *ratios = line.split("\t")
        table.setdefault(alpha, {})[int(side)] = [Decimal(r) for r in ratios]
    return table


def test_every_table_rank_of_every_template_matches_exact_arithmetic():
    table = _decimal_table()
    assert set(table) == set(available_alphas())
    checked = 0
    for resolution in ("0.06M", "0.25M", "0.60M", "1M"):
        for schedule in all_templates(resolution):
            fid = fidelity_scales(schedule.num_scales)
            for alpha, rows in table.items():
                plan = make_plan("stagevar-full", schedule, alpha=alpha)
                for k, side in zip(fid, (40, 48, 64)):
                    m = schedule.token_counts[k]
                    expected = tuple(min(m, int(r * m) + 1) for r in rows[side])
                    assert plan.ranks[k] == expected, (resolution, schedule.aspect_name, alpha, side)
                    checked += len(expected)
    assert checked == 17280  # 4 resolutions x 15 templates x 12 alphas x 3 scales x 8 chunks


def test_rank_reaches_the_cap_at_the_token_count():
    """The released table never reaches ratio 1, so the cap is exercised with a table that does:
    ratio 1 gives int(M) + 1 = M + 1 -> capped to M; (M - 1) / M gives exactly M; 0 gives 1."""
    schedule = get_schedule("1:1", "0.06M")
    fid = fidelity_scales(schedule.num_scales)
    rows = []
    for k in fid:
        m = schedule.token_counts[k]
        rows.append((1.0, 1.5, (m - 1) / m, 0.999999, 0.5, 0.0, 1 / m, 2 / m))
    table = RankTable("calibrated", {"0.96": tuple(rows)})
    plan = make_plan("stagevar-full", schedule, table=table)
    for k in fid:
        m = schedule.token_counts[k]
        assert plan.ranks[k] == (m, m, m, m, m // 2 + 1, 1, 2, 3)
