"""`stagevar-export build --check`: every TensorRT engine against ONNX Runtime, per profile.

For each graph and each of its optimisation profiles (each scale of step/fidelity, each aspect
of vae_decoder; the text graphs at their shortest, typical and longest text), the same inputs
(feeds.make_feeds) run through the engine with that profile selected and through an ONNX
Runtime session of the ONNX graph; every output is compared with a tolerance by precision.
The table has the style of the ONNX Runtime-vs-torch check (exporter/infinity/check.py); the
report goes to reports/trt_check.json. numpy + onnxruntime here; TensorRT only through the
runner the toolchain opens, so tests can substitute one.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from stagevar.runtime import graph_io as gio

from .feeds import make_feeds
from .profiles import ProfileSpec, engine_graphs
from .toolchain import EngineRunner

REPORT = "reports/trt_check.json"
# (atol, rtol): a value passes when |trt - ort| <= atol + rtol * |ort|. Looser than the
# ORT-vs-torch check: TensorRT fuses and reorders reductions (attention, LayerNorm, GEMM
# split-k), which moves fp32 results by ~1e-5 relative per block; uint8 images may round one
# step differently.
TOLERANCES = {
    "fp32": {"default": (1e-3, 1e-3), "image": (1.0, 0.0)},
    "fp16": {"default": (5e-2, 5e-2), "image": (2.0, 0.0)},
}
_TEXT_GRAPHS = (gio.TEXT_ENCODER, gio.TEXT_COND)

OpenEngine = Callable[[str, Path], EngineRunner]  # (graph, plan path) -> runner


@dataclass
class TrtCheckRow:
    graph: str
    profile: int
    entry: int | None
    scale: int | None
    aspect: str | None
    point: str
    output: str
    max_abs: float
    max_rel: float
    atol: float
    rtol: float
    ok: bool
    note: str = ""


def compare(row: dict, output: str, got: np.ndarray, want: np.ndarray, tol) -> TrtCheckRow:
    """One output of one run: worst absolute and relative error, and the verdict."""
    atol, rtol = tol
    got, want = np.asarray(got), np.asarray(want)
    if got.shape != want.shape:
        return TrtCheckRow(**row, output=output, max_abs=math.inf, max_rel=math.inf, atol=atol, rtol=rtol,
                           ok=False, note=f"shape {got.shape} != {want.shape}")
    if output.startswith("indices_"):
        # Sorted selections; the check's Gumbel noise leaves no near-ties, so they must agree.
        frac = float(np.mean(got != want)) if got.size else 0.0
        return TrtCheckRow(**row, output=output, max_abs=frac, max_rel=frac, atol=0.0, rtol=0.0,
                           ok=frac == 0.0, note="fraction of selected indices differing")
    a, b = got.astype(np.float64), want.astype(np.float64)
    same_inf = (a == b) & np.isinf(b)  # e.g. identical -inf; compare the finite values
    diff = np.where(same_inf, 0.0, np.abs(a - b))
    rel = diff / np.maximum(np.abs(np.where(same_inf, 1.0, b)), 1e-6)
    finite = bool(np.all(np.isfinite(a) | same_inf))
    ok = finite and bool(np.all(diff <= atol + rtol * np.abs(np.where(same_inf, 0.0, b))))
    return TrtCheckRow(**row, output=output, max_abs=float(np.nan_to_num(diff, nan=np.inf).max(initial=0.0)),
                       max_rel=float(np.nan_to_num(rel, nan=np.inf).max(initial=0.0)), atol=atol, rtol=rtol,
                       ok=ok, note="" if finite else "non-finite values from TensorRT")


def check_engines(root: str | os.PathLike, data: dict, record: dict, open_engine: OpenEngine,
                  providers: list | None = None, seed: int = 0) -> dict:
    """Run the check over every graph of a build record; returns the report (also written)."""
    root = Path(root)
    precision = data.get("precision", "fp32")
    tol = TOLERANCES.get(precision, TOLERANCES["fp16"])
    rows: list[TrtCheckRow] = []
    for graph in engine_graphs(data):
        entry = record["graphs"].get(graph)
        if entry is None:
            continue
        profiles = [ProfileSpec(p["entry"], p["aspect"], tuple((n, tuple(tuple(s) for s in mmm))
                                                            for n, mmm in p["shapes"].items()))
                    for p in entry["profiles"]]
        rows.extend(_check_graph(root, data, graph, root / entry["plan"], profiles, open_engine,
                                 providers, tol, seed))
    report = {"ok": bool(rows) and all(r.ok for r in rows), "precision": precision,
              "engines": record.get("dir"), "tensorrt": record.get("tensorrt"),
              "compute_capability": record.get("compute_capability"), "device_name": record.get("device_name"),
              "seed": seed, "rows": [asdict(r) for r in rows]}
    _write_json(root / REPORT, report)
    return report


def _check_graph(root, data, graph, plan_path, profiles, open_engine, providers, tol, seed) -> list[TrtCheckRow]:
    rows: list[TrtCheckRow] = []
    session = _ort_session(root / data["graphs"][graph]["path"], providers)
    names = [o.name for o in session.get_outputs()]
    runner = None
    try:
        runner = open_engine(graph, plan_path)
        for index, profile in enumerate(profiles):
            entry = data["engines"][profile.entry] if profile.entry is not None else {}
            for point in (("min", "opt", "max") if graph in _TEXT_GRAPHS else ("opt",)):
                row = {"graph": graph, "profile": index, "entry": profile.entry, "scale": entry.get("scale"),
                       "aspect": profile.aspect, "point": point}
                try:
                    feeds = make_feeds(data, graph, profile, seed=seed + index, point=point)
                    want = dict(zip(names, session.run(None, feeds)))
                    got = runner.infer(index, feeds)
                    for name in names:
                        if name not in got:
                            rows.append(_failed(row, name, "output missing from the engine"))
                            continue
                        key = "image" if name == "image" else "default"
                        rows.append(compare(row, name, got[name], want[name], tol[key]))
                except Exception as exc:  # one profile failing must not hide the others
                    rows.append(_failed(row, "-", _first_line(exc)))
    except Exception as exc:
        rows.append(_failed({"graph": graph, "profile": -1, "entry": None, "scale": None, "aspect": None,
                             "point": "-"}, "-", f"cannot open the engine: {_first_line(exc)}"))
    finally:
        if runner is not None:
            runner.close()
    return rows


def _ort_session(path: Path, providers):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if providers is None:
        from stagevar.runtime.ort_backend import execution_providers

        # The reference is true fp32, as the ort backend runs it (the one TF32 policy, off).
        providers = execution_providers("cuda" if "CUDAExecutionProvider" in ort.get_available_providers() else "cpu")
    try:
        return ort.InferenceSession(str(path), options, providers=providers)
    except Exception:
        if providers and providers[0] != "CPUExecutionProvider":
            return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        raise


def _failed(row: dict, output: str, note: str) -> TrtCheckRow:
    return TrtCheckRow(**row, output=output, max_abs=math.inf, max_rel=math.inf, atol=0.0, rtol=0.0, ok=False,
                       note=note)


def _write_json(path: Path, report: dict) -> None:
    # Strict JSON: an error that could not be measured (inf) is written as null.
    rows = [{k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in r.items()}
            for r in report["rows"]]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps({**report, "rows": rows}, indent=2, allow_nan=False))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def format_rows(report: dict, only_failures: bool = False) -> str:
    """A compact table: the worst row per (graph, output), or every failure."""
    worst: dict[tuple, dict] = {}
    for r in report["rows"]:
        key = (r["graph"], r["output"])
        cur = worst.get(key)
        if cur is None or (cur["ok"] and (not r["ok"] or r["max_abs"] > cur["max_abs"])):
            worst[key] = r
    lines = [f"{'graph':<13}{'profile':>8}{'scale':>6}  {'aspect':<7}{'point':<6}{'output':<15}"
             f"{'max abs':>11}{'max rel':>11}{'tolerance':>18}  ok"]
    shown = [r for r in report["rows"] if not r["ok"]] if only_failures else list(worst.values())
    for r in shown:
        tol = f"{r['atol']:.0e}+{r['rtol']:.0e}*|x|"
        scale = "-" if r["scale"] is None else str(r["scale"])
        line = (f"{r['graph']:<13}{r['profile']:>8}{scale:>6}  {r['aspect'] or '-':<7}{r['point']:<6}"
                f"{r['output']:<15}{r['max_abs']:>11.3g}{r['max_rel']:>11.3g}{tol:>18}  {'yes' if r['ok'] else 'NO'}")
        lines.append(line + (f"  {r['note']}" if r["note"] and not r["ok"] else ""))
    return "\n".join(lines)


def print_report(report: dict, path: Path) -> None:
    print(format_rows(report))
    failures = [r for r in report["rows"] if not r["ok"]]
    if failures:
        print(f"\n{len(failures)} of {len(report['rows'])} checks failed:")
        print(format_rows(report, only_failures=True))
    print(f"trt check {'ok' if report['ok'] else 'FAILED'}: {len(report['rows'])} rows "
          f"({report['engines']}), report in {path}")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__
