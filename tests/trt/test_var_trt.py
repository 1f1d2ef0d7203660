"""TensorRT for VAR exports without TensorRT: the profiles cover exactly what the VAR pipeline
binds, `stagevar-export build` records VAR's graphs, `--check` feeds them, and the VAR pipeline
on the trt backend (tests/runtime/fake_trt.py: each engine runs its ONNX graph with onnxruntime
on fake device memory) gives the ORT pipeline's ids and pixels bit for bit.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from stagevar.exporter.trt.build import BuildOptions, build_engines
from stagevar.exporter.trt.profiles import all_profiles
from stagevar.exporter.trt.trt_check import check_engines
from stagevar.runtime import var_graph_io as vio
from stagevar.runtime.errors import StagevarError
from stagevar.runtime.manifest import load_manifest, sha256_file, write_manifest
from stagevar.runtime.pipeline import Pipeline
from stagevar.runtime.stage_plan import Mode

TRT_VERSION, CC = "10.9.0.34", "9.0"  # what the fake GPU reports
ENGINE_DIR = "engines/trt10.9.0-sm90"
PLANS = ("exact", "cfg-off", "stagevar", "stagevar-full")


def _load_fake_trt():
    path = Path(__file__).parents[1] / "runtime" / "fake_trt.py"
    spec = importlib.util.spec_from_file_location("stagevar_tests_fake_trt_var", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


fake_trt = _load_fake_trt()


@pytest.fixture(scope="module")
def calibrated(var_tiny_artifacts, tmp_path_factory):
    """A copy of the var-tiny export with a measured rank table (so LOWRANK entries exist)."""
    from stagevar.exporter.var.calibrate import calibrate_var_export

    out = Path(shutil.copytree(var_tiny_artifacts, tmp_path_factory.mktemp("var-trt") / "var"))
    calibrate_var_export(out, classes="1,207", say=lambda m: None)
    return out


def _spy(pipe) -> list:
    """(graph, {input: shape}, scale, rows) of every graph run of the pipeline's backend."""
    backend, seen = pipe.backend, []
    run_bound, run_plain = backend.run_bound, backend.run_plain

    def record(graph, inputs):
        shapes = {n: tuple(int(d) for d in np.shape(v)) if not hasattr(v, "ptr") else tuple(v.shape)
                  for n, v in inputs.items()}
        scale = int(np.asarray(inputs["scale_index"])) if "scale_index" in inputs else None
        seen.append((graph, shapes, scale))

    backend.run_bound = lambda g, i, o: (record(g, i), run_bound(g, i, o))[1]
    backend.run_plain = lambda g, f: (record(g, f), run_plain(g, f))[1]
    return seen


def test_profiles_cover_every_shape_the_var_pipeline_binds(calibrated):
    """Bugs guarded against: a CFG scale's profile with n rows instead of 2n (class_cond and
    step on [cond; null]); past tokens counted over SKIP or LOWRANK scales; the RTR cache of a
    LOWRANK scale sized from its own grid instead of the previous scale's; ranks of two chunks
    swapped. Each would leave a run outside every profile (TensorRT refuses it)."""
    pipe = Pipeline.from_dir(calibrated, verify=False)
    seen = _spy(pipe)
    for plan in PLANS:
        pipe(class_labels=[207], seed=1, plan=plan, output_type="np")
    data = pipe.manifest.data
    profiles = all_profiles(data)
    assert list(profiles) == list(vio.VAR_GRAPHS)
    for graph, shapes, scale in seen:
        inside = [p for p in profiles[graph] if p.contains(shapes)]
        assert inside, f"{graph} at scale {scale}: {shapes} fits no profile"
        if scale is not None:  # the profile of the very entry (scale, rows) that runs it
            rows = shapes["past_kv"][3]
            entries = [data["engines"][i] for p in inside for i in p.entries]
            assert any(e["scale"] == scale and e["rows"] == rows and e["graph"] == graph for e in entries)
    # Every step entry is run by some plan: no profile TensorRT tunes for nothing.
    ran = {(g, s, sh["past_kv"][3], sh["past_kv"][0]) for g, sh, s in seen if s is not None}
    for e in data["engines"]:
        assert (e["graph"], e["scale"], e["rows"], e["past_tokens"]) in ran, e


