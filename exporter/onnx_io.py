"""Writing exported graphs: graph files plus external weights, optionally shared between graphs.

`step` and `fidelity` hold the same transformer weights. Writing each graph's weights into one
shared file, deduplicated by content, keeps one copy on disk, and ONNX Runtime sessions that
memory-map it (with pre-packing disabled) keep one copy resident (DESIGN.md §4).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir

from .onnx_local_functions import attach_local_functions

# Large tensors start on a page boundary so that ONNX Runtime can memory-map them.
_PAGE = 4096
_SMALL_ALIGN = 64
# Tensors smaller than this stay inline in the graph file (scalars, shape constants).
_INLINE_BYTES = 1024

TensorSource = Callable[[str, object], np.ndarray]


def _default_source(name: str, value) -> np.ndarray:
    # An IR initializer of a traced graph, or already an array (a graph traced in another process).
    return value if isinstance(value, np.ndarray) else value.const_value.numpy()


class SharedWeightsWriter:
    """Appends tensors to one weights file, once per distinct (dtype, shape, bytes)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = open(path, "wb")
        self._offsets: dict[str, tuple[int, int]] = {}
        self.tensors_written = 0
        self.tensors_reused = 0

    def add(self, array: np.ndarray) -> tuple[int, int]:
        data = np.ascontiguousarray(array)
        digest = hashlib.sha256(f"{data.dtype.str}{data.shape}".encode() + data.tobytes()).hexdigest()
        if digest in self._offsets:
            self.tensors_reused += 1
            return self._offsets[digest]
        align = _PAGE if data.nbytes >= _PAGE else _SMALL_ALIGN
        offset = -(-self._file.tell() // align) * align
        self._file.seek(offset)
        self._file.write(data.tobytes())
        self._offsets[digest] = (offset, data.nbytes)
        self.tensors_written += 1
        return offset, data.nbytes

    def close(self) -> None:
        self._file.close()


def _external_tensor(name: str, array: np.ndarray, location: str, offset: int, length: int) -> onnx.TensorProto:
    tensor = onnx.TensorProto()
    tensor.name = name
    tensor.data_type = onnx.helper.np_dtype_to_tensor_dtype(array.dtype)
    tensor.dims.extend(array.shape)
    tensor.data_location = onnx.TensorProto.EXTERNAL
    for key, val in (("location", location), ("offset", str(offset)), ("length", str(length))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, val
    return tensor


def _strip_node_metadata(graph: onnx.GraphProto) -> None:
    """Drop the exporter's per-node metadata (torch stack traces, FX names): most of the file
    size of a deep graph, never read at run time."""
    for node in graph.node:
        del node.metadata_props[:]
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                _strip_node_metadata(attr.g)


def graph_proto(program) -> tuple[onnx.ModelProto, dict]:
    """A torch ONNXProgram as a ModelProto without initializers, plus its initializers by name.

    The CPU work of saving a graph (serialising, dropping node metadata, attaching the local
    functions of custom stagevar nodes) without touching any weights file, so that a second
    process can do it and hand the result to the writer of a shared weights file.
    """
    initializers = dict(program.model.graph.initializers)
    program.model.graph.initializers.clear()
    try:
        model = ir.serde.serialize_model(program.model)
    finally:
        program.model.graph.initializers.update(initializers)
    _strip_node_metadata(model.graph)
    # After the exporter's passes (its version conversion inlines every function): the
    # standard-op bodies of our custom nodes, for runtimes without the plugin.
    attach_local_functions(model)
    return model, initializers


def write_graph(model: onnx.ModelProto, initializers: dict, path: Path, weights: SharedWeightsWriter,
                source: TensorSource = _default_source) -> None:
    """Write `model` to `path` with each initializer (`source(name, value)` gives its array, one at
    a time so that large models never hold all their weights) appended to `weights`."""
    location = weights.path.name
    for name, value in initializers.items():
        array = source(name, value)
        if array.nbytes < _INLINE_BYTES:
            model.graph.initializer.append(onnx.numpy_helper.from_array(array, name))
        else:
            offset, length = weights.add(array)
            model.graph.initializer.append(_external_tensor(name, array, location, offset, length))
    onnx.save_model(model, str(path))


def save_graph(program, path: Path, weights: SharedWeightsWriter, source: TensorSource = _default_source) -> None:
    """Save a torch ONNXProgram to `path`, its initializers going into `weights` (which must sit
    in the same folder) as external tensors."""
    model, initializers = graph_proto(program)
    write_graph(model, initializers, path, weights, source)


def save_graphs(programs: dict[str, object], folder: Path, weights_name: str, source: TensorSource = _default_source) -> dict:
    """Save several graphs sharing one weights file; return write statistics."""
    writer = SharedWeightsWriter(folder / weights_name)
    try:
        for name, program in programs.items():
            save_graph(program, folder / f"{name}.onnx", writer, source)
    finally:
        writer.close()
    return {"tensors_written": writer.tensors_written, "tensors_reused": writer.tensors_reused}
