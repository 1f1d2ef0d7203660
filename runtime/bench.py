"""Latency benchmark of the runtime pipeline: cold and warm timings per stage plan.

For each plan: one cold call (first use of a plan: its shapes, buffers and kernels are new),
then `warmup` discarded calls, then `runs` measured calls. The report gives p50/p90 of every
stage and every scale, the linear-layer token passes the plan costs per image, and the
speedup of each plan over `exact`. numpy and the runtime only: apps can benchmark without torch.

The same statistics helpers serve the eager torch baseline (`stagevar.exporter.bench_torch`),
so both reports have one layout and `format_table` reads either.
"""

from __future__ import annotations

import os
import platform
import sys
import time
from collections.abc import Callable, Sequence

import numpy as np

from .errors import StagevarError
from .schedules import ScaleSchedule, get_schedule
from .stage_plan import StagePlan, make_plan

DEFAULT_PROMPT = "a photo of a red fox in the snow, highly detailed"
STAGES = ("text", "scales", "vae", "total", "overhead")
BASELINE_PLAN = "exact"

Timings = dict  # one call's timings: stage -> seconds, "scales" -> list of per-scale dicts
Progress = Callable[[str], None]


def _backend_details(backend) -> dict:
    """Execution providers (ort) or the engine build in use (trt, via its describe())."""
    if hasattr(backend, "sessions"):
        return {"providers": backend.sessions[next(iter(backend.sessions))].get_providers()}
    return {"engines": backend.describe()} if hasattr(backend, "describe") else {}


def check_counts(runs: int, warmup: int) -> None:
    """Refuse counts that give no measurement (one sentence, as every user error)."""
    if isinstance(runs, bool) or not isinstance(runs, int) or runs < 1:
        raise StagevarError(f"runs must be a positive integer, not {runs!r}.")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise StagevarError(f"warmup must be zero or a positive integer, not {warmup!r}.")


def resolve_plans(names: Sequence[str | StagePlan], schedule: ScaleSchedule, num_chunks: int,
                  alpha, table=None) -> list[StagePlan]:
    """StagePlans for the requested names (validated before any timing, so a typo costs nothing)."""
    if not names:
        raise StagevarError("No stage plan to benchmark; give at least one, for example exact,stagevar.")
    plans = [p if isinstance(p, StagePlan) else make_plan(p, schedule, num_chunks=num_chunks, alpha=alpha, table=table)
             for p in names]
    seen = [p.name for p in plans]
    dupes = sorted({n for n in seen if seen.count(n) > 1})
    if dupes:
        raise StagevarError(f"Stage plan {dupes[0]!r} is listed twice; give each plan once.")
    return plans


def measure(call: Callable[[], Timings], runs: int, warmup: int) -> tuple[Timings, list[Timings]]:
    """Cold timings (first call), then `warmup` discarded calls, then `runs` measured ones."""
    cold = call()
    for _ in range(warmup):
        call()
    return cold, [call() for _ in range(runs)]


def _stage_seconds(timings: Timings) -> dict[str, float]:
    """Per-stage seconds of one call; "scales" is the sum over scales (stages not timed are absent)."""
    out = {}
    for stage in STAGES:
        value = timings.get(stage)
        if stage == "scales" and isinstance(value, list):
            value = sum(s["seconds"] for s in value)
        if value is not None:
            out[stage] = float(value)
    return out


