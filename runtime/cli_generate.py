"""`stagevar-generate`: generate PNG images from an export directory with the runtime pipeline."""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from .cli_common import add_version, run_cli
from .errors import StagevarError
from .micro_batches import merge_timings
from .guidance import check_cfg, check_tau, range_text
from .stage_plan import DEFAULT_PLAN, PLAN_PRESETS


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="stagevar-generate", description=__doc__.splitlines()[0])
    add_version(p)
    p.add_argument("artifacts", help="export directory (the one holding manifest.json)")
    p.add_argument("prompts", nargs="*", help="one or more prompts (Infinity exports)")
    p.add_argument("--class", dest="classes", action="append", metavar="N",
                   help="VAR exports: an ImageNet class index 0..999, once per image (e.g. --class 207 --class 88); "
                        "a class name (--class 'golden retriever') where torchvision is installed")
    p.add_argument("--top-k", type=int, default=None, help="VAR: top-k filter (default: the model's, 900)")
    p.add_argument("--top-p", type=float, default=None, help="VAR: top-p filter (default: the model's, 0.96)")
    p.add_argument("--seed", type=int, default=0, help="seed of image 0; image i uses seed + i (default 0)")
    p.add_argument("--plan", default=None, help=f"stage plan: {', '.join(PLAN_PRESETS)} (default {DEFAULT_PLAN}; VAR: exact)")
    p.add_argument("--aspect", default="1:1", help="width:height, e.g. 1:1, 16:9 (nearest template)")
    p.add_argument("--resolution", default=None, help="0.06M, 0.25M, 0.60M or 1M (default: the export's)")
    p.add_argument("--cfg", type=float, default=None,
                   help="classifier-free guidance scale: logits = cfg * cond + (1 - cfg) * uncond; "
                        f"{range_text('cfg')}, 1 turns guidance off, higher follows the prompt more closely "
                        "(default: the model's, 3 for Infinity; the stagevar plan drops guidance at its fidelity "
                        "scales whatever the value)")
    p.add_argument("--tau", type=float, default=None, help=f"logit temperature, {range_text('tau')} (default: the model's)")
    p.add_argument("--alpha", default=None, help="rank-table energy threshold (default: the export's)")
    p.add_argument("--num-images", type=int, default=1, help="images per prompt (default 1)")
    p.add_argument("--max-batch", type=int, default=None,
                   help="at most N images per micro-batch (default: as many as fit in free memory)")
    p.add_argument("--out", default="stagevar.png",
                   help="output PNG; several images are named <stem>_p<prompt>_s<seed>.png")
    p.add_argument("--backend", default="ort", choices=("ort", "trt"), help="execution backend (default ort)")
    p.add_argument("--device", default=None, choices=("cpu", "cuda"), help="device (default: cpu for ort, cuda for trt)")
    p.add_argument("--plugins", default=None, help="trt: TensorRT plugin library (default: the one the engine build recorded)")
    p.add_argument("--no-cuda-graphs", action="store_true", help="trt: run engines without CUDA graph replay")
    p.add_argument("--verify", default="record", choices=("record", "full", "quick"),
                   help="artifact check: sha256 of every file, weights trusted while unchanged since this machine "
                        "hashed them (record, default); sha256 always (full); sizes only (quick)")
    p.add_argument("--quiet", action="store_true", help="no progress line (it is shown on a terminal only)")
    return p


def output_paths(out: Path, prompt_count: int, per_prompt: int, seed: int) -> list[Path]:
    """One path per image (prompt-major): `out` itself for a single image, else
    `<stem>_p<prompt index>_s<seed>.png`, so each file says which prompt and seed made it."""
    if prompt_count * per_prompt == 1:
        return [out]
    return [out.with_name(f"{out.stem}_p{p}_s{seed + p * per_prompt + j}{out.suffix}")
            for p in range(prompt_count) for j in range(per_prompt)]


