"""Real TensorRT: build the tiny export's engines, pass the accuracy gate, reuse, run them.

Marked `trt` (deselected by default; run with `pytest -m trt` on a machine with an NVIDIA GPU,
TensorRT 10+ and polygraphy, i.e. stagevar[trt]).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

pytestmark = pytest.mark.trt


@pytest.fixture
def trt():
    trt = pytest.importorskip("tensorrt", reason="needs TensorRT 10+ (pip install stagevar[trt]) and an NVIDIA GPU")
    pytest.importorskip("polygraphy", reason="needs polygraphy (pip install stagevar[trt])")
    return trt


def test_engines_build_pass_the_check_and_are_reused(trt, export_copy):
    from stagevar.exporter.trt.cli_build import run_build
    from stagevar.exporter.trt.toolchain import load_toolchain
    from stagevar.runtime.engine_cache import select_engine_build
    from stagevar.runtime.manifest import load_manifest

    assert run_build(export_copy, check=True) == 0
    manifest = load_manifest(export_copy, verify="full")
    gpu = load_toolchain(export_copy).gpu()
    record = select_engine_build(manifest, trt.__version__, gpu.compute_capability)
    assert record["check"]["ok"] is True
    report = json.loads((export_copy / "reports" / "trt_check.json").read_text())
    assert report["ok"] and {r["graph"] for r in report["rows"]} >= {"step", "fidelity", "vae_decoder"}
    plans = {g: (export_copy / e["plan"]).stat().st_mtime_ns for g, e in record["graphs"].items()}
    # Same keys: nothing is rebuilt and the manifest stays as it is.
    before = (export_copy / "manifest.json").read_bytes()
    assert run_build(export_copy) == 0
    assert (export_copy / "manifest.json").read_bytes() == before
    assert {g: (export_copy / e["plan"]).stat().st_mtime_ns for g, e in record["graphs"].items()} == plans


def test_built_engines_generate_the_onnxruntime_image(trt, export_copy):
    trt_backend = pytest.importorskip("stagevar.runtime.trt_backend")
    from stagevar.exporter.trt.cli_build import run_build
    from stagevar.runtime.manifest import load_manifest
    from stagevar.runtime.pipeline import Pipeline
    from stagevar.runtime.tokenize import load_tokenizer_json

    assert run_build(export_copy) == 0
    manifest = load_manifest(export_copy, verify="full")
    tokenizer = load_tokenizer_json(export_copy / manifest.data["tokenizer"]["path"])
    ours = Pipeline(manifest, trt_backend.TrtBackend(manifest), tokenizer)
    ref = Pipeline.from_dir(export_copy)
    for plan in ("exact", "stagevar"):
        a = ours("a cat", plan=plan, seed=3, output_type="np").images.astype(np.int16)
        b = ref("a cat", plan=plan, seed=3, output_type="np").images.astype(np.int16)
        # Random tiny weights: a flipped bit changes pixels, so compare in bulk, not exactly.
        assert np.mean(np.abs(a - b) <= 2) > 0.95, plan
