"""`stagevar-generate`: generate PNG images from an export directory with the runtime pipeline."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .cli_common import run_cli
from .errors import StagevarError
from .stage_plan import DEFAULT_PLAN, PLAN_PRESETS


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="stagevar-generate", description=__doc__.splitlines()[0])
    p.add_argument("artifacts", help="export directory (the one holding manifest.json)")
    p.add_argument("prompts", nargs="+", help="one or more prompts")
    p.add_argument("--seed", type=int, default=0, help="seed of image 0; image i uses seed + i (default 0)")
    p.add_argument("--plan", default=DEFAULT_PLAN, help=f"stage plan: {', '.join(PLAN_PRESETS)} (default {DEFAULT_PLAN})")
    p.add_argument("--aspect", default="1:1", help="width:height, e.g. 1:1, 16:9 (nearest template)")
    p.add_argument("--resolution", default=None, help="0.06M, 0.25M, 0.60M or 1M (default: the export's)")
    p.add_argument("--cfg", type=float, default=None, help="guidance scale (default: the model's)")
    p.add_argument("--tau", type=float, default=None, help="logit temperature (default: the model's)")
    p.add_argument("--alpha", default=None, help="rank-table energy threshold (default: the export's)")
    p.add_argument("--num-images", type=int, default=1, help="images per prompt (default 1)")
    p.add_argument("--out", default="stagevar.png", help="output PNG; several images get _<i> suffixes")
    p.add_argument("--backend", default="ort", choices=("ort", "trt"), help="execution backend (default ort)")
    p.add_argument("--device", default=None, choices=("cpu", "cuda"), help="device (default: cpu for ort, cuda for trt)")
    p.add_argument("--plugins", default=None, help="trt: TensorRT plugin library (default: the one the engine build recorded)")
    p.add_argument("--no-cuda-graphs", action="store_true", help="trt: run engines without CUDA graph replay")
    p.add_argument("--verify", default="quick", choices=("quick", "full"), help="artifact check: sizes (quick) or sha256 (full)")
    return p


def output_paths(out: Path, count: int) -> list[Path]:
    if count == 1:
        return [out]
    return [out.with_name(f"{out.stem}_{i}{out.suffix}") for i in range(count)]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = Path(args.out)
    if out.suffix.lower() != ".png":
        raise StagevarError(f"--out must name a .png file, not '{out}'.")
    if not out.parent.exists():
        raise StagevarError(f"The output folder '{out.parent}' does not exist; create it first.")
    if args.num_images < 1:
        raise StagevarError("--num-images must be at least 1.")
    from .pipeline import Pipeline

    trt_options = {"plugins": args.plugins, "cuda_graphs": not args.no_cuda_graphs} if args.backend == "trt" else {}
    if args.backend != "trt" and (args.plugins or args.no_cuda_graphs):
        raise StagevarError("--plugins and --no-cuda-graphs apply to --backend trt only.")
    pipe = Pipeline.from_dir(args.artifacts, backend=args.backend, device=args.device, verify=args.verify, **trt_options)
    result = pipe(
        args.prompts, seed=args.seed, plan=args.plan, cfg=args.cfg, tau=args.tau, aspect=args.aspect,
        resolution=args.resolution, alpha=args.alpha, num_images_per_prompt=args.num_images, output_type="pil",
    )
    paths = output_paths(out, len(result.images))
    for image, path in zip(result.images, paths):
        image.save(path)
    t = result.timings
    per_scale = " ".join(
        f"{s['hw'][0]}x{s['hw'][1]}:{s['mode']}={1000 * s['seconds']:.0f}ms" for s in t["scales"]
    )
    print(f"plan {result.plan}: text {1000 * t['text']:.0f}ms | {per_scale} | vae {1000 * t['vae']:.0f}ms | "
          f"total {t['total']:.2f}s (runtime overhead {100 * t['overhead'] / max(t['total'], 1e-9):.1f}%)")
    if result.rank_table:
        print(f"rank table: {result.rank_table}, alpha {args.alpha or pipe.manifest.data.get('alpha')}")
    print(f"wrote {', '.join(map(str, paths))}")
    return 0


def entry(argv: list[str] | None = None) -> int:
    return run_cli(main, argv)


if __name__ == "__main__":
    sys.exit(entry())