def check_output_folder(out: Path) -> None:
    """Refuse, before any work, an --out that cannot be written (missing or read-only folder)."""
    if out.suffix.lower() != ".png":
        raise StagevarError(f"--out must name a .png file, not '{out}'.")
    folder = out.parent
    if not folder.exists():
        raise StagevarError(f"The output folder '{folder}' does not exist; create it first.")
    if not folder.is_dir():
        raise StagevarError(f"The output folder '{folder}' is a file; pass --out inside a folder.")
    if out.is_dir():
        raise StagevarError(f"--out '{out}' is a folder; name a .png file.")
    try:  # access() misses read-only mounts and ACLs: really create a file
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".stagevar-write-test-"):
            pass
    except OSError as exc:
        raise StagevarError(f"The output folder '{folder}' is not writable ({exc.strerror}); choose another --out.") from None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = Path(args.out)
    check_output_folder(out)
    if args.num_images < 1:
        raise StagevarError("--num-images must be at least 1.")
    if args.max_batch is not None and args.max_batch < 1:
        raise StagevarError("--max-batch must be at least 1.")
    # Refused before the export loads; the pipeline checks the same ranges again.
    if args.cfg is not None:
        check_cfg(args.cfg)
    if args.tau is not None:
        check_tau(args.tau)
    from .pipeline import Pipeline
    from .progress_line import ProgressLine

    trt_options = {"plugins": args.plugins, "cuda_graphs": not args.no_cuda_graphs} if args.backend == "trt" else {}
    if args.backend != "trt" and (args.plugins or args.no_cuda_graphs):
        raise StagevarError("--plugins and --no-cuda-graphs apply to --backend trt only.")
    line = ProgressLine(quiet=args.quiet)
    line.show("loading (the first load hashes the weights)")
    pipe = Pipeline.from_dir(args.artifacts, backend=args.backend, device=args.device, verify=args.verify, **trt_options)
    if getattr(pipe, "family", "infinity") == "var":
        from .var_cli import generate_var

        line.clear()
        result = generate_var(pipe, args)
        written = output_paths(out, len(args.classes), args.num_images, args.seed)
        for image, path in zip(result.images, written):
            image.save(path)
        parts = [result.timings]
    else:
        if args.classes or args.top_k is not None or args.top_p is not None:
            raise StagevarError("This export is an Infinity text-to-image model: give a prompt, not --class/--top-k/--top-p.")
        if not args.prompts:
            raise StagevarError("Give at least one prompt.")
        paths = output_paths(out, len(args.prompts), args.num_images, args.seed)
        written: list[Path] = []
        parts = []
        try:
            # Micro-batches are saved as they finish: a request of 10000 images holds one batch at a time.
            for result in pipe.batches(
                args.prompts, seed=args.seed, plan=args.plan or DEFAULT_PLAN, cfg=args.cfg, tau=args.tau,
                aspect=args.aspect, resolution=args.resolution, alpha=args.alpha,
                num_images_per_prompt=args.num_images, output_type="pil", max_batch=args.max_batch,
                progress=line.scale_callback(),
            ):
                for image in result.images:
                    path = paths[len(written)]
                    image.save(path)
                    written.append(path)
                parts.append(result.timings)
        finally:
            line.clear()
    t = merge_timings(parts)
    per_scale = " ".join(
        f"{s['hw'][0]}x{s['hw'][1]}:{s['mode']}={1000 * s['seconds']:.0f}ms" for s in t["scales"]
    )
    batches = f" in {len(parts)} micro-batches" if len(parts) > 1 else ""
    cond = f"text {1000 * t['text']:.0f}ms" if "text" in t else f"class {1000 * t['cond']:.0f}ms"
    print(f"plan {result.plan}: {cond} | {per_scale} | vae {1000 * t['vae']:.0f}ms | "
          f"total {t['total']:.2f}s{batches} (runtime overhead {100 * t['overhead'] / max(t['total'], 1e-9):.1f}%)")
    if getattr(result, "rank_table", None):
        print(f"rank table: {result.rank_table}, alpha {args.alpha or pipe.manifest.data.get('alpha')}")
    print("wrote " + ", ".join(map(str, written)) if len(written) <= 8 else
          f"wrote {len(written)} images: {written[0]} ... {written[-1]}")
    return 0


def entry(argv: list[str] | None = None) -> int:
    return run_cli(main, argv)


if __name__ == "__main__":
    sys.exit(entry())
