"""Fold the constant weight nodes of an exported graph once, for every session that shares them.

The torch exporter writes `MatMul(x, Transpose(W))` for linear layers whose transposed weight
was too large for its own constant folding (every Infinity-2B/8B and T5-XL weight; infinity-mid's
are folded at export), and `Concat(q_bias, zero_k_bias, v_bias)` for attention biases.
onnxruntime folds those nodes at session creation into new initializers: anonymous memory, in
every session. Measured on the Infinity-2B fp16 export: `text_encoder` alone +5.6 GB anonymous
(T5-XL's transposed weights), and `step` and `fidelity` each a full transposed fp32 copy of
transformer.weights: the out-of-memory kill of issue 17 (fp32 exports too).

Here such nodes are computed with numpy once per distinct input, the result is handed to each
session as a shared initializer, and the node is removed from the graph.
"""

from __future__ import annotations

import numpy as np

FOLDABLE = ("Transpose", "Concat")


def foldable_nodes(model, external_names: set[str]) -> list:
    """Top-level nodes of `model` that onnxruntime would fold into a copy of an external weight:
    a Transpose or Concat whose inputs are all initializers (or outputs of such nodes)."""
    constants = {t.name for t in model.graph.initializer}
    found = []
    for node in model.graph.node:
        if node.op_type in FOLDABLE and node.input and all(i in constants for i in node.input) \
                and any(i in external_names for i in node.input):
            found.append(node)
            constants.update(node.output)
            external_names = external_names | set(node.output)
    return found


def fold(node, inputs: list[np.ndarray]) -> np.ndarray:
    """The value of a foldable node (C-contiguous, as onnxruntime would store it)."""
    attrs = {a.name: a for a in node.attribute}
    if node.op_type == "Transpose":
        perm = list(attrs["perm"].ints) if "perm" in attrs else None
        return np.ascontiguousarray(np.transpose(inputs[0], perm))
    if node.op_type == "Concat":
        return np.ascontiguousarray(np.concatenate(inputs, axis=int(attrs["axis"].i)))
    raise ValueError(f"cannot fold {node.op_type}")


def folded_bytes(model, external: dict, upcast_fp16: bool) -> dict[str, int]:
    """Bytes of each folded output (name -> bytes), fp16 outputs counted as fp32 when upcast,
    without reading any weight: shapes come from the graph's initializer table."""
    import onnx

    shapes = {}
    for t in model.graph.initializer:
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.data_type))
        if upcast_fp16 and dtype == np.float16:
            dtype = np.dtype(np.float32)
        shapes[t.name] = (tuple(int(d) for d in t.dims), dtype)
    out = {}
    for node in foldable_nodes(model, set(external)):
        ins = [shapes[i] for i in node.input]
        attrs = {a.name: a for a in node.attribute}
        if node.op_type == "Transpose":
            shape = ins[0][0]
            perm = list(attrs["perm"].ints) if "perm" in attrs else list(range(len(shape)))[::-1]
            shape = tuple(shape[p] for p in perm)
        else:
            axis = int(attrs["axis"].i) % len(ins[0][0])
            shape = list(ins[0][0])
            shape[axis] = sum(s[axis] for s, _ in ins)
            shape = tuple(shape)
        dtype = ins[0][1]
        shapes[node.output[0]] = (shape, dtype)
        out[node.output[0]] = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    return out


def fuse_transposed_matmuls(model, external_names: set[str]) -> int:
    """Replace `MatMul(x, Transpose(W))` by `FusedMatMul(x, W, transB=1)` (an onnxruntime CPU and
    CUDA contrib op), so that W is read as stored instead of folded into a transposed copy.
    Only 2-D weights whose every consumer is such a MatMul qualify. Returns how many were fused."""
    from onnx import helper

    consumers: dict[str, list] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    graph_outputs = {o.name for o in model.graph.output}
    rank = {t.name: len(t.dims) for t in model.graph.initializer}
    fused, drop = 0, set()
    for node in model.graph.node:
        if node.op_type != "Transpose" or len(node.input) != 1 or node.input[0] not in external_names:
            continue
        perm = [list(a.ints) for a in node.attribute if a.name == "perm"]
        if rank.get(node.input[0]) != 2 or perm not in ([], [[1, 0]]):
            continue
        users, out = consumers.get(node.output[0], []), node.output[0]
        if out in graph_outputs or not users or any(
                u.op_type != "MatMul" or u.domain not in ("", "ai.onnx") or list(u.input) != [u.input[0], out]
                or u.input[0] == out for u in users):
            continue
        for user in users:
            replacement = helper.make_node("FusedMatMul", [user.input[0], node.input[0]], list(user.output),
                                           name=user.name, domain="com.microsoft", transA=0, transB=1, alpha=1.0)
            user.CopyFrom(replacement)
        drop.add(id(node))
        fused += 1
    if fused:
        kept = [n for n in model.graph.node if id(n) not in drop]
        del model.graph.node[:]
        model.graph.node.extend(kept)
        if not any(o.domain == "com.microsoft" for o in model.opset_import):
            model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return fused