def test_an_uncalibrated_var_export_builds_no_fidelity_engine(var_tiny_artifacts):
    """Bug guarded against: a var_fidelity engine asked for with zero profiles (TensorRT fails the
    whole build) before `stagevar-export calibrate` has measured any ranks."""
    data = load_manifest(var_tiny_artifacts, verify=False).data
    profiles = all_profiles(data)
    assert list(profiles) == [vio.CLASS_COND, vio.VAR_STEP, vio.VQVAE_DECODER]
    (cond,) = profiles[vio.CLASS_COND]
    assert cond.shape_dict()["labels"] == ((2,), (2,), (2,))  # [cond; null] for the export's one image
    (dec,) = profiles[vio.VQVAE_DECODER]
    pn = data["model"]["config"]["patch_nums"][-1]
    assert dec.shape_dict()["f_hat"][0] == (1, 32, pn, pn)


def test_build_records_the_var_graphs_and_the_check_feeds_them(calibrated, tmp_path, fake_toolchain):
    """`stagevar-export build` on a VAR export: the four VAR graphs (not Infinity's five) built
    and recorded; `--check` runs each profile's feeds (here through ONNX Runtime standing in for
    the engine, so every row must agree exactly)."""
    root = Path(shutil.copytree(calibrated, tmp_path / "var"))
    tool = fake_toolchain()
    result = build_engines(root, BuildOptions(), toolchain=tool, stream=sys.stderr)
    assert result.built == list(vio.VAR_GRAPHS)
    data = load_manifest(root, verify="full").data
    (record,) = data["trt_builds"]
    assert sorted(record["graphs"]) == sorted(vio.VAR_GRAPHS)

    import onnxruntime as ort

    class OrtRunner:
        def __init__(self, graph):
            self.session = ort.InferenceSession(str(root / data["graphs"][graph]["path"]))

        def infer(self, profile_index, feeds):
            names = [o.name for o in self.session.get_outputs()]
            return dict(zip(names, self.session.run(None, feeds)))

        def close(self):
            pass

    report = check_engines(root, data, record, lambda graph, plan: OrtRunner(graph))
    failed = [r for r in report["rows"] if not r["ok"]]
    assert report["ok"] and not failed, failed[:3]
    assert {r["graph"] for r in report["rows"]} == set(vio.VAR_GRAPHS)


@pytest.fixture(scope="module")
def var_trt_export(calibrated, tmp_path_factory):
    """The calibrated export with fake engines of exporter/trt/profiles.py's profiles, recorded as
    the build records them, and the ORT pipeline's outputs per plan."""
    root = Path(shutil.copytree(calibrated, tmp_path_factory.mktemp("var-fake") / "var"))
    manifest = load_manifest(root, verify=False)
    ort_pipe = Pipeline.from_dir(root, verify=False)
    reference = {plan: ort_pipe(class_labels=[207], seed=3, plan=plan, output_type="np", return_intermediates=True)
                 for plan in PLANS}
    (root / ENGINE_DIR).mkdir(parents=True)
    graphs = {}
    for graph, specs in all_profiles(manifest.data).items():
        onnx = manifest.graph_path(graph)
        rel = f"{ENGINE_DIR}/{graph}.plan"
        plan = {"name": graph, "onnx": str(onnx), "device_memory": 1 << 20,
                "profiles": [p.to_json()["shapes"] for p in specs]}
        (root / rel).write_text(json.dumps(plan))
        graphs[graph] = {"plan": rel, "onnx_sha256": sha256_file(onnx),
                         "weights_sha256": sha256_file(root / manifest.graphs[graph]["weights"]),
                         "key": "0" * 64, "profiles": [p.to_json() for p in specs]}
    record = {"dir": ENGINE_DIR, "tensorrt": TRT_VERSION, "compute_capability": CC, "device_name": "Fake H100",
              "flags": {}, "plugins": None, "timing_cache": None, "graphs": graphs}
    content = {k: v for k, v in manifest.data.items() if k not in ("files", "schema_version")}
    write_manifest(root, dict(content, trt_builds=[record]))
    return root, reference


