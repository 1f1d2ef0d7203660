"""`stagevar-export build DIR`: TensorRT engines for an existing export (and `--engine trt`).

Needs tensorrt and polygraphy (stagevar[trt]) and an NVIDIA GPU; without them it prints one
sentence and exits 2, leaving DIR untouched. Engines go to DIR/engines/trt<ver>-sm<cc>/ and are
recorded in DIR/manifest.json; see build.py for the guarantees.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from stagevar.runtime.cli_common import add_version, run_cli
from stagevar.runtime.errors import StagevarError

GIB = 1 << 30


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="stagevar-export build",
                                description="Build TensorRT engines for an existing stagevar export, "
                                            "into DIR/engines/trt<version>-sm<cc>/, and record them in its manifest.")
    add_version(p)
    p.add_argument("dir", metavar="DIR", help="an export folder (written by stagevar-export)")
    add_engine_arguments(p)
    p.add_argument("--opt-level", type=int, default=3, choices=range(6), metavar="0-5",
                   help="TensorRT builder optimisation level (default 3; 5 searches longest)")
    p.add_argument("--workspace-gib", type=float, metavar="N", help="cap on TensorRT's workspace memory pool, in GiB (default: TensorRT's)")
    p.add_argument("--timing-cache", type=Path, metavar="PATH", help="also load and update this tactic timing cache file (shared between exports)")
    p.add_argument("--check", action="store_true", help="compare every engine with ONNX Runtime per profile; non-zero exit if not ok")
    p.add_argument("--force", action="store_true", help="rebuild every engine even when its cache key is unchanged")
    return p


def add_engine_arguments(p: argparse.ArgumentParser) -> None:
    """Options shared with `stagevar-export --engine trt`."""
    p.add_argument("--plugins", type=Path, metavar="PATH",
                   help="TensorRT plugin library (libstagevar_trt_plugin.so) for the fidelity graph's TokenRestore nodes")


def run_build(root, *, opt_level: int = 3, workspace_gib: float | None = None, plugins: Path | None = None,
              timing_cache: Path | None = None, force: bool = False, check: bool = False,
              toolchain=None) -> int:
    """Build, print a summary, optionally check; returns the exit code (1 when the check fails)."""
    from .build import BuildOptions, build_engines, preflight, record_check

    root = Path(root)
    if workspace_gib is not None and not workspace_gib > 0:
        raise StagevarError("--workspace-gib must be positive.")
    workspace = None if workspace_gib is None else int(workspace_gib * GIB)
    options = BuildOptions(optimization_level=opt_level, workspace_bytes=workspace, plugins=plugins,
                           timing_cache=timing_cache, force=force)
    preflight(root)  # a wrong DIR or an export of another stagevar: say so before TensorRT
    if toolchain is None:
        from .toolchain import load_toolchain

        toolchain = load_toolchain(root)
    result = build_engines(root, options, toolchain=toolchain)
    print(_summary(root, result))
    if not check:
        return 0
    from stagevar.runtime.manifest import load_manifest

    from .trt_check import REPORT, check_engines, print_report

    data = load_manifest(root, verify="quick").data
    report = check_engines(root, data, result.record, lambda graph, plan: toolchain.open_engine(plan))
    print_report(report, root / REPORT)
    record_check(root, result.record, report["ok"], REPORT)
    return 0 if report["ok"] else 1


def _summary(root: Path, result) -> str:
    record = result.record
    rows = [("graph", "profiles", "plan", "build")]
    for graph, entry in record["graphs"].items():
        size = (root / entry["plan"]).stat().st_size / 2**20
        how = "reused" if graph in result.reused else f"{(record.get('built_seconds') or {}).get(graph) or 0:.1f} s"
        rows.append((graph, str(len(entry["profiles"])), f"{size:.1f} MB", how))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    table = "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows)
    state = "built" if result.changed else "up to date"
    return (f"{table}\nTensorRT engines {state}: {root / record['dir']} (TensorRT {record['tensorrt']}, "
            f"{record['device_name']}, sm {record['compute_capability']})")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_build(args.dir, opt_level=args.opt_level, workspace_gib=args.workspace_gib, plugins=args.plugins,
                     timing_cache=args.timing_cache, force=args.force, check=args.check)


def entry(argv: list[str] | None = None) -> int:
    return run_cli(main, argv)


if __name__ == "__main__":
    sys.exit(entry())
