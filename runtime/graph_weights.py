"""The weights table of an exported graph, read from its ONNX file without reading any weight.

Exported graphs keep every tensor of 1 KiB or more in an external weights file (page-aligned,
deduplicated by content across graphs, `exporter/onnx_io.py`); the graph file itself holds the
ops and the small inline constants. This module lists, per graph, which tensor lives where in
which file, so that the loader can map each distinct tensor once for all sessions and the load
estimate can be computed before anything is allocated.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import StagevarError


@dataclass(frozen=True)
class ExternalTensor:
    """One initializer stored in an external weights file."""

    name: str
    location: str  # file name, relative to the graph's folder
    offset: int
    length: int
    dtype: np.dtype
    shape: tuple[int, ...]

    @property
    def key(self) -> tuple[str, int, int]:
        """Identity of the bytes on disk: graphs that share a tensor share this key."""
        return (self.location, self.offset, self.length)


@dataclass(frozen=True)
class GraphWeights:
    """The initializers of one graph: external ones (by file region) and the inline bytes."""

    graph: str
    path: Path
    external: tuple[ExternalTensor, ...]
    inline_bytes: int
    inline_fp16_bytes: int
    op_types: frozenset = frozenset()
    # After the loader's rewrite (weight_folding.py): the external tensors still read at run
    # time, and the bytes of the folded constants (as the CPU loader stores them).
    resident: frozenset | None = None  # None: not analysed, every external tensor counts
    folded_bytes: int = 0

    @property
    def reads_weights_at_load(self) -> bool:
        """onnxruntime's Conv fusions read a convolution's weights from the file while loading,
        so such a graph keeps its own loading (its weights file is its own: vae_decoder)."""
        return "Conv" in self.op_types or "ConvTranspose" in self.op_types


def load_graph_proto(path: Path, graph: str):
    """The ModelProto of `path` without its external data (small: ops and inline constants)."""
    import onnx  # lazy: only the ONNX Runtime backend needs it

    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError, OSError, ... for a damaged file
        raise StagevarError(f"Graph '{graph}' at {path} cannot be read as ONNX ({type(exc).__name__}); "
                            f"export again.") from None


def graph_weights(model, graph: str, path: Path) -> GraphWeights:
    """List the initializers of a loaded ModelProto (`load_graph_proto`)."""
    import onnx

    external, inline, inline16 = [], 0, 0
    for tensor in model.graph.initializer:
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type))
        shape = tuple(int(d) for d in tensor.dims)
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            inline += nbytes
            inline16 += nbytes if dtype == np.float16 else 0
            continue
        info = {entry.key: entry.value for entry in tensor.external_data}
        try:
            location, offset = info["location"], int(info.get("offset", 0))
            length = int(info.get("length", nbytes))
        except (KeyError, ValueError):
            raise StagevarError(f"Graph '{graph}' at {path} has a malformed external-data entry for "
                                f"'{tensor.name}'; export again.") from None
        if length != nbytes or offset < 0 or Path(location).name != location:
            raise StagevarError(f"Graph '{graph}' at {path} describes '{tensor.name}' inconsistently "
                                f"({length} bytes for {dtype} {list(shape)} in {location}); export again.")
        external.append(ExternalTensor(tensor.name, location, offset, length, dtype, shape))
    return GraphWeights(graph, path, tuple(external), inline, inline16,
                        frozenset(n.op_type for n in model.graph.node))

