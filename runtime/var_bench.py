"""`stagevar-bench` for VAR exports: the Infinity bench's measurement and report, with a class
label instead of a prompt and the VAR schedule and plans (runtime/bench.py does the statistics)."""

from __future__ import annotations

import time
from typing import Callable, Sequence

from .bench import add_speedups, check_counts, machine_info, measure, peak_rss_mb, summarize
from .errors import StagevarError
from .var_plans import make_var_plan
from .var_schedule import as_scale_schedule

DEFAULT_CLASS = 207


def benchmark_var_pipeline(pipe, plans: Sequence[str] = ("exact", "stagevar"), class_label: int = DEFAULT_CLASS,
                           seed: int = 0, runs: int = 3, warmup: int = 1,
                           progress: Callable[[str], None] | None = None) -> dict:
    """Time a VarPipeline on each plan (one image of `class_label`); a JSON-ready report shaped as
    runtime.bench.benchmark_pipeline's ("cond" is the class-condition stage)."""
    check_counts(runs, warmup)
    spec, manifest = pipe.spec, pipe.manifest
    schedule = as_scale_schedule(spec.patch_nums)
    resolved = [make_var_plan(p, spec.patch_nums, spec.block_chunks, pipe.rank_table) for p in plans]
    names = [p.name for p in resolved]
    if len(set(names)) != len(names):
        raise StagevarError("A stage plan is listed twice; give each plan once.")
    say = progress or (lambda message: None)
    machine = machine_info()
    entries = {}
    for plan in resolved:
        say(f"{plan.name}: 1 cold + {warmup} warmup + {runs} measured")
        t0 = time.perf_counter()
        cold, measured = measure(lambda: pipe(class_labels=[class_label], seed=seed, plan=plan,
                                              output_type="np").timings, runs, warmup)
        entries[plan.name] = summarize(cold, measured, plan, schedule)
        entries[plan.name]["rank_table"] = plan.rank_table
        say(f"{plan.name}: p50 {entries[plan.name]['p50']['total']:.3f} s ({time.perf_counter() - t0:.1f} s)")
    model = manifest.data.get("model", {})
    report = {
        "settings": {"class": class_label, "seed": seed, "runs": runs, "warmup": warmup,
                     "alpha": manifest.data.get("alpha"), "scales": [list(hw) for hw in schedule.scales]},
        "plans": entries, "backend": "ort", "device": pipe.backend.device,
        "artifacts": {"path": str(manifest.root), "preset": model.get("preset"), "family": "var",
                      "precision": manifest.data.get("precision"), "random_init": model.get("random_init")},
        "machine": machine,
    }
    add_speedups(report)
    report["peak_rss_mb"] = peak_rss_mb()
    report["machine"]["load_avg_end"] = machine_info().get("load_avg")
    return report
