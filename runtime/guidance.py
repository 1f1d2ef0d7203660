"""The accepted ranges of the two sampling knobs, cfg and tau, for every entry point.

The step graphs compute logits = (cfg * cond + (1 - cfg) * uncond) / tau in the export's
precision. Far outside the ranges below that overflows (cfg 1e30) or divides by zero (tau 1e-300
is 0 in float32) and every bit samples from NaN: a black image answered as a success. The
ranges are wide around the official values (Infinity: cfg 3-4, tau 0.5-1) and keep the
combined logit scale (2 cfg - 1) / tau under ~800, finite even in fp16. Pipeline, the CLIs and
both servers check through `check_cfg` / `check_tau`, so one rule and one sentence hold everywhere.
"""

from __future__ import annotations

import math

from .errors import StagevarError, shown

#: Inclusive range of the classifier-free guidance scale (0: null text only, 1: cond only).
CFG_RANGE = (0.0, 20.0)
#: Inclusive range of the logit temperature.
TAU_RANGE = (0.05, 10.0)


def check_cfg(value) -> float:
    """`value` as a float if it is a number within CFG_RANGE; else one StagevarError sentence."""
    return _check("cfg", value, CFG_RANGE, "the guidance scale")


def check_tau(value) -> float:
    """`value` as a float if it is a number within TAU_RANGE; else one StagevarError sentence."""
    return _check("tau", value, TAU_RANGE, "the logit temperature")


def range_text(name: str) -> str:
    """"from 0 to 20" for help texts and documentation."""
    low, high = CFG_RANGE if name == "cfg" else TAU_RANGE
    return f"from {low:g} to {high:g}"


def _check(name: str, value, bounds: tuple[float, float], meaning: str) -> float:
    low, high = bounds
    if isinstance(value, (bool, str, bytes)):
        number = None
    else:
        try:
            number = float(value)
        except (TypeError, ValueError, OverflowError):  # OverflowError: an int of 400 digits
            number = None
    if number is None or not math.isfinite(number) or not low <= number <= high:
        raise StagevarError(f"{name} ({meaning}) must be a number from {low:g} to {high:g}, "
                            f"not {shown(value)}.")
    return number
