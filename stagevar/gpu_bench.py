"""One prepared GPU measurement: Infinity-2B-shaped graphs, per-scale latency, ORT CUDA vs eager torch.

    python -m stagevar.gpu_bench --out gpu-bench.json [--workdir /tmp/gpubench] [--budget-s 480]

(`scripts/gpu_bench.sh` wraps it and installs a carried onnxruntime-gpu wheel first; DEVELOPERS.md
"GPU"). Steps, each written to the JSON as soon as it is done, so a run cut short keeps what it had:

1. export Infinity-2B-shaped graphs with random weights, fp16, fused attention, 1024x1024 1:1
   (the text encoder keeps flan-T5-XL's width but 2 layers: it runs once per request and is not
   what is timed, and the full one doubles the export time);
2. per scale, the step / fidelity graph of each plan (`exact`, `stagevar`) on onnxruntime's CUDA
   provider, inputs and outputs bound on the GPU, and the same graph modules in eager torch on
   CUDA (fp16 blocks) on the same inputs; p50 of `--runs` after one warm-up; the peak GPU memory
   of each;
3. the token-restore plugin's CUDA kernel against the numpy reference data (its ctest), when CMake
   and nvcc are there.

Without a CUDA GPU it refuses in one sentence (exit 2) before doing anything. `--allow-cpu` with
`--artifacts DIR` runs steps 2's ONNX Runtime part on the CPU (the tests use it on infinity-tiny).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from stagevar.runtime.cli_common import run_cli
from stagevar.runtime.errors import StagevarError

SCHEMA = "stagevar-gpu-bench/1"
PLANS = ("exact", "stagevar")
ENGINES = ("ort", "torch")
_REQUIRED = {"schema": str, "settings": dict, "device": dict, "export": dict, "latency": dict,
             "peak_gpu_memory_mb": dict, "plugin": dict, "skipped": list}
_SCALE_KEYS = {"scale": int, "hw": list, "mode": str, "graph": (str, type(None)), "p50_ms": (float, type(None))}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m stagevar.gpu_bench", description=__doc__.splitlines()[0])
    p.add_argument("--out", default="gpu-bench.json", help="the JSON report (default ./gpu-bench.json)")
    p.add_argument("--workdir", default="/tmp/stagevar-gpubench", help="where the export is written")
    p.add_argument("--artifacts", help="use this export instead of exporting (skips step 1)")
    p.add_argument("--plans", default=",".join(PLANS), help="comma-separated plans (default exact,stagevar)")
    p.add_argument("--runs", type=int, default=5, help="measured calls per scale after one warm-up (default 5)")
    p.add_argument("--budget-s", type=float, default=480.0, help="stop starting new steps after this many seconds")
    p.add_argument("--skip", default="", help="comma-separated steps to skip: ort, torch, plugin (all three: export only)")
    p.add_argument("--allow-cpu", action="store_true", help=argparse.SUPPRESS)  # tests: ORT CPU on --artifacts
    return p


def check_args(args: argparse.Namespace) -> tuple[list[str], set[str]]:
    """Validated (plans, skipped steps), or one sentence."""
    from stagevar.runtime.stage_plan import PLAN_PRESETS

    plans = [p.strip() for p in args.plans.split(",") if p.strip()]
    if not plans or any(p not in PLAN_PRESETS for p in plans):
        raise StagevarError(f"--plans {args.plans!r} must list plans among {', '.join(PLAN_PRESETS)}.")
    if args.runs < 1:
        raise StagevarError(f"--runs must be at least 1, not {args.runs}.")
    if args.budget_s <= 0:
        raise StagevarError("--budget-s must be positive.")
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    if skip - {"ort", "torch", "plugin"}:
        raise StagevarError(f"--skip {args.skip!r}: only ort, torch and plugin can be skipped.")
    if args.allow_cpu and not args.artifacts:
        raise StagevarError("--allow-cpu needs --artifacts DIR (it only runs the ONNX Runtime timing on the CPU).")
    if args.artifacts and not (Path(args.artifacts) / "manifest.json").is_file():
        raise StagevarError(f"--artifacts {args.artifacts} holds no manifest.json; pass an export folder.")
    if not Path(args.out).resolve().parent.is_dir():
        raise StagevarError(f"The folder of --out {args.out} does not exist; create it first.")
    return plans, skip


def gpu_info() -> dict | None:
    """The CUDA GPU torch sees, or None."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    props = torch.cuda.get_device_properties(0)
    return {"name": props.name, "compute_capability": f"{props.major}.{props.minor}",
            "memory_gb": round(props.total_memory / 2**30, 1), "torch": torch.__version__, "cuda": torch.version.cuda}


