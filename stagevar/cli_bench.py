"""`stagevar-bench`: latency of an export per stage plan, with the eager torch baseline when possible.

Runs the runtime pipeline (cold call, warmup, measured runs) on each plan, then - for exports of
random-init weights, when torch and the exporter are installed - the eager torch reference on the
same weights (rebuilt from the manifest's preset and seed), and prints both with ORT/torch ratios.
It lives in the top-level package because it uses the runtime and, optionally, the exporter.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path

from stagevar.runtime.bench import DEFAULT_PROMPT, benchmark_pipeline, format_table
from stagevar.runtime.cli_common import add_version, run_cli
from stagevar.runtime.errors import StagevarError
from stagevar.runtime.stage_plan import PLAN_PRESETS

DEFAULT_JSON = "stagevar-bench.json"
# Three measured runs (after the cold call and one warmup): the default benchmark of the
# infinity-tiny export at 1M, torch baseline included, takes about a minute on 2 idle CPU cores
# (under three on a busy shared one).
DEFAULT_RUNS = 3


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="stagevar-bench", description=__doc__.splitlines()[0])
    add_version(p)
    p.add_argument("artifacts", help="export directory (the one holding manifest.json)")
    p.add_argument("--plans", default="exact,stagevar", help=f"comma-separated stage plans among {', '.join(PLAN_PRESETS)} (default exact,stagevar)")
    p.add_argument("--backend", default="ort", choices=("ort", "trt"), help="execution backend (default ort)")
    p.add_argument("--device", default=None, choices=("cpu", "cuda"), help="device (default: cpu for ort, cuda for trt)")
    p.add_argument("--plugins", default=None, help="trt: TensorRT plugin library (default: the one the engine build recorded)")
    p.add_argument("--runs", type=int, default=DEFAULT_RUNS, help=f"measured calls per plan (default {DEFAULT_RUNS})")
    p.add_argument("--warmup", type=int, default=1, help="discarded calls per plan after the cold one (default 1)")
    p.add_argument("--prompt", default=DEFAULT_PROMPT, help="prompt of every call")
    p.add_argument("--class", dest="class_label", type=int, default=None,
                   help="VAR exports: the ImageNet class of every call (default 207)")
    p.add_argument("--seed", type=int, default=0, help="seed of every call (default 0)")
    p.add_argument("--aspect", default="1:1", help="width:height (default 1:1)")
    p.add_argument("--resolution", default=None, help="0.06M, 0.25M, 0.60M or 1M (default: the export's)")
    p.add_argument("--json", default=DEFAULT_JSON, help=f"report file (default ./{DEFAULT_JSON}; never inside the export)")
    p.add_argument("--no-torch", action="store_true", help="skip the eager torch baseline")
    p.add_argument("--quiet", action="store_true", help="no progress (a per-scale line is shown on a terminal only)")
    return p


def _plans(text: str) -> list[str]:
    names = [n.strip().lower() for n in text.split(",") if n.strip()]
    if not names:
        raise StagevarError("--plans is empty; give at least one plan, for example exact,stagevar.")
    for name in names:
        if name not in PLAN_PRESETS:
            raise StagevarError(f"Stage plan {name!r} is not known; choose among {', '.join(PLAN_PRESETS)}.")
    return names


def _json_path(text: str, artifacts: Path) -> Path:
    path = Path(text)
    if not path.parent.resolve().is_dir():
        raise StagevarError(f"The folder of --json '{path}' does not exist; create it first.")
    # The manifest hashes the export's files; a report written in there would change the folder.
    if artifacts.is_dir() and path.resolve().is_relative_to(artifacts.resolve()):
        raise StagevarError(f"--json '{path}' lies inside the export directory; write the report elsewhere.")
    return path


def load_report(pipe, seconds: float, before: dict, after: dict) -> dict:
    """Opening the export: seconds, this process's memory before and right after (MiB; the peak
    is the high-water mark so far, so it includes the load), and the backend's own estimate."""
    report = {"seconds": seconds, "backend": type(pipe.backend).__name__.removesuffix("Backend").lower(),
              "device": pipe.backend.device, "before": before, "after": after}
    estimate = getattr(pipe.backend, "load_estimate", None)
    if estimate is not None:
        report["estimate"] = estimate.as_dict()
    return report


