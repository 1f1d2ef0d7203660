"""Fused (ONNX `Attention`, opset 23) and decomposed (MatMul/Softmax/MatMul, opset 20) exports.

`tiny_artifacts` is the default export (fused); `decomposed` exports the same weights with
`--attention decomposed`. Both are run teacher-forced: every graph call the fused pipeline makes is
replayed, with the same inputs, on the decomposed graphs, for every plan, aspect, batch > 1.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import onnx
import pytest

from stagevar.exporter.attention_form import AttentionSpec, query_chunks_for
from stagevar.runtime import graph_io as gio
from stagevar.runtime.manifest import load_manifest
from stagevar.runtime.ort_backend import OrtBackend
from stagevar.runtime.pipeline import Pipeline
from stagevar.runtime.stage_plan import PLAN_PRESETS
from stagevar.runtime.tokenize import load_tokenizer_json

# fp32, same weights, same inputs: the fused kernel and MatMul/Softmax/MatMul differ only in
# summation order over up to 10k keys (ONNX Runtime's own kernels on both sides). 1e-5 relative
# plus 5e-5 absolute: the CFG combination (3 cond - 2 null) / tau scales the logits' rounding by up
# to 10, and the LOWRANK chunk outputs carry it through 8 chunks (3.8e-5 measured on stagevar-full).
# A wrong chunk boundary, scale or K/V row shows up as O(1).
TOL, TOL_ABS = 1e-5, 5e-5


@pytest.fixture(scope="module")
def decomposed(tiny_bundle, tmp_path_factory):
    from stagevar.exporter.infinity.export_artifacts import export_artifacts

    out = tmp_path_factory.mktemp("decomposed") / "infinity-tiny"
    return export_artifacts(tiny_bundle, out, aspects=("1:1", "2:1"), attention="decomposed")


def _ops(path) -> list[onnx.NodeProto]:
    return list(onnx.load(str(path), load_external_data=False).graph.node)


def test_manifest_records_the_attention_form_and_its_opset(tiny_artifacts, decomposed):
    """Guards: the manifest claiming fused while the graphs are decomposed (or the opset unbumped)."""
    fused = json.loads((tiny_artifacts / "manifest.json").read_text())
    plain = json.loads((decomposed / "manifest.json").read_text())
    assert fused["opset"] == 23 and fused["attention"]["form"] == "fused"
    assert fused["attention"]["self_attention_op"] == "Attention"
    # infinity-tiny at 1M: 2 rows x 2 heads x 4096 x 10521 fp32 scores = 690 MB -> 2 chunks of 512 MB.
    assert fused["attention"]["query_chunks"] == 2
    assert plain["opset"] == 20 and plain["attention"] == AttentionSpec("decomposed").manifest_entry()
    for data, opset in ((fused, 23), (plain, 20)):
        model = onnx.load(str(tiny_artifacts if opset == 23 else decomposed) + "/onnx/step.onnx", load_external_data=False)
        assert {o.domain: o.version for o in model.opset_import}[""] == opset


def test_fused_graphs_hold_attention_nodes_and_no_softmax_in_self_attention(tiny_artifacts, decomposed, tiny_bundle):
    """Guards: self-attention exported as MatMul/Softmax/MatMul although fused was asked for; a
    mask on an `Attention` node (ONNX Runtime's CPU kernel refuses masks broadcast over queries);
    the query chunking missing. The only Softmax left is the text cross-attention's, one per block."""
    depth = tiny_bundle.preset.transformer.depth
    chunks = json.loads((tiny_artifacts / "manifest.json").read_text())["attention"]["query_chunks"]
    for graph in (gio.STEP, gio.FIDELITY):
        nodes = _ops(tiny_artifacts / "onnx" / f"{graph}.onnx")
        attention = [n for n in nodes if n.op_type == "Attention" and n.domain in ("", "ai.onnx")]
        assert len(attention) == depth * chunks, graph
        assert all(len([i for i in n.input if i]) == 3 for n in attention), "an Attention node carries a mask"
        assert sum(n.op_type == "Softmax" for n in nodes) == depth, graph  # cross-attention only
        plain = _ops(decomposed / "onnx" / f"{graph}.onnx")
        assert not any(n.op_type == "Attention" for n in plain)
        assert sum(n.op_type == "Softmax" for n in plain) == 2 * depth  # self + cross per block
    for graph in (gio.TEXT_COND, gio.TEXT_ENCODER, gio.VAE_DECODER):
        assert not any(n.op_type == "Attention" for n in _ops(tiny_artifacts / "onnx" / f"{graph}.onnx"))


class _ReplayOnDecomposed(OrtBackend):
    """The fused export's backend; every run is replayed on the decomposed export's sessions with
    the same inputs, and the outputs compared (teacher forcing: the fused outputs drive the request)."""

    def __init__(self, manifest, other):
        super().__init__(manifest)
        self.other = other
        self.compared: dict[str, int] = {}
        self.worst = 0.0
        self.tolerance = lambda want: TOL_ABS + TOL * np.abs(want)

    def _compare(self, graph, feeds, got: dict):
        session = self.other.sessions[graph]
        want = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))
        for name, a in got.items():
            # uint8 images: the 1e-6 differences may move a pixel across a rounding boundary.
            tol = (lambda _: 1.0) if np.issubdtype(np.asarray(a).dtype, np.integer) else self.tolerance
            a, b = np.asarray(a, np.float64), np.asarray(want[name], np.float64)
            assert a.shape == b.shape, (graph, name)
            with np.errstate(invalid="ignore"):  # equal infinities (text_bias's -inf) are equal
                diff_all = np.where(a == b, 0.0, np.abs(a - b))
            diff = float(np.max(diff_all, initial=0.0))
            self.worst = max(self.worst, diff)
            assert np.all(diff_all <= tol(b)), f"{graph}.{name}: fused and decomposed differ by {diff:.2e}"
        self.compared[graph] = self.compared.get(graph, 0) + 1

    def run_plain(self, graph, feeds):
        outputs = super().run_plain(graph, feeds)
        names = [o.name for o in self.sessions[graph].get_outputs()]
        self._compare(graph, {k: np.asarray(v, self.input_dtype(graph, k)) for k, v in feeds.items()},
                      dict(zip(names, outputs)))
        return outputs

    def run_bound(self, graph, inputs, outputs):
        feeds = {k: (v.numpy().copy() if hasattr(v, "numpy") else np.asarray(v, self.input_dtype(graph, k)))
                 for k, v in inputs.items()}
        super().run_bound(graph, inputs, outputs)
        self._compare(graph, feeds, {k: v.numpy() for k, v in outputs.items()})


