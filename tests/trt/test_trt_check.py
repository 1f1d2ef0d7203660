"""The accuracy gate: feeds for every profile run in ONNX Runtime, and the check's verdict,
report and table, with ONNX Runtime standing in for the TensorRT engine."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest

from stagevar.exporter.trt.feeds import GUMBEL_SPACING, make_feeds
from stagevar.exporter.trt.profiles import all_profiles
from stagevar.exporter.trt.trt_check import REPORT, check_engines, format_rows
from stagevar.runtime import graph_io as gio
from stagevar.runtime.manifest import load_manifest


@pytest.fixture(scope="module")
def manifest(tiny_artifacts):
    return load_manifest(tiny_artifacts, verify=False)


def _session(manifest, graph):
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(manifest.graph_path(graph)), options, providers=["CPUExecutionProvider"])


def test_feeds_for_every_profile_run_in_onnxruntime(manifest):
    data = manifest.data
    for graph, profiles in all_profiles(data).items():
        session = _session(manifest, graph)
        inputs = {i.name: i for i in session.get_inputs()}
        points = ("min", "opt", "max") if graph in (gio.TEXT_ENCODER, gio.TEXT_COND) else ("opt",)
        for index, profile in enumerate(profiles):
            ranges = profile.shape_dict()
            for point in points:
                feeds = make_feeds(data, graph, profile, seed=index, point=point)
                assert set(feeds) == set(inputs)
                for name, value in feeds.items():
                    if name in ranges:
                        assert value.shape == ranges[name][("min", "opt", "max").index(point)]
                    else:  # static: exactly the graph's shape (0-d scalars stay 0-d)
                        assert list(value.shape) == list(inputs[name].shape), (graph, name)
                outputs = session.run(None, feeds)
                for out in outputs:
                    if out.dtype.kind == "f":
                        assert np.isfinite(out).all(), (graph, index, point)


def test_feeds_are_in_the_pipeline_ranges(manifest):
    data = manifest.data
    (text,) = all_profiles(data)[gio.TEXT_ENCODER]
    feeds = make_feeds(data, gio.TEXT_ENCODER, text, point="max")
    mask = feeds["attention_mask"]
    assert mask[0].all()  # the longest prompt fills the padded length
    assert all(np.all(np.diff(row) <= 0) and row[0] == 1 for row in mask)  # ones, then zeros
    assert feeds["input_ids"].max() < data["model"]["text_encoder"]["vocab_size"]
    assert np.all(feeds["input_ids"][mask == 0] == 0)
    fidelity = all_profiles(data)[gio.FIDELITY][0]
    feeds = make_feeds(data, gio.FIDELITY, fidelity)
    entry = data["engines"][fidelity.entry]
    assert int(feeds["scale_index"]) == entry["scale"]
    d = data["model"]["config"]["code_dim"]
    steps = feeds["codes"] * np.sqrt(d)  # sums of k steps of +-1/sqrt(d): integers of k's parity
    assert np.allclose(steps, np.round(steps), atol=1e-5) and np.all(np.round(np.abs(steps)) % 2 == entry["scale"] % 2)
    assert np.abs(steps).max() <= entry["scale"]
    gumbel = feeds["gumbel"]
    assert sorted(gumbel[0, 0] / GUMBEL_SPACING) == list(range(entry["tokens"]))  # no near-ties
    assert np.allclose(feeds["area_h"].sum(axis=1), 1.0) and np.allclose(feeds["area_w"].sum(axis=1), 1.0)


class _OrtEngine:
    """ONNX Runtime in the place of a TensorRT engine; `scale` perturbs one output."""

    def __init__(self, manifest, graph, perturb: dict | None = None):
        self.session, self.perturb, self.closed = _session(manifest, graph), perturb or {}, False

    def infer(self, profile_index, feeds):
        names = [o.name for o in self.session.get_outputs()]
        out = dict(zip(names, self.session.run(None, feeds)))
        for name, delta in self.perturb.items():
            if name in out:
                out[name] = out[name] + np.asarray(delta, out[name].dtype)
        return out

    def close(self):
        self.closed = True


def _small_record(data) -> dict:
    """A build record with a few cheap profiles per graph (the check runs what the record lists)."""
    profiles = all_profiles(data)
    graphs = {}
    for graph, specs in profiles.items():
        cheap = sorted(specs, key=lambda p: max(np.prod(mmm[2]) for _, mmm in p.shapes))[:2]
        graphs[graph] = {"plan": f"engines/x/{graph}.plan", "profiles": [p.to_json() for p in cheap]}
    return {"dir": "engines/x", "tensorrt": "10.9.0.34", "compute_capability": "9.0", "device_name": "Fake",
            "graphs": graphs}


def test_the_check_passes_when_the_engines_agree(manifest, export_copy):
    data, record = manifest.data, _small_record(manifest.data)
    opened = []

    def open_engine(graph, plan):
        assert plan == export_copy / record["graphs"][graph]["plan"]
        opened.append(_OrtEngine(manifest, graph))
        return opened[-1]

    report = check_engines(export_copy, data, record, open_engine, providers=["CPUExecutionProvider"])
    assert report["ok"], format_rows(report, only_failures=True)
    assert all(e.closed for e in opened) and len(opened) == len(gio.GRAPHS)
    assert {r["graph"] for r in report["rows"]} == set(gio.GRAPHS)
    text_points = {r["point"] for r in report["rows"] if r["graph"] == gio.TEXT_ENCODER}
    assert text_points == {"min", "opt", "max"}
    written = json.loads((export_copy / REPORT).read_text())
    assert written["ok"] is True and len(written["rows"]) == len(report["rows"])


def test_the_check_fails_and_says_where(manifest, export_copy):
    data, record = manifest.data, _small_record(manifest.data)
    perturb = {gio.STEP: {"logits": 0.5}, gio.VAE_DECODER: {"image": 3}}
    report = check_engines(export_copy, data, record, lambda g, p: _OrtEngine(manifest, g, perturb.get(g)),
                           providers=["CPUExecutionProvider"])
    assert not report["ok"]
    bad = {(r["graph"], r["output"]) for r in report["rows"] if not r["ok"]}
    assert bad == {(gio.STEP, "logits"), (gio.VAE_DECODER, "image")}
    table = format_rows(report, only_failures=True)
    assert "step" in table and "logits" in table and "NO" in table
    assert json.loads((export_copy / REPORT).read_text())["ok"] is False


def test_an_engine_that_cannot_run_is_a_failed_row_not_a_crash(manifest, export_copy):
    data, record = manifest.data, _small_record(manifest.data)
    record["graphs"] = {gio.VAE_DECODER: record["graphs"][gio.VAE_DECODER]}

    class Broken:
        def infer(self, index, feeds):
            raise RuntimeError("execute_async_v3 failed")

        def close(self):
            pass

    report = check_engines(export_copy, data, record, lambda g, p: Broken(), providers=["CPUExecutionProvider"])
    assert not report["ok"] and all("execute_async_v3" in r["note"] for r in report["rows"])
    written = json.loads((export_copy / REPORT).read_text())
    assert written["rows"][0]["max_abs"] is None  # strict JSON, no Infinity
