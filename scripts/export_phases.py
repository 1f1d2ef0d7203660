"""Where an Infinity export's time goes: torch.export capture, the ONNX exporter's
run_decompositions re-trace and our clean-up passes, cumulated and printed as each graph starts.

    python scripts/export_phases.py --out /tmp/phases [stagevar-export options]

Same options as `stagevar-export` (model, precision, attention); writes a normal export to --out.
A measuring aid (docs/benchmarks.md, "Export time (#12)"), not part of the package.
"""

from __future__ import annotations

import collections
import json
import sys
import time

import torch.export
from torch.export import exported_program

SECONDS: dict[str, float] = collections.defaultdict(float)


def _timed(owner, attr: str, key: str) -> None:
    original = getattr(owner, attr)

    def wrapper(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            SECONDS[key] += time.perf_counter() - t0

    setattr(owner, attr, wrapper)


def _so_far() -> str:
    return ", ".join(f"{k} {v:.1f} s" for k, v in SECONDS.items())


def main(argv: list[str]) -> None:
    import stagevar.exporter.onnx_export as onnx_export
    from stagevar.exporter.cli_export import build_parser
    from stagevar.exporter.infinity.export_artifacts import export_artifacts
    from stagevar.exporter.model_args import load_bundle, resolve_preset

    _timed(torch.export, "export", "torch.export")
    _timed(exported_program.ExportedProgram, "run_decompositions", "run_decompositions")
    _timed(onnx_export, "_light_optimize", "light_optimize")
    args = build_parser().parse_args(argv)
    preset = resolve_preset(args)
    args.resolution = args.resolution or preset.default_resolution
    bundle = load_bundle(preset, args)
    c0, t0 = time.process_time(), time.perf_counter()

    def progress(phase: str, detail: str) -> None:
        print(f"{detail} starts at {time.perf_counter() - t0:.1f} s; so far: {_so_far()}", flush=True)

    export_artifacts(bundle, args.out, precision=args.precision, resolution=args.resolution, force=True,
                     attention=args.attention, progress=progress)
    print(f"total {time.perf_counter() - t0:.1f} s wall, {time.process_time() - c0:.1f} s CPU; {_so_far()}")
    print("per graph:", json.loads(open(f"{args.out}/manifest.json").read())["export_seconds"])


if __name__ == "__main__":
    main(sys.argv[1:])
