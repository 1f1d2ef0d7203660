"""The export as a whole: files, shared weights, manifest, robustness of the output directory."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from stagevar.exporter.cli_export import entry as export_cli
from stagevar.runtime import graph_io as gio
from stagevar.runtime.errors import StagevarError
from stagevar.runtime.manifest import load_manifest


def test_every_graph_passes_the_onnx_checker_and_loads_in_onnxruntime(tiny_artifacts):
    manifest = load_manifest(tiny_artifacts, verify="full")
    assert set(manifest.graphs) == set(gio.GRAPHS)
    for name in gio.GRAPHS:
        path = manifest.graph_path(name)
        onnx.checker.check_model(str(path))
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        assert [i.name for i in session.get_inputs()] == [i["name"] for i in manifest.graphs[name]["inputs"]]
        assert [o.name for o in session.get_outputs()] == [o["name"] for o in manifest.graphs[name]["outputs"]]


def _external_locations(path):
    model = onnx.load(str(path), load_external_data=False)
    return {e.value for t in model.graph.initializer for e in t.external_data if e.key == "location"}


def test_step_and_fidelity_share_one_weights_file_written_once(tiny_artifacts, tiny_bundle):
    onnx_dir = tiny_artifacts / "onnx"
    assert _external_locations(onnx_dir / "step.onnx") == {"transformer.weights"}
    assert _external_locations(onnx_dir / "fidelity.onnx") == {"transformer.weights"}
    assert not list(onnx_dir.glob("*.partial.weights"))
    model_bytes = sum(p.numel() * p.element_size() for p in tiny_bundle.transformer.parameters())
    size = (onnx_dir / "transformer.weights").stat().st_size
    # Each weight once (plus page alignment), not once per graph.
    assert size < 1.3 * model_bytes


def test_manifest_records_model_schedules_ranks_and_per_scale_entries(tiny_artifacts):
    data = json.loads((tiny_artifacts / "manifest.json").read_text())
    assert data["model"]["preset"] == "infinity-tiny" and data["model"]["random_init"] is True
    assert data["model"]["weights"] == {"random_init": 0}
    assert data["precision"] == "fp32" and data["opset"] == 23 and data["attention"]["form"] == "fused"
    assert set(data["aspects"]) == {"1:1", "2:1"}
    assert data["schedules"]["1:1"]["scales"][-1] == [64, 64]
    assert len(data["rank_table"]["ratios"]) == 3
    lowrank = [e for e in data["engines"] if e["graph"] == "fidelity" and e["aspect"] == "1:1" and e["scale"] == 10]
    assert lowrank and lowrank[0]["ranks"] == [27, 219, 337, 401, 410, 317, 252, 306]
    assert lowrank[0]["past_tokens"] == 2521
    assert (tiny_artifacts / "tokenizer" / "tokenizer.json").exists()
    for rel in data["files"]:
        assert (tiny_artifacts / rel).exists()


def test_tampering_with_any_file_is_detected(tiny_artifacts, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(tiny_artifacts, copy)
    target = copy / "onnx" / "transformer.weights"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01
    target.write_bytes(bytes(data))
    with pytest.raises(StagevarError, match="transformer.weights"):
        load_manifest(copy, verify="full")


def test_existing_output_is_not_overwritten_without_force(tiny_artifacts, capsys):
    before = (tiny_artifacts / "manifest.json").read_bytes()
    assert export_cli(["--out", str(tiny_artifacts)]) == 2
    err = capsys.readouterr().err
    assert "already exists" in err and "--force" in err and "Traceback" not in err
    assert (tiny_artifacts / "manifest.json").read_bytes() == before


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--aspect", "10:1"], "aspect"),
        (["--resolution", "2M"], "2M"),
        (["--model", "infinity3b"], "infinity3b"),
        (["--model", "infinity2b"], "--weights"),
        (["--model", "infinity2b", "--weights", "/nonexistent.pth", "--vae", "/x", "--text-encoder", "/y"], "does not exist"),
        (["--alpha", "0.5"], "alpha"),
    ],
)
def test_bad_options_get_one_sentence_and_write_nothing(tmp_path, capsys, args, needle):
    out = tmp_path / "out"
    assert export_cli(["--out", str(out), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and "Traceback" not in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_an_export_killed_midway_leaves_no_directory_with_a_manifest(tmp_path):
    """Bug guarded against: an export that writes into --out directly (or writes the manifest
    before the graphs), so a kill leaves a folder that looks complete. The kill must land while
    the staging folder exists and the export is still running, or the test proves nothing."""
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "stagevar.exporter.cli_export", "--model", "infinity-tiny", "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 180  # the machine may be shared: starting torch can take a while
    staged = []
    try:
        # Kill it once it is writing graphs (the staging directory exists).
        while time.time() < deadline and not staged and proc.poll() is None:
            staged = list(tmp_path.glob(".killed.partial-*"))
            time.sleep(0.2)
        time.sleep(2.0)
        still_running = proc.poll() is None
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert staged, "the staging folder never appeared before the kill"
    assert still_running, "the export finished before the kill; nothing was interrupted"
    assert not out.exists()
    assert not list(tmp_path.rglob("manifest.json"))