def require_gpu(allow_cpu: bool) -> dict:
    info = gpu_info()
    if info is None and not allow_cpu:
        raise StagevarError("No CUDA GPU is visible to torch on this machine; run the GPU benchmark on a machine "
                            "with an NVIDIA GPU and a CUDA build of torch (see DEVELOPERS.md, GPU).")
    return info or {"name": "cpu (test mode)"}


def ort_providers(allow_cpu: bool) -> list[str]:
    import onnxruntime as ort

    if hasattr(ort, "preload_dlls"):  # CUDA/cuDNN from torch's nvidia-* wheels, when present
        try:
            ort.preload_dlls()
        except Exception:  # noqa: BLE001 - best effort; the provider check below decides
            pass
    if "CUDAExecutionProvider" in ort.get_available_providers():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if allow_cpu:
        return ["CPUExecutionProvider"]
    raise StagevarError(f"onnxruntime {ort.__version__} here has no CUDA provider; install onnxruntime-gpu "
                        f"(scripts/gpu_bench.sh does it from the carried wheel, see DEVELOPERS.md, GPU).")


# ---- the report --------------------------------------------------------------------------------


def new_report(args, plans: list[str], device: dict) -> dict:
    return {"schema": SCHEMA,
            "settings": {"plans": plans, "runs": args.runs, "budget_s": args.budget_s, "aspect": "1:1",
                         "resolution": "1M", "precision": "fp16", "attention": "fused"},
            "device": device, "export": {}, "latency": {e: {} for e in ENGINES},
            "peak_gpu_memory_mb": {}, "plugin": {}, "skipped": []}


def validate_report(report: dict) -> None:
    """Raise ValueError naming the first field that does not follow the schema."""
    for key, kind in _REQUIRED.items():
        if not isinstance(report.get(key), kind):
            raise ValueError(f"report field {key!r} is missing or not a {kind.__name__}")
    if report["schema"] != SCHEMA:
        raise ValueError(f"schema is {report['schema']!r}, not {SCHEMA!r}")
    for engine, plans in report["latency"].items():
        if engine not in ENGINES:
            raise ValueError(f"latency engine {engine!r} is not one of {ENGINES}")
        for plan, entry in plans.items():
            if not isinstance(entry.get("scales"), list) or not isinstance(entry.get("total_ms"), float):
                raise ValueError(f"latency.{engine}.{plan} needs scales (list) and total_ms (float)")
            for s in entry["scales"]:
                for key, kind in _SCALE_KEYS.items():
                    if not isinstance(s.get(key), kind):
                        raise ValueError(f"latency.{engine}.{plan} scale {s.get('scale')}: {key!r} missing or mistyped")
                if (s["mode"] == "skip") != (s["p50_ms"] is None):
                    raise ValueError(f"latency.{engine}.{plan} scale {s['scale']}: skipped scales have no time, others must")
            total = sum(s["p50_ms"] for s in entry["scales"] if s["p50_ms"] is not None)
            if abs(total - entry["total_ms"]) > 1e-6 * max(1.0, total):
                raise ValueError(f"latency.{engine}.{plan}: total_ms is not the sum of its scales")


def write_report(report: dict, path: Path) -> None:
    validate_report(report)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=2))
    tmp.replace(path)


# ---- per-scale workloads -------------------------------------------------------------------------


def scale_workloads(data: dict, plan_name: str, aspect: str = "1:1") -> list[dict]:
    """Per scale of `plan_name`: the graph it runs and the profile (engine entry) of its shapes."""
    from stagevar.exporter.trt.profiles import all_profiles
    from stagevar.runtime import graph_io as gio
    from stagevar.runtime.schedules import get_schedule
    from stagevar.runtime.stage_plan import Mode, make_plan

    schedule = get_schedule(aspect, data["resolution"])
    plan = make_plan(plan_name, schedule, num_chunks=int(data["model"]["config"]["block_chunks"]), alpha=data["alpha"])
    profiles = all_profiles(data)
    out, past = [], 0
    for k, mode in enumerate(plan.modes):
        hw = list(schedule.scales[k])
        if mode is Mode.SKIP:
            out.append({"scale": k, "hw": hw, "mode": mode.value, "graph": None, "profile": None})
            continue
        graph = gio.FIDELITY if mode is Mode.LOWRANK else gio.STEP
        rows = 2 * int(data["batch"]) if mode is Mode.CFG else int(data["batch"])
        entry = next(i for i, e in enumerate(data["engines"]) if e["aspect"] == schedule.aspect_name and e["scale"] == k
                     and e["graph"] == graph and e["rows"] == rows and e["past_tokens"] == past)
        profile = next(p for p in profiles[graph] if p.entry == entry)
        out.append({"scale": k, "hw": hw, "mode": mode.value, "graph": graph, "profile": profile})
        if mode is not Mode.LOWRANK:
            past += schedule.token_counts[k]
    return out


