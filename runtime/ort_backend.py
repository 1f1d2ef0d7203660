"""The ONNX Runtime backend: one session per graph, IO binding, and the token-major K/V cache.

Every tensor that stays alive across scales (text condition, K/V cache, chunk outputs) is a
`DeviceArray`: a dense C-contiguous buffer addressed by pointer on the session's device, numpy
memory on CPU, an `OrtValue` on CUDA. Graph inputs and outputs are bound to those pointers, so
ONNX Runtime reads the past K/V from a prefix of the request's one cache buffer and writes the
new K/V straight into the slot after it (DESIGN.md section 4): no concatenation, no copy.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np
import onnxruntime as ort

from . import graph_io as gio
from .errors import StagevarError
from .kv_cache import KVCache
from .load_memory import LoadEstimate, check_fits, estimate_load, read_graph_weights
from .manifest import Manifest
from .pointer_array import PointerRows
from .shared_weights import SharedWeights, open_fused
from .trt_profiles import row_range

_SLICE_GRAPHS = Path(__file__).with_name("data")  # slice_<dtype>.onnx (exporter/slice_graphs.py)
_SLICE_RANK = 6

DEVICES = ("cpu", "cuda")
_CUDA_EP, _CPU_EP = "CUDAExecutionProvider", "CPUExecutionProvider"
# One precision policy for fp32 GEMMs everywhere: no TF32. The TensorRT build leaves TF32 off, and
# ONNX Runtime's CUDA provider turns it on unless told not to; `stagevar-export build --check`
# compares against sessions made with these same options.
CUDA_PROVIDER_OPTIONS = {"use_tf32": "0"}


def execution_providers(device: str) -> list:
    """The onnxruntime providers of `device` ("cpu" or "cuda"), with the TF32 policy above."""
    return [(_CUDA_EP, dict(CUDA_PROVIDER_OPTIONS)), _CPU_EP] if device == "cuda" else [_CPU_EP]


_ORT_TYPES = {
    "tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
    "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(uint8)": np.uint8,
    "tensor(int8)": np.int8, "tensor(bool)": np.bool_,
}


@dataclass(frozen=True, eq=False)
class DeviceArray(PointerRows):
    """A dense C-contiguous tensor on one device, addressed by pointer.

    `owner` keeps the memory alive: a numpy array on CPU, an `OrtValue` otherwise. A row view
    (`rows`) of a token-major tensor shares the owner's memory; `row0` is its first row there.
    """

    ptr: int
    shape: tuple[int, ...]
    dtype: np.dtype
    device: str
    owner: object
    row0: int = 0

    def numpy(self) -> np.ndarray:
        """Host values: a view of the memory on CPU (no copy), a copy from other devices."""
        if isinstance(self.owner, np.ndarray):
            return self.owner[self.row0:self.row0 + self.shape[0]]
        return self.owner.numpy()[self.row0:self.row0 + self.shape[0]]


def _from_numpy(array: np.ndarray) -> DeviceArray:
    array = np.ascontiguousarray(array)
    return DeviceArray(array.ctypes.data, tuple(array.shape), array.dtype, "cpu", array)


def _session_options(device: str = "cpu") -> ort.SessionOptions:
    options = ort.SessionOptions()
    # Pre-packing copies weights into kernel layouts per session; without it the sessions of
    # text_cond, step and fidelity share one host copy of transformer.weights (shared_weights.py).
    options.add_session_config_entry("session.disable_prepacking", "1")
    if device == "cuda":
        # Initializers get exact-size device allocations instead of growing the session's
        # arena (which rounds up, and keeps the rounded peak for the session's lifetime).
        options.add_session_config_entry("session.use_device_allocator_for_initializers", "1")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # warnings about unused initializers are noise to users
    return options


class OrtBackend:
    """ONNX Runtime sessions of an export, with pointer-bound runs and session-time accounting.

    Not thread-safe: the pipeline serialises requests. Counters (cumulative over requests):
    `kv_allocations` and `kv_bytes` (K/V cache buffers allocated, including compactions),
    `kv_slot_writes` (scales whose new K/V ONNX Runtime wrote in place into the cache),
    `session_seconds` (time inside ONNX Runtime runs).

    Before any weight is touched, `load_estimate` is computed from the export's graph files and
    a load that cannot fit in the available memory is refused in one sentence (load_memory.py).
    On CPU every session reads one shared host copy of each weight (`shared_weights`).
    """

    def __init__(self, manifest: Manifest, device: str = "cpu", graphs: tuple[str, ...] = gio.GRAPHS):
        if device not in DEVICES:
            raise StagevarError(f"Device {device!r} is not supported by the ort backend; use 'cpu' or 'cuda'.")
        if device == "cuda" and _CUDA_EP not in ort.get_available_providers():
            raise StagevarError("device='cuda' needs onnxruntime-gpu and an NVIDIA GPU, but this onnxruntime "
                                "has no CUDA provider; install stagevar[gpu] instead of stagevar[cpu], or use device='cpu'.")
        self.device = device
        self.manifest = manifest
        self._chunks = _block_chunks(manifest)
        # Resident buffers are OrtValues off the host; on CPU plain numpy memory is the same
        # thing with less ceremony. (Tests flip this on CPU to exercise the OrtValue path.)
        self.use_ortvalues = device != "cpu"
        self._dtypes: dict[tuple[str, str, str], np.dtype] = {}
        providers = execution_providers(device)
        tables = read_graph_weights(manifest, graphs)
        self.load_estimate: LoadEstimate = estimate_load(manifest, device, graphs, tables)
        check_fits(self.load_estimate, manifest.root)
        # CPU: every graph reads one host copy of its weights, shared by the graphs that share a
        # file (fp16: one fp32 copy), with no transposed or per-session copies (shared_weights.py).
        self.shared_weights = SharedWeights(upcast_fp16=True) if device == "cpu" else None
        self._sharing = {t.graph for t in tables if not t.reads_weights_at_load} if device == "cpu" else set()
        self.sessions = {name: self._open(name, providers) for name in graphs}
        self.session_seconds = 0.0
        self.kv_allocations = 0
        self.kv_bytes = 0
        self.kv_slot_writes = 0
        self.device_copies = 0  # device-to-device range copies (compaction, text rows)
        self.last_kv_cache: KVCache | None = None
        self._providers = providers
        self._slicers: dict[str, ort.InferenceSession] = {}

    def resident_weights(self) -> dict:
        """Weight bytes the loaded sessions keep resident, per graph, from the export's weights
        files (manifest sizes). On the CPU, text_cond, step and fidelity memory-map one shared
        transformer.weights (no pre-packing), so a shared file counts once; ONNX Runtime's CUDA
        provider copies each session's initializers to the GPU, so there it counts per session
        (an upper bound for text_cond, which reads part of the file)."""
        files = self.manifest.data.get("files") or {}
        by_graph, by_file = {}, {}
        for name in self.sessions:
            rel = (self.manifest.graphs.get(name) or {}).get("weights")
            size = int((files.get(rel) or {}).get("bytes", 0)) if rel else 0
            by_graph[name], by_file[rel] = size, size
        shared = self.device == "cpu"
        total = sum(by_file.values()) if shared else sum(by_graph.values())
        return {"bytes": total, "by_graph": by_graph,
                "basis": "weights files, shared mmap counted once" if shared
                else "weights files, one device copy per session"}

    def _open(self, name: str, providers: list[str]) -> ort.InferenceSession:
        path = self.manifest.graph_path(name)
        try:
            if name in self._sharing:
                session = self.shared_weights.session(name, path, _session_options(self.device), providers)
            elif self.device != "cpu":
                session = open_fused(name, path, _session_options(self.device), providers)
            else:
                session = ort.InferenceSession(str(path), _session_options(self.device), providers=providers)
        except StagevarError:
            raise
        except Exception as exc:  # onnxruntime raises its own exception types per failure
            reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            raise StagevarError(f"onnxruntime cannot load graph '{name}' from {path} ({reason}); "
                                f"export again.") from None
        if self.device == "cuda" and session.get_providers()[0] != _CUDA_EP:
            # A failed CUDA load falls back to CPU silently; the user asked for the GPU.
            raise StagevarError(f"onnxruntime could not start its CUDA provider for graph '{name}' "
                                f"(the GPU, its driver or the CUDA/cuDNN libraries are missing); "
                                f"fix the GPU setup or use device='cpu'.")
        inputs, outputs = gio.contract(name, self._chunks)
        have_in = tuple(a.name for a in session.get_inputs())
        have_out = tuple(a.name for a in session.get_outputs())
        if set(have_in) != set(inputs) or not set(outputs) <= set(have_out):
            raise StagevarError(f"Graph '{name}' in {self.manifest.root} does not have the inputs and outputs "
                                f"this runtime binds (it has {', '.join(have_in)} -> {', '.join(have_out)}); "
                                f"export again with this stagevar version.")
        return session

    # ---- memory -----------------------------------------------------------------------------

    def alloc(self, shape, dtype, resident: bool = True, fill: float | None = None) -> DeviceArray:
        """An uninitialised buffer on the session device (`resident`) or on the host."""
        shape, dtype = tuple(int(s) for s in shape), np.dtype(dtype)
        if not resident or not self.use_ortvalues:
            host = np.empty(shape, dtype) if fill is None else np.full(shape, fill, dtype)
            return _from_numpy(host)
        if fill is not None:
            return self.upload(np.full(shape, fill, dtype))
        value = ort.OrtValue.ortvalue_from_shape_and_type(list(shape), dtype, self.device, 0)
        return DeviceArray(value.data_ptr(), shape, dtype, self.device, value)

    def upload(self, array: np.ndarray) -> DeviceArray:
        """Host values as a resident buffer (no copy on CPU when already contiguous)."""
        if not self.use_ortvalues:
            return _from_numpy(array)
        value = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array), self.device, 0)
        return DeviceArray(value.data_ptr(), tuple(array.shape), np.dtype(array.dtype), self.device, value)

    def select(self, array: DeviceArray, index: tuple) -> DeviceArray:
        """A compact resident copy of `array[index]` (used once per request, at compaction): on
        the device for a range of one axis, through the host for any other index."""
        found = row_range(array.shape, index) if self.use_ortvalues and array.shape else None
        if found is None:
            return self.upload(np.ascontiguousarray(array.numpy()[index]))
        axis, start, stop = found
        out = self.alloc((*array.shape[:axis], stop - start, *array.shape[axis + 1:]), array.dtype)
        self.copy_range(array, axis, start, stop, out)
        return out

    def copy_range(self, src: DeviceArray, axis: int, start: int, stop: int, out: DeviceArray) -> None:
        """out = src[start:stop] along `axis`, on the device: ONNX Runtime has no device-to-device
        copy in Python, so a one-node Slice graph (runtime/data/slice_<dtype>.onnx) writes `out`
        in place; no byte goes through host memory."""
        index = tuple(slice(start, stop) if a == axis else slice(None) for a in range(len(src.shape)))
        if not self.use_ortvalues:
            out.numpy()[...] = src.numpy()[index]
            return
        pad = _SLICE_RANK - len(src.shape)
        if pad < 0 or src.dtype.name not in ("float32", "float16", "bfloat16"):
            raise RuntimeError(f"copy_range supports rank <= {_SLICE_RANK} float tensors, not {src.dtype}{list(src.shape)}")
        session = self._slicer(src.dtype.name)
        binding = session.io_binding()
        binding.bind_input("x", src.device, 0, src.dtype, [1] * pad + list(src.shape), src.ptr)
        for name, value in (("starts", start), ("ends", stop), ("axes", axis + pad)):
            binding.bind_cpu_input(name, np.array([value], np.int64))
        binding.bind_output("y", out.device, 0, out.dtype, [1] * pad + list(out.shape), out.ptr)
        session.run_with_iobinding(binding)
        binding.synchronize_outputs()
        if binding.get_outputs()[0].data_ptr() != out.ptr:
            raise RuntimeError("onnxruntime did not write the sliced copy into its bound buffer")
        self.device_copies += 1

    def _slicer(self, dtype: str) -> ort.InferenceSession:
        if dtype not in self._slicers:
            options = ort.SessionOptions()
            options.log_severity_level = 3
            self._slicers[dtype] = ort.InferenceSession(str(_SLICE_GRAPHS / f"slice_{dtype}.onnx"), options,
                                                        providers=self._providers)
        return self._slicers[dtype]

    # ---- graph contracts --------------------------------------------------------------------

    def input_dtype(self, graph: str, name: str) -> np.dtype:
        """The numpy dtype graph `graph` declares for input `name`."""
        return self._dtype(graph, name, "input")

    def output_dtype(self, graph: str, name: str) -> np.dtype:
        """The numpy dtype graph `graph` declares for output `name`."""
        return self._dtype(graph, name, "output")

    def _dtype(self, graph: str, name: str, kind: str) -> np.dtype:
        key = (graph, name, kind)
        if key in self._dtypes:
            return self._dtypes[key]
        session = self.sessions[graph]
        for arg in session.get_inputs() if kind == "input" else session.get_outputs():
            if arg.name == name:
                if arg.type not in _ORT_TYPES:
                    raise StagevarError(f"Graph '{graph}' declares {name} as {arg.type}, which the ort "
                                        f"backend cannot bind from numpy; export with fp32 or fp16.")
                self._dtypes[key] = np.dtype(_ORT_TYPES[arg.type])
                return self._dtypes[key]
        raise StagevarError(f"Graph '{graph}' has no '{name}' {kind}; export again with this stagevar version.")

    # ---- running ----------------------------------------------------------------------------

    def run_plain(self, graph: str, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """Run a graph on host inputs and return its host outputs (text encoder, VAE)."""
        session = self.sessions[graph]
        feeds = {k: np.ascontiguousarray(v, dtype=self.input_dtype(graph, k)) for k, v in feeds.items()}
        start = time.perf_counter()
        outputs = session.run(None, feeds)
        self.session_seconds += time.perf_counter() - start
        return outputs

    def run_bound(self, graph: str, inputs: Mapping[str, np.ndarray | DeviceArray],
                  outputs: Mapping[str, DeviceArray]) -> None:
        """Run a graph with every input and output bound by pointer; outputs are written in place.

        Host numpy inputs are cast to the declared dtype. Raises RuntimeError if ONNX Runtime
        did not write an output into the buffer it was bound to (it never should).
        """
        session = self.sessions[graph]
        binding = session.io_binding()
        keep = []  # the cast host copies must outlive the run
        for name, value in inputs.items():
            if not isinstance(value, DeviceArray):
                value = _from_numpy(np.asarray(value, dtype=self.input_dtype(graph, name)))
                keep.append(value)
            elif value.dtype != self.input_dtype(graph, name):
                raise RuntimeError(f"{graph}.{name} is {value.dtype}, the graph wants {self.input_dtype(graph, name)}")
            binding.bind_input(name, value.device, 0, value.dtype, list(value.shape), value.ptr)
        for name, value in outputs.items():
            binding.bind_output(name, value.device, 0, value.dtype, list(value.shape), value.ptr)
        start = time.perf_counter()
        session.run_with_iobinding(binding)
        if self.device != "cpu":
            binding.synchronize_outputs()  # device outputs are read by the next run or the host
        self.session_seconds += time.perf_counter() - start
        for (name, value), got in zip(outputs.items(), binding.get_outputs()):
            if got.data_ptr() != value.ptr:
                raise RuntimeError(f"onnxruntime did not write {graph}.{name} into its bound buffer")

    # ---- K/V cache --------------------------------------------------------------------------

    def new_kv_cache(self, capacity: int, depth: int, rows: int, heads: int, head_dim: int,
                     dtype) -> "KVCache":
        """The one K/V buffer of a request, for `capacity` tokens (all its CFG/UNCOND scales)."""
        # Free the previous request's cache first: holding it while allocating this one doubled
        # device memory at request start (2B exact at 1M fp32: 2 x 10.3 GiB).
        self.last_kv_cache = None
        cache = KVCache(self, capacity, (depth, 2, rows, heads, head_dim), np.dtype(dtype))
        self.last_kv_cache = cache
        return cache


def _block_chunks(manifest: Manifest) -> int:
    try:
        return int(manifest.model["config"]["block_chunks"])
    except (KeyError, TypeError, ValueError):
        raise StagevarError(f"manifest.json in {manifest.root} does not give the model's block_chunks; "
                            f"export again with this stagevar version.") from None
