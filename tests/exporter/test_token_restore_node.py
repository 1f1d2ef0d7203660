"""The `stagevar.TokenRestore` ONNX node: its local function, its torch op, and the exported
fidelity graph that uses it (DESIGN.md section 8)."""

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import helper

from stagevar.exporter.onnx_local_functions import (
    DOMAIN, TOKEN_RESTORE, TOKEN_RESTORE_INPUTS, attach_local_functions, register_schemas,
)
from stagevar.exporter.token_restore_op import token_restore
from stagevar.runtime.lowrank import restore_tokens
from stagevar.runtime.resize import area_matrix

# (prev grid, current grid, rows r): non-square grids, r = 0, r = M, and the same size.
CASES = [((1, 1), (2, 2), 1), ((3, 5), (7, 9), 10), ((4, 6), (8, 12), 96), ((5, 5), (10, 10), 0),
         ((12, 12), (16, 16), 40), ((8, 8), (8, 8), 7), ((30, 60), (37, 74), 200)]


def _case(prev_hw, cur_hw, r, B=2, C=5, seed=0):
    rng = np.random.default_rng(seed)
    M = cur_hw[0] * cur_hw[1]
    prev = rng.standard_normal((B, prev_hw[0] * prev_hw[1], C)).astype(np.float32)
    rows = rng.standard_normal((B, r, C)).astype(np.float32)
    idx = np.stack([np.sort(rng.permutation(M)[:r]) for _ in range(B)]).astype(np.int64).reshape(B, r)
    x = rng.standard_normal((B, M, C)).astype(np.float32)
    ah = area_matrix(prev_hw[0], cur_hw[0]).astype(np.float32)
    aw = area_matrix(prev_hw[1], cur_hw[1]).astype(np.float32)
    return x, prev, rows, idx, ah, aw


def _single_node_model(opset=20) -> bytes:
    register_schemas()
    f, i64 = onnx.TensorProto.FLOAT, onnx.TensorProto.INT64
    ins = [helper.make_tensor_value_info("x", f, ["B", "M", "C"]), helper.make_tensor_value_info("prev", f, ["B", "m", "C"]),
           helper.make_tensor_value_info("rows", f, ["B", "r", "C"]), helper.make_tensor_value_info("indices", i64, ["B", "r"]),
           helper.make_tensor_value_info("area_h", f, ["H", "h"]), helper.make_tensor_value_info("area_w", f, ["W", "w"])]
    node = helper.make_node(TOKEN_RESTORE, list(TOKEN_RESTORE_INPUTS), ["y"], domain=DOMAIN)
    graph = helper.make_graph([node], "token_restore", ins, [helper.make_tensor_value_info("y", f, ["B", "M", "C"])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    assert attach_local_functions(model) == 1
    onnx.checker.check_model(model, full_check=True)
    return model.SerializeToString()


@pytest.fixture(scope="module")
def session():
    return ort.InferenceSession(_single_node_model(), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("prev_hw,cur_hw,r", CASES)
def test_local_function_in_onnxruntime_equals_numpy_restore(session, prev_hw, cur_hw, r):
    x, prev, rows, idx, ah, aw = _case(prev_hw, cur_hw, r)
    (y,) = session.run(None, dict(zip(TOKEN_RESTORE_INPUTS, (x, prev, rows, idx, ah, aw))))
    expected = restore_tokens(prev, prev_hw, cur_hw, rows, idx)
    assert y.shape == x.shape
    np.testing.assert_allclose(y, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("prev_hw,cur_hw,r", CASES)
def test_torch_op_equals_the_onnx_function_bit_for_bit_when_upsampling(session, prev_hw, cur_hw, r):
    args = _case(prev_hw, cur_hw, r, seed=1)
    ours = token_restore(*(torch.from_numpy(a) for a in args)).numpy()
    (theirs,) = session.run(None, dict(zip(TOKEN_RESTORE_INPUTS, args)))
    # Upsampling mixes at most two inputs per axis with weights 1 or 1/2: one rounding each,
    # so torch and ONNX Runtime agree exactly (this is what keeps LOWRANK bits identical).
    np.testing.assert_array_equal(ours, theirs)


def test_attach_refuses_an_unknown_stagevar_op():
    node = helper.make_node("Mystery", ["a"], ["b"], domain=DOMAIN)
    f = onnx.TensorProto.FLOAT
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("a", f, [1])], [helper.make_tensor_value_info("b", f, [1])])
    with pytest.raises(ValueError, match="Mystery"):
        attach_local_functions(helper.make_model(graph))


def test_the_exported_fidelity_graph_has_one_token_restore_node_per_chunk(tiny_artifacts, tiny_bundle):
    model = onnx.load(str(tiny_artifacts / "onnx" / "fidelity.onnx"), load_external_data=False)
    nodes = [n for n in model.graph.node if n.domain == DOMAIN]
    assert [n.op_type for n in nodes] == [TOKEN_RESTORE] * tiny_bundle.preset.transformer.block_chunks
    assert [(f.domain, f.name) for f in model.functions] == [(DOMAIN, TOKEN_RESTORE)]
    assert {o.domain: o.version for o in model.opset_import}[DOMAIN] == 1
    inputs = [i.name for i in model.graph.input]
    assert "area_h" in inputs and "area_w" in inputs and "area" not in inputs
    # The step graph has no LOWRANK restoration, hence no custom node to resolve.
    step = onnx.load(str(tiny_artifacts / "onnx" / "step.onnx"), load_external_data=False)
    assert not [n for n in step.graph.node if n.domain == DOMAIN] and not step.functions


def test_plugin_variant_renames_the_nodes_to_the_trt_plugin_and_drops_the_function(tiny_artifacts, tiny_bundle):
    from stagevar.exporter.onnx_local_functions import plugin_variant

    model = onnx.load(str(tiny_artifacts / "onnx" / "fidelity.onnx"), load_external_data=False)
    chunks = tiny_bundle.preset.transformer.block_chunks
    assert plugin_variant(model) == chunks
    renamed = [n for n in model.graph.node if n.op_type == "StageVarTokenRestore"]
    assert len(renamed) == chunks and not model.functions
    # The name/version must be the ones plugins/trt/token_restore_plugin.cpp registers.
    source = (Path(__file__).parents[2] / "plugins" / "trt" / "token_restore_plugin.cpp").read_text()
    assert 'kPluginName = "StageVarTokenRestore"' in source and 'kPluginVersion = "1"' in source
    attrs = {a.name: helper.get_attribute_value(a) for a in renamed[0].attribute}
    assert attrs == {"plugin_version": b"1", "plugin_namespace": b""}
    assert list(renamed[0].input)[3] != "" and len(renamed[0].input) == 6
