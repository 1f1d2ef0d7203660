"""Custom ONNX ops of stagevar, each shipped with a model-local function (DESIGN.md section 8).

A graph that uses `stagevar.TokenRestore` carries the op's FunctionProto: ONNX Runtime (and any
runtime without our plugin) inlines the standard-op body, while TensorRT maps the node to the
`StageVarTokenRestore` plugin when `libstagevar_trt_plugin.so` is loaded. The schema is registered
with onnx so the exporter can emit the node and `onnx.checker` can type it.
"""

from __future__ import annotations

import onnx
from onnx import helper
from onnx.defs import OpSchema

DOMAIN = "stagevar"
DOMAIN_VERSION = 1
TOKEN_RESTORE = "TokenRestore"
TOKEN_RESTORE_INPUTS = ("x", "prev", "rows", "indices", "area_h", "area_w")
TOKEN_RESTORE_DOC = (
    "y (shape of x [B, M, C]) = area-upsample of prev [B, h*w, C] from (h, w) to (H, W) as "
    "A_h @ grid @ A_w^T with area_h [H, h], area_w [W, w], then y[b, indices[b, j]] = rows[b, j]. "
    "x only gives the output shape (M = H*W).")


def register_schemas() -> None:
    """Make the stagevar ops known to onnx (idempotent)."""
    if onnx.defs.has(TOKEN_RESTORE, DOMAIN):
        return
    param = OpSchema.FormalParameter
    onnx.defs.register_schema(OpSchema(
        TOKEN_RESTORE, DOMAIN, DOMAIN_VERSION, doc=TOKEN_RESTORE_DOC,
        inputs=[param("x", "T"), param("prev", "T"), param("rows", "T"), param("indices", "tensor(int64)"),
                param("area_h", "T"), param("area_w", "T")],
        outputs=[param("y", "T")],
        type_constraints=[("T", ["tensor(float)", "tensor(float16)", "tensor(bfloat16)"], "float tensors")],
    ))


def token_restore_function(opset: int) -> onnx.FunctionProto:
    """The standard-op body of TokenRestore: two small MatMuls (separable area resize) + scatter.

    Separable rather than one kron(A_h, A_w) matrix: O(M (h + W) C) instead of O(M h w C), and
    no [M, h*w] input at the last scales.
    """
    n = helper.make_node
    nodes = [
        n("Shape", ["prev"], ["B"], start=0, end=1),
        n("Shape", ["prev"], ["C"], start=2, end=3),
        n("Shape", ["area_h"], ["h"], start=1, end=2),
        n("Shape", ["area_w"], ["w"], start=1, end=2),
        n("Concat", ["B", "h", "w", "C"], ["grid_shape"], axis=0),
        n("Reshape", ["prev", "grid_shape"], ["grid"]),                  # [B, h, w, C]
        n("Transpose", ["grid"], ["g_wch"], perm=[0, 2, 3, 1]),            # [B, w, C, h]
        n("Transpose", ["area_h"], ["area_h_t"], perm=[1, 0]),              # [h, H]
        n("MatMul", ["g_wch", "area_h_t"], ["r_wcH"]),                      # [B, w, C, H]
        n("Transpose", ["r_wcH"], ["r_Hcw"], perm=[0, 3, 2, 1]),           # [B, H, C, w]
        n("Transpose", ["area_w"], ["area_w_t"], perm=[1, 0]),              # [w, W]
        n("MatMul", ["r_Hcw", "area_w_t"], ["r_HcW"]),                      # [B, H, C, W]
        n("Transpose", ["r_HcW"], ["r_HWc"], perm=[0, 1, 3, 2]),           # [B, H, W, C]
        n("Shape", ["x"], ["x_shape"]),
        n("Reshape", ["r_HWc", "x_shape"], ["base"]),                       # [B, H*W, C]
        n("Constant", [], ["last_axis"], value=helper.make_tensor("last_axis", onnx.TensorProto.INT64, [1], [-1])),
        n("Unsqueeze", ["indices", "last_axis"], ["idx1"]),
        n("Shape", ["rows"], ["rows_shape"]),
        n("Expand", ["idx1", "rows_shape"], ["idx"]),
        n("ScatterElements", ["base", "idx", "rows"], ["y"], axis=1),
    ]
    return helper.make_function(DOMAIN, TOKEN_RESTORE, list(TOKEN_RESTORE_INPUTS), ["y"], nodes,
                                [helper.make_opsetid("", opset)], doc_string=TOKEN_RESTORE_DOC)


def attach_local_functions(model: onnx.ModelProto) -> int:
    """Add the function of every stagevar op the graph uses; returns how many were added."""
    used = {node.op_type for node in model.graph.node if node.domain == DOMAIN}
    if not used:
        return 0
    unknown = used - {TOKEN_RESTORE}
    if unknown:
        raise ValueError(f"no local function for stagevar ops {sorted(unknown)}")
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is None:
        raise ValueError("the model imports no default-domain opset")
    have = {(f.domain, f.name) for f in model.functions}
    added = 0
    if (DOMAIN, TOKEN_RESTORE) not in have:
        model.functions.append(token_restore_function(opset))
        added += 1
    if not any(o.domain == DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(DOMAIN, DOMAIN_VERSION))
    return added


# TensorRT's ONNX parser resolves a node it has no importer for through the model's local
# functions or the plugin registry (op_type = plugin name, attributes plugin_version and
# plugin_namespace). To make the choice explicit rather than depend on the parser's lookup
# order, the engine build uses the graph as exported (function inlined by the parser) without
# --plugins, and this variant (no function, node renamed to the plugin) with them.
TRT_PLUGIN_NAMES = {TOKEN_RESTORE: ("StageVarTokenRestore", "1")}


def plugin_variant(model: onnx.ModelProto) -> int:
    """Rewrite stagevar nodes in place to call the TensorRT plugins; returns how many nodes."""
    count = 0
    for node in model.graph.node:
        if node.domain != DOMAIN:
            continue
        if node.op_type not in TRT_PLUGIN_NAMES:
            raise ValueError(f"no TensorRT plugin for stagevar op {node.op_type}")
        name, version = TRT_PLUGIN_NAMES[node.op_type]
        node.op_type = name
        del node.attribute[:]
        node.attribute.extend([helper.make_attribute("plugin_version", version),
                               helper.make_attribute("plugin_namespace", "")])
        count += 1
    keep = [f for f in model.functions if f.domain != DOMAIN]
    del model.functions[:]
    model.functions.extend(keep)
    return count
