"""One traced transformer block, replicated in ONNX for every block of a graph.

`step` and `fidelity` trace with each block replaced by a `stagevar.trace.Block` placeholder
(block_op.py). Block 0 is traced once on its own with the same dynamic dims; its ONNX graph
becomes a model-local function whose inputs are the block's 9 activations followed by its
weights. Each placeholder i then becomes a call of that function with block i's weights (new
initializers named as a whole-model trace names them, `model.block_chunks.{c}.module.{j}.*`),
and the exporter's inline pass spells the calls out. The graphs are the ones a whole-model trace
gives, but the tracing cost no longer grows with depth (the 8 blocks of infinity-shapes traced
~8x; infinity2b has 32).

Nothing is folded inside the block before it is replicated: a folded constant (e.g. the
concatenated q/k/v bias) would carry block 0's values into every block. The clean-up passes run
on the stitched graph (onnx_export._light_optimize).
"""

from __future__ import annotations

import onnx_ir as ir
import torch
from torch import nn

from .block_op import BLOCK_INPUTS, BLOCK_OP, BLOCK_OUTPUTS, TRACE_DOMAIN
from .config import InfinityConfig

# Example sizes: >= 2 and pairwise distinct on every dynamic axis (rows, tokens, past, text).
_B, _L, _P, _T = 2, 3, 5, 7
_AXES = {
    "x": {0: "b", 1: "l"}, "gss": {0: "b"}, "rope_cos": {0: "l"}, "rope_sin": {0: "l"},
    "past_k": {0: "b", 2: "p"}, "past_v": {0: "b", 2: "p"},
    "text_k": {0: "b", 2: "t"}, "text_v": {0: "b", 2: "t"}, "text_bias": {0: "b", 3: "t"},
}
# Name prefix of block weights in the graph wrappers (graphs_transformer: `self.model`).
MODEL_PREFIX = "model."


def block_example(cfg: InfinityConfig, kv_dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(3)
    C, H, hd = cfg.embed_dim, cfg.num_heads, cfg.head_dim
    return (
        torch.randn(_B, _L, C, generator=g),
        torch.randn(_B, 1, 6, C, generator=g) * 0.1,
        torch.randn(_L, hd // 2, generator=g),
        torch.randn(_L, hd // 2, generator=g),
        torch.randn(_B, H, _P, hd, generator=g).to(kv_dtype),
        torch.randn(_B, H, _P, hd, generator=g).to(kv_dtype),
        torch.randn(_B, H, _T, hd, generator=g).to(kv_dtype),
        torch.randn(_B, H, _T, hd, generator=g).to(kv_dtype),
        torch.zeros(_B, 1, 1, _T),
    )


def trace_block(block: nn.Module, cfg: InfinityConfig, kv_dtype: torch.dtype) -> ir.Model:
    """Block 0 as an unoptimised ONNX IR model (initializers = the block's weights, by module path)."""
    from ..onnx_export import export_program

    program = export_program(block, block_example(cfg, kv_dtype), BLOCK_INPUTS, BLOCK_OUTPUTS, _AXES, optimize=False)
    return program.model


class BlockFunction:
    """A traced block as a model-local function `stagevar.trace.Block(activations..., weights...)`."""

    def __init__(self, block_model: ir.Model) -> None:
        graph = block_model.graph
        weights = list(graph.initializers.values())
        self.weight_names = [w.name for w in weights]
        inputs, outputs, nodes = list(graph.inputs), list(graph.outputs), list(graph)
        if len(inputs) != len(BLOCK_INPUTS) or len(outputs) != len(BLOCK_OUTPUTS):
            raise ValueError(f"traced block has {len(inputs)} inputs and {len(outputs)} outputs; expected "
                             f"{len(BLOCK_INPUTS)} and {len(BLOCK_OUTPUTS)}")
        graph.inputs.clear()
        graph.outputs.clear()
        graph.initializers.clear()
        graph.remove(nodes, safe=False)
        for w in weights:
            w.const_value = None
        # Shapes inside use the block trace's own symbols; the stitched graph's inference
        # recomputes them, so they are dropped rather than left to disagree with the outer ones.
        for node in nodes:
            for out in node.outputs:
                out.shape = None
        body = ir.Graph(inputs + weights, outputs, nodes=nodes, opset_imports=dict(graph.opset_imports), name=BLOCK_OP)
        self.function = ir.Function(TRACE_DOMAIN, BLOCK_OP, graph=body, attributes=[])
        self.extra_functions = dict(block_model.functions)


def _initializer(graph: ir.Graph, name: str, tensor: torch.Tensor) -> ir.Value:
    from torch.onnx._internal.exporter._core import TorchTensor

    if name in graph.initializers:
        return graph.initializers[name]
    const = TorchTensor(tensor.detach(), name=name)
    value = ir.Value(name=name, shape=ir.Shape(tuple(tensor.shape)), type=ir.TensorType(const.dtype), const_value=const)
    graph.register_initializer(value)
    return value


def stitch_blocks(model: ir.Model, fn: BlockFunction, blocks: list[nn.Module], names: list[str]) -> int:
    """Turn every placeholder of `model` into a call of `fn` with its block's weights; returns how many.

    `blocks[i]` is block i (the index the placeholder carries), `names[i]` its module path.
    """
    graph = model.graph
    model.functions[fn.function.identifier()] = fn.function.clone()  # each graph inlines its own copy
    for key, extra in fn.extra_functions.items():
        model.functions.setdefault(key, extra)
    stitched = 0
    for node in list(graph):
        if node.domain != TRACE_DOMAIN:
            continue
        index = node.attributes.pop("index").as_int()
        tensors = {**dict(blocks[index].named_parameters()), **dict(blocks[index].named_buffers())}
        missing = [n for n in fn.weight_names if n not in tensors]
        if missing:
            raise ValueError(f"block {index} has no tensors {missing} of the traced block")
        weights = [_initializer(graph, f"{MODEL_PREFIX}{names[index]}.{n}", tensors[n]) for n in fn.weight_names]
        first = len(node.inputs)
        node.resize_inputs(first + len(weights))
        for k, w in enumerate(weights):
            node.replace_input_with(first + k, w)
        stitched += 1
    if stitched != len(blocks):
        raise ValueError(f"the traced graph has {stitched} block placeholders; the model has {len(blocks)} blocks")
    model.opset_imports[TRACE_DOMAIN] = 1
    return stitched


def block_paths(model: nn.Module) -> tuple[list[nn.Module], list[str]]:
    """Blocks in execution order with their module paths (`block_chunks.{c}.module.{j}`)."""
    blocks, names = [], []
    for c, chunk in enumerate(model.block_chunks):
        for j, block in enumerate(chunk.module):
            blocks.append(block)
            names.append(f"block_chunks.{c}.module.{j}")
    return blocks, names
