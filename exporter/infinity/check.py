"""`stagevar-export --check`: every graph in ONNX Runtime against the torch modules.

Per graph and per scale, teacher-forced: the runtime pipeline runs with a backend that executes
each graph in ONNX Runtime AND in torch (the same wrapper modules that were exported) on the
same inputs, records the differences, and continues with the torch outputs, so one deviation
cannot snowball into the next scale. Then end to end: the ONNX Runtime pipeline running freely
against the eager reference sampler with the same seed and noise (sampled bits and images).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from stagevar.runtime import graph_io as gio
from stagevar.runtime.manifest import load_manifest
from stagevar.runtime.ort_backend import DeviceArray, OrtBackend
from stagevar.runtime.pipeline import Pipeline
from stagevar.runtime.rank_table import NONE, RankTable
from stagevar.runtime.schedules import get_schedule
from stagevar.runtime.stage_plan import make_plan
from stagevar.runtime.tokenize import load_tokenizer_json

from ..token_pairing import DEFAULT_PAIRING, token_pairing
from .graph_text_encoder import TextEncoderGraph
from .graph_vae import VAEDecoderGraph
from .graphs_transformer import FidelityGraph, StepGraph, TextCondGraph
from .model_bundle import InfinityBundle
from .precision import to_fp16_blocks
from .sampler import ReferenceSampler

CHECK_PROMPT = "a red apple on a wooden table, studio light"
# (atol, rtol) per output and precision: a value passes when |ort - torch| <= atol + rtol * |torch|.
_TOL = {
    "fp32": {"logits": (1e-4, 1e-4), "default": (1e-4, 1e-3), "image": (1.0, 0.0)},
    "fp16": {"logits": (5e-2, 5e-2), "default": (5e-2, 5e-2), "image": (2.0, 0.0)},
}


@dataclass
class CheckRow:
    graph: str
    scale: int | None
    plan: str
    output: str
    max_abs: float
    max_rel: float
    atol: float
    rtol: float
    ok: bool
    note: str = ""


def compare(graph: str, scale, plan: str, output: str, got: np.ndarray, want: np.ndarray, tol) -> CheckRow:
    atol, rtol = tol
    if got.shape != want.shape:
        return CheckRow(graph, scale, plan, output, math.inf, math.inf, atol, rtol, False, f"shape {got.shape} != {want.shape}")
    if got.dtype.kind in "iub" and output.startswith("indices"):
        mismatched = float(np.mean(got != want))
        return CheckRow(graph, scale, plan, output, mismatched, mismatched, 0.0, 0.0, mismatched == 0.0, "fraction of indices differing")
    a, b = got.astype(np.float64), want.astype(np.float64)
    diff = np.abs(a - b)
    rel = diff / np.maximum(np.abs(b), 1e-6)
    ok = bool(np.all(diff <= atol + rtol * np.abs(b))) and bool(np.all(np.isfinite(a)))
    return CheckRow(graph, scale, plan, output, float(diff.max(initial=0.0)), float(rel.max(initial=0.0)), atol, rtol, ok)


class ComparingBackend(OrtBackend):
    """Runs each graph in ONNX Runtime and in torch; records differences; keeps torch's outputs."""

    def __init__(self, manifest, modules: dict, precision: str, rows: list[CheckRow]) -> None:
        super().__init__(manifest, device="cpu")
        self.modules = modules
        self.tol = _TOL[precision]
        self.rows = rows
        self.plan = ""

    def _torch(self, graph: str, inputs: dict) -> list[np.ndarray]:
        names = gio.fidelity_inputs(len([k for k in inputs if k.startswith("proj_")])) if graph == gio.FIDELITY else None
        order = {
            gio.TEXT_ENCODER: gio.TEXT_ENCODER_INPUTS, gio.TEXT_COND: gio.TEXT_COND_INPUTS,
            gio.STEP: gio.STEP_INPUTS, gio.VAE_DECODER: gio.VAE_INPUTS,
        }.get(graph, names)
        args = [torch.from_numpy(np.ascontiguousarray(inputs[k])) for k in order]
        with torch.no_grad():
            out = self.modules[graph](*args)
        out = out if isinstance(out, tuple) else (out,)
        return [o.numpy() for o in out]

    def _record(self, graph: str, scale, names, got: list[np.ndarray], want: list[np.ndarray]) -> None:
        for name, g, w in zip(names, got, want):
            key = "image" if name == "image" else ("logits" if name == "logits" else "default")
            self.rows.append(compare(graph, scale, self.plan, name, g, w, self.tol[key]))

    def run_plain(self, graph, feeds):
        got = super().run_plain(graph, feeds)
        host = {k: np.asarray(v, dtype=self.input_dtype(graph, k)) for k, v in feeds.items()}
        want = self._torch(graph, host)
        self._record(graph, None, [o.name for o in self.sessions[graph].get_outputs()], got, want)
        return want

    def run_bound(self, graph, inputs, outputs):
        host = {k: (v.numpy().copy() if isinstance(v, DeviceArray) else np.asarray(v, dtype=self.input_dtype(graph, k)))
                for k, v in inputs.items()}
        super().run_bound(graph, inputs, outputs)
        got = [outputs[name].numpy().copy() for name in outputs]
        want = self._torch(graph, host)
        names = [o.name for o in self.sessions[graph].get_outputs()]
        by_name = dict(zip(names, want))
        scale = int(host["scale_index"]) if "scale_index" in host else None
        got_by_name = dict(zip(outputs, got))
        if graph == gio.FIDELITY and any(not np.array_equal(got_by_name[n], by_name[n]) for n in by_name if n.startswith("indices_")):
            by_name = self._fidelity_along_ort_selection(scale, host, got_by_name, by_name)
            got = [got_by_name[n] for n in outputs if not n.startswith("indices_")]
            self._record(graph, scale, [n for n in outputs if not n.startswith("indices_")], got,
                         [by_name[n] for n in outputs if not n.startswith("indices_")])
        else:
            self._record(graph, scale, list(outputs), got, [by_name[n] for n in outputs])
        for name, buffer in outputs.items():  # teacher forcing: continue from torch's values
            buffer.numpy()[...] = by_name[name].astype(buffer.dtype)


    def _fidelity_along_ort_selection(self, scale, host, got: dict, want: dict) -> dict:
        """Selections differ: rerun torch forced onto ONNX Runtime's indices, and accept each
        differing index only if torch's own score for it sits at the top-r boundary (a near-tie
        that a 1e-6 difference can flip). Returns torch's outputs along ONNX Runtime's path."""
        module = self.modules[gio.FIDELITY]
        chunks = len([k for k in got if k.startswith("indices_")])
        module.forced_indices = [torch.from_numpy(got[f"indices_{c}"]) for c in range(chunks)]
        module.scores = []
        try:
            forced = dict(zip([o.name for o in self.sessions[gio.FIDELITY].get_outputs()], self._torch(gio.FIDELITY, host)))
            scores = [s.numpy() for s in module.scores]
        finally:
            module.forced_indices, module.scores = None, None
        for c in range(chunks):
            name = f"indices_{c}"
            ours, theirs = got[name], want[name]
            differing = 0
            near_tie = True
            for row in range(ours.shape[0]):
                a, b = set(ours[row].tolist()), set(np.argsort(-scores[c][row], kind="stable")[: ours.shape[1]].tolist())
                diff = a ^ b
                differing += len(diff)
                if diff:
                    boundary = np.sort(scores[c][row])[::-1][ours.shape[1] - 1]
                    gap = max(abs(float(scores[c][row][i]) - float(boundary)) for i in diff)
                    near_tie &= gap <= 1e-4 * max(1.0, abs(float(boundary)))
            frac = differing / (2 * ours.size)
            note = "near-tie at the top-r boundary; compared along onnxruntime's selection" if differing else "equal along onnxruntime's selection"
            self.rows.append(CheckRow(gio.FIDELITY, scale, self.plan, name, frac, frac, 0.0, 0.0, near_tie, note))
        return forced


