"""Reading a saved graph's I/O contract back from its ONNX file, for the manifest and reports.

The spec is read from the file that was written, not from what the exporter was asked to do,
so the manifest describes exactly what the runtime will load (names, dtypes, symbolic axes).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx


def _dtype_name(elem_type: int) -> str:
    # numpy names ("float32", "int64", "uint8", "float16") are what the runtime allocates with.
    return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type)).name


def _shape(type_proto: onnx.TypeProto) -> list[int | str] | None:
    tensor = type_proto.tensor_type
    if not tensor.HasField("shape"):
        return None  # rank unknown: nothing to promise
    dims: list[int | str] = []
    for dim in tensor.shape.dim:
        if dim.HasField("dim_value"):
            dims.append(int(dim.dim_value))
        elif dim.HasField("dim_param"):
            dims.append(dim.dim_param)
        else:
            dims.append("?")  # an anonymous dynamic axis
    return dims


def _entry(value: onnx.ValueInfoProto) -> dict:
    return {
        "name": value.name,
        "dtype": _dtype_name(value.type.tensor_type.elem_type),
        "shape": _shape(value.type),
    }


def graph_io_spec(onnx_path: str | Path) -> dict:
    """Inputs and outputs of a saved ONNX graph: ``{"inputs": [...], "outputs": [...]}``.

    Each entry is ``{"name", "dtype", "shape"}`` with a numpy dtype name and a shape of ints
    (static axes) and strings (symbolic axes, e.g. ``"n"``). External weights are not loaded.
    Initializers listed as graph inputs (old-style models) are not inputs and are left out.
    """
    model = onnx.load(str(onnx_path), load_external_data=False)
    weights = {init.name for init in model.graph.initializer}
    return {
        "inputs": [_entry(v) for v in model.graph.input if v.name not in weights],
        "outputs": [_entry(v) for v in model.graph.output],
    }