def _pct(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def summarize(cold: Timings, runs: list[Timings], plan: StagePlan, schedule: ScaleSchedule) -> dict:
    """One plan's entry: cold/p50/p90 per stage, per-scale p50/p90, token passes, overhead share."""
    per_run = [_stage_seconds(t) for t in runs]
    stages = [s for s in STAGES if all(s in r for r in per_run)]
    entry = {
        "plan": plan.name,
        "cold": _stage_seconds(cold),
        "p50": {s: _pct([r[s] for r in per_run], 50) for s in stages},
        "p90": {s: _pct([r[s] for r in per_run], 90) for s in stages},
        "totals": [r["total"] for r in per_run],
        "tokens": float(plan.token_passes(schedule)),
        "modes": [m.value for m in plan.modes],
    }
    if "overhead" in entry["p50"] and entry["p50"]["total"] > 0:
        entry["overhead_share"] = entry["p50"]["overhead"] / entry["p50"]["total"]
    if all(isinstance(t.get("scales"), list) for t in runs):
        entry["scales"] = [
            {"scale": k, "hw": list(hw), "mode": plan.modes[k].value,
             "p50": _pct([t["scales"][k]["seconds"] for t in runs], 50),
             "p90": _pct([t["scales"][k]["seconds"] for t in runs], 90)}
            for k, hw in enumerate(schedule.scales)
        ]
    return entry


def add_speedups(report: dict) -> None:
    """Top-level "speedup": p50 total of the baseline / p50 total of each plan.

    The baseline is `exact` when it was measured, else the first plan ("speedup_baseline" says which).
    """
    plans = report["plans"]
    baseline = BASELINE_PLAN if BASELINE_PLAN in plans else next(iter(plans))
    base = plans[baseline]["p50"]["total"]
    report["speedup_baseline"] = baseline
    report["speedup"] = {name: base / e["p50"]["total"] if e["p50"]["total"] > 0 else float("inf")
                         for name, e in plans.items()}


def peak_rss_mb() -> float | None:
    """Peak resident memory of this process so far, in MiB (None where `resource` is missing)."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def machine_info() -> dict:
    """What the numbers were measured on, including the load (the machine may be shared)."""
    info = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "python": platform.python_version(), "numpy": np.__version__}
    try:
        info["load_avg"] = [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        pass
    try:
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        info["onnxruntime"] = None
    return info


def benchmark_pipeline(
    pipe,
    plans: Sequence[str | StagePlan] = ("exact", "stagevar"),
    prompt: str = DEFAULT_PROMPT,
    seed: int = 0,
    aspect: str | float = "1:1",
    resolution: str | None = None,
    runs: int = 3,
    warmup: int = 1,
    progress: Progress | None = None,
) -> dict:
    """Time `pipe` (a `stagevar.runtime.pipeline.Pipeline`) on each plan; return a JSON-ready report.

    `resolution` defaults to the export's. Images come back as numpy arrays (output_type "np"),
    so PIL conversion is not timed. Every call uses the same prompt and seed.
    """
    check_counts(runs, warmup)
    manifest = pipe.manifest
    resolution = manifest.data.get("resolution", "1M") if resolution is None else resolution
    schedule = get_schedule(aspect, resolution)
    alpha = manifest.data.get("alpha", "0.96")
    resolved = resolve_plans(plans, schedule, pipe.spec.block_chunks, alpha, getattr(pipe, "rank_table", None))
    say = progress or (lambda message: None)
    machine = machine_info()  # load average before the runs; "load_avg_end" after them
    entries = {}
    for plan in resolved:
        say(f"{plan.name}: 1 cold + {warmup} warmup + {runs} measured")
        t0 = time.perf_counter()
        cold, measured = measure(lambda: pipe(prompt, seed=seed, plan=plan, aspect=aspect, resolution=resolution,
                                              output_type="np").timings, runs, warmup)
        entries[plan.name] = summarize(cold, measured, plan, schedule)
        entries[plan.name]["rank_table"] = plan.rank_table  # released / calibrated (date), None without LOWRANK
        say(f"{plan.name}: p50 {entries[plan.name]['p50']['total']:.3f} s ({time.perf_counter() - t0:.1f} s)")
    model = manifest.data.get("model", {})
    report = {
        "settings": {"prompt": prompt, "seed": seed, "aspect": schedule.aspect_name, "resolution": resolution,
                     "runs": runs, "warmup": warmup, "alpha": alpha,
                     "scales": [list(hw) for hw in schedule.scales]},
        "plans": entries,
        "backend": type(pipe.backend).__name__.removesuffix("Backend").lower(),
        "device": pipe.backend.device,
        **_backend_details(pipe.backend),
        "artifacts": {"path": str(manifest.root), "preset": model.get("preset"),
                      "precision": manifest.data.get("precision"), "random_init": model.get("random_init")},
        "machine": machine,
    }
    add_speedups(report)
    report["peak_rss_mb"] = peak_rss_mb()
    report["machine"]["load_avg_end"] = machine_info().get("load_avg")
    return report


# ---- text tables ------------------------------------------------------------------------------


def _grid(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _plan_table(report: dict, label: str) -> str:
    speedup = report.get("speedup", {})
    vs_torch = report.get("ort_vs_torch", {})
    head = ["plan", "cold s", "p50 s", "p90 s", "tokens", f"speedup (vs {report.get('speedup_baseline', '-')})",
            "overhead %"]
    if vs_torch:
        head.append("vs torch")
    rows = [head]
    for name, e in report["plans"].items():
        share = e.get("overhead_share")
        row = [f"{label}{name}", f"{e['cold']['total']:.3f}", f"{e['p50']['total']:.3f}", f"{e['p90']['total']:.3f}",
               f"{e['tokens']:.0f}", f"{speedup[name]:.2f}x" if name in speedup else "-",
               f"{100 * share:.1f}" if share is not None else "-"]
        if vs_torch:
            row.append(f"{vs_torch[name]:.2f}x" if name in vs_torch else "-")
        rows.append(row)
    return _grid(rows)


def _scale_table(report: dict) -> str | None:
    plans = {n: e for n, e in report["plans"].items() if "scales" in e}
    if not plans:
        return None
    first = next(iter(plans.values()))["scales"]
    rows = [["scale", "hw"] + [f"{n} p50 ms" for n in plans]]
    for k, s in enumerate(first):
        row = [str(k), f"{s['hw'][0]}x{s['hw'][1]}"]
        for e in plans.values():
            sc = e["scales"][k]
            row.append("-" if sc["mode"] == "skip" else f"{1000 * sc['p50']:.1f} {sc['mode']}")
        rows.append(row)
    stage_rows = []
    for stage in ("text", "vae", "overhead"):
        row = [stage, ""] + [f"{1000 * e['p50'][stage]:.1f}" if stage in e["p50"] else "-" for e in plans.values()]
        stage_rows.append(row)
    return _grid(rows + stage_rows)


def format_table(report: dict) -> str:
    """Readable tables: one row per plan (cold, p50, p90, tokens, speedup, overhead), then p50 per scale.

    A report with a "torch" section (from `stagevar-bench`) gets the eager torch rows as well.
    """
    s = report.get("settings", {})
    art = report.get("artifacts", {})
    parts = [f"{art.get('preset', '?')} {art.get('precision', '')} | {report.get('backend', '?')} "
             f"{report.get('device', '')} | {s.get('aspect', '?')} {s.get('resolution', '?')} | "
             f"{s.get('runs', '?')} runs after {s.get('warmup', '?')} warmup",
             _plan_table(report, "")]
    tables = {n: e["rank_table"] for n, e in report["plans"].items() if e.get("rank_table")}
    if tables:
        parts.append("rank table: " + "; ".join(f"{n}: {t}" for n, t in tables.items()))
    scales = _scale_table(report)
    if scales:
        parts += ["p50 per scale (ms, with mode):", scales]
    torch_report = report.get("torch")
    if torch_report:
        parts += ["eager torch (fp32) baseline:", _plan_table(torch_report, "torch ")]
    rss, machine = report.get("peak_rss_mb"), report.get("machine", {})
    load = machine.get("load_avg")
    parts.append(f"{machine.get('cpu_count', '?')} CPUs"
                 + (f", load {load[0]:.2f} at start" if load else "")
                 + (f", peak RSS {rss:.0f} MB" if rss is not None else ""))
    return "\n".join(parts)
