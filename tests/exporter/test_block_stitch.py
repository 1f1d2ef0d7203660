"""Block stitching (exporter/infinity/block_stitch.py): `step` and `fidelity` trace one block and
replicate it in ONNX with every block's own weights.

The end-to-end guards are the exact-vs-torch check of every graph (tests/exporter/test_check.py)
and this file's ORT-vs-eager comparison of a stitched step graph; both fail when replicated blocks
read block 0's weights (planted and seen failing while writing them).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import onnxruntime as ort
import pytest
import torch

from stagevar.exporter.attention_form import AttentionSpec, attention_export
from stagevar.exporter.infinity.block_op import TRACE_DOMAIN, block_call, placeholder_blocks
from stagevar.exporter.infinity.block_stitch import BlockFunction, stitch_blocks
from stagevar.exporter.infinity.export_transformer import TransformerTracer, _step_example
from stagevar.exporter.infinity.graphs_transformer import StepGraph
from stagevar.exporter.infinity.presets import infinity_tiny
from stagevar.exporter.infinity.random_init import random_transformer
from stagevar.runtime import graph_io as gio


@pytest.fixture(scope="module")
def model():
    return random_transformer(infinity_tiny().transformer, seed=3)


@pytest.mark.parametrize("form", ["fused", "decomposed"])
def test_stitched_step_equals_eager_torch_with_each_blocks_own_weights(model, form):
    """Guards: a replicated block reading block 0's (or another block's) weights, a block dropped
    or stitched twice, inputs wired to the wrong function input. The model's blocks all have
    different random weights, so any of these moves the logits far past the tolerance (ORT vs
    torch: different GEMM summation orders, ~1e-6 relative in fp32)."""
    tracer = TransformerTracer(model)
    with attention_export(AttentionSpec(form)):
        program = tracer.program(gio.STEP)
    graph = program.model.graph
    assert not any(node.domain == TRACE_DOMAIN for node in graph.all_nodes()), "a block placeholder survived"
    assert not program.model.functions, "the block function should be inlined and dropped"
    for c in range(model.config.block_chunks):
        for j in range(model.config.blocks_per_chunk):
            prefix = f"model.block_chunks.{c}.module.{j}."
            assert any(name.startswith(prefix) for name in graph.initializers), f"no weights of block {prefix}"

    args, _ = _step_example(model.config)
    session = ort.InferenceSession(ir.serde.serialize_model(program.model).SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    got = session.run(None, {name: a.numpy() for name, a in zip(gio.STEP_INPUTS, args)})
    with torch.no_grad():
        want = StepGraph(model)(*args)
    for name, g, w in zip(gio.STEP_OUTPUTS, got, want):
        np.testing.assert_allclose(g, w.numpy(), rtol=1e-4, atol=1e-4, err_msg=name)


def test_placeholders_only_live_while_tracing(model):
    """Guards: blocks left replaced after a trace (or after a failing one), which would break the
    eager reference and the check's torch side; a placeholder that silently runs eagerly."""
    blocks = [b for chunk in model.block_chunks for b in chunk.module]
    with pytest.raises(RuntimeError):
        with placeholder_blocks(model):
            assert all(type(b).__name__ == "_BlockCall" for chunk in model.block_chunks for b in chunk.module)
            x = torch.zeros(1, 2, model.config.embed_dim)
            block_call(x, x, x, x, x, x, x, x, x, 0)  # eager: refuses
    assert [b for chunk in model.block_chunks for b in chunk.module] == blocks


def test_stitching_refuses_a_graph_whose_placeholders_do_not_match_the_blocks(model):
    """Guards: a graph traced without placeholders (or with some blocks missing) stitched anyway,
    which would leave blocks out of the exported graph without an error."""
    tracer = TransformerTracer(model)
    fn: BlockFunction = tracer.block_function()
    blocks = [b for chunk in model.block_chunks for b in chunk.module]
    empty = ir.Model(ir.Graph([], [], nodes=[], opset_imports={"": 20}), ir_version=10)
    with pytest.raises(ValueError, match="placeholders"):
        stitch_blocks(empty, fn, blocks, [f"b{i}" for i in range(len(blocks))])
