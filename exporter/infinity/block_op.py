"""`stagevar_trace::block`: a stand-in for one transformer block while an outer graph traces.

Tracing a deep graph with torch.export costs time per traced op (symbolic-shape arithmetic on
every dynamic dim), so tracing `step` and `fidelity` with all their blocks spelled out grows with
depth. Instead the outer graph traces with every block replaced by this op (one ONNX node
`stagevar.trace.Block` carrying the block's index), one block is traced on its own, and
`block_stitch` puts that block's body, reading block i's weights, in place of node i.

The op only exists while tracing: its eager implementation refuses to run, and no exported graph
keeps a `stagevar.trace` node (block_stitch inlines every one of them).
"""

from __future__ import annotations

import contextlib

import onnx
import torch
from onnx.defs import OpSchema
from torch import Tensor, nn

from .transformer import InfinityTransformer

TRACE_DOMAIN = "stagevar.trace"
BLOCK_OP = "Block"
BLOCK_INPUTS = ("x", "gss", "rope_cos", "rope_sin", "past_k", "past_v", "text_k", "text_v", "text_bias")
BLOCK_OUTPUTS = ("x_out", "k", "v")


@torch.library.custom_op("stagevar_trace::block", mutates_args=())
def block_call(x: Tensor, gss: Tensor, cos: Tensor, sin: Tensor, past_k: Tensor, past_v: Tensor,
               text_k: Tensor, text_v: Tensor, text_bias: Tensor, index: int) -> tuple[Tensor, Tensor, Tensor]:
    raise RuntimeError("stagevar_trace::block is a tracing placeholder; run the model's blocks instead.")


@block_call.register_fake
def _block_shapes(x, gss, cos, sin, past_k, past_v, text_k, text_v, text_bias, index):
    # (x, new k, new v): k and v are (rows, heads, tokens, head_dim) in the K/V dtype (text_k's).
    kv_shape = (x.shape[0], text_k.shape[1], x.shape[1], text_k.shape[3])
    return torch.empty_like(x), text_k.new_empty(kv_shape), text_v.new_empty(kv_shape)


def register_block_schema() -> None:
    """Make `stagevar.trace.Block` known to onnx so the exporter can emit it (idempotent)."""
    if onnx.defs.has(BLOCK_OP, TRACE_DOMAIN):
        return
    param = OpSchema.FormalParameter
    floats = ["tensor(float)", "tensor(float16)", "tensor(bfloat16)"]
    kv = {"past_k", "past_v", "text_k", "text_v"}
    onnx.defs.register_schema(OpSchema(
        BLOCK_OP, TRACE_DOMAIN, 1, doc="tracing placeholder of one transformer block (never exported)",
        inputs=[param(name, "K" if name in kv else "T") for name in BLOCK_INPUTS],
        outputs=[param("x_out", "T"), param("k", "K"), param("v", "K")],
        type_constraints=[("T", floats, "activations"), ("K", floats, "K/V")],
        attributes=[OpSchema.Attribute("index", OpSchema.AttrType.INT, "block index (0 .. depth-1)")],
    ))


def _block_onnx(x, gss, cos, sin, past_k, past_v, text_k, text_v, text_bias, index):
    from onnxscript.values import Opset

    return getattr(Opset(TRACE_DOMAIN, 1), BLOCK_OP)(x, gss, cos, sin, past_k, past_v, text_k, text_v, text_bias,
                                                     index=index)


def block_translations() -> dict:
    register_block_schema()
    return {torch.ops.stagevar_trace.block.default: _block_onnx}


class _BlockCall(nn.Module):
    """Takes a block's place (same call signature) and calls the placeholder op."""

    def __init__(self, index: int) -> None:
        super().__init__()
        self.index = index

    def forward(self, x, gss, cos, sin, past_k, past_v, text_k, text_v, text_bias, attn_bias=None):
        if past_k is None or attn_bias is not None:
            raise ValueError("block placeholders serve the cached graphs (past K/V given, no attention bias)")
        return block_call(x, gss, cos, sin, past_k, past_v, text_k, text_v, text_bias, self.index)


@contextlib.contextmanager
def placeholder_blocks(model: InfinityTransformer):
    """Within the block, every block of `model` is a `_BlockCall`; the real blocks come back after."""
    per = model.config.blocks_per_chunk
    saved = []
    try:
        for c, chunk in enumerate(model.block_chunks):
            saved.append(list(chunk.module))
            for j in range(len(chunk.module)):
                chunk.module[j] = _BlockCall(c * per + j)
        yield model
    finally:
        for chunk, blocks in zip(model.block_chunks, saved):
            for j, block in enumerate(blocks):
                chunk.module[j] = block
