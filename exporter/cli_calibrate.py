"""`stagevar-export calibrate DIR`: measure an export's StageVAR rank table and record it in the export."""

from __future__ import annotations

import argparse
import sys
import time

from stagevar.runtime.errors import StagevarError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="stagevar-export calibrate",
        description="Measure this model's StageVAR rank table (energy ranks of the block chunks' input tokens at "
                    "the fidelity scales, averaged over a prompt set) and record it in the export; the stagevar "
                    "and stagevar-full plans use it from then on.")
    p.add_argument("artifacts", help="export directory (the one holding manifest.json)")
    p.add_argument("--prompts", default=None, help="text file, one prompt per line (default: the built-in list)")
    p.add_argument("--num-prompts", type=int, default=None,
                   help="use the first N prompts (default: 16 of the built-in list, or the whole file)")
    p.add_argument("--alpha", default="0.96", help="energy threshold(s), comma-separated, e.g. 0.96,0.98 (default 0.96)")
    p.add_argument("--seed", type=int, default=0, help="seed of prompt 0; prompt i uses seed + i (default 0)")
    p.add_argument("--weights", help="transformer checkpoint (default: the path the export recorded)")
    p.add_argument("--vae", help="VAE checkpoint (default: the path the export recorded)")
    p.add_argument("--text-encoder", help="T5 folder (default: the path the export recorded)")
    p.add_argument("--classes", default=None,
                   help="VAR exports: comma-separated ImageNet class indices to calibrate on (default: 16 spread classes)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .infinity.calibrate import calibrate_export

    def say(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    t0 = time.perf_counter()
    if _family(args.artifacts) == "var":  # the class-conditional VAR family (exporter/var/calibrate.py)
        return _calibrate_var(args, say, t0)
    if args.classes is not None:
        raise StagevarError("--classes is for VAR exports; Infinity exports calibrate on --prompts.")
    table = calibrate_export(args.artifacts, prompts_file=args.prompts, num_prompts=args.num_prompts,
                             alphas=args.alpha, seed=args.seed, weights=args.weights, vae=args.vae,
                             text_encoder=args.text_encoder, say=say)
    prov = table["provenance"]
    _print_ratios(table)
    print(f"calibrated {args.artifacts} on {prov['num_prompts']} prompts ({prov['prompt_source']}) in "
          f"{time.perf_counter() - t0:.1f} s; plans stagevar and stagevar-full now use this table")
    return 0


def _print_ratios(table: dict) -> None:
    """One line per alpha and fidelity scale: the per-chunk ratios and their mean."""
    scales = table["provenance"]["fidelity_scales"]
    for alpha, rows in table["ratios"].items():
        for p, row in enumerate(rows):
            hw = scales[p]
            print(f"alpha {alpha} scale {hw[0]}x{hw[1]}: " + " ".join(f"{r:.4f}" for r in row)
                  + f"  (mean {sum(row) / len(row):.4f})")


def _family(artifacts) -> str | None:
    import json
    from pathlib import Path

    try:
        return json.loads((Path(artifacts) / "manifest.json").read_text()).get("family")
    except (OSError, ValueError, AttributeError):
        return None  # load_manifest reports what is wrong, in one sentence


def _calibrate_var(args, say, t0) -> int:
    from .var.calibrate import calibrate_var_export

    if args.prompts is not None or args.num_prompts is not None or args.text_encoder:
        raise StagevarError("VAR exports calibrate on class labels: use --classes, not --prompts/--num-prompts/--text-encoder.")
    from .infinity.calibrate import parse_alphas

    table = calibrate_var_export(args.artifacts, classes=args.classes, alphas=parse_alphas(args.alpha),
                                 seed=args.seed, weights=args.weights, vae=args.vae, say=say)
    prov = table["provenance"]
    _print_ratios(table)
    print(f"calibrated {args.artifacts} on {prov['num_prompts']} classes in {time.perf_counter() - t0:.1f} s; "
          f"plans stagevar and stagevar-full now use this table")
    return 0
