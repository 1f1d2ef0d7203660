"""Command-line arguments that pick a model and its weights, shared by the exporter's commands."""

from __future__ import annotations

import argparse
from pathlib import Path

from stagevar.runtime.errors import StagevarError


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    from .infinity.presets import PRESETS
    from .var.config import VAR_PRESETS

    p.add_argument("--model", default=None,
                   help=f"model preset: {', '.join(PRESETS)}, or VAR's {', '.join(VAR_PRESETS)}; or auto (the "
                        "architecture is read from the checkpoints). Default: infinity-shapes (trained, weights ship "
                        "with the package) without --weights, auto with --weights")
    p.add_argument("--weights-dir", help="infinity-shapes: a stagevar-train weights folder instead of the shipped one")
    p.add_argument("--config", default=None,
                   help="JSON file overriding or completing the architecture (sections transformer, vae, "
                        "text_encoder; name, default_cfg, default_tau)")
    p.add_argument("--weights", help="transformer checkpoint: 2B .pth, 8B sharded folder, or .safetensors (VAR: var_dXX.pth)")
    p.add_argument("--vae", help="VAE checkpoint .pth (with or without the .conv/.norm level; VAR: vae_ch160v4096z32.pth)")
    p.add_argument("--text-encoder", help="local flan-t5-xl folder (config, weights, tokenizer)")
    p.add_argument("--random-init", action="store_true", help="random weights instead of checkpoints")
    p.add_argument("--init-seed", type=int, default=0, help="seed of the random weights")


def check_checkpoint_args(preset, args: argparse.Namespace) -> dict:
    """The three checkpoint paths, all given and existing, or one clear error."""
    given = {k: getattr(args, k) for k in ("weights", "vae", "text_encoder")}
    weights_dir = getattr(args, "weights_dir", None)
    if weights_dir is not None and preset.shipped_weights is None:
        raise StagevarError(f"--weights-dir is for trained presets such as infinity-shapes, not {preset.name}.")
    if preset.shipped_weights is not None:
        if any(given.values()):
            raise StagevarError(f"{preset.name} loads its weights from a stagevar-train folder; use "
                                f"--weights-dir instead of --weights/--vae/--text-encoder.")
        if weights_dir is not None and args.random_init:
            raise StagevarError("--random-init cannot be combined with --weights-dir.")
        if weights_dir is not None and not Path(weights_dir).is_dir():
            raise StagevarError(f"--weights-dir '{weights_dir}' is not a folder; pass a stagevar-train "
                                f"weights folder (it holds provenance.json).")
        return given
    if any(given.values()) and args.random_init:
        raise StagevarError("--random-init cannot be combined with --weights, --vae or --text-encoder.")
    if preset.random_init_only:
        if any(given.values()):
            raise StagevarError(f"{preset.name} has no released checkpoint; drop --weights/--vae/--text-encoder.")
        return given
    if args.random_init:
        return given
    missing = [f"--{k.replace('_', '-')}" for k, v in given.items() if not v]
    if missing:
        raise StagevarError(f"{preset.name} needs {', '.join(missing)} (or --random-init for random weights).")
    for k, v in given.items():
        if not Path(v).exists():
            raise StagevarError(f"--{k.replace('_', '-')} path '{v}' does not exist.")
    return given


def load_bundle(preset, args: argparse.Namespace):
    """Random weights (tiny default or --random-init) or the three checkpoints, all or none."""
    from .infinity.model_bundle import InfinityBundle

    given = check_checkpoint_args(preset, args)
    if preset.shipped_weights is not None and not args.random_init:
        return InfinityBundle.shipped(preset, getattr(args, "weights_dir", None))
    if args.random_init or preset.random_init_only:
        return InfinityBundle.random(preset, seed=args.init_seed)
    return InfinityBundle.from_checkpoints(preset, given["weights"], given["vae"], given["text_encoder"])


AUTO = "auto"


def resolve_preset(args: argparse.Namespace):
    """The preset to export: a named one (checked against given checkpoints), or the checkpoints'
    own architecture for --model auto / no --model with --weights; --config applied to either."""
    from .infinity.auto_preset import check_preset_fits, infer_preset, with_overrides
    from .infinity.presets import get_preset

    model = args.model
    if model is None:
        model = AUTO if args.weights else "infinity-shapes"
    if model.strip().lower() == AUTO:
        given = {k: getattr(args, k) for k in ("weights", "vae", "text_encoder")}
        if args.random_init or not all(given.values()):
            raise StagevarError("--model auto reads the architecture from the checkpoints; pass --weights, --vae and "
                                "--text-encoder (or name a preset with --model for random weights).")
        for k, v in given.items():
            if not Path(v).exists():
                raise StagevarError(f"--{k.replace('_', '-')} path '{v}' does not exist.")
        return infer_preset(args.weights, args.vae, args.text_encoder, getattr(args, "config", None))
    preset = with_overrides(get_preset(model), getattr(args, "config", None))
    if args.weights and args.vae and not args.random_init and Path(args.weights).exists() and Path(args.vae).exists():
        check_preset_fits(preset, args.weights, args.vae)
    return preset