def _latency_entry(scales: list[dict]) -> dict:
    total = float(sum(s["p50_ms"] for s in scales if s["p50_ms"] is not None))
    return {"scales": scales, "total_ms": total}


def time_ort(root: Path, data: dict, plans: list[str], runs: int, providers: list[str]) -> tuple[dict, float | None]:
    """p50 per scale on onnxruntime (inputs/outputs bound on the device); peak device memory in MiB."""
    import onnxruntime as ort

    from stagevar.exporter.trt.feeds import make_feeds

    device = "cuda" if providers[0].startswith("CUDA") else "cpu"
    options = ort.SessionOptions()
    options.log_severity_level = 3
    sessions = {g: ort.InferenceSession(str(root / data["graphs"][g]["path"]), options, providers=providers)
                for g in ("step", "fidelity")}
    memory = _DeviceMemory() if device == "cuda" else None
    result = {}
    for plan in plans:
        scales = []
        for w in scale_workloads(data, plan):
            row = {k: w[k] for k in ("scale", "hw", "mode", "graph")}
            if w["graph"] is None:
                scales.append({**row, "p50_ms": None})
                continue
            session = sessions[w["graph"]]
            feeds = make_feeds(data, w["graph"], w["profile"])
            binding = session.io_binding()
            values = {name: ort.OrtValue.ortvalue_from_numpy(value, device, 0) for name, value in feeds.items()}
            for name, value in values.items():  # `values` keeps the device copies alive for the runs
                binding.bind_ortvalue_input(name, value)
            for out in session.get_outputs():
                binding.bind_output(out.name, device)
            times = []
            for i in range(runs + 1):  # the first is the warm-up
                t0 = time.perf_counter()
                session.run_with_iobinding(binding)
                binding.synchronize_outputs()
                if i:
                    times.append(time.perf_counter() - t0)
            if memory:
                memory.sample()
            scales.append({**row, "p50_ms": 1000 * float(np.median(times))})
        result[plan] = _latency_entry(scales)
    return result, (memory.peak_mb() if memory else None)


class _DeviceMemory:
    """Device-wide used memory (what onnxruntime's CUDA arena holds), from torch's mem_get_info."""

    def __init__(self) -> None:
        import torch

        self._torch = torch
        self.base = self._used()
        self.peak = self.base

    def _used(self) -> float:
        free, total = self._torch.cuda.mem_get_info()
        return (total - free) / 2**20

    def sample(self) -> None:
        self.peak = max(self.peak, self._used())

    def peak_mb(self) -> float:
        return self.peak - self.base


def time_torch(data: dict, plans: list[str], runs: int) -> tuple[dict, float]:
    """The same per-scale workloads on the eager graph modules (fp16 blocks) on CUDA."""
    import torch

    from stagevar.exporter.infinity.graphs_transformer import FidelityGraph, StepGraph
    from stagevar.exporter.infinity.model_bundle import InfinityBundle
    from stagevar.exporter.infinity.precision import to_fp16_blocks
    from stagevar.exporter.trt.feeds import make_feeds

    bundle = InfinityBundle.random(_preset(), seed=0, lazy=False)
    model = to_fp16_blocks(bundle.transformer).cuda().eval()
    del bundle
    graphs = {"step": StepGraph(model), "fidelity": FidelityGraph(model)}
    result = {}
    torch.cuda.reset_peak_memory_stats()
    with torch.no_grad():
        for plan in plans:
            scales = []
            for w in scale_workloads(data, plan):
                row = {k: w[k] for k in ("scale", "hw", "mode", "graph")}
                if w["graph"] is None:
                    scales.append({**row, "p50_ms": None})
                    continue
                feeds = make_feeds(data, w["graph"], w["profile"])
                args = [torch.from_numpy(v).cuda() for v in feeds.values()]
                times = []
                for i in range(runs + 1):
                    torch.cuda.synchronize()
                    t0 = time.perf_counter()
                    graphs[w["graph"]](*args)
                    torch.cuda.synchronize()
                    if i:
                        times.append(time.perf_counter() - t0)
                scales.append({**row, "p50_ms": 1000 * float(np.median(times))})
            result[plan] = _latency_entry(scales)
    return result, torch.cuda.max_memory_allocated() / 2**20


def _preset():
    """Infinity-2B's transformer and VAE; flan-T5-XL's width with 2 layers (not timed here)."""
    from stagevar.exporter.infinity.presets import infinity2b

    preset = infinity2b()
    return replace(preset, name="infinity2b-gpubench", text=replace(preset.text, num_layers=2))


