"""`stagevar-eval`: every stage plan's speed and quality on the same prompts and seeds.

For each plan: latency per image and speedup over `exact`, token passes, agreement with
`exact` from the same seed (PSNR, SSIM) and, on models of the synthetic shapes world, the
analyser's prompt adherence (count, colour, shape, position, size, overall). Writes a JSON
report, an image grid (rows prompts, columns plans) and a plot of adherence against speedup.
Runtime side: numpy + onnxruntime + pillow, no torch.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

import numpy as np

from .cli_common import run_cli
from .errors import StagevarError
from .stage_plan import PLAN_PRESETS, Mode

DEFAULT_PLANS = ("exact", "stagevar", "stagevar-full", "cfg-off")
#: `--plans stagevar@released` runs a low-rank plan with the released (FasterVAR) rank table instead
#: of the export's own (calibrated) one: the two tables side by side on one model.
RELEASED_SUFFIX = "@released"
SHAPES_PRESETS = ("infinity-shapes",)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="stagevar-eval", description=__doc__.splitlines()[0])
    p.add_argument("artifacts", help="export directory (the one holding manifest.json)")
    p.add_argument("--plans", default=",".join(DEFAULT_PLANS),
                   help=f"comma-separated plans (default {','.join(DEFAULT_PLANS)}); a low-rank plan with the suffix "
                        f"{RELEASED_SUFFIX} uses the released rank table instead of the export's")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--prompts", type=Path, help="text file, one prompt per line")
    src.add_argument("--num-prompts", type=int, default=None, help="held-out shapes-world prompts (default 12)")
    p.add_argument("--seeds", type=int, default=1, help="seeds per prompt, 0..K-1 (default 1)")
    p.add_argument("--cfg", type=float, default=None, help="guidance scale (default: the model's)")
    p.add_argument("--tau", type=float, default=None, help="logit temperature (default: the model's)")
    p.add_argument("--json", type=Path, help="write the report here")
    p.add_argument("--grid", type=Path, help="write an image grid PNG here (first 8 prompts, seed 0)")
    p.add_argument("--plot", type=Path, help="write the adherence-vs-speedup PNG here")
    return p


def token_passes(plan, schedule, images: int = 1) -> float:
    """Rows x tokens through the blocks for one request (LOWRANK: mean rank over chunks)."""
    total = 0.0
    for k, mode in enumerate(plan.modes):
        n = schedule.token_counts[k]
        if mode is Mode.CFG:
            total += 2 * images * n
        elif mode is Mode.UNCOND:
            total += images * n
        elif mode is Mode.LOWRANK:
            total += images * float(np.mean(plan.ranks[k]))
    return total


def _prompts(args, shapes_model: bool):
    from .shapes_world import eval_prompts, parse_caption

    if args.prompts is not None:
        if not args.prompts.is_file():
            raise StagevarError(f"--prompts {args.prompts} is not a file; give a text file with one prompt per line.")
        lines = [ln.strip() for ln in args.prompts.read_text().splitlines() if ln.strip()]
        if not lines:
            raise StagevarError(f"--prompts {args.prompts} holds no prompt; write one prompt per line.")
        return [(t, parse_caption(t) if shapes_model else None) for t in lines]
    n = 12 if args.num_prompts is None else args.num_prompts
    if n < 1:
        raise StagevarError("--num-prompts must be at least 1.")
    if not shapes_model:
        raise StagevarError("--num-prompts draws shapes-world prompts, which only infinity-shapes understands; "
                            "give --prompts FILE for this model.")
    return eval_prompts(n)


class _Progress:
    def __init__(self, total: int) -> None:
        self.total, self.done, self.t0 = total, 0, time.perf_counter()

    def tick(self, label: str) -> None:
        self.done += 1
        if self.done % 10 and self.done != self.total:
            return
        el = time.perf_counter() - self.t0
        eta = el / self.done * (self.total - self.done)
        print(f"[{self.done}/{self.total}] {label} elapsed {el:.0f}s ETA {eta:.0f}s", file=sys.stderr, flush=True)


def split_plan(label: str) -> tuple[str, bool]:
    """("stagevar", True) for "stagevar@released"; refuses unknown plans in one sentence."""
    name, released = (label[: -len(RELEASED_SUFFIX)], True) if label.endswith(RELEASED_SUFFIX) else (label, False)
    if name not in PLAN_PRESETS:
        raise StagevarError(f"--plans names the unknown plan {label!r}; choose from {', '.join(PLAN_PRESETS)} "
                            f"(low-rank ones optionally with {RELEASED_SUFFIX}).")
    return name, released


@contextlib.contextmanager
def _rank_table(pipe, released: bool):
    """Run with the released rank table instead of the export's own while the plan is evaluated."""
    from .rank_table import released_table

    own = pipe.rank_table
    if released:
        pipe.rank_table = released_table()
    try:
        yield pipe.rank_table
    finally:
        pipe.rank_table = own