def _torch_bundle(manifest, say):
    """The random-init bundle of the export, or None (with one line saying why) when it cannot be had."""
    model = manifest.data.get("model", {})
    if not model.get("random_init"):
        say("torch baseline skipped: this export holds checkpoint weights, and timing torch needs the checkpoints "
            "(use stagevar-reference with them).")
        return None
    try:
        import torch  # noqa: F401  (the exporter needs it; say so plainly when it is missing)
    except ImportError:
        say("torch baseline skipped: torch is not installed (pip install stagevar[export] for it).")
        return None
    try:
        from stagevar.exporter.infinity.model_bundle import InfinityBundle
        from stagevar.exporter.infinity.presets import get_preset
    except ImportError as exc:
        say(f"torch baseline skipped: the exporter cannot be imported ({exc}); install stagevar[export] for it.")
        return None
    preset = get_preset(model["preset"])
    if preset.transformer.config_hash() != model.get("config_hash"):
        say(f"torch baseline skipped: preset {preset.name} has changed since this export was made.")
        return None
    return InfinityBundle.random(preset, int(model["weights"]["random_init"]))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    plans = _plans(args.plans)
    artifacts = Path(args.artifacts)
    json_path = _json_path(args.json, artifacts)
    if args.runs < 1:
        raise StagevarError("--runs must be at least 1.")
    if args.warmup < 0:
        raise StagevarError("--warmup must be zero or more.")

    from stagevar.runtime.pipeline import Pipeline
    from stagevar.runtime.progress_line import ProgressLine

    line = ProgressLine(quiet=args.quiet)

    def say(message: str) -> None:
        if not args.quiet:
            line.clear()
            print(message, file=sys.stderr, flush=True)

    from stagevar.runtime.load_memory import process_memory

    before = process_memory()
    t0 = time.perf_counter()
    extra = {"plugins": args.plugins} if args.backend == "trt" else {}
    pipe = Pipeline.from_dir(artifacts, backend=args.backend, device=args.device, verify="record", **extra)
    load_seconds = time.perf_counter() - t0
    if getattr(pipe, "family", "infinity") == "var":
        return _bench_var(pipe, args, plans, load_seconds, json_path, say)
    if args.class_label is not None:
        raise StagevarError("--class is for VAR exports; this Infinity export takes --prompt.")
    load = load_report(pipe, load_seconds, before, process_memory())
    settings = dict(plans=plans, prompt=args.prompt, seed=args.seed, aspect=args.aspect, runs=args.runs,
                    warmup=args.warmup, progress=say)
    try:
        report = benchmark_pipeline(pipe, resolution=args.resolution, scale_progress=line.scale_callback("run: "),
                                    **settings)
    finally:
        line.clear()
    report["load_seconds"] = load_seconds
    report["load"] = load
    manifest = pipe.manifest
    # ONNX Runtime's arenas keep their peak allocation while the sessions live; free them so the
    # torch baseline does not run on top of them.
    del pipe
    gc.collect()

    if not args.no_torch:
        # Imported only now, so the runtime's numbers (and its peak RSS) are taken without torch loaded.
        bundle = _torch_bundle(manifest, say)
        if bundle is not None:
            from stagevar.exporter.bench_torch import benchmark_torch

            torch_report = benchmark_torch(bundle, resolution=report["settings"]["resolution"],
                                           alpha=report["settings"]["alpha"], **settings)
            report["torch"] = torch_report
            # > 1: the runtime is faster than eager torch on the same weights and plan.
            report["ort_vs_torch"] = {name: torch_report["plans"][name]["p50"]["total"] / e["p50"]["total"]
                                      for name, e in report["plans"].items() if e["p50"]["total"] > 0}

    print(format_table(report))
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {json_path}")
    return 0


def _bench_var(pipe, args, plans, load_seconds: float, json_path: Path, say) -> int:
    """VAR exports: the runtime alone (no eager-torch baseline for VAR yet, said in the report)."""
    from stagevar.runtime.var_bench import DEFAULT_CLASS, benchmark_var_pipeline

    if args.prompt != DEFAULT_PROMPT or args.aspect != "1:1" or args.resolution is not None:
        raise StagevarError("This export is a class-conditional VAR model: give --class N, not --prompt/--aspect/--resolution.")
    report = benchmark_var_pipeline(pipe, plans, DEFAULT_CLASS if args.class_label is None else args.class_label,
                                    seed=args.seed, runs=args.runs, warmup=args.warmup, progress=say)
    report["load_seconds"] = load_seconds
    report["torch"] = None
    report["torch_note"] = "no eager-torch baseline for VAR exports yet"
    print(format_table(report))
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {json_path}")
    return 0


def entry(argv: list[str] | None = None) -> int:
    return run_cli(main, argv)


if __name__ == "__main__":
    sys.exit(entry())
