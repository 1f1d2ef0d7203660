"""Real TensorRT: build the tiny export's engines, pass the accuracy gate, reuse, run them.

Marked `trt` (deselected by default; run with `pytest -m trt` on a machine with an NVIDIA GPU,
TensorRT 10+, cuda-python and polygraphy, i.e. stagevar[trt]). Without them the tests skip,
or fail when STAGEVAR_TRT_REQUIRE=1 (set it on GPU hosts so a broken install cannot pass).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from stagevar.runtime import graph_io as gio
from stagevar.runtime.manifest import load_manifest
from stagevar.runtime.ort_backend import OrtBackend
from stagevar.runtime.pipeline import Pipeline
from stagevar.runtime.tokenize import load_tokenizer_json
from stagevar.runtime.trt_backend import TrtBackend  # our module: an import error must fail, not skip

pytestmark = pytest.mark.trt


def test_engines_build_pass_the_check_and_are_reused(tensorrt_stack, export_copy):
    from stagevar.exporter.trt.cli_build import run_build
    from stagevar.exporter.trt.toolchain import load_toolchain
    from stagevar.runtime.engine_cache import select_engine_build

    assert run_build(export_copy, check=True) == 0
    manifest = load_manifest(export_copy, verify="full")
    gpu = load_toolchain(export_copy).gpu()
    record = select_engine_build(manifest, tensorrt_stack.__version__, gpu.compute_capability)
    assert record["check"]["ok"] is True
    report = json.loads((export_copy / "reports" / "trt_check.json").read_text())
    assert report["ok"] and {r["graph"] for r in report["rows"]} >= {"step", "fidelity", "vae_decoder"}
    plans = {g: (export_copy / e["plan"]).stat().st_mtime_ns for g, e in record["graphs"].items()}
    # Same keys: nothing is rebuilt and the manifest stays as it is.
    before = (export_copy / "manifest.json").read_bytes()
    assert run_build(export_copy) == 0
    assert (export_copy / "manifest.json").read_bytes() == before
    assert {g: (export_copy / e["plan"]).stat().st_mtime_ns for g, e in record["graphs"].items()} == plans


def test_built_engines_generate_the_onnxruntime_image(tensorrt_stack, export_copy):
    """fp32 engines without TF32 against ONNX Runtime fp32 on the same graphs. Tokens: a sampled
    bit flips only where a logit sits on a tie, so nearly all must agree (random tiny weights
    make ties rarer than 1 in 1000). Pixels: the VAE decoder on identical codes differs by
    rounding only, so every pixel (not 95% of them) must be within one level."""
    from stagevar.exporter.trt.cli_build import run_build

    assert run_build(export_copy) == 0
    manifest = load_manifest(export_copy, verify="full")
    tokenizer = load_tokenizer_json(export_copy / manifest.data["tokenizer"]["path"])
    trt_pipe = Pipeline(manifest, TrtBackend(manifest), tokenizer)
    ort_pipe = Pipeline(manifest, OrtBackend(manifest), tokenizer)
    for plan in ("exact", "stagevar"):
        request = dict(plan=plan, seed=3, output_type="np", return_intermediates=True)
        ours, ref = trt_pipe("a cat", **request), ort_pipe("a cat", **request)
        agree = [np.mean(a.bits == b.bits) for a, b in zip(ours.intermediates, ref.intermediates)
                 if b.bits is not None]
        assert min(agree) >= 0.999, (plan, agree)
        (trt_image,) = trt_pipe.backend.run_plain(gio.VAE_DECODER, {"codes": ref.codes})
        (ort_image,) = ort_pipe.backend.run_plain(gio.VAE_DECODER, {"codes": ref.codes})
        np.testing.assert_allclose(trt_image, ort_image, rtol=1e-3, atol=1e-3, err_msg=plan)
        if all(np.array_equal(a.bits, b.bits) for a, b in zip(ours.intermediates, ref.intermediates)
               if b.bits is not None):
            diff = np.abs(ours.images.astype(np.int16) - ref.images.astype(np.int16))
            assert diff.max() <= 1, (plan, int(diff.max()))
