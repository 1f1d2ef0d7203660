"""`--check`: ONNX Runtime graphs against torch, per graph and scale, and end to end."""

import json
import shutil

import numpy as np
import onnx
import pytest

from stagevar.exporter.infinity.check import check_artifacts
from stagevar.runtime.manifest import MANIFEST_NAME, write_manifest


def test_check_passes_for_every_graph_scale_and_aspect(tiny_artifacts, tiny_bundle):
    report = check_artifacts(tiny_artifacts, tiny_bundle, resolution="0.25M")
    failures = [r for r in report["rows"] if not r["ok"]]
    assert report["ok"], failures[:5]
    graphs = {r["graph"] for r in report["rows"]}
    assert graphs == {"text_encoder", "text_cond", "step", "fidelity", "vae_decoder", "end_to_end"}
    step_scales = {r["scale"] for r in report["rows"] if r["graph"] == "step"}
    assert step_scales == set(range(10))
    fidelity = {(r["plan"], r["scale"]) for r in report["rows"] if r["graph"] == "fidelity"}
    assert {("stagevar-full 1:1", 7), ("stagevar-full 1:1", 9), ("stagevar-full 2:1", 8)} <= fidelity
    logits = [r for r in report["rows"] if r["output"] == "logits"]
    assert max(r["max_abs"] for r in logits) <= 1e-4
    e2e_bits = [r for r in report["rows"] if r["graph"] == "end_to_end" and r["output"] == "bits"]
    assert e2e_bits and all(r["max_abs"] == 0.0 for r in e2e_bits)
    written = json.loads((tiny_artifacts / "reports" / "check.json").read_text())
    assert written["ok"] is True and len(written["rows"]) == len(report["rows"])


def _perturb_head(copy):
    """Scale the head bias inside the shared weights file, as a broken export would."""
    model = onnx.load(str(copy / "onnx" / "step.onnx"), load_external_data=False)
    (tensor,) = [t for t in model.graph.initializer if t.name.endswith("head.bias")]
    if tensor.data_location == onnx.TensorProto.EXTERNAL:
        info = {e.key: e.value for e in tensor.external_data}
        path, offset, length = copy / "onnx" / info["location"], int(info["offset"]), int(info["length"])
        data = bytearray(path.read_bytes())
        values = np.frombuffer(bytes(data[offset : offset + length]), dtype=np.float32) + 0.5
        data[offset : offset + length] = values.tobytes()
        path.write_bytes(bytes(data))
    else:
        values = onnx.numpy_helper.to_array(tensor) + 0.5
        tensor.CopyFrom(onnx.numpy_helper.from_array(values.astype(np.float32), tensor.name))
        onnx.save_model(model, str(copy / "onnx" / "step.onnx"))


def test_check_fails_when_a_graph_is_perturbed(tiny_artifacts, tiny_bundle, tmp_path):
    copy = tmp_path / "perturbed"
    shutil.copytree(tiny_artifacts, copy)
    _perturb_head(copy)
    content = json.loads((copy / MANIFEST_NAME).read_text())
    write_manifest(copy, {k: v for k, v in content.items() if k not in ("files", "schema_version")})
    report = check_artifacts(copy, tiny_bundle, resolution="0.06M")
    assert report["ok"] is False
    bad = {(r["graph"], r["output"]) for r in report["rows"] if not r["ok"]}
    assert ("step", "logits") in bad


def test_check_refuses_corrupted_files_before_running(tiny_artifacts, tiny_bundle, tmp_path):
    from stagevar.runtime.errors import StagevarError

    copy = tmp_path / "corrupt"
    shutil.copytree(tiny_artifacts, copy)
    _perturb_head(copy)
    with pytest.raises(StagevarError, match="does not match"):
        check_artifacts(copy, tiny_bundle)