@pytest.fixture
def gpu(monkeypatch):
    gpu = fake_trt.FakeGpu()
    for name, module in gpu.modules(TRT_VERSION).items():
        monkeypatch.setitem(sys.modules, name, module)
    return gpu


@pytest.mark.parametrize("plan", PLANS)
def test_the_var_pipeline_on_fake_tensorrt_equals_the_ort_pipeline(var_trt_export, gpu, plan):
    """Bugs guarded against: the trt backend binding Infinity's graph contracts (VAR's engines
    refused or outputs unread), the class_cond rows or K/V compaction wrong on device memory, a
    LOWRANK scale's RTR cache read from a stale buffer. The fake runs the same ONNX graphs with
    onnxruntime, so ids, logits and pixels must be equal bit for bit."""
    root, reference = var_trt_export
    pipe = Pipeline.from_dir(root, backend="trt")
    assert type(pipe).__name__ == "VarPipeline" and pipe.backend.name == "trt"
    for _ in range(2):  # the second request replays the captured CUDA graphs
        out = pipe(class_labels=[207], seed=3, plan=plan, output_type="np", return_intermediates=True)
        ref = reference[plan]
        np.testing.assert_array_equal(out.images, ref.images)
        for mine, theirs in zip(out.intermediates, ref.intermediates, strict=True):
            assert mine.mode is theirs.mode
            if theirs.mode is Mode.SKIP:
                continue
            np.testing.assert_array_equal(mine.ids, theirs.ids, err_msg=f"scale {mine.index}")
            np.testing.assert_array_equal(mine.logits, theirs.logits, err_msg=f"scale {mine.index}")
            for a, b in zip(mine.indices, theirs.indices, strict=True):
                np.testing.assert_array_equal(a, b)
    engines = {e["engine"] for e in gpu.events if e["op"] == "execute"}
    assert engines == set(vio.VAR_GRAPHS) - ({vio.VAR_FIDELITY} if plan in ("exact", "cfg-off") else set())
    assert pipe.backend.capture.launches > 0


def test_var_engines_built_before_calibrate_are_refused_in_one_sentence(var_trt_export, gpu, tmp_path):
    """A build without var_fidelity, then calibrate adds LOWRANK entries: loading refuses with
    the rebuild command instead of failing at the first stagevar request."""
    root, _ = var_trt_export
    data = load_manifest(root, verify=False).data
    (record,) = data["trt_builds"]
    record = dict(record, graphs={g: v for g, v in record["graphs"].items() if g != vio.VAR_FIDELITY})
    content = {k: v for k, v in data.items() if k not in ("files", "schema_version")}
    copy = Path(shutil.copytree(root, tmp_path / "var"))
    write_manifest(copy, dict(content, trt_builds=[record]))
    with pytest.raises(StagevarError) as info:
        Pipeline.from_dir(copy, backend="trt")
    message = str(info.value)
    assert "var_fidelity" in message and "stagevar-export build" in message and "\n" not in message


@pytest.mark.slow  # one var-tiny export (~1 min on 2 cores)
def test_export_with_engine_trt_keeps_the_var_export_without_tensorrt(tmp_path, monkeypatch, capsys):
    """`stagevar-export --model var-tiny --engine trt` on a machine without TensorRT: the export
    is written whole, then one sentence and exit 2 (bug guarded against: VAR refusing --engine
    trt outright, or a failed build taking the finished export with it)."""
    from stagevar.exporter.cli_export import entry

    monkeypatch.setitem(sys.modules, "tensorrt", None)  # `import tensorrt` raises ImportError
    out = tmp_path / "var"
    assert entry(["--model", "var-tiny", "--random-init", "--engine", "trt", "--out", str(out)]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]  # after the export's progress lines
    assert last.startswith("error: TensorRT is not installed") and "stagevar-export build" in last
    load_manifest(out, verify="full")  # complete and intact
