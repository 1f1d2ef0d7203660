"""Opening an export keeps its weights resident once, and a load that cannot fit is refused first.

Memory is measured in a child process (/proc/self/status: RssAnon, VmRSS) around session
creation and a first run of every session, on synthetic graphs with large shared weights
(tests/runtime/synthetic_weights.py): 8 x 2048x2048 weights, 64 MiB in fp16, 128 MiB in fp32.
The "plain" mode (one InferenceSession per file, as onnxruntime does by itself) is measured too:
it shows the per-session copies the probe must be able to see, so a probe that sees nothing
cannot pass the tests.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from stagevar.runtime import load_memory
from stagevar.runtime.errors import StagevarError
from stagevar.runtime.load_memory import check_fits, estimate_load
from stagevar.runtime.manifest import Manifest

from .synthetic_weights import build_shared_graphs

MIB = 1 << 20

_PROBE = textwrap.dedent("""
    import json, sys
    import numpy as np, onnxruntime as ort
    from stagevar.runtime.ort_backend import _session_options
    from stagevar.runtime.shared_weights import SharedWeights, open_fused

    def mem():
        out = {}
        for line in open("/proc/self/status"):
            key = line.split(":")[0]
            if key in ("VmRSS", "RssAnon"):
                out[key] = int(line.split()[1]) * 1024
        return out

    mode, paths = sys.argv[1], sys.argv[2:]
    import onnx  # noqa: F401  (the loader's imports are runtime overhead, not weights: before the baseline)
    base = mem()
    shared = SharedWeights(upcast_fp16=True)
    sessions = []
    for path in paths:
        if mode == "shared":
            sessions.append(shared.session(path, __import__("pathlib").Path(path), _session_options(), ["CPUExecutionProvider"]))
        elif mode == "fused":  # the CUDA loader's rewrite, run on the CPU provider
            sessions.append(open_fused(path, __import__("pathlib").Path(path), _session_options(), ["CPUExecutionProvider"]))
        else:
            sessions.append(ort.InferenceSession(path, _session_options(), providers=["CPUExecutionProvider"]))
    loaded = mem()
    x = np.random.default_rng(1).standard_normal((2, 2048)).astype(np.float32)
    outs = [[o.tolist() for o in s.run(None, {"x": x})] for s in sessions]
    ran = mem()
    print(json.dumps({"base": base, "loaded": loaded, "ran": ran, "outs": outs,
                      "out_types": [[o.type for o in s.get_outputs()] for s in sessions]}))
""")


_PROBED: dict = {}


def _probe(mode: str, paths) -> dict:
    """The child's report, run once per (mode, graphs) in this test session."""
    key = (mode, tuple(map(str, paths)))
    if key not in _PROBED:
        _PROBED[key] = _run_probe(mode, paths)
    return _PROBED[key]


def _run_probe(mode: str, paths) -> dict:
    out = subprocess.run([sys.executable, "-c", _PROBE, mode, *map(str, paths)], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def fp16_graphs(tmp_path_factory):
    return build_shared_graphs(tmp_path_factory.mktemp("fp16"), "fp16", width=2048)


@pytest.fixture(scope="module")
def fp32_graphs(tmp_path_factory):
    return build_shared_graphs(tmp_path_factory.mktemp("fp32"), "fp32", width=2048)


def _anon_after_load(report) -> int:
    return report["loaded"]["RssAnon"] - report["base"]["RssAnon"]


def test_fp16_weights_cost_one_fp32_copy_shared_by_every_session(fp16_graphs):
    """Guards against onnxruntime's CPU provider folding Cast(fp16 weight) into an fp32 copy per
    session (the Infinity-2B out-of-memory kill): two sessions must cost one fp32 copy."""
    paths = list(fp16_graphs["paths"].values())
    one_fp32_copy = 2 * fp16_graphs["weights_bytes"]
    shared, plain = _probe("shared", paths), _probe("plain", paths)
    assert 0.8 * one_fp32_copy <= _anon_after_load(shared) <= 1.3 * one_fp32_copy, shared
    # The probe sees per-session copies where they happen (one per session: two here).
    assert _anon_after_load(plain) >= 1.7 * one_fp32_copy, plain


def test_fp32_weights_are_resident_once_after_every_session_ran(fp32_graphs):
    """Guards against each session mapping (or copying) the shared weights file on its own:
    after both sessions touched every weight, RSS grew by one copy of the file, not two."""
    paths = list(fp32_graphs["paths"].values())
    size = fp32_graphs["weights_bytes"]
    shared, plain = _probe("shared", paths), _probe("plain", paths)
    grown = shared["ran"]["VmRSS"] - shared["base"]["VmRSS"]
    assert 0.8 * size <= grown <= 1.3 * size, shared
    assert _anon_after_load(shared) < 0.2 * size, shared  # mapped, not copied
    assert plain["ran"]["VmRSS"] - plain["base"]["VmRSS"] >= 1.7 * size, plain


def test_fused_loader_builds_no_transposed_copy_and_matches_onnxruntime(fp32_graphs):
    """The loader of the CUDA provider (run here on CPU: same graph rewrite, same host-side
    loading). Guards against onnxruntime folding Transpose(W) into a host copy of every weight
    while creating the session (a full extra copy of the weights in host memory), and against a
    rewrite that changes the result (FusedMatMul transB vs MatMul(Transpose): same library,
    another GEMM path, hence a tolerance)."""
    paths = list(fp32_graphs["paths"].values())
    fused, plain = _probe("fused", paths), _probe("plain", paths)
    assert _anon_after_load(fused) < 0.2 * fp32_graphs["weights_bytes"], fused
    assert _anon_after_load(plain) >= 1.7 * fp32_graphs["weights_bytes"], plain
    for got_graph, want_graph in zip(fused["outs"], plain["outs"]):
        for got, want in zip(got_graph, want_graph):
            np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4, atol=1e-4)


