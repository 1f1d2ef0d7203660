"""Requirements for runtime/schedules.py (facts from infinity.md section 1.2)."""

import pytest

from stagevar.runtime.errors import StagevarError
from stagevar.runtime.schedules import (
    H_DIV_W_TEMPLATES,
    TEMPLATE_RESOLUTIONS,
    all_templates,
    get_schedule,
    parse_aspect,
)

SQUARE_SIDES = (1, 2, 4, 6, 8, 12, 16, 20, 24, 32, 40, 48, 64)


def test_square_1m_schedule_has_13_scales_and_10521_tokens():
    s = get_schedule("1:1", "1M")
    assert s.num_scales == 13
    assert s.scales == tuple((n, n) for n in SQUARE_SIDES)
    assert s.total_tokens == 10521
    assert s.token_counts[-1] == 4096
    assert s.final_hw == (64, 64) and s.rope_grid_hw == (64, 64)
    assert s.pixel_hw() == (1024, 1024)


def test_resolutions_are_prefixes_of_the_template():
    full = get_schedule("1:1", "1M")
    for res, n in zip(TEMPLATE_RESOLUTIONS, (7, 10, 12, 13)):
        s = get_schedule("1:1", res)
        assert s.num_scales == n
        assert s.scales == full.scales[:n]
        assert s.full_scales == full.scales


def test_square_025m_totals_2521_and_keeps_the_1m_rope_grid():
    s = get_schedule("1:1", "0.25M")
    assert s.total_tokens == 2521
    assert s.final_hw == (32, 32)
    assert s.rope_grid_hw == (64, 64)
    assert s.pixel_hw() == (512, 512)


def test_landscape_2_to_1_is_h_div_w_half_with_11269_tokens():
    s = get_schedule("2:1", "1M")
    assert s.h_div_w == 0.5
    assert s.total_tokens == 11269
    assert s.final_hw == (45, 90)
    assert s.pixel_hw() == (720, 1440)
    assert s.aspect_name == "2:1"


def test_portrait_1333_totals_10973():
    s = get_schedule(1.333, "1M")
    assert s.h_div_w == 1.333
    assert s.total_tokens == 10973
    assert s.final_hw == (72, 54)
    assert s.aspect_name == "3:4"


def test_fifteen_templates_with_truncated_inverse_keys():
    assert H_DIV_W_TEMPLATES == (0.333, 0.4, 0.5, 0.571, 0.666, 0.75, 0.8, 1.0,
                                 1.25, 1.333, 1.5, 1.75, 2.0, 2.5, 3.0)


def test_inverse_template_swaps_h_and_w():
    tall, wide = get_schedule(3.0), get_schedule(0.333)
    assert wide.scales == tuple((w, h) for h, w in tall.scales)
    assert wide.final_hw == (37, 111)


@pytest.mark.parametrize("res,lo,hi", [("1M", 10521, 11269), ("0.25M", 2521, 2814)])
def test_template_totals_within_documented_range(res, lo, hi):
    totals = [s.total_tokens for s in all_templates(res)]
    assert len(totals) == 15
    assert min(totals) == lo and max(totals) == hi


def test_offsets_are_prefix_sums_of_token_counts():
    s = get_schedule("2:1")
    assert s.offsets[0] == 0
    for k in range(1, s.num_scales):
        assert s.offsets[k] == s.offsets[k - 1] + s.token_counts[k - 1]
    assert s.offsets[-1] + s.token_counts[-1] == s.total_tokens


def test_every_template_scale_grid_matches_its_h_div_w():
    for s in all_templates("1M"):
        h, w = s.final_hw
        assert abs(h / w - s.h_div_w) < 0.02


def test_parse_aspect_reads_width_colon_height():
    assert parse_aspect("16:9") == pytest.approx(9 / 16)
    assert parse_aspect("1:2") == 2.0
    assert parse_aspect(" 2:1 ") == 0.5
    assert parse_aspect(1.5) == 1.5


@pytest.mark.parametrize("bad", ["abc", "16x9", "1:2:3", "0:1", "1:0", "-1:1", "nan:1", -2.0, 0, None, True, [1, 2]])
def test_parse_aspect_rejects_garbage_with_stagevar_error(bad):
    with pytest.raises(StagevarError):
        parse_aspect(bad)


def test_get_schedule_picks_nearest_template():
    assert get_schedule("16:9").h_div_w == 0.571  # 0.5625 is nearer 0.571 than 0.5
    assert get_schedule("4:3").h_div_w == 0.75
    assert get_schedule(1.1).h_div_w == 1.0
    assert get_schedule(1.2).h_div_w == 1.25


@pytest.mark.parametrize("far", ["10:1", "1:10", 0.2, 4.0])
def test_aspect_far_from_every_template_is_refused(far):
    with pytest.raises(StagevarError, match="1:1"):
        get_schedule(far)


def test_unknown_resolution_lists_the_supported_ones():
    with pytest.raises(StagevarError, match="0.25M"):
        get_schedule("1:1", "2M")
    with pytest.raises(StagevarError):
        all_templates("512")


def test_resolution_names_are_case_insensitive():
    assert get_schedule("1:1", "1m").resolution == "1M"


def test_aspect_names_are_width_colon_height():
    names = {s.h_div_w: s.aspect_name for s in all_templates("1M")}
    assert names[1.0] == "1:1" and names[0.5] == "2:1" and names[2.0] == "1:2"
    assert names[0.333] == "3:1" and names[0.571] == "7:4" and names[1.25] == "4:5"


def test_schedule_is_frozen():
    s = get_schedule()
    with pytest.raises(AttributeError):
        s.resolution = "0.25M"
