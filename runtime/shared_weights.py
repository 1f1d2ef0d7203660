"""One host copy of an export's weights, shared by all its ONNX Runtime CPU sessions.

`text_cond`, `step` and `fidelity` read the same tensors of `transformer.weights`. Left to
itself, ONNX Runtime maps the file per session (fp32: shared physically, but counted once per
mapping in RSS) and, for fp16 weights on the CPU provider, makes an fp32 copy per session.
Here every distinct tensor (by file region) becomes one numpy array, handed to each session
with `SessionOptions.add_initializer`, which ONNX Runtime uses in place when it lives where
the session plans it (CPU):

- fp32 (and any non-fp16) tensor: a view of one read-only memory map per weights file: no
  copy, pages shared with the page cache, loaded on first use, reclaimable under pressure.
- fp16 tensor, when `upcast_fp16`: one fp32 array, converted once from the file in bounded
  chunks (the fp16 bytes are never all resident), for graphs rewritten by `fp16_upcast.py`.

Pre-packing stays disabled in the sessions (a packed copy per session would undo the sharing).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import StagevarError
from .fp16_upcast import has_fp16, upcast_fp16_interior
from .graph_weights import ExternalTensor, GraphWeights, graph_weights, load_graph_proto
from .weight_folding import fold, foldable_nodes, fuse_transposed_matmuls

_CHUNK_BYTES = 16 << 20  # fp16 bytes read per step while converting
_FOLDER_KEY = "session.model_external_initializers_file_folder_path"


class SharedWeights:
    """The host copies behind every session of one export (keep it alive with the sessions).

    `mapped_bytes`: distinct tensor bytes served from memory maps; `converted_bytes`: fp32
    copies made from fp16 tensors (anonymous memory, once per export, not per session).
    """

    def __init__(self, upcast_fp16: bool) -> None:
        # Only graphs whose weights file is shared with another graph come here (OrtBackend):
        # a graph with a file of its own (text_encoder, vae_decoder) is already resident once
        # when ONNX Runtime opens it directly (its Conv fusions also read weights from the file,
        # which an overridden fp16 -> fp32 initializer cannot offer).
        self.upcast_fp16 = upcast_fp16
        self._maps: dict[Path, np.memmap] = {}
        self._arrays: dict[tuple, np.ndarray] = {}
        self._values: dict[tuple, object] = {}
        self.mapped_bytes = 0
        self.converted_bytes = 0
        self.folded_bytes = 0

    def session(self, graph: str, path: Path, options, providers):
        """An InferenceSession of `path` whose external weights are this object's shared copies."""
        import onnxruntime as ort

        model = load_graph_proto(path, graph)
        weights = graph_weights(model, graph, path)
        external = {t.name: t for t in weights.external}
        upcast = self.upcast_fp16 and has_fp16(model)
        fused = fuse_transposed_matmuls(model, set(external))
        supplied = self._fold(model, weights, external, upcast)
        used = _used_names(model)
        for name, tensor in external.items():
            if name in used:
                supplied[name] = self._value(weights, tensor, upcast and tensor.dtype == np.float16)
        _drop_unused_initializers(model, used)
        for name, value in supplied.items():
            options.add_initializer(name, value)
        if not upcast and not fused and len(supplied) == len(external) and all(n in external for n in supplied):
            return ort.InferenceSession(str(path), options, providers=providers)
        if upcast:
            upcast_fp16_interior(model)
        # A model given as bytes resolves its external-data references (checked, never read:
        # every external tensor is supplied above) against this folder.
        options.add_session_config_entry(_FOLDER_KEY, str(path.parent))
        return ort.InferenceSession(model.SerializeToString(), options, providers=providers)

    def _fold(self, model, weights: GraphWeights, external: dict, upcast: bool) -> dict:
        """Compute the graph's constant weight nodes once (weight_folding.py) and replace each by
        an initializer declaration; return {output name: shared OrtValue}."""
        import onnx
        import onnxruntime as ort

        inline = {t.name: t for t in model.graph.initializer if t.name not in external}
        keys: dict[str, tuple] = {}
        arrays: dict[str, np.ndarray] = {}
        supplied = {}
        nodes = foldable_nodes(model, set(external))
        for node in nodes:
            inputs, input_keys = [], []
            for name in node.input:
                if name in arrays:
                    inputs.append(arrays[name])
                    input_keys.append(keys[name])
                elif name in external:
                    tensor = external[name]
                    as_fp32 = upcast and tensor.dtype == np.float16
                    inputs.append(self._source(weights, tensor, as_fp32))
                    input_keys.append(self._key(weights, tensor, as_fp32))
                else:
                    array = onnx.numpy_helper.to_array(inline[name])
                    inputs.append(array.astype(np.float32) if upcast and array.dtype == np.float16 else array)
                    input_keys.append(("inline", array.dtype.str, array.shape, array.tobytes()))
            key = ("fold", node.op_type, tuple((a.name, a.SerializeToString()) for a in node.attribute),
                   tuple(input_keys))
            if key not in self._values:
                self._arrays[key] = fold(node, inputs)
                self._values[key] = ort.OrtValue.ortvalue_from_numpy(self._arrays[key])
                self.folded_bytes += self._arrays[key].nbytes
            out = node.output[0]
            keys[out], arrays[out], supplied[out] = key, self._arrays[key], self._values[key]
        if nodes:
            location = next(iter(external.values())).location
            remove = {id(n) for n in nodes}
            kept = [n for n in model.graph.node if id(n) not in remove]
            del model.graph.node[:]
            model.graph.node.extend(kept)
            for name, array in arrays.items():
                model.graph.initializer.append(_declared(name, array, location))
        return supplied

    def _key(self, weights: GraphWeights, tensor: ExternalTensor, as_fp32: bool) -> tuple:
        file = (weights.path.parent / tensor.location).resolve()
        return (file, tensor.offset, tensor.length, tensor.dtype.str, tensor.shape, as_fp32)

    def _source(self, weights: GraphWeights, tensor: ExternalTensor, as_fp32: bool) -> np.ndarray:
        """A tensor's values for folding, without keeping a copy of them: a view of the memory
        map, or (fp16 upcast) a temporary fp32 conversion."""
        key = self._key(weights, tensor, as_fp32)
        if key in self._arrays:
            return self._arrays[key]
        if as_fp32:
            return self._converted(key[0], tensor, weights.graph, count=False)
        return self._mapped(key[0], tensor, weights.graph, count=False)

    def _value(self, weights: GraphWeights, tensor: ExternalTensor, as_fp32: bool):
        import onnxruntime as ort

        key = self._key(weights, tensor, as_fp32)
        if key not in self._values:
            file = key[0]
            array = self._converted(file, tensor, weights.graph) if as_fp32 else self._mapped(file, tensor, weights.graph)
            self._arrays[key] = array  # the OrtValue does not own the memory: keep the array alive
            self._values[key] = ort.OrtValue.ortvalue_from_numpy(array)
        return self._values[key]

    def _mapped(self, file: Path, tensor: ExternalTensor, graph: str, count: bool = True) -> np.ndarray:
        if file not in self._maps:
            try:
                self._maps[file] = np.memmap(file, dtype=np.uint8, mode="r")
            except (OSError, ValueError) as exc:
                raise StagevarError(f"Weights file {file} of graph '{graph}' cannot be mapped ({exc}); "
                                    f"export again.") from None
        region = self._region(self._maps[file].size, file, tensor, graph)
        self.mapped_bytes += tensor.length if count else 0
        return self._maps[file][region].view(tensor.dtype).reshape(tensor.shape)

    def _converted(self, file: Path, tensor: ExternalTensor, graph: str, count: bool = True) -> np.ndarray:
        out = np.empty(tensor.shape, np.float32)
        flat = out.reshape(-1)
        step = _CHUNK_BYTES // 2
        try:
            with open(file, "rb", buffering=0) as f:
                self._region(f.seek(0, 2), file, tensor, graph)
                buf = np.empty(min(step, flat.size), np.float16)
                for start in range(0, flat.size, step):
                    count = min(step, flat.size - start)
                    f.seek(tensor.offset + 2 * start)
                    if f.readinto(memoryview(buf[:count]).cast("B")) != 2 * count:
                        raise OSError("short read")
                    flat[start:start + count] = buf[:count]
        except OSError as exc:
            raise StagevarError(f"Weights file {file} of graph '{graph}' cannot be read ({exc}); "
                                f"export again.") from None
        self.converted_bytes += out.nbytes if count else 0
        return out

    @staticmethod
    def _region(size: int, file: Path, tensor: ExternalTensor, graph: str) -> slice:
        if tensor.offset + tensor.length > size:
            raise StagevarError(f"Weights file {file} of graph '{graph}' is shorter than its tensor "
                                f"'{tensor.name}' needs (truncated); export again.")
        return slice(tensor.offset, tensor.offset + tensor.length)


