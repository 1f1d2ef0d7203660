"""runtime/guidance.py: the one definition of the accepted cfg and tau ranges.

Bug guarded against: a range that lets through values giving NaN images (cfg 1e30, tau 1e-300
which is 0 in float32), or a check that crashes (OverflowError, TypeError) instead of refusing."""

import numpy as np
import pytest

from stagevar.runtime.errors import StagevarError
from stagevar.runtime.guidance import CFG_RANGE, TAU_RANGE, check_cfg, check_tau


@pytest.mark.parametrize("value", [CFG_RANGE[0], CFG_RANGE[1], 3, np.float32(4.0), np.int64(1)])
def test_cfg_inside_the_range_is_returned_as_float(value):
    assert check_cfg(value) == float(value) and isinstance(check_cfg(value), float)


@pytest.mark.parametrize("value", [TAU_RANGE[0], TAU_RANGE[1], 0.5, np.float32(1.0)])
def test_tau_inside_the_range_is_returned_as_float(value):
    assert check_tau(value) == pytest.approx(float(value))


@pytest.mark.parametrize("check,value", [
    (check_cfg, 1e30), (check_cfg, -1e-9), (check_cfg, np.nextafter(CFG_RANGE[1], np.inf)),
    (check_cfg, float("nan")), (check_cfg, 10**400), (check_cfg, "3"), (check_cfg, True), (check_cfg, None),
    (check_tau, 1e-300), (check_tau, 0.0), (check_tau, np.float32(1e-300)), (check_tau, -0.5),
    (check_tau, np.nextafter(TAU_RANGE[0], 0)), (check_tau, float("inf")), (check_tau, [0.5]),
])
def test_values_outside_the_range_or_not_numbers_are_one_sentence(check, value):
    with pytest.raises(StagevarError) as info:
        check(value)
    message = str(info.value)
    assert "\n" not in message and message.endswith(".") and len(message) < 200
    low, high = CFG_RANGE if check is check_cfg else TAU_RANGE
    assert f"from {low:g} to {high:g}" in message


def test_the_ranges_keep_the_guided_logit_scale_finite_in_fp16():
    """The widest combined scale (2 cfg - 1) / tau times a large logit stays under fp16's max."""
    worst = (2 * CFG_RANGE[1] - 1) / TAU_RANGE[0]
    assert np.isfinite(np.float16(worst * 50.0))
