"""VAR scale schedules: the square patch lists of FoundationVision/VAR (reference var.md §1).

A VAR schedule is one square grid per scale; `as_scale_schedule` gives it the shape of the
runtime's ScaleSchedule so the stage plan (exact, cfg-off, ...) works unchanged.
"""

from __future__ import annotations

from .schedules import ScaleSchedule

PATCH_NUMS_256 = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
PATCH_NUMS_512 = (1, 2, 3, 4, 6, 9, 13, 18, 24, 32)

# phi index per scale for 10-scale lists (share_quant_resi = 4): argmin |ticks - si/9| with
# ticks = linspace(1/12, 11/12, 4); si = 2 and 7 are exact ties in real arithmetic, which the
# official float64 rounding resolves to 1 and 3 (var.md §4.5). Hard-coded, not recomputed.
PHI_INDEX_10 = (0, 0, 1, 1, 1, 2, 2, 3, 3, 3)


def token_offsets(patch_nums) -> tuple[int, ...]:
    """Index of the first token of each scale in the flat L-token sequence."""
    out, total = [], 0
    for p in patch_nums:
        out.append(total)
        total += p * p
    return tuple(out)


def phi_index(patch_nums) -> tuple[int, ...]:
    if len(patch_nums) != 10:
        raise ValueError(f"the phi table is known for 10-scale lists only, got {len(patch_nums)} scales")
    return PHI_INDEX_10


def as_scale_schedule(patch_nums) -> ScaleSchedule:
    scales = tuple((int(p), int(p)) for p in patch_nums)
    return ScaleSchedule(h_div_w=1.0, resolution=f"{16 * scales[-1][0]}px", scales=scales, full_scales=scales)
