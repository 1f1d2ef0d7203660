"""`stagevar-train`: train a small Infinity-family model on the synthetic shapes world (CPU).

    stagevar-train --out runs/shapes                 # the shipped model's recipe
    stagevar-train --out runs/shapes --ship          # ...and copy the weights into the package

Seeded and reproducible (same command, same machine -> same weights), resumable (rerun the same
command: it continues from runs/shapes/checkpoint.pt), logs every step to train_log.jsonl and
prints progress with an ETA. The result is a weights folder (runs/shapes/weights) that
`stagevar-export --model infinity-shapes --weights-dir ...` or the package default loads.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

from stagevar.runtime.cli_common import run_cli
from stagevar.runtime.errors import StagevarError


def build_parser() -> argparse.ArgumentParser:
    from .trainer import TrainConfig

    d = TrainConfig()
    p = argparse.ArgumentParser(prog="stagevar-train", description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="run folder (checkpoint, log, weights)")
    p.add_argument("--model", default="infinity-shapes", help="preset to train (default infinity-shapes)")
    p.add_argument("--vae-steps", type=int, default=d.vae_steps, help=f"BSQ-VAE steps (default {d.vae_steps})")
    p.add_argument("--steps", type=int, default=d.steps, help=f"transformer steps (default {d.steps})")
    p.add_argument("--batch", type=int, default=d.batch, help=f"images per step (default {d.batch})")
    p.add_argument("--lr", type=float, default=d.lr, help=f"transformer learning rate (default {d.lr})")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of weights, data and dropout (default 0)")
    p.add_argument("--save-every", type=int, default=d.save_every, help="checkpoint interval in steps")
    p.add_argument("--threads", type=int, default=d.threads, help="torch CPU threads (default 1: on a shared machine a second thread mostly waits)")
    p.add_argument("--stop-after", type=int, default=None,
                   help="stop after this many transformer steps (the schedule stays --steps long) and write the weights")
    p.add_argument("--ship", action="store_true", help="copy the final weights into the package (developers)")
    return p


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).resolve().parent, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    from ..infinity.presets import get_preset
    from .shipped import PACKAGE_WEIGHTS, write_weights
    from .trainer import Trainer, TrainConfig

    preset = get_preset(args.model)
    if preset.shipped_weights is None:
        raise StagevarError(f"{preset.name} is not a trainable preset; use --model infinity-shapes.")
    for name in ("vae_steps", "steps", "batch", "save_every", "threads"):
        if getattr(args, name) < 1:
            raise StagevarError(f"--{name.replace('_', '-')} must be at least 1.")
    cfg = TrainConfig(vae_steps=args.vae_steps, steps=args.steps, batch=args.batch, lr=args.lr,
                      seed=args.seed, save_every=args.save_every, threads=args.threads)
    out = Path(args.out)
    t0 = time.perf_counter()
    trainer = Trainer(preset, cfg, out)
    if args.stop_after is not None and not 1 <= args.stop_after <= args.steps:
        raise StagevarError("--stop-after must be between 1 and --steps.")
    trainer.run(args.stop_after)
    (out / "train_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in trainer.history))
    last = {}
    for r in trainer.history:
        last[r["phase"]] = {k: v for k, v in r.items() if k not in ("phase",)}
    provenance = {
        "preset": preset.name,
        "command": "stagevar-train " + " ".join(argv),
        "commit": _commit(),
        "seed": cfg.seed,
        "config": asdict(cfg),
        "steps": {"vae": cfg.vae_steps, "transformer": trainer.step, "transformer_schedule": cfg.steps},
        "final_losses": last,
        "train_seconds": {k: round(v, 1) for k, v in trainer.seconds.items()},
    }
    folder = write_weights(out / "weights", trainer.transformer, trainer.vae.decoder, trainer.text, provenance)
    print(f"wrote {folder} in {time.perf_counter() - t0:.0f} s (final: {last})")
    if args.ship:
        dest = PACKAGE_WEIGHTS / preset.shipped_weights
        if dest.exists():
            shutil.rmtree(dest)
        shutil.copytree(folder, dest)
        print(f"shipped to {dest}")
    return 0


def entry(argv: list[str] | None = None) -> int:
    return run_cli(main, argv)


if __name__ == "__main__":
    sys.exit(entry())
