"""The eager torch baseline of the benchmark: `ReferenceSampler.generate` timed like the runtime.

Same protocol and report layout as `stagevar.runtime.bench.benchmark_pipeline` (cold call,
warmup, measured runs, p50/p90), on CPU in fp32 with torch's default thread count. The sampler
is not changed: text encoding and VAE decoding are timed by wrapping the two calls it makes,
and "scales" is the rest of the call, so the torch stages line up with the runtime's.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence

import torch

from stagevar.runtime.bench import (
    DEFAULT_PROMPT, Progress, add_speedups, check_counts, measure, resolve_plans, summarize,
)
from stagevar.runtime.errors import StagevarError
from stagevar.runtime.memory_stats import PeakRss
from stagevar.runtime.schedules import get_schedule
from stagevar.runtime.stage_plan import DEFAULT_ALPHA, StagePlan

from .infinity.model_bundle import InfinityBundle
from .infinity.sampler import ReferenceSampler


class _TimedSampler(ReferenceSampler):
    """The reference sampler, recording how long its text encoding and VAE decoding took."""

    def __init__(self, bundle: InfinityBundle) -> None:
        self.stage_seconds: dict[str, float] = {}
        # A shallow copy whose decode is timed, so the caller's bundle is left untouched.
        timed = dataclasses.replace(bundle)
        decode = bundle.decode

        def timed_decode(codes):
            t0 = time.perf_counter()
            images = decode(codes)
            self.stage_seconds["vae"] = time.perf_counter() - t0
            return images

        timed.decode = timed_decode
        super().__init__(timed)

    def encode_text(self, prompts):
        t0 = time.perf_counter()
        out = super().encode_text(prompts)
        self.stage_seconds["text"] = time.perf_counter() - t0
        return out


def benchmark_torch(
    bundle: InfinityBundle,
    plans: Sequence[str | StagePlan] = ("exact", "stagevar"),
    prompt: str = DEFAULT_PROMPT,
    seed: int = 0,
    aspect: str | float = "1:1",
    resolution: str = "1M",
    runs: int = 3,
    warmup: int = 1,
    alpha: str = DEFAULT_ALPHA,
    progress: Progress | None = None,
) -> dict:
    """Time the eager reference on each plan; a report laid out like `benchmark_pipeline`'s.

    cfg and tau are the preset's defaults (the export's defaults too). Per-scale timings are
    not taken: the sampler is timed from outside only.
    """
    if bundle.is_lazy:
        raise StagevarError(f"{bundle.preset.name} was built without weights in memory (lazy export mode); "
                            f"the eager torch baseline needs a fully materialised model.")
    check_counts(runs, warmup)
    schedule = get_schedule(aspect, resolution)
    resolved = resolve_plans(plans, schedule, bundle.preset.transformer.block_chunks, alpha)
    sampler = _TimedSampler(bundle)
    say = progress or (lambda message: None)

    def call(plan: StagePlan) -> dict:
        sampler.stage_seconds = {}
        t0 = time.perf_counter()
        sampler.generate(prompt, plan=plan, cfg=bundle.preset.default_cfg, tau=bundle.preset.default_tau,
                         aspect=aspect, resolution=resolution, seed=seed, alpha=alpha)
        total = time.perf_counter() - t0
        timings = {"total": total, **sampler.stage_seconds}
        timings["scales"] = total - timings.get("text", 0.0) - timings.get("vae", 0.0)
        return timings

    entries = {}
    peak = PeakRss()
    for plan in resolved:
        say(f"torch {plan.name}: 1 cold + {warmup} warmup + {runs} measured")
        peak.start()
        cold, measured = measure(lambda: call(plan), runs, warmup)
        entries[plan.name] = summarize(cold, measured, plan, schedule)
        entries[plan.name]["peak_rss_mb"] = peak.peak_mb()
        say(f"torch {plan.name}: p50 {entries[plan.name]['p50']['total']:.3f} s")
    report = {
        "settings": {"prompt": prompt, "seed": seed, "aspect": schedule.aspect_name, "resolution": resolution,
                     "runs": runs, "warmup": warmup, "alpha": alpha, "precision": "fp32"},
        "plans": entries,
        "backend": "torch-eager",
        "device": "cpu",
        "machine": {"torch": torch.__version__, "torch_threads": torch.get_num_threads()},
    }
    add_speedups(report)
    # Peak over the torch plans (and the process peak before them: the ORT benchmark's last plan).
    report["peak_rss_mb"] = peak.overall_mb()
    return report

