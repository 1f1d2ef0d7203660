"""Infinity scale schedules: the (h, w) latent grid of every scale, per aspect template.

Data: the table of `infinity/utils/dynamic_resolution.py` (FoundationVision/Infinity). Each
template is a 13-scale list; a resolution preset is a prefix of it. Inverse ratios are derived
by swapping h and w, keyed by `int(1/r*1000)/1000` exactly as the official code does, so the
template keys (and hence nearest-template choices) agree with it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

from .errors import StagevarError

# h/w -> 13 (h, w) grids; only ratios >= 1 are listed, the rest are generated below.
_BASE_TEMPLATES: dict[float, tuple[tuple[int, int], ...]] = {
    1.000: ((1, 1), (2, 2), (4, 4), (6, 6), (8, 8), (12, 12), (16, 16), (20, 20), (24, 24),
            (32, 32), (40, 40), (48, 48), (64, 64)),
    1.250: ((1, 1), (2, 2), (3, 3), (5, 4), (10, 8), (15, 12), (20, 16), (25, 20), (30, 24),
            (35, 28), (45, 36), (55, 44), (70, 56)),
    1.333: ((1, 1), (2, 2), (4, 3), (8, 6), (12, 9), (16, 12), (20, 15), (24, 18), (28, 21),
            (36, 27), (48, 36), (60, 45), (72, 54)),
    1.500: ((1, 1), (2, 2), (3, 2), (6, 4), (9, 6), (15, 10), (21, 14), (27, 18), (33, 22),
            (39, 26), (48, 32), (63, 42), (78, 52)),
    1.750: ((1, 1), (2, 2), (3, 3), (7, 4), (11, 6), (14, 8), (21, 12), (28, 16), (35, 20),
            (42, 24), (56, 32), (70, 40), (84, 48)),
    2.000: ((1, 1), (2, 2), (4, 2), (6, 3), (10, 5), (16, 8), (22, 11), (30, 15), (38, 19),
            (46, 23), (60, 30), (74, 37), (90, 45)),
    2.500: ((1, 1), (2, 2), (5, 2), (10, 4), (15, 6), (20, 8), (25, 10), (30, 12), (40, 16),
            (50, 20), (65, 26), (80, 32), (100, 40)),
    3.000: ((1, 1), (2, 2), (6, 2), (9, 3), (15, 5), (21, 7), (27, 9), (36, 12), (45, 15),
            (54, 18), (72, 24), (90, 30), (111, 37)),
}


def _build_templates() -> dict[float, tuple[tuple[int, int], ...]]:
    templates = dict(_BASE_TEMPLATES)
    for ratio, scales in _BASE_TEMPLATES.items():
        if ratio != 1.0:
            # Same truncating key as the official code (1/1.333 -> 0.75, 1/1.5 -> 0.666).
            templates[int(1 / ratio * 1000) / 1000] = tuple((w, h) for h, w in scales)
    return dict(sorted(templates.items()))


_TEMPLATES = _build_templates()

#: Resolution presets of the released templates, each a prefix of the 13-scale template.
TEMPLATE_RESOLUTIONS = ("0.06M", "0.25M", "0.60M", "1M")
_NUM_SCALES = {"0.06M": 7, "0.25M": 10, "0.60M": 12, "1M": 13}

#: Square-only schedules of this project's small trained models (not an Infinity template):
#: "8x8" is 7 scales on an 8x8 final grid (155 tokens), VAR-style non-template sides, so that a
#: CPU-trainable model still has the fidelity stage as a minority (3 of 7) of its scales.
GRID_SCHEDULES: dict[str, tuple[tuple[int, int], ...]] = {
    "8x8": ((1, 1), (2, 2), (3, 3), (4, 4), (5, 5), (6, 6), (8, 8)),
}

#: Every resolution name get_schedule accepts.
RESOLUTIONS = TEMPLATE_RESOLUTIONS + tuple(GRID_SCHEDULES)

#: The h/w keys of the 15 aspect templates, ascending.
H_DIV_W_TEMPLATES: tuple[float, ...] = tuple(_TEMPLATES)

# An aspect further than this factor from every template has no sensible schedule.
_MAX_ASPECT_FACTOR = 1.25


@dataclass(frozen=True)
class ScaleSchedule:
    """The scales one request runs: a prefix (`scales`) of an aspect template (`full_scales`)."""

    h_div_w: float
    resolution: str
    scales: tuple[tuple[int, int], ...]
    full_scales: tuple[tuple[int, int], ...]

    @property
    def num_scales(self) -> int:
        """Number of scales run."""
        return len(self.scales)

    @property
    def token_counts(self) -> tuple[int, ...]:
        """Tokens (h*w) of each scale."""
        return tuple(h * w for h, w in self.scales)

    @property
    def total_tokens(self) -> int:
        """Tokens of all scales together (the length of the RoPE table and of a full K/V cache)."""
        return sum(self.token_counts)

    @property
    def offsets(self) -> tuple[int, ...]:
        """Per scale, the number of tokens of all earlier scales (its first token's position)."""
        out, acc = [], 0
        for n in self.token_counts:
            out.append(acc)
            acc += n
        return tuple(out)

    @property
    def final_hw(self) -> tuple[int, int]:
        """Last grid of this schedule: the codes of every scale accumulate on it."""
        return self.scales[-1]

    @property
    def rope_grid_hw(self) -> tuple[int, int]:
        """Last grid of the template's 1M schedule: RoPE positions of every preset are normalised to it."""
        return self.full_scales[-1]

    @property
    def aspect_name(self) -> str:
        """Width:height label of the template, e.g. "1:1", "2:1" (h/w 0.5), "3:4" (h/w 1.333)."""
        h, w = self.rope_grid_hw
        frac = Fraction(w, h)
        return f"{frac.numerator}:{frac.denominator}"

    def pixel_hw(self, patch: int = 16) -> tuple[int, int]:
        """Image size (height, width) in pixels for a VAE of the given patch size."""
        h, w = self.final_hw
        return h * patch, w * patch


def parse_aspect(aspect: str | float) -> float:
    """Return h/w for an aspect given as "W:H" (width:height, "16:9" -> 0.5625) or as a number h/w."""
    if isinstance(aspect, bool):
        raise StagevarError(f"Aspect {aspect!r} is not valid; give it as 'W:H' (for example '16:9') or as a number h/w.")
    if isinstance(aspect, str):
        parts = aspect.strip().split(":")
        try:
            if len(parts) != 2:
                raise ValueError
            w, h = float(parts[0]), float(parts[1])
        except ValueError:
            raise StagevarError(
                f"Aspect {aspect!r} is not valid; give it as 'W:H' (width:height, for example '16:9')."
            ) from None
        value = h / w if w > 0 and math.isfinite(w) and math.isfinite(h) else float("nan")
    else:
        try:
            value = float(aspect)
        except (TypeError, ValueError):
            raise StagevarError(
                f"Aspect {aspect!r} is not valid; give it as 'W:H' (for example '16:9') or as a number h/w."
            ) from None
    if not (math.isfinite(value) and value > 0):
        raise StagevarError(f"Aspect {aspect!r} is not valid; width and height must be positive numbers.")
    return value


def _check_resolution(resolution: str) -> str:
    for name in RESOLUTIONS:
        if isinstance(resolution, str) and resolution.strip().upper() == name.upper():
            return name
    raise StagevarError(
        f"Resolution {resolution!r} is not supported; choose one of {', '.join(RESOLUTIONS)}."
    )


def _make(h_div_w: float, resolution: str) -> ScaleSchedule:
    if resolution in GRID_SCHEDULES:
        scales = GRID_SCHEDULES[resolution]
        # RoPE is normalised to the schedule's own final grid (its "full" template is itself).
        return ScaleSchedule(1.0, resolution, scales, scales)
    full = _TEMPLATES[h_div_w]
    return ScaleSchedule(h_div_w, resolution, full[: _NUM_SCALES[resolution]], full)


def get_schedule(aspect: str | float = "1:1", resolution: str = "1M") -> ScaleSchedule:
    """The schedule of the template nearest to `aspect` (by |h/w - template|, as the official code).

    Aspects further than a factor 1.25 from every template, and unknown resolutions, are refused.
    """
    resolution = _check_resolution(resolution)
    h_div_w = parse_aspect(aspect)
    if resolution in GRID_SCHEDULES:
        if h_div_w != 1.0:
            raise StagevarError(f"Resolution {resolution} is square only; use aspect 1:1 with it.")
        return _make(1.0, resolution)
    nearest = min(H_DIV_W_TEMPLATES, key=lambda t: abs(h_div_w - t))
    if max(h_div_w / nearest, nearest / h_div_w) > _MAX_ASPECT_FACTOR:
        names = ", ".join(_make(t, resolution).aspect_name for t in H_DIV_W_TEMPLATES)
        raise StagevarError(
            f"Aspect {aspect!r} is too far from every supported aspect ratio; choose one near {names} (W:H)."
        )
    return _make(nearest, resolution)


def all_templates(resolution: str = "1M") -> list[ScaleSchedule]:
    """The schedules of all 15 aspect templates at one resolution, by ascending h/w."""
    resolution = _check_resolution(resolution)
    if resolution in GRID_SCHEDULES:
        return [_make(1.0, resolution)]
    return [_make(t, resolution) for t in H_DIV_W_TEMPLATES]