def _modules(bundle: InfinityBundle, precision: str) -> dict:
    model = to_fp16_blocks(bundle.transformer) if precision == "fp16" else bundle.transformer
    return {
        gio.TEXT_ENCODER: TextEncoderGraph(bundle.text_encoder).eval(),
        gio.TEXT_COND: TextCondGraph(model).eval(),
        gio.STEP: StepGraph(model).eval(),
        gio.FIDELITY: FidelityGraph(model).eval(),
        gio.VAE_DECODER: VAEDecoderGraph(bundle.vae, precision).eval(),
    }


def _checked_plan(pipe: Pipeline, plan: str, aspect: str, resolution: str):
    """The plan as the export runs it: a low-rank plan with the export's own rank table (a
    calibrated or shipped table, which the eager reference would not know by name alone), or, on
    an export without a rank table (before calibration), the same modes with a fixed check-only
    table: the fidelity graph takes the ranks as input shapes, so any ranks exercise it, and it
    is checked before it is first used."""
    if plan not in ("stagevar", "stagevar-full"):
        return plan
    chunks = pipe.spec.block_chunks
    if pipe.rank_table.source != NONE:
        alpha = pipe.manifest.data.get("alpha", "0.96")
        return make_plan(plan, get_schedule(aspect, resolution), num_chunks=chunks, alpha=alpha, table=pipe.rank_table)
    table = RankTable("check-only", {"0.96": ((0.25,) * chunks,) * 3})
    return make_plan(plan, get_schedule(aspect, resolution), num_chunks=chunks, alpha="0.96", table=table)


