"""A checked generation request: arguments validated (one sentence each), defaults resolved, and the
micro-batch size that fits memory (request_memory.py).

Everything here runs before any graph does, so a bad or oversized request costs nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from . import graph_io as gio
from . import request_memory
from .errors import StagevarError
from .prompts import normalize_prompts
from .schedules import ScaleSchedule, get_schedule
from .guidance import check_cfg, check_tau
from .stage_plan import Mode, StagePlan, make_plan, validate

OUTPUT_TYPES = ("pil", "np")


@dataclass(frozen=True, eq=False)
class Request:
    """One prompt and seed per image (prompt-major), the resolved schedule, plan and guidance."""

    prompts: list[str]
    seeds: list[int] | None
    schedule: ScaleSchedule
    plan: StagePlan
    cfg: float
    tau: float
    output_type: str
    noise: list | None
    keep: bool


def check_request(manifest, spec, prompt, seed, plan, cfg, tau, aspect, resolution, alpha, per_prompt,
                  output_type, noise, keep, rank_table=None) -> Request:
    """Check every argument of a request and resolve the export's defaults."""
    if output_type not in OUTPUT_TYPES:
        raise StagevarError(f"output_type {output_type!r} is not known; use 'pil' or 'np'.")
    if isinstance(per_prompt, bool) or not isinstance(per_prompt, (int, np.integer)) or per_prompt < 1:
        raise StagevarError(f"num_images_per_prompt must be a positive integer, not {per_prompt!r}.")
    prompts = [p for p in normalize_prompts(prompt) for _ in range(int(per_prompt))]
    n = len(prompts)
    cfg = check_cfg(spec.default_cfg if cfg is None else cfg)
    tau = check_tau(spec.default_tau if tau is None else tau)
    resolution = manifest.data.get("resolution", "1M") if resolution is None else resolution
    alpha = manifest.data.get("alpha", "0.96") if alpha is None else alpha
    schedule = get_schedule(aspect, resolution)
    if isinstance(plan, StagePlan):
        validate(plan, schedule, spec.block_chunks)
    else:
        plan = make_plan(plan, schedule, num_chunks=spec.block_chunks, alpha=alpha, table=rank_table)
    seeds = None
    if noise is None:
        seeds = seeds_for(seed, n)
    elif len(noise) != schedule.num_scales or any(
            z is None for z, m in zip(noise, plan.modes) if m is not Mode.SKIP):
        raise StagevarError(f"noise must hold one entry per scale ({schedule.num_scales}), None only for "
                            f"skipped scales; draw it with stagevar.runtime.noise.draw_batch_noise.")
    return Request(prompts, seeds, schedule, plan, cfg, tau, output_type, noise, keep)


def warn_truncated(tokenizer, prompt, max_length: int) -> None:
    """One StagevarWarning per prompt (as the user numbered them) that the encoder will truncate."""
    from .tokenize import encode_prompts

    prompts = normalize_prompts(prompt)
    encode_prompts(tokenizer, prompts, max_length=max_length)  # warns with the index in `prompts`


def micro_batch_size_for(request: Request, pipe, max_batch: int | None) -> int:
    """Images per micro-batch of `request` on `pipe` (its memory budget, model and backend).

    Given noise or intermediates are never split: such a request must fit whole.
    """
    n, schedule, plan = len(request.prompts), request.schedule, request.plan
    if pipe.memory_budget == "auto":
        device = getattr(pipe.backend, "device", "cuda")
        budget = request_memory.available_memory(device if isinstance(device, str) else "cuda")
    else:
        budget = pipe.memory_budget
    # The text rows scale with the longest prompt (tokenizing is cheap next to a request).
    longest = max(len(e.ids) for e in pipe.tokenizer.encode_batch(sorted(set(request.prompts))))
    kv_bytes = np.dtype(pipe.backend.input_dtype(gio.STEP, "past_kv")).itemsize
    est = request_memory.estimate(pipe.manifest.model, schedule, plan, kv_bytes,
                                  min(longest, pipe.spec.max_text_tokens))
    ppt = int(pipe.manifest.model.get("pixels_per_token", 1))
    what = (f"plan {plan.name}, {schedule.scales[-1][1] * ppt}x{schedule.scales[-1][0] * ppt}, "
            f"{pipe.spec.preset}")
    size = request_memory.micro_batch_size(est.per_image, n, budget, max_batch, what)
    if size < n and (request.noise is not None or request.keep):
        raise StagevarError(f"This request ({n} images, {what}) needs about {est.peak(n) / request_memory.GIB:.1f} "
                            f"GiB, more than fits at once, and requests with noise or return_intermediates "
                            f"are not split; pass fewer images.")
    return size


def seeds_for(seed, n: int) -> list[int]:
    """Per-image seeds: seed + i for an int, the list itself (one per image) otherwise."""
    if isinstance(seed, (bool, np.bool_)):
        raise StagevarError(f"Seed {seed!r} is not valid; give a non-negative integer.")
    if isinstance(seed, (int, np.integer)):
        if seed < 0:
            raise StagevarError(f"Seed {seed!r} is not valid; give a non-negative integer.")
        return [int(seed) + i for i in range(n)]
    if isinstance(seed, (str, bytes)) or not isinstance(seed, Sequence):
        raise StagevarError(f"Seed {seed!r} is not valid; give a non-negative integer or one per image.")
    if len(seed) != n:
        raise StagevarError(f"{len(seed)} seeds were given for {n} images; give one seed per image or a single int.")
    return list(seed)