def evaluate(pipe, plans: list[str], prompts: list, seeds: int, cfg=None, tau=None) -> tuple[dict, dict]:
    """(report dict, images[plan][prompt index][seed]) for every plan on the same prompts and seeds."""
    from .schedules import get_schedule
    from .shapes_analyser import judge, summarise
    from .stage_plan import make_plan

    schedule = get_schedule("1:1", pipe.manifest.data.get("resolution", "1M"))
    progress = _Progress(len(plans) * len(prompts) * seeds)
    images: dict[str, list[list[np.ndarray]]] = {}
    report: dict = {"prompts": [p for p, _ in prompts], "seeds": seeds, "plans": {},
                    "token_pairing": pipe.manifest.data.get("token_pairing", "raster")}
    pipe([prompts[0][0]], seed=0, plan=split_plan(plans[0])[0], output_type="np")  # warm-up: sessions, caches
    for plan in plans:
        name, released = split_plan(plan)
        lat, judgements, rows = [], [], []
        with _rank_table(pipe, released) as table:
            made = make_plan(name, schedule, num_chunks=pipe.spec.block_chunks,
                             alpha=pipe.manifest.data.get("alpha", "0.96"), table=table)
            for text, scene in prompts:
                row = []
                for s in range(seeds):
                    out = pipe([text], seed=s, plan=made, cfg=cfg, tau=tau, output_type="np")
                    lat.append(out.timings["total"])
                    img = out.images[0]
                    row.append(img)
                    if scene is not None:
                        judgements.append(judge(scene, img))
                    progress.tick(plan)
                rows.append(row)
        images[plan] = rows
        entry = {"latency_s": float(np.mean(lat)), "latency_median_s": float(np.median(lat)),
                 "token_passes": token_passes(made, schedule), "modes": [m.value for m in made.modes],
                 "rank_table": made.rank_table, "images": len(lat)}
        if judgements:
            entry["adherence"] = summarise(judgements)
            entry["adherence_images"] = len(judgements)
        report["plans"][plan] = entry
    base = report["plans"].get("exact")
    for plan, entry in report["plans"].items():
        if base is not None:
            entry["speedup"] = base["latency_s"] / entry["latency_s"]
            entry["token_pass_ratio"] = base["token_passes"] / entry["token_passes"]
        if "exact" in images and plan != "exact":
            from .image_metrics import psnr, ssim

            pairs = [(a, b) for ra, rb in zip(images[plan], images["exact"]) for a, b in zip(ra, rb)]
            ps = [psnr(a, b) for a, b in pairs]
            finite = [p for p in ps if np.isfinite(p)]
            entry["psnr_db"] = float(np.mean(finite)) if finite else float("inf")
            entry["identical_to_exact"] = sum(not np.isfinite(p) for p in ps)
            entry["ssim"] = float(np.mean([ssim(a, b) for a, b in pairs]))
    return report, images


def table(report: dict) -> str:
    head = ("plan", "token passes", "speedup", "latency ms", "adherence", "PSNR dB", "SSIM")
    lines = [" | ".join(head), " | ".join("---" for _ in head)]
    for plan, e in report["plans"].items():
        adh = e.get("adherence", {}).get("overall")
        lines.append(" | ".join((
            plan, f"{e['token_passes']:.0f}", f"{e.get('speedup', float('nan')):.2f}x", f"{1000 * e['latency_s']:.1f}",
            "n/a" if adh is None else f"{100 * adh:.1f}%",
            "-" if plan == "exact" else f"{e.get('psnr_db', float('nan')):.1f}",
            "-" if plan == "exact" else f"{e.get('ssim', float('nan')):.3f}")))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    plans = [p.strip() for p in args.plans.split(",") if p.strip()]
    if not plans:
        raise StagevarError(f"--plans {args.plans!r} names no plan; choose from {', '.join(PLAN_PRESETS)}.")
    for plan in plans:
        split_plan(plan)
    if args.seeds < 1:
        raise StagevarError("--seeds must be at least 1.")
    for opt in (args.json, args.grid, args.plot):
        if opt is not None and not opt.parent.exists():
            raise StagevarError(f"The folder of {opt} does not exist; create it first.")
    from .pipeline import Pipeline

    pipe = Pipeline.from_dir(args.artifacts)
    shapes_model = pipe.spec.preset in SHAPES_PRESETS
    prompts = _prompts(args, shapes_model)
    report, images = evaluate(pipe, plans, prompts, args.seeds, args.cfg, args.tau)
    report["model"] = pipe.spec.preset
    report["analyser"] = "shapes-world" if any(s is not None for _, s in prompts) else None
    print(table(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")
    if args.grid:
        from .eval_report import write_grid

        n = min(8, len(prompts))
        write_grid(args.grid, [[images[p][i][0] for p in plans] for i in range(n)], [t for t, _ in prompts[:n]], plans)
        print(f"wrote {args.grid}")
    if args.plot:
        from .eval_report import write_plot

        have_adh = all("adherence" in report["plans"][p] for p in plans)
        pts = [(p, report["plans"][p].get("speedup", 1.0),
                report["plans"][p]["adherence"]["overall"] if have_adh else report["plans"][p].get("ssim", 1.0))
               for p in plans]
        write_plot(args.plot, pts, "adherence (overall)" if have_adh else "SSIM vs exact")
        print(f"wrote {args.plot}")
    return 0


def entry(argv: list[str] | None = None) -> int:
    return run_cli(main, argv)


if __name__ == "__main__":
    sys.exit(entry())