@pytest.mark.parametrize("plan", PLAN_PRESETS)
def test_fused_and_decomposed_give_the_same_outputs_teacher_forced_on_every_plan(tiny_artifacts, decomposed, plan):
    """Guards: a wrong scale, mask, chunk boundary (padding rows leaking into real rows) or K/V
    handling in the fused path; CFG (cond + null rows), UNCOND and LOWRANK (pseudo-tokens over the
    past K/V plus their own) scales, batch 2, two aspect templates, fp32 within 1e-5."""
    fused_manifest = load_manifest(tiny_artifacts, verify=False)
    backend = _ReplayOnDecomposed(fused_manifest, OrtBackend(load_manifest(decomposed, verify=False)))
    tokenizer = load_tokenizer_json(tiny_artifacts / fused_manifest.data["tokenizer"]["path"])
    pipe = Pipeline(fused_manifest, backend, tokenizer)
    pipe(["a red apple", "a lighthouse at dusk"], seed=3, plan=plan, aspect="2:1", resolution="0.25M", output_type="np")
    pipe("a red fox", seed=1, plan=plan, aspect="1:1", resolution="0.60M", output_type="np")
    assert backend.compared.get(gio.STEP, 0) > 0 and backend.compared[gio.VAE_DECODER] == 2
    if plan in ("stagevar", "stagevar-full"):
        assert backend.compared.get(gio.FIDELITY, 0) > 0
    print(f"{plan}: max |fused - decomposed| = {backend.worst:.2e}", file=sys.stderr)


def test_query_chunks_follow_the_score_budget():
    """Guards: chunking too little (GBs of scores per node) or more chunks than queries."""
    assert query_chunks_for(2, 8, 4096, 10521) == 6  # infinity-mid at 1M: 2.76 GB of scores
    assert query_chunks_for(2, 2, 16, 21) == 1
    assert query_chunks_for(2, 64, 3, 10 ** 6) == 3  # never more chunks than queries
    assert query_chunks_for(8, 16, 4096, 10521) == 16  # capped


@pytest.mark.slow
def test_fp16_fused_and_decomposed_agree_teacher_forced(tiny_bundle, tmp_path_factory):
    """Guards: the fp16 fused path (fp16 Q/K/V into `Attention`, fp32 accumulation inside the
    kernel) drifting from the decomposed fp16 policy (fp16 GEMMs, fp32 softmax). Tolerance of the
    fp16 check (5e-2 abs + 5e-2 rel): the two round the scores at different points."""
    from stagevar.exporter.infinity.export_artifacts import export_artifacts

    root = tmp_path_factory.mktemp("fp16")
    forms = {form: export_artifacts(tiny_bundle, root / form, resolution="0.25M", precision="fp16", attention=form)
             for form in ("fused", "decomposed")}
    manifest = load_manifest(forms["fused"], verify=False)
    backend = _ReplayOnDecomposed(manifest, OrtBackend(load_manifest(forms["decomposed"], verify=False)))
    backend.tolerance = lambda b: 5e-2 + 5e-2 * np.abs(b)
    tokenizer = load_tokenizer_json(forms["fused"] / manifest.data["tokenizer"]["path"])
    for plan in ("exact", "stagevar-full"):
        Pipeline(manifest, backend, tokenizer)(["a red apple", "a lighthouse"], seed=0, plan=plan, output_type="np")
    assert backend.compared[gio.STEP] > 0 and backend.compared[gio.FIDELITY] > 0
