"""A tiny stand-in for an export's transformer graphs: large weights, trivial ops, built in a second.

Two graphs ("a" and "b", like step and fidelity) read the same external weights file, laid out as
the exporter lays it out (page-aligned tensors, `exporter/onnx_io.py`):
    y = cast_fp32(h_L),  h_{i+1} = h_i @ Transpose(W_i) + b_i,  h_0 = cast(x)   (fp16 or fp32 weights)
with W_i stored (out, in) and transposed in the graph, as the torch exporter writes the linear layers
of Infinity-2B and T5-XL. Graph "b" also outputs h_L in the weights' dtype (an fp16 output).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

WEIGHTS = "shared.weights"


def build_shared_graphs(folder: Path, dtype: str, width: int = 1024, layers: int = 8, graphs=("a", "b")) -> dict:
    """Write the graphs and their weights file into `folder`; return {"paths", "weights_bytes"}."""
    folder.mkdir(parents=True, exist_ok=True)
    np_dtype = np.float16 if dtype == "fp16" else np.float32
    onnx_type = TensorProto.FLOAT16 if dtype == "fp16" else TensorProto.FLOAT
    rng = np.random.default_rng(0)
    initializers = []
    with open(folder / WEIGHTS, "wb") as f:
        for i in range(layers):
            for name, shape in ((f"W{i}", (width, width)), (f"b{i}", (width,))):
                array = (rng.standard_normal(shape) / np.sqrt(width)).astype(np_dtype)
                offset = -(-f.tell() // 4096) * 4096
                f.seek(offset)
                f.write(array.tobytes())
                tensor = TensorProto(name=name, data_type=onnx_type, dims=shape, data_location=TensorProto.EXTERNAL)
                for key, value in (("location", WEIGHTS), ("offset", str(offset)), ("length", str(array.nbytes))):
                    entry = tensor.external_data.add()
                    entry.key, entry.value = key, value
                initializers.append(tensor)
    paths = {}
    for graph in graphs:
        nodes = [helper.make_node("Cast", ["x"], ["h0"], to=onnx_type)]
        for i in range(layers):
            nodes += [helper.make_node("Transpose", [f"W{i}"], [f"Wt{i}"], perm=[1, 0]),
                      helper.make_node("MatMul", [f"h{i}", f"Wt{i}"], [f"m{i}"]),
                      helper.make_node("Add", [f"m{i}", f"b{i}"], [f"h{i + 1}"])]
        nodes.append(helper.make_node("Cast", [f"h{layers}"], ["y"], to=TensorProto.FLOAT))
        outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", width])]
        if graph == "b":
            nodes.append(helper.make_node("Identity", [f"h{layers}"], ["h_out"]))
            outputs.append(helper.make_tensor_value_info("h_out", onnx_type, ["n", width]))
        model = helper.make_model(
            helper.make_graph(nodes, graph, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", width])],
                              outputs, initializer=initializers),
            opset_imports=[helper.make_opsetid("", 17)])
        paths[graph] = folder / f"{graph}.onnx"
        onnx.save_model(model, str(paths[graph]))
    return {"paths": paths, "weights_bytes": (folder / WEIGHTS).stat().st_size}