def _used_names(model) -> set[str]:
    """Every value a node (of the graph, its subgraphs or functions) reads, and the graph outputs."""
    used = {o.name for o in model.graph.output}
    stack = [model.graph]
    while stack:
        g = stack.pop()
        for node in g.node:
            used.update(node.input)
            for attr in node.attribute:
                if attr.g.node:
                    stack.append(attr.g)
                stack.extend(attr.graphs)
    return used


def _drop_unused_initializers(model, used: set[str]) -> None:
    kept = [t for t in model.graph.initializer if t.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)


def _declared(name: str, array: np.ndarray, location: str):
    """An external initializer declaration for a value supplied with add_initializer; its offset
    lies beyond any file, so that nothing can read stale bytes in its place (fp16_upcast.py)."""
    import onnx

    from .fp16_upcast import UNREADABLE_OFFSET

    tensor = onnx.TensorProto(name=name, data_type=onnx.helper.np_dtype_to_tensor_dtype(array.dtype),
                              dims=array.shape, data_location=onnx.TensorProto.EXTERNAL)
    for key, value in (("location", location), ("offset", str(UNREADABLE_OFFSET)), ("length", str(array.nbytes))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    return tensor


def open_fused(graph: str, path: Path, options, providers):
    """An InferenceSession of `path` with `MatMul(x, Transpose(W))` fused (weight_folding.py) and
    its weights read from the files as onnxruntime does: the loader of devices other than the
    CPU, where onnxruntime copies each initializer to the device itself. Without the rewrite it
    would first build every transposed weight in host memory (constant folding)."""
    import onnxruntime as ort

    model = load_graph_proto(path, graph)
    weights = graph_weights(model, graph, path)
    if not fuse_transposed_matmuls(model, {t.name for t in weights.external}):
        return ort.InferenceSession(str(path), options, providers=providers)
    options.add_session_config_entry(_FOLDER_KEY, str(path.parent))
    return ort.InferenceSession(model.SerializeToString(), options, providers=providers)