def test_upcast_fp16_graph_keeps_its_fp16_outputs_and_matches_onnxruntime(fp16_graphs):
    """Guards against the fp32 rewrite changing the graph contract (an fp16 output turned fp32)
    or its values (a weight bound to the wrong tensor, a cast dropped). Both sides are ONNX
    Runtime, but the plain path rounds to fp16 between nodes and the rewrite does not: tolerance."""
    paths = list(fp16_graphs["paths"].values())
    shared, plain = _probe("shared", paths), _probe("plain", paths)
    assert shared["out_types"] == plain["out_types"] == [["tensor(float)"], ["tensor(float)", "tensor(float16)"]]
    for got_graph, want_graph in zip(shared["outs"], plain["outs"]):
        for got, want in zip(got_graph, want_graph):
            np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=2e-2, atol=2e-2)


def _manifest(folder, precision: str) -> Manifest:
    return Manifest(root=folder, data={"precision": precision,
                                       "graphs": {g: {"path": f"{g}.onnx"} for g in ("a", "b")}})


def test_estimate_counts_weights_shared_by_graphs_once(fp16_graphs, fp32_graphs):
    """Guards against an estimate that adds the shared file once per graph (twice here), or that
    forgets the fp32 conversion of fp16 weights on CPU."""
    folder16 = fp16_graphs["paths"]["a"].parent
    est16 = estimate_load(_manifest(folder16, "fp16"), "cpu", ("a", "b"))
    tensors = 8 * (2048 * 2048 + 2048) * 2  # fp16 bytes of the 8 weights and biases
    assert est16.converted_bytes == 2 * tensors and est16.mapped_bytes == 0
    est32 = estimate_load(_manifest(fp32_graphs["paths"]["a"].parent, "fp32"), "cpu", ("a", "b"))
    assert est32.mapped_bytes == 2 * tensors and est32.converted_bytes == 0
    assert est32.anonymous_bytes < est16.anonymous_bytes
    cuda = estimate_load(_manifest(folder16, "fp16"), "cuda", ("a", "b"))
    # ONNX Runtime CUDA: each session uploads its own copy; fp16 stays fp16 on the device.
    assert cuda.device_bytes == 2 * tensors + load_memory.CUDA_CONTEXT_BYTES
    assert cuda.anonymous_bytes < est16.anonymous_bytes


def test_too_large_fp16_load_is_refused_in_one_sentence(fp16_graphs):
    """Guards against a load that would be killed for memory: with (faked) less memory available
    than one fp32 copy, the estimate refuses in one sentence naming both sizes and the fixes."""
    est = estimate_load(_manifest(fp16_graphs["paths"]["a"].parent, "fp16"), "cpu", ("a", "b"))
    with pytest.raises(StagevarError) as err:
        check_fits(est, "/exports/x", available=est.anonymous_bytes - MIB)
    text = str(err.value)
    assert text.count(". ") == 0 and text.endswith(".") and "\n" not in text
    for words in ("fp16 export", f"{est.anonymous_bytes / 1e9:.1f} GB", "--precision fp32", "--device cuda"):
        assert words in text
    check_fits(est, "/exports/x", available=est.anonymous_bytes + MIB)  # enough: no error


def test_refusal_happens_before_any_session_is_created(tiny_artifacts, monkeypatch):
    """Guards against checking the estimate after the sessions were opened (the kill would come
    first): with no memory available, OrtBackend refuses and onnxruntime never opens a graph."""
    import onnxruntime as ort

    from stagevar.runtime.pipeline import Pipeline

    monkeypatch.setattr(load_memory, "available_memory", lambda: 1)
    monkeypatch.setattr(ort, "InferenceSession", lambda *a, **k: pytest.fail("a session was created"))
    with pytest.raises(StagevarError, match=r"needs about .* GB of host memory, this machine has 0\.0 GB"):
        Pipeline.from_dir(tiny_artifacts)
