"""Run an fp16 graph in fp32 on the CPU provider, keeping its fp16 inputs and outputs.

Why: onnxruntime's CPU provider has no fp16 kernels for MatMul, Conv and most element-wise ops.
It wraps each such node in Casts and folds `Cast(weight)` into a new fp32 initializer, in every
session separately (measured on infinity-mid: +131 MB anonymous memory for `step`, +113 MB for
`fidelity`, for 79 MB of fp16 weights on disk; on Infinity-2B that is ~9 GB per session, the
out-of-memory kill of issue 17). Rewriting the graph so that its interior is fp32 lets the
loader supply each weight as ONE fp32 copy shared by every session (`shared_weights.py`),
while the graph's declared inputs and outputs stay fp16 (cast at the boundary), so the
runtime's buffers, K/V cache included, are what the export says they are.

Numerics: ONNX Runtime computed those nodes in fp32 already (cast in, cast out); without the
cast back to fp16 between nodes the interior is at least as accurate as before.
"""

from __future__ import annotations

_SUFFIX = ".fp32"
UNREADABLE_OFFSET = 1 << 50  # beyond any weights file (1 PiB)


def has_fp16(model) -> bool:
    """Whether a graph holds any fp16 initializer, cast, constant or declared input/output."""
    import onnx

    f16 = onnx.TensorProto.FLOAT16
    g = model.graph
    if any(t.data_type == f16 for t in g.initializer):
        return True
    if any(v.type.tensor_type.elem_type == f16 for v in list(g.input) + list(g.output)):
        return True
    return any(_node_has_fp16(n) for n in _all_nodes(model))


def upcast_fp16_interior(model) -> None:
    """Rewrite `model` in place: every fp16 tensor inside becomes fp32; fp16 graph inputs and
    outputs keep their declared type through a Cast at the boundary.

    External fp16 initializers become fp32 declarations whose data the caller must supply
    (SessionOptions.add_initializer). Their external-data offset is moved past the end of any
    file: ONNX Runtime never reads a supplied initializer from the file, but should one of its
    graph optimizers try, it fails loudly (out of bounds) instead of reading fp16 bytes as fp32.
    Inline fp16 constants are converted here.
    """
    import onnx

    f16, f32 = onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT
    g = model.graph
    for tensor in g.initializer:
        if tensor.data_type != f16:
            continue
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            tensor.data_type = f32
            for entry in tensor.external_data:
                if entry.key == "offset":
                    entry.value = str(int(entry.value) + UNREADABLE_OFFSET)
                elif entry.key == "length":
                    entry.value = str(2 * int(entry.value))
        else:
            tensor.CopyFrom(_as_fp32(tensor))
    for node in _all_nodes(model):
        _upcast_node(node, f16, f32)
    # Intermediate type hints would still say fp16; ONNX Runtime infers them again.
    del g.value_info[:]
    for function in model.functions:
        del function.value_info[:]
    _cast_boundary(g, f16, f32)


def _all_nodes(model):
    """Every node of the main graph, its subgraphs and the model-local functions."""
    stack = [list(model.graph.node)] + [list(f.node) for f in model.functions]
    while stack:
        for node in stack.pop():
            yield node
            for attr in node.attribute:
                if attr.g.node:
                    stack.append(list(attr.g.node))
                for sub in attr.graphs:
                    stack.append(list(sub.node))


def _node_has_fp16(node) -> bool:
    import onnx

    f16 = onnx.TensorProto.FLOAT16
    for attr in node.attribute:
        if attr.name in ("to", "dtype") and attr.type == onnx.AttributeProto.INT and attr.i == f16:
            return True
        if attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == f16:
            return True
    return False


def _upcast_node(node, f16: int, f32: int) -> None:
    import onnx

    for attr in node.attribute:
        # Cast(to), EyeLike/Random*(dtype): the type a node produces.
        if attr.name in ("to", "dtype") and attr.type == onnx.AttributeProto.INT and attr.i == f16:
            attr.i = f32
        # Constant(value), ConstantOfShape(value): fp16 literals.
        elif attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == f16:
            attr.t.CopyFrom(_as_fp32(attr.t))


def _as_fp32(tensor):
    import numpy as np
    from onnx import numpy_helper

    return numpy_helper.from_array(numpy_helper.to_array(tensor).astype(np.float32), tensor.name)


def _rename_uses(graph, old: str, new: str) -> None:
    """Point every consumer of `old` (in this graph and its subgraphs) at `new`."""
    stack = [graph]
    while stack:
        current = stack.pop()
        for node in current.node:
            for i, name in enumerate(node.input):
                if name == old:
                    node.input[i] = new
            for attr in node.attribute:
                if attr.g.node:
                    stack.append(attr.g)
                stack.extend(attr.graphs)


def _cast_boundary(g, f16: int, f32: int) -> None:
    from onnx import helper

    head, tail = [], []
    for value in g.input:
        if value.type.tensor_type.elem_type == f16:
            inner = value.name + _SUFFIX
            _rename_uses(g, value.name, inner)
            head.append(helper.make_node("Cast", [value.name], [inner], to=f32, name=inner + "/cast_in"))
    for value in g.output:
        if value.type.tensor_type.elem_type == f16:
            inner = value.name + _SUFFIX
            _rename_uses(g, value.name, inner)
            for node in g.node:
                for i, name in enumerate(node.output):
                    if name == value.name:
                        node.output[i] = inner
            tail.append(helper.make_node("Cast", [inner], [value.name], to=f16, name=inner + "/cast_out"))
    nodes = head + list(g.node) + tail
    del g.node[:]
    g.node.extend(nodes)