def export_2b(workdir: Path) -> tuple[Path, float]:
    from stagevar.exporter.infinity.export_artifacts import export_artifacts
    from stagevar.exporter.infinity.model_bundle import InfinityBundle

    out = workdir / "infinity2b-fp16-fused"
    t0 = time.perf_counter()
    export_artifacts(InfinityBundle.random(_preset(), seed=0), out, aspects=("1:1",), resolution="1M",
                     precision="fp16", attention="fused", force=True)
    return out, time.perf_counter() - t0


def plugin_check(timeout_s: float) -> dict:
    """Build the plugins with CMake and run their ctest (CUDA kernel and CPU reference vs numpy data)."""
    repo = Path(__file__).resolve().parents[1]
    missing = [tool for tool in ("cmake", "nvcc", "ctest") if shutil.which(tool) is None]
    if missing:
        return {"status": "skipped", "reason": f"{', '.join(missing)} not found"}
    build = Path(os.environ.get("STAGEVAR_PLUGIN_BUILD", "/tmp/stagevar-plugin-build"))
    t0 = time.perf_counter()
    steps = [["cmake", "-S", str(repo), "-B", str(build)], ["cmake", "--build", str(build), "-j"],
             ["ctest", "--test-dir", str(build), "--output-on-failure"]]
    log = []
    for cmd in steps:
        left = timeout_s - (time.perf_counter() - t0)
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=max(1.0, left))
        except subprocess.TimeoutExpired:
            return {"status": "timeout", "step": " ".join(cmd[:2]), "seconds": round(time.perf_counter() - t0, 1)}
        log.append((done.stdout + done.stderr)[-2000:])
        if done.returncode != 0:
            return {"status": "failed", "step": " ".join(cmd[:2]), "output_tail": log[-1],
                    "seconds": round(time.perf_counter() - t0, 1)}
    return {"status": "passed", "seconds": round(time.perf_counter() - t0, 1), "ctest_tail": log[-1][-800:]}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    plans, skip = check_args(args)
    device = require_gpu(args.allow_cpu)
    t0 = time.perf_counter()
    out = Path(args.out)
    report = new_report(args, plans, device)
    try:
        providers = ort_providers(args.allow_cpu)
    except StagevarError as exc:  # a GPU without onnxruntime-gpu: torch and the plugin still run
        providers = None
        report["skipped"].append(f"onnxruntime: {exc}")
    report["device"]["ort_providers"] = providers

    def left() -> float:
        return args.budget_s - (time.perf_counter() - t0)

    def step(name: str, need_s: float) -> bool:
        if left() < need_s:
            report["skipped"].append(f"{name}: {left():.0f} s of the budget left, it needs about {need_s:.0f} s")
            write_report(report, out)
            return False
        print(f"[gpu_bench {time.perf_counter() - t0:6.1f} s] {name}", file=sys.stderr, flush=True)
        return True

    if args.artifacts:
        root = Path(args.artifacts)
        report["export"] = {"path": str(root), "reused": True}
    else:
        step("export", 0)
        root, seconds = export_2b(Path(args.workdir))
        report["export"] = {"path": str(root), "seconds": round(seconds, 1), "preset": "infinity2b (T5 2 layers)"}
    data = json.loads((root / "manifest.json").read_text())
    report["export"].update({"preset": data["model"]["preset"], "precision": data["precision"],
                             "attention": data.get("attention"), "opset": data.get("opset")})
    write_report(report, out)
    if "ort" in skip:
        report["skipped"].append("onnxruntime: skipped by --skip")
    elif providers and step("onnxruntime per-scale latency", 30):
        report["latency"]["ort"], report["peak_gpu_memory_mb"]["ort"] = time_ort(root, data, plans, args.runs, providers)
        write_report(report, out)
    if "torch" in skip or args.allow_cpu:
        report["skipped"].append("torch: skipped by --skip" if "torch" in skip else "torch: CPU test mode")
    elif step("eager torch per-scale latency", 90):
        report["latency"]["torch"], report["peak_gpu_memory_mb"]["torch"] = time_torch(data, plans, args.runs)
        write_report(report, out)
    if "plugin" in skip or args.allow_cpu:
        report["plugin"] = {"status": "skipped", "reason": "--skip" if "plugin" in skip else "CPU test mode"}
    elif step("plugin kernel vs numpy", 60):
        report["plugin"] = plugin_check(max(60.0, left()))
    report["seconds"] = round(time.perf_counter() - t0, 1)
    write_report(report, out)
    print(f"wrote {out} in {report['seconds']} s", file=sys.stderr)
    return 0


def entry(argv: list[str] | None = None) -> int:
    return run_cli(main, argv)


if __name__ == "__main__":
    sys.exit(entry())
