"""`stagevar-export --model var-... --check`: the VAR export in ONNX Runtime against eager torch.

Per runnable plan preset (exact, cfg-off; stagevar and stagevar-full once calibrated), the runtime pipeline and the eager reference sampler run with
the same labels and the same injected uniforms: the CFG-combined logits must agree to fp32
tolerance and the sampled ids must be equal at every scale; the vqvae_decoder graph, fed the
reference's f_hat, must give the reference's image within 1 level (uint8 truncation of values
that differ by float rounding). The report goes to reports/check.json.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from stagevar.runtime import var_graph_io as vio
from stagevar.runtime.pipeline import Pipeline
from stagevar.runtime.errors import StagevarError
from stagevar.runtime.stage_plan import PLAN_PRESETS
from stagevar.runtime.var_plans import make_var_plan
from stagevar.runtime.var_sampling import draw_lowrank_noise, draw_uniforms

from .bundle import VarBundle
from .sampler import VarReferenceSampler

CHECK_LABELS = (207, 360)
LOGITS_ATOL = 2e-3  # ORT vs torch fp32: summation order differs; logits are O(10)


def check_var_artifacts(out_dir: str | Path, bundle: VarBundle, seed: int = 0) -> dict:
    pipe = Pipeline.from_dir(out_dir, verify="full")
    if pipe.manifest.precision == "fp16":  # graph by graph, fp16 tolerance (check_fp16.py says why)
        return _write(out_dir, _check_fp16(pipe, bundle, seed))
    cfg = bundle.preset.var
    sampler = VarReferenceSampler(bundle.var, bundle.vae)
    uniforms = draw_uniforms([seed + i for i in range(len(CHECK_LABELS))], cfg.patch_nums)  # shared by every plan
    rows = []
    seeds = [seed + i for i in range(len(CHECK_LABELS))]
    for plan in PLAN_PRESETS:
        try:
            stage_plan = make_var_plan(plan, cfg.patch_nums, cfg.block_chunks, pipe.rank_table)
        except StagevarError:
            continue  # stagevar plans need a calibrated table
        noise = draw_lowrank_noise(seeds, stage_plan, cfg.patch_nums)
        got = pipe(class_labels=list(CHECK_LABELS), plan=stage_plan, uniforms=uniforms, lowrank_noise=noise,
                   output_type="np", return_intermediates=True)
        want = sampler.generate(CHECK_LABELS, uniforms, modes=stage_plan.modes, lowrank_noise=noise)
        executed = [t for t in got.intermediates if t.ids is not None]
        for g, w in zip(executed, want.scales):
            diff = float(np.max(np.abs(g.logits - w.logits)))
            same = int(np.sum(g.ids != w.ids))
            graph = vio.VAR_FIDELITY if g.mode.value == "lowrank" else vio.VAR_STEP
            rows.append({"graph": graph, "plan": plan, "scale": g.index, "mode": g.mode.value,
                         "logits_max_abs": diff, "ids_mismatched": same, "ok": diff <= LOGITS_ATOL and same == 0})
        img = np.abs(got.images.astype(np.int16) - want.images.astype(np.int16)).max()
        rows.append({"graph": "pipeline", "plan": plan, "scale": None, "image_max_abs": int(img), "ok": bool(img <= 1)})
    (decoded,) = pipe.backend.run_plain(vio.VQVAE_DECODER, {"f_hat": want.f_hat})
    img = int(np.abs(decoded.astype(np.int16) - want.images.astype(np.int16)).max())
    rows.append({"graph": vio.VQVAE_DECODER, "plan": None, "scale": None, "image_max_abs": img, "ok": img <= 1})
    return _write(out_dir, {"ok": all(r["ok"] for r in rows), "precision": "fp32", "labels": list(CHECK_LABELS),
                            "seed": seed, "rows": rows})


def _check_fp16(pipe, bundle: VarBundle, seed: int) -> dict:
    from stagevar.runtime.var_pipeline import VarPipeline

    from .check_fp16 import VarComparingBackend, torch_modules

    rows: list = []
    backend = VarComparingBackend(pipe.manifest, torch_modules(bundle), rows)
    comparing = VarPipeline(pipe.manifest, backend)
    cfg = bundle.preset.var
    for plan in PLAN_PRESETS:
        try:
            make_var_plan(plan, cfg.patch_nums, cfg.block_chunks, pipe.rank_table)
        except StagevarError:
            continue  # stagevar plans need a calibrated table
        backend.plan = plan
        comparing(class_labels=list(CHECK_LABELS), seed=seed, plan=plan, output_type="np")
    return {"ok": bool(rows) and all(r["ok"] for r in rows), "precision": "fp16", "labels": list(CHECK_LABELS),
            "seed": seed, "rows": rows}


def _write(out_dir, report: dict) -> dict:
    reports = Path(out_dir) / "reports"
    reports.mkdir(exist_ok=True)
    (reports / "check.json").write_text(json.dumps(report, indent=2))
    return report


def run_var_check(out_dir: Path, bundle: VarBundle) -> bool:
    report = check_var_artifacts(out_dir, bundle)
    if report["precision"] == "fp16":
        worst: dict = {}
        for r in report["rows"]:  # one line per graph, plan and output: its worst difference
            key = (r["graph"], r["plan"] or "", r["output"])
            old = worst.get(key)
            worst[key] = r if old is None or (old["ok"] and (not r["ok"] or r["max_abs"] > old["max_abs"])) else old
        for (graph, plan, output), r in worst.items():
            print(f"  {plan:13s} {graph:13s} {output:14s} max|d| {r['max_abs']:.2e} (atol {r['atol']:g}, "
                  f"rtol {r['rtol']:g})  {'ok' if r['ok'] else 'FAIL'}")
    for r in (r for r in report["rows"] if report["precision"] == "fp32"):
        if r["graph"] in (vio.VAR_STEP, vio.VAR_FIDELITY):
            print(f"  {r['plan']:8s} scale {r['scale']} {r['mode']:6s} logits max|d| {r['logits_max_abs']:.2e} "
                  f"ids mismatched {r['ids_mismatched']}  {'ok' if r['ok'] else 'FAIL'}")
        else:
            print(f"  {r['graph']} {r['plan'] or ''} image max|d| {r['image_max_abs']}  {'ok' if r['ok'] else 'FAIL'}")
    print(f"check {'ok' if report['ok'] else 'FAILED'}: {len(report['rows'])} rows, report in "
          f"{Path(out_dir) / 'reports' / 'check.json'}")
    return report["ok"]