def _end_to_end(pipe: Pipeline, sampler: ReferenceSampler, plan: str, aspect: str, resolution: str, seed: int) -> list[CheckRow]:
    plan = _checked_plan(pipe, plan, aspect, resolution)
    name = getattr(plan, "name", plan)
    ours = pipe(CHECK_PROMPT, seed=seed, plan=plan, aspect=aspect, resolution=resolution,
                output_type="np", return_intermediates=True)
    ref = sampler.generate(CHECK_PROMPT, plan=plan, aspect=aspect, resolution=resolution, seed=seed,
                           cfg=pipe.spec.default_cfg, tau=pipe.spec.default_tau, keep_intermediates=True)
    rows = []
    for trace, record in zip(ours.intermediates, ref.records):
        if record.bits is None:
            continue
        flipped = float(np.mean(trace.bits != record.bits))
        rows.append(CheckRow("end_to_end", trace.index, name, "bits", flipped, flipped, 0.0, 0.0, flipped == 0.0,
                             f"{aspect}: fraction of sampled bits differing"))
    diff = np.abs(ours.images.astype(np.int16) - ref.images.astype(np.int16))
    rows.append(CheckRow("end_to_end", None, name, "image", float(diff.max()), float(np.mean(diff > 0)), 1.0, 0.0,
                         bool(diff.max() <= 1), f"{aspect}: max pixel difference (rel = fraction of pixels differing)"))
    return rows


def check_artifacts(out_dir: str | Path, bundle: InfinityBundle, resolution: str | None = None, seed: int = 0) -> dict:
    """Run the whole check; returns the report dict (also written to reports/check.json)."""
    manifest = load_manifest(out_dir, verify="full")
    # The eager reference pairs restored tokens as the graphs were traced to.
    with token_pairing(manifest.data.get("token_pairing", DEFAULT_PAIRING)):
        return _check_artifacts(out_dir, manifest, bundle, resolution, seed)


