"""`stagevar-export --model var-...`: the VAR family's export, check and refusals."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from stagevar.runtime.errors import StagevarError
from stagevar.runtime.var_graph_io import VAR_GRAPHS

from ..progress import PhaseProgress
from .config import get_var_preset


def _bundle(preset, args: argparse.Namespace):
    from .bundle import VarBundle

    if getattr(args, "config", None):
        raise StagevarError("--config completes Infinity architectures; VAR presets are fixed, drop --config.")
    if args.text_encoder:
        raise StagevarError("VAR models are class-conditional and have no text encoder; drop --text-encoder.")
    given = {"weights": args.weights, "vae": args.vae}
    if any(given.values()) and args.random_init:
        raise StagevarError("--random-init cannot be combined with --weights or --vae.")
    if preset.random_init_only:
        if any(given.values()):
            raise StagevarError(f"{preset.name} has no released checkpoint; drop --weights/--vae.")
        return lambda: VarBundle.random(preset, seed=args.init_seed)
    if args.random_init:
        return lambda: VarBundle.random(preset, seed=args.init_seed)
    missing = [f"--{k}" for k, v in given.items() if not v]
    if missing:
        raise StagevarError(f"{preset.name} needs {' and '.join(missing)} (the official var_dXX.pth and "
                            f"vae_ch160v4096z32.pth), or --random-init for random weights.")
    for k, v in given.items():
        if not Path(v).exists():
            raise StagevarError(f"--{k} path '{v}' does not exist.")
    return lambda: VarBundle.from_checkpoints(preset, given["weights"], given["vae"])


def run_var_export(args: argparse.Namespace) -> int:
    """Validate every option first (one sentence, nothing written), then export, then --check."""
    preset = get_var_preset(args.model)
    out = Path(args.out) if args.out else Path("stagevar-artifacts") / preset.name
    if args.aspect.strip() != "1:1" or args.resolution is not None:
        raise StagevarError(f"{preset.name} has one fixed square schedule ({preset.image_size} px); drop --aspect "
                            f"and --resolution.")
    if args.plugins is not None and args.engine != "trt":
        raise StagevarError("--plugins is for TensorRT engines; add --engine trt (or use `stagevar-export build DIR "
                            "--plugins PATH`).")
    if args.batch < 1:
        raise StagevarError("--batch must be at least 1.")
    if out.exists() and not args.force:
        raise StagevarError(f"{out} already exists; pass --force to overwrite it or choose another --out.")
    make = _bundle(preset, args)
    progress = PhaseProgress(2 + len(VAR_GRAPHS) + (1 if args.check else 0))
    t0 = time.perf_counter()
    try:
        progress.phase("load model")
        bundle = make()
        from .export import export_var_artifacts

        export_var_artifacts(bundle, out, precision=args.precision, batch=args.batch, force=args.force,
                             progress=progress.phase)
    finally:
        progress.close()
    manifest = json.loads((out / "manifest.json").read_text())
    label = "RANDOM weights (a demo/test export, images are noise)" if manifest["model"]["random_init"] else "checkpoint weights"
    print(f"exported {preset.name} ({label}), {args.precision}, {preset.image_size} px, to {out} "
          f"in {time.perf_counter() - t0:.1f} s")
    code = 0
    if args.check:
        from .check import run_var_check

        code = 0 if run_var_check(out, bundle) else 1
    if args.engine == "trt":
        # The export above is complete and stays so whatever happens here (no TensorRT: one
        # sentence, exit 2). var_fidelity gets its engine after `calibrate` and a new build.
        from ..trt.cli_build import run_build

        code = max(code, run_build(out, plugins=args.plugins, check=args.check))
    return code
