"""`stagevar-reference`: run the eager torch reference sampler and write PNG images.

The ground truth every compiled artifact is checked against, and the baseline in benchmarks.
With no checkpoint arguments it uses the default preset (`infinity-shapes`, trained weights shipped with the package); `--model` picks another.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from stagevar.runtime.cli_common import add_version, run_cli
from stagevar.runtime.errors import StagevarError
from stagevar.runtime.guidance import check_cfg, check_tau, range_text
from stagevar.runtime.stage_plan import DEFAULT_ALPHA, PLAN_PRESETS

from .model_args import add_model_arguments, load_bundle, resolve_preset


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="stagevar-reference", description=__doc__.splitlines()[0])
    add_version(p)
    p.add_argument("prompts", nargs="+", help="one or more prompts")
    add_model_arguments(p)
    p.add_argument("--plan", default="stagevar", choices=PLAN_PRESETS, help="stage plan preset (default: stagevar)")
    p.add_argument("--alpha", default=DEFAULT_ALPHA, help="rank-table energy threshold (default: 0.96)")
    p.add_argument("--aspect", default="1:1", help="width:height, e.g. 1:1, 16:9 (nearest template)")
    p.add_argument("--resolution", default="1M", help="0.06M, 0.25M, 0.60M or 1M (default: 1M)")
    p.add_argument("--cfg", type=float, default=None, help=f"guidance scale, {range_text('cfg')} (default: the preset's)")
    p.add_argument("--tau", type=float, default=None, help=f"logit temperature, {range_text('tau')} (default: the preset's)")
    p.add_argument("--seed", type=int, default=0, help="seed of image 0; image i uses seed + i")
    p.add_argument("--num-images", type=int, default=1, help="images per prompt")
    p.add_argument("--out", default="reference.png", help="output PNG; several images get _<i> suffixes")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.num_images < 1:
        raise StagevarError("--num-images must be at least 1.")
    cfg = None if args.cfg is None else check_cfg(args.cfg)
    tau = None if args.tau is None else check_tau(args.tau)
    from PIL import Image

    from .infinity.sampler import ReferenceSampler

    preset = resolve_preset(args)
    out = Path(args.out)
    if out.suffix.lower() != ".png":
        raise StagevarError(f"--out must name a .png file, not '{out}'.")
    if not out.parent.exists():
        raise StagevarError(f"The output folder '{out.parent}' does not exist; create it first.")
    bundle = load_bundle(preset, args)
    t0 = time.perf_counter()
    result = ReferenceSampler(bundle).generate(
        args.prompts,
        plan=args.plan,
        alpha=args.alpha,
        cfg=preset.default_cfg if cfg is None else cfg,
        tau=preset.default_tau if tau is None else tau,
        aspect=args.aspect,
        resolution=args.resolution,
        seed=args.seed,
        num_images_per_prompt=args.num_images,
    )
    elapsed = time.perf_counter() - t0
    paths = [out] if len(result.images) == 1 else [out.with_name(f"{out.stem}_{i}{out.suffix}") for i in range(len(result.images))]
    for img, path in zip(result.images, paths):
        Image.fromarray(img).save(path)
    modes = " ".join(f"{h}x{w}:{r.mode.value}" for r, (h, w) in zip(result.records, result.schedule.scales))
    label = "random weights" if "random_init" in bundle.provenance else "checkpoint weights"
    print(f"{preset.name} ({label}), plan {result.plan.name}: {modes}")
    print(f"token passes {result.token_passes:.0f}, {elapsed:.2f} s; wrote {', '.join(map(str, paths))}")
    return 0


def entry(argv: list[str] | None = None) -> int:
    return run_cli(main, argv)


if __name__ == "__main__":
    sys.exit(entry())