def _check_artifacts(out_dir, manifest, bundle: InfinityBundle, resolution: str | None, seed: int) -> dict:
    precision = manifest.precision
    resolution = resolution or manifest.data["resolution"]
    rows: list[CheckRow] = []
    backend = ComparingBackend(manifest, _modules(bundle, precision), precision, rows)
    tokenizer = load_tokenizer_json(Path(out_dir) / manifest.data["tokenizer"]["path"])
    teacher = Pipeline(manifest, backend, tokenizer)
    # exact: every scale through `step` with CFG rows; stagevar-full: `fidelity` on the three
    # fidelity scales (cache chain LOWRANK -> LOWRANK); cfg-off: `step` with null rows only
    # (at the cheaper 0.25M schedule, whose fidelity scales it also covers).
    aspects = manifest.data["aspects"]
    runs = [("exact", aspects[0], resolution), ("stagevar-full", aspects[0], resolution), ("cfg-off", aspects[0], "0.25M")]
    runs += [("stagevar-full", aspect, resolution) for aspect in aspects[1:]]
    for plan, aspect, res in runs:
        backend.plan = f"{plan} {aspect}"
        teacher(CHECK_PROMPT, seed=seed, plan=_checked_plan(teacher, plan, aspect, res), aspect=aspect, resolution=res,
                output_type="np")
    if precision == "fp32":
        # Free-running ONNX Runtime against the eager reference: same seed, same noise.
        free = Pipeline.from_dir(out_dir, verify=False)
        sampler = ReferenceSampler(bundle)
        e2e = [("exact", aspects[0]), ("stagevar", aspects[0])] + [("stagevar", a) for a in aspects[1:2]]
        for plan, aspect in e2e:
            rows.extend(_end_to_end(free, sampler, plan, aspect, resolution, seed))
    report = {"ok": all(r.ok for r in rows), "precision": precision, "resolution": resolution,
              "prompt": CHECK_PROMPT, "seed": seed, "rows": [asdict(r) for r in rows]}
    reports = Path(out_dir) / "reports"
    reports.mkdir(exist_ok=True)
    (reports / "check.json").write_text(json.dumps(report, indent=2))
    return report


def format_rows(report: dict, only_failures: bool = False) -> str:
    """A compact table: one line per (graph, output) with the worst row, plus every failure."""
    worst: dict[tuple, dict] = {}
    for r in report["rows"]:
        key = (r["graph"], r["output"])
        if key not in worst or (not r["ok"]) or r["max_abs"] > worst[key]["max_abs"]:
            if key not in worst or worst[key]["ok"]:
                worst[key] = r
    lines = [f"{'graph':<13}{'scale':>6}  {'plan':<18}{'output':<15}{'max abs':>11}{'max rel':>11}{'tolerance':>18}  ok"]
    shown = [r for r in report["rows"] if not r["ok"]] if only_failures else list(worst.values())
    for r in shown:
        tol = f"{r['atol']:.0e}+{r['rtol']:.0e}*|x|"
        scale = "-" if r["scale"] is None else str(r["scale"])
        lines.append(f"{r['graph']:<13}{scale:>6}  {r['plan']:<18}{r['output']:<15}{r['max_abs']:>11.3g}{r['max_rel']:>11.3g}{tol:>18}  {'yes' if r['ok'] else 'NO'}")
    return "\n".join(lines)


def run_check(out_dir: Path, bundle: InfinityBundle, resolution: str | None = None) -> bool:
    """CLI entry: run, print the table (worst row per graph output, then failures), return ok."""
    report = check_artifacts(out_dir, bundle, resolution)
    print(format_rows(report))
    failures = [r for r in report["rows"] if not r["ok"]]
    if failures:
        print(f"\n{len(failures)} of {len(report['rows'])} checks failed:")
        print(format_rows(report, only_failures=True))
    print(f"check {'ok' if report['ok'] else 'FAILED'}: {len(report['rows'])} rows, report in {Path(out_dir) / 'reports' / 'check.json'}")
    return report["ok"]
