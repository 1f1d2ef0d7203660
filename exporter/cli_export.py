"""`stagevar-export`: per-scale ONNX graphs with StageVAR compiled in, a verified manifest, a check.

With no arguments it exports the built-in `infinity-shapes` preset (a small Infinity trained on
the synthetic shapes world; its weights ship with the package) to ./stagevar-artifacts/infinity-shapes. `stagevar-export build DIR` builds TensorRT engines for an
existing export (exporter/trt/cli_build.py); `--engine trt` exports, then builds.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

from stagevar.runtime.cli_common import add_version, run_cli
from stagevar.runtime.errors import StagevarError
from stagevar.runtime.schedules import RESOLUTIONS

from .model_args import add_model_arguments, check_checkpoint_args, load_bundle
from .progress import PhaseProgress
from .trt.cli_build import add_engine_arguments


_BUILD_EPILOG = ("TensorRT: `stagevar-export build DIR [--plugins PATH] [--opt-level 0-5] [--workspace-gib N] "
                 "[--timing-cache PATH] [--check] [--force]` builds engines for an existing export "
                 "(see `stagevar-export build --help`). Rank table: `stagevar-export calibrate DIR [--prompts FILE] "
                 "[--num-prompts N] [--alpha 0.96[,0.98]] [--seed S]` (see `stagevar-export calibrate --help`).")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="stagevar-export", description=__doc__.splitlines()[0], epilog=_BUILD_EPILOG)
    add_version(p)
    add_model_arguments(p)
    p.add_argument("--aspect", default="1:1", help="comma-separated width:height list, e.g. 1:1,16:9 (default 1:1)")
    p.add_argument("--resolution", default=None, help=f"one of {', '.join(RESOLUTIONS)} (default: the model's, "
                   f"8x8 for infinity-shapes, 1M otherwise)")
    p.add_argument("--precision", default="fp32", choices=("fp32", "fp16"), help="graph precision (default fp32)")
    p.add_argument("--alpha", default="0.96", help="StageVAR rank-table energy threshold (default 0.96)")
    p.add_argument("--plans", default=None,
                   help="comma-separated plans to record (default: every plan this model can run; low-rank plans "
                        "need a rank table: the released one fits 8-chunk models, others run `calibrate` first)")
    p.add_argument("--attention", default="fused", choices=("fused", "decomposed"),
                   help="self-attention as one ONNX Attention node at opset 23 (fused, default) or MatMul/Softmax/MatMul "
                        "at opset 20 (decomposed: for TensorRT older than 10.14)")
    p.add_argument("--token-pairing", default="raster", choices=("raster", "sample"),
                   help="low-rank scales write chunk output j at the j-th selected position in raster order (default) "
                        "or in sampling order (as the StageVAR release does; for comparisons)")
    p.add_argument("--jobs", default="auto", choices=("auto", "1", "2"),
                   help="processes tracing the graphs: 2 traces text_encoder and fidelity beside step, "
                        "text_cond and vae_decoder (the same files, about 1.5x sooner); auto = 2 where there are two "
                        "CPUs and the model is small enough to copy (default auto)")
    p.add_argument("--batch", type=int, default=1, help="images per request the engine profiles are built for")
    p.add_argument("--out", help="output folder (default ./stagevar-artifacts/<model>)")
    p.add_argument("--force", action="store_true", help="replace an existing output folder")
    p.add_argument("--check", action="store_true", help="compare every graph with torch in ONNX Runtime; non-zero exit if not ok")
    p.add_argument("--engine", choices=("trt",), help="after exporting, build TensorRT engines (as `stagevar-export build OUT`; "
                   "with --check they are compared with ONNX Runtime too)")
    add_engine_arguments(p)
    return p


def _size(path: Path) -> str:
    n = path.stat().st_size
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _summary(out: Path, manifest: dict, progress: PhaseProgress) -> str:
    rows = [("graph", "graph file", "weights file", "time")]
    seen_weights = set()
    for name, g in manifest["graphs"].items():
        weights = g["weights"]
        wsize = "(shared)" if weights in seen_weights else _size(out / weights)
        seen_weights.add(weights)
        # Each graph's own tracing time (manifest), also when two processes traced side by side.
        took = manifest.get("export_seconds", {}).get(name, progress.durations.get(name, 0.0))
        rows.append((name, _size(out / g["path"]), f"{Path(weights).name} {wsize}", f"{took:.1f} s"))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "build":  # subcommand; the export's own options stay top-level
        from .trt.cli_build import main as build_main

        return build_main(argv[1:])
    if argv and argv[0] == "calibrate":
        from .cli_calibrate import main as calibrate_main

        return calibrate_main(argv[1:])
    args = build_parser().parse_args(argv)
    from .var.config import is_var_model

    if is_var_model(args.model):  # the class-conditional VAR family (exporter/var/)
        if args.token_pairing != "raster":
            raise StagevarError("--token-pairing sample is built for Infinity exports only; drop it for VAR models.")
        from .var.cli import run_var_export

        return run_var_export(args)
    from .infinity.side_graphs import SideGraphs, usable_cpus

    # The second process starts now, so that its imports (~9 s) overlap this one's (torch, the
    # model); if the export ends up in one process, or an option is refused, it is closed unused.
    early = args.jobs == "2" or (args.jobs == "auto" and usable_cpus() >= 2)
    with SideGraphs().launch() if early else contextlib.nullcontext() as side:
        return _export_infinity(args, side)


def _export_infinity(args, side) -> int:
    from .model_args import resolve_preset

    preset = resolve_preset(args)
    if args.resolution is None:
        args.resolution = preset.default_resolution
    out = Path(args.out) if args.out else Path("stagevar-artifacts") / preset.name
    aspects = [a.strip() for a in args.aspect.split(",") if a.strip()]
    if not aspects:
        raise StagevarError("--aspect is empty; give at least one width:height such as 1:1.")
    if out.exists() and not args.force:
        raise StagevarError(f"{out} already exists; pass --force to overwrite it or choose another --out.")
    # Validate every option before any work, so a typo costs nothing and prints one sentence.
    from stagevar.runtime.rank_table import canonical_alpha
    from stagevar.runtime.schedules import get_schedule

    for aspect in aspects:
        get_schedule(aspect, args.resolution)
    canonical_alpha(args.alpha)
    if args.batch < 1:
        raise StagevarError("--batch must be at least 1.")
    if args.plugins is not None and args.engine != "trt":
        raise StagevarError("--plugins is for TensorRT engines; add --engine trt (or use `stagevar-export build DIR --plugins PATH`).")
    if args.plugins is not None and not args.plugins.is_file():
        raise StagevarError(f"--plugins {args.plugins} is not a file; pass the built libstagevar_trt_plugin.so.")
    check_checkpoint_args(preset, args)
    from .infinity.export_artifacts import check_plans

    plans = None if args.plans is None else [p.strip() for p in args.plans.split(",") if p.strip()]
    # Before any loading or tracing: a plan this model cannot run costs one sentence, not an export.
    plans = check_plans(preset.transformer.block_chunks, aspects, args.resolution, canonical_alpha(args.alpha), plans)

    # One phase per graph, in the order they are traced here; with a second process, the graphs
    # it traces are one phase at the end (waiting for it).
    steps = ["load model", "text_encoder", "text_cond", "step", "vae_decoder", "fidelity", "manifest"]
    progress = PhaseProgress(len(steps) + (1 if args.check else 0))
    t0 = time.perf_counter()
    from .infinity.side_graphs import default_workers

    try:
        progress.phase("load model")
        bundle = load_bundle(preset, args)
        workers = default_workers(bundle) if args.jobs == "auto" else int(args.jobs)
        if workers == 2:
            steps = ["load model", "step", "text_cond", "vae_decoder", "second process", "manifest"]
            progress.total = len(steps) + (1 if args.check else 0)
        elif side is not None:
            side.close()  # this model exports in one process (too large to copy, or lazy)
        from .infinity.export_artifacts import export_artifacts

        export_artifacts(
            bundle, out, aspects=aspects, resolution=args.resolution, precision=args.precision,
            alpha=args.alpha, batch=args.batch, force=args.force, plans=plans, attention=args.attention,
            pairing=args.token_pairing, workers=workers, side=side if workers == 2 else None,
            progress=lambda phase, detail: progress.phase(detail if phase == "export" else phase),
        )
        progress.close()
    finally:
        progress.close()
    import json

    manifest = json.loads((out / "manifest.json").read_text())
    print(_summary(out, manifest, progress))
    label = ("RANDOM weights (a demo/test export, images are noise)" if manifest["model"]["random_init"]
             else "trained weights shipped with stagevar" if "trained" in manifest["model"]["weights"] else "checkpoint weights")
    print(f"exported {preset.name} ({label}), {args.precision}, aspects {', '.join(manifest['aspects'])} "
          f"to {out} in {time.perf_counter() - t0:.1f} s")
    code = 0
    if args.check:
        from .infinity.check import run_check

        progress = PhaseProgress(1)
        progress.phase("check")
        ok = run_check(out, bundle)
        progress.close()
        code = 0 if ok else 1
    if args.engine == "trt":
        # The export above is complete and stays so whatever happens here (no TensorRT: one
        # sentence, exit 2).
        from .trt.cli_build import run_build

        code = max(code, run_build(out, plugins=args.plugins, check=args.check))
    return code


def entry(argv: list[str] | None = None) -> int:
    return run_cli(main, argv)


if __name__ == "__main__":
    sys.exit(entry())
