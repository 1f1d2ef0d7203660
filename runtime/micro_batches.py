"""Joining the outputs of a request's micro-batches into one PipelineOutput.

Micro-batches split a request by image (prompt-major order kept); each image keeps its own seed,
so the joined images are those of one big batch. Timings add up, per scale too.
"""

from __future__ import annotations

import numpy as np

_SUMMED = ("text", "cond", "vae", "total", "session", "overhead")


def merge_timings(parts: list[dict]) -> dict:
    """Sum the timings of several micro-batches; `micro_batches` says how many there were."""
    out = {key: sum(p[key] for p in parts) for key in _SUMMED if all(key in p for p in parts)}
    scales = [dict(s) for s in parts[0]["scales"]]
    for p in parts[1:]:
        for mine, theirs in zip(scales, p["scales"]):
            mine["seconds"] += theirs["seconds"]
    out["scales"] = scales
    out["micro_batches"] = len(parts)
    return out


def merge_outputs(parts: list, output_type: str):
    """One PipelineOutput from the outputs of consecutive micro-batches of one request."""
    from .pipeline import PipelineOutput  # pipeline imports this module

    if len(parts) == 1:
        return parts[0]
    if output_type == "np":
        images = np.concatenate([p.images for p in parts])
    else:
        images = [img for p in parts for img in p.images]
    seeds = None if parts[0].seeds is None else [s for p in parts for s in p.seeds]
    return PipelineOutput(images, merge_timings([p.timings for p in parts]), parts[0].plan, seeds,
                          rank_table=parts[0].rank_table)
