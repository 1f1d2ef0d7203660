"""The tiny Slice graphs the ONNX Runtime backend copies device tensors with (runtime/data/).

ONNX Runtime's Python API has no device-to-device copy, so the `ort` backend compacts the K/V
cache and selects text rows on the GPU by running `slice_<dtype>.onnx`: one Slice node whose
starts, ends and axes are inputs, rank 6 with named dims (every tensor the runtime slices is
padded to rank 6 with leading 1s). The files ship with the runtime (which has no `onnx`); this
module writes them, and tests/runtime/test_ort_device_copies.py checks the shipped bytes.
"""

from __future__ import annotations

from pathlib import Path

RANK = 6
DTYPES = {"float32": 1, "float16": 10, "bfloat16": 16}  # numpy name -> onnx TensorProto elem type


def slice_model(elem_type: int):
    import onnx
    from onnx import TensorProto, helper

    dims = [f"d{i}" for i in range(RANK)]
    out = [f"o{i}" for i in range(RANK)]
    graph = helper.make_graph(
        [helper.make_node("Slice", ["x", "starts", "ends", "axes"], ["y"])], "stagevar_slice",
        [helper.make_tensor_value_info("x", elem_type, dims),
         helper.make_tensor_value_info("starts", TensorProto.INT64, [1]),
         helper.make_tensor_value_info("ends", TensorProto.INT64, [1]),
         helper.make_tensor_value_info("axes", TensorProto.INT64, [1])],
        [helper.make_tensor_value_info("y", elem_type, out)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="stagevar")
    model.ir_version = 8  # readable by every onnxruntime the runtime supports
    onnx.checker.check_model(model)
    return model


def write_slice_graphs(folder: Path) -> list[Path]:
    paths = []
    for name, elem_type in DTYPES.items():
        path = Path(folder) / f"slice_{name}.onnx"
        path.write_bytes(slice_model(elem_type).SerializeToString(deterministic=True))
        paths.append(path)
    return paths


if __name__ == "__main__":  # python -m stagevar.exporter.slice_graphs
    for p in write_slice_graphs(Path(__file__).resolve().parents[1] / "runtime" / "data"):
        print(p)
