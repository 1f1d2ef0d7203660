"""The VAR side of `stagevar-generate`: class labels instead of prompts, and the options that do
not apply to a class-conditional square model refused in one sentence."""

from __future__ import annotations

import argparse

from .errors import StagevarError


def generate_var(pipe, args: argparse.Namespace):
    if args.prompts:
        raise StagevarError(f"This export is a class-conditional VAR model: give --class N (an ImageNet class index "
                            f"such as 207), not a prompt ({args.prompts[0]!r}).")
    if not args.classes:
        raise StagevarError("Give --class N (an ImageNet class index 0..999), once per image.")
    if args.tau is not None or args.alpha is not None or args.resolution is not None or args.aspect != "1:1":
        raise StagevarError("--tau, --alpha, --resolution and --aspect do not apply to VAR exports; drop them.")
    from .imagenet_names import class_index

    labels = [class_index(c) for c in args.classes for _ in range(args.num_images)]
    return pipe(class_labels=labels, seed=args.seed, plan=args.plan, cfg=args.cfg, top_k=args.top_k,
                top_p=args.top_p, output_type="pil")
