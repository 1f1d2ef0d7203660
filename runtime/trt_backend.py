"""The native TensorRT backend (DESIGN.md section 7): the `ort` backend's interface over engines.

One deserialized engine per graph and one execution context per optimization profile (created
on first use, all sharing one scratch buffer: the backend runs one thing at a time on its one
stream). A run picks the profile whose ranges contain its input shapes, binds every I/O tensor
by address (TensorRT 10's name-based API), and executes; after one plain (warm-up) run of a
context with given shapes, its next run is captured into a CUDA graph and later runs replay it.
A context keeps one graph, dropped as soon as any of its addresses or shapes change (TensorRT ties
a captured enqueue to the context's state). Device memory comes from a pool that reuses
addresses, so the graphs stay valid from request to request. K/V slots are bound in place when their address is 256-byte aligned and
through an aligned scratch buffer plus one copy otherwise.

TensorRT and cuda-python are imported when a backend is created, never at module import.
"""

from __future__ import annotations

import importlib
import mmap
import time
from typing import Mapping

import numpy as np

from . import graph_io as gio
from .cuda_memory import Cuda, CudaArray, CudaError, MemoryPool, TrtKVCache, host_array
from .errors import StagevarError
from .manifest import Manifest
from .trt_engine import EngineInfo, ProfileContext, context_memory_size, import_tensorrt, load_plugins
from .trt_profiles import ALIGNMENT, CapturePolicy, is_aligned, row_range, row_range_copy, select_profile

__all__ = ["TrtBackend", "TrtKVCache"]



def _device_index(device: str) -> int:
    if device == "cuda":
        return 0
    if isinstance(device, str) and device.startswith("cuda:") and device[5:].isdigit():
        return int(device[5:])
    raise StagevarError(f"Device {device!r} is not supported by the trt backend; use 'cuda' (or 'cuda:N'), "
                        f"or backend='ort' for the CPU.")


def _text_buckets(eng: EngineInfo | None) -> tuple[int, ...] | None:
    """The text lengths of the text encoder's exact profiles, which the pipeline pads prompts
    to (so a new prompt length re-binds no context); None for engines with a length range."""
    if eng is None:
        return None
    lengths = set()
    for profile in eng.profiles:
        lo, _, hi = profile.get("input_ids", ((), (), ()))
        if len(lo) != 2 or lo != hi:
            return None
        lengths.add(lo[1])
    return tuple(sorted(lengths)) or None


def _nbytes(shape, dtype: np.dtype) -> int:
    return int(np.prod(shape, dtype=np.int64)) * dtype.itemsize


class TrtBackend:
    """TensorRT engines of an export with the `OrtBackend` interface (see `ort_backend`).

    Not thread-safe: the pipeline serialises requests. Counters as the ort backend
    (`kv_allocations`, `kv_bytes`, `kv_slot_writes`, `session_seconds`: time from the uploads of a
    run to its synchronised end), plus `kv_scratch_copies` (misaligned bindings, in practice K/V
    slots, routed through aligned scratch) and `capture` (CUDA graph attempts, failures, launches).
    `cuda_graphs=False` turns graph capture off.
    """

    name = "trt"
    alignment = ALIGNMENT

    def __init__(self, manifest: Manifest, device: str = "cuda", graphs: tuple[str, ...] = gio.GRAPHS,
                 plugins: str | None = None, cuda_graphs: bool = True):
        trt, cudart = import_tensorrt()
        index = _device_index(device)
        try:
            self.cuda = Cuda(cudart, index)
            major, minor, self.device_name = self.cuda.properties()
        except CudaError as exc:
            raise StagevarError(f"Backend 'trt' cannot use CUDA device {index} ({exc.name}); check the NVIDIA "
                                f"driver and GPU, or use backend='ort'.") from None
        self.trt, self.device, self.manifest = trt, device, manifest
        self.compute_capability = f"{major}.{minor}"
        # Looked up per construction (not bound at import), so tests can stand in a module that
        # replays records they edit in memory.
        engine_cache = importlib.import_module(".engine_cache", __package__)
        self.build = engine_cache.select_engine_build(manifest, trt.__version__, self.compute_capability,
                                                      graphs=tuple(graphs))
        try:
            self._chunks = int(manifest.model["config"]["block_chunks"])
        except (KeyError, TypeError, ValueError):
            raise StagevarError(f"manifest.json in {manifest.root} does not give the model's block_chunks; "
                                f"export again with this stagevar version.") from None
        self.logger = trt.Logger(trt.Logger.WARNING)
        trt.init_libnvinfer_plugins(self.logger, "")
        load_plugins(trt, manifest, self.build, plugins)
        self.runtime = trt.Runtime(self.logger)
        # Arrays come from `pool`; persistent staging/scratch buffers from `fixed_pool`, so that
        # their lazy creation in the first request does not shift the arrays' addresses later.
        self.pool = MemoryPool(self.cuda.malloc, self.cuda.free)
        self.fixed_pool = MemoryPool(self.cuda.malloc, self.cuda.free)
        self.capture = CapturePolicy(cuda_graphs, release=self.cuda.destroy_exec)
        # One staging/scratch device buffer per (graph, tensor, role) and one pinned host buffer
        # per (graph, input), sized for the input's largest profile shape (or grown): bounded by
        # the engines' tensors, and stable addresses for the graphs captured with them.
        self._staging: dict[tuple, object] = {}
        self._pinned: dict[tuple, object] = {}
        self.engines = {name: self._load(name) for name in graphs}
        for eng in self.engines.values():
            if eng.host_inputs:  # host-side values would be baked into a graph: never capture
                self.capture.disabled.add(eng.name)
        sizes = [context_memory_size(e.engine) for e in self.engines.values()]
        self._context_memory = self.fixed_pool.acquire(max(sizes + [1]))
        self.text_buckets = _text_buckets(self.engines.get(gio.TEXT_ENCODER))
        self.session_seconds = 0.0
        self.kv_allocations = 0
        self.kv_bytes = 0
        self.kv_slot_writes = 0
        self.kv_scratch_copies = 0
        self.last_kv_cache: TrtKVCache | None = None

    def describe(self) -> dict:
        """What runs the graphs, for reports (bench.json)."""
        return {"backend": "trt", "device": self.device, "device_name": self.device_name,
                "compute_capability": self.compute_capability, "tensorrt": self.trt.__version__,
                "engines": self.build.get("dir"), "cuda_graphs": self.capture.enabled}

    def resident_weights(self) -> dict:
        """Weight bytes on the GPU, per engine, from the plan sizes (weights dominate a plan; each
        engine holds its own copy, so step and fidelity each hold the transformer)."""
        graphs = self.build.get("graphs", {})
        by_graph = {name: (self.manifest.root / graphs[name]["plan"]).stat().st_size for name in self.engines}
        return {"bytes": sum(by_graph.values()), "by_graph": by_graph, "basis": "engine plan sizes"}

    def _load(self, name: str) -> EngineInfo:
        entry = self.build.get("graphs", {}).get(name)
        if not isinstance(entry, dict) or not isinstance(entry.get("plan"), str):
            raise StagevarError(f"The TensorRT engines in {self.manifest.root / self.build.get('dir', 'engines')} "
                                f"have no '{name}' engine; build the engines again.")
        path = self.manifest.file_path(entry["plan"], f"the '{name}' TensorRT engine")
        if not path.is_file():
            raise StagevarError(f"TensorRT engine {path} is missing; build the engines again.")
        with open(path, "rb") as f:
            try:  # plans are GBs: let TensorRT read the mapped file instead of a bytes copy
                with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as blob:
                    engine = self.runtime.deserialize_cuda_engine(blob)
            except (ValueError, OSError):  # an empty file cannot be mapped
                engine = self.runtime.deserialize_cuda_engine(f.read())
        if engine is None:
            raise StagevarError(f"TensorRT could not load engine {path} (see its error above; a plugin library "
                                f"may be missing); build the engines again on this machine.")
        eng = EngineInfo(self.trt, name, engine)
        inputs, outputs = gio.contract(name, self._chunks)
        if set(eng.inputs) != set(inputs) or not set(outputs) <= set(eng.outputs):
            raise StagevarError(f"Engine {path} does not have the inputs and outputs this runtime binds (it has "
                                f"{', '.join(eng.inputs)} -> {', '.join(eng.outputs)}); export and build again.")
        return eng

    def _engine(self, graph: str) -> EngineInfo:
        if graph not in self.engines:
            raise StagevarError(f"This trt backend has no '{graph}' engine loaded; create it with that graph.")
        return self.engines[graph]

    def _context(self, eng: EngineInfo, profile: int) -> ProfileContext:
        if profile not in eng.contexts:
            strategy = getattr(self.trt, "ExecutionContextAllocationStrategy", None)
            ctx = (eng.engine.create_execution_context(strategy.USER_MANAGED) if strategy is not None
                   else eng.engine.create_execution_context_without_device_memory())
            if ctx is None:
                raise RuntimeError(f"TensorRT could not create an execution context for the '{eng.name}' engine")
            mem = self._context_memory
            if hasattr(ctx, "set_device_memory"):  # TensorRT 10.1+
                ctx.set_device_memory(mem.ptr, mem.nbytes)
            else:
                ctx.device_memory = mem.ptr
            if not ctx.set_optimization_profile_async(profile, self.cuda.stream_handle):
                raise RuntimeError(f"TensorRT refused profile {profile} of the '{eng.name}' engine")
            self.cuda.sync()
            eng.contexts[profile] = ProfileContext(ctx, (eng.name, profile))
        return eng.contexts[profile]

    def close(self) -> None:
        """Release graphs, contexts, engines and device memory (the backend is unusable after)."""
        self.cuda.sync()
        self.capture.clear()
        self.engines = {}
        self._staging.clear()
        self._pinned.clear()
        self._context_memory = None
        self.pool.close()
        self.fixed_pool.close()
        self.cuda.close()

    # ---- memory -----------------------------------------------------------------------------

    def alloc(self, shape, dtype, resident: bool = True, fill: float | None = None) -> CudaArray:
        """An uninitialised buffer on the GPU (`resident`) or on the host."""
        shape, dtype = tuple(int(s) for s in shape), np.dtype(dtype)
        if not resident:
            return host_array(np.empty(shape, dtype) if fill is None else np.full(shape, fill, dtype))
        if fill is not None:
            return self.upload(np.full(shape, fill, dtype))
        mem = self.pool.acquire(_nbytes(shape, dtype))
        return CudaArray(mem.ptr, shape, dtype, "cuda", mem, 0, self.cuda)

    def upload(self, array: np.ndarray) -> CudaArray:
        """Host values as a GPU buffer."""
        array = np.asarray(array, order="C")  # 0-d stays 0-d
        out = self.alloc(array.shape, array.dtype)
        self.cuda.upload(out.ptr, array)
        return out

    def select(self, array: CudaArray, index: tuple) -> CudaArray:
        """A compact GPU copy of `array[index]`: one strided copy for a range of one axis."""
        if array.device == "cpu":
            return self.upload(np.asarray(array.numpy()[index], order="C"))
        found = row_range(array.shape, index) if array.shape else None
        if found is None:
            return self.upload(np.asarray(array.numpy()[index], order="C"))
        axis, start, stop = found
        shape = (*array.shape[:axis], stop - start, *array.shape[axis + 1:])
        out = self.alloc(shape, array.dtype)
        plan = row_range_copy(array.shape, array.dtype.itemsize, axis, start, stop)
        self.cuda.copy_2d(out.ptr, plan.dst_pitch, array.ptr + plan.src_offset, plan.src_pitch, plan.width,
                          plan.height)
        return out

    def _buffer(self, graph: str, name: str, role: str, nbytes: int):
        """The persistent device buffer of (graph, tensor, role): staging for host values and
        aligned scratch. Persistent so the addresses, and the graphs captured with them, stay.
        An input's buffer is sized for its largest profile shape, so every scale shares one
        (LOWRANK's inputs are 53 MB per chunk at 64x64: one per size was hundreds kept);
        outputs, whose largest size the profiles do not give, get one per size class."""
        largest = self._largest(graph, name)
        key = (graph, name, role) if largest else (graph, name, role, self.fixed_pool.size_class(nbytes))
        buf = self._staging.get(key)
        if buf is None or buf.nbytes < nbytes:
            if buf is not None:
                self.fixed_pool.discard(buf)  # freed now, not cached: the pool stays trimmed
            self._staging[key] = buf = self.fixed_pool.acquire(max(nbytes, largest))
        return buf

    def _pinned_host(self, graph: str, name: str, nbytes: int):
        """The page-locked host buffer inputs of (graph, name) are uploaded from: an asynchronous
        copy from pageable memory is staged by the driver, synchronously (LOWRANK's projections
        and Gumbel noise are 53 MB per chunk at 64x64). Reused after the run's synchronisation."""
        key = (graph, name)
        buf = self._pinned.get(key)
        if buf is None or buf.nbytes < nbytes:
            self._pinned[key] = buf = None  # the old one is freed before the new one is made
            self._pinned[key] = buf = self.cuda.pinned(max(nbytes, self._largest(graph, name)))
        return buf

    def _largest(self, graph: str, name: str) -> int:
        """Bytes of input `name` at its largest profile shape (0 for outputs)."""
        eng = self.engines.get(graph)
        if eng is None or name not in eng.inputs:
            return 0
        shapes = [p[name][2] for p in eng.profiles if name in p] or [eng.static.get(name, ())]
        return max(_nbytes(s, eng.dtype(name, "input")) for s in shapes)

    # ---- graph contracts --------------------------------------------------------------------

    def input_dtype(self, graph: str, name: str) -> np.dtype:
        """The numpy dtype the `graph` engine declares for input `name`."""
        return self._engine(graph).dtype(name, "input")

    def output_dtype(self, graph: str, name: str) -> np.dtype:
        """The numpy dtype the `graph` engine declares for output `name`."""
        return self._engine(graph).dtype(name, "output")

    # ---- running ----------------------------------------------------------------------------

    def run_plain(self, graph: str, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """Run an engine on host inputs and return its host outputs (text encoder, VAE)."""
        outputs = self._run(graph, feeds, None)
        order = gio.contract(graph, self._chunks)[1]
        return [outputs[name].numpy() for name in order]

    def run_bound(self, graph: str, inputs: Mapping[str, np.ndarray | CudaArray],
                  outputs: Mapping[str, CudaArray]) -> None:
        """Run an engine with every input and output bound by address; outputs are written in place
        (host outputs and misaligned device outputs through a staging buffer and one copy)."""
        self._run(graph, inputs, outputs)

    def _run(self, graph: str, inputs, outputs: Mapping[str, CudaArray] | None) -> dict[str, CudaArray]:
        eng = self._engine(graph)
        if set(inputs) != set(eng.inputs):
            raise RuntimeError(f"{graph} takes inputs {sorted(eng.inputs)}, got {sorted(inputs)}")
        self.cuda.activate()  # TensorRT runs on the calling thread's current device
        start = time.perf_counter()
        keep, bindings, shapes, after = [], {}, {}, []
        for name, value in inputs.items():
            bindings[name], shapes[name] = self._bind_input(eng, name, value, keep)
        ctx = self._prepare(eng, shapes)
        results = dict(outputs or {})
        for name in eng.outputs:
            dtype, shape = eng.dtype(name, "output"), tuple(int(d) for d in ctx.ctx.get_tensor_shape(name))
            if min((*shape, 0)) < 0:
                raise RuntimeError(f"{graph}.{name} has a data-dependent shape {shape}, which this backend cannot bind")
            if outputs is None and name in gio.contract(graph, self._chunks)[1]:
                results[name] = host_array(np.empty(shape, dtype))
            value = results.get(name)
            if value is None:  # an output the pipeline does not read: still needs an address
                bindings[name] = self._buffer(graph, name, "unread", _nbytes(shape, dtype)).ptr
                continue
            if tuple(value.shape) != shape or value.dtype != dtype:
                raise RuntimeError(f"{graph}.{name} is bound as {value.dtype}{list(value.shape)}, "
                                   f"the engine writes {dtype}{list(shape)}")
            if value.device == "cpu":
                staging = self._buffer(graph, name, "out", value.nbytes)
                bindings[name] = staging.ptr
                after.append(lambda v=value, s=staging: self.cuda.to_host(v.ptr, s.ptr, v.nbytes))
            elif is_aligned(value.ptr, self.alignment):
                bindings[name] = value.ptr
            else:
                scratch = self._buffer(graph, name, "scratch", value.nbytes)
                bindings[name] = scratch.ptr
                after.append(lambda v=value, s=scratch: self.cuda.copy(v.ptr, s.ptr, v.nbytes))
                self.kv_scratch_copies += 1
        self._execute(eng, ctx, bindings)
        for copy in after:
            copy()
        self.cuda.sync()
        self.session_seconds += time.perf_counter() - start
        return results

    def _bind_input(self, eng: EngineInfo, name: str, value, keep: list) -> tuple[int, tuple[int, ...]]:
        dtype = eng.dtype(name, "input")
        if isinstance(value, CudaArray) and value.device != "cpu":
            if value.dtype != dtype:
                raise RuntimeError(f"{eng.name}.{name} is {value.dtype}, the engine wants {dtype}")
            if name in eng.host_inputs:
                host = value.numpy()
                keep.append(host)
                return host.ctypes.data, tuple(host.shape)
            if is_aligned(value.ptr, self.alignment):
                return value.ptr, tuple(value.shape)
            scratch = self._buffer(eng.name, name, "scratch", value.nbytes)
            self.cuda.copy(scratch.ptr, value.ptr, value.nbytes)
            self.kv_scratch_copies += 1
            return scratch.ptr, tuple(value.shape)
        host = np.asarray(value.numpy() if isinstance(value, CudaArray) else value, dtype=dtype, order="C")
        keep.append(host)  # the source of an asynchronous copy lives until the run is synchronised
        if name in eng.host_inputs:
            return host.ctypes.data, tuple(host.shape)
        staging = self._buffer(eng.name, name, "in", host.nbytes)
        pinned = self._pinned_host(eng.name, name, host.nbytes)
        pinned.array(host.nbytes)[:] = host.reshape(-1).view(np.uint8)
        self.cuda.to_device(staging.ptr, pinned.ptr, host.nbytes)
        return staging.ptr, tuple(host.shape)

    def _prepare(self, eng: EngineInfo, shapes: dict[str, tuple[int, ...]]) -> ProfileContext:
        """The context of the profile that takes `shapes`, with those input shapes set."""
        ctx = self._context(eng, select_profile(eng.name, eng.profiles, shapes))
        changed = False
        for name, shape in shapes.items():
            if name in eng.static:
                if shape != eng.static[name]:
                    raise RuntimeError(f"{eng.name}.{name} has shape {list(shape)}, the engine's is fixed at "
                                       f"{list(eng.static[name])}")
            elif ctx.shapes.get(name) != shape:
                if not ctx.ctx.set_input_shape(name, shape):
                    raise RuntimeError(f"TensorRT refused shape {list(shape)} for {eng.name}.{name}")
                ctx.shapes[name] = shape
                changed = True
        if changed:  # the graph is stale, and TensorRT needs a plain run before a capture
            self.capture.reshaped(ctx.key)
        return ctx

    def _execute(self, eng: EngineInfo, ctx: ProfileContext, bindings: dict[str, int]) -> None:
        for name, ptr in bindings.items():
            if ctx.addresses.get(name) != ptr:
                if not ctx.ctx.set_tensor_address(name, ptr):
                    raise RuntimeError(f"TensorRT refused address {ptr:#x} for {eng.name}.{name}")
                ctx.addresses[name] = ptr
                self.capture.rebound(ctx.key)  # a graph replays the addresses it was captured with
        key = ctx.key
        decision = self.capture.decide(eng.name, key)
        if decision == "launch":
            self.cuda.launch(self.capture.graphs[key])
            self.capture.launches += 1
        elif decision == "plain" or not self._capture(eng, ctx, key):
            if not ctx.ctx.execute_async_v3(self.cuda.stream_handle):
                raise RuntimeError(f"TensorRT failed to run the '{eng.name}' engine (see its error above)")
            self.capture.ran_plain(key)

    def _capture(self, eng: EngineInfo, ctx: ProfileContext, key) -> bool:
        """Capture one run of the context into a CUDA graph and launch it; False if capture failed
        (the engine is then never captured again and the caller runs it plainly)."""
        try:
            self.cuda.begin_capture()
        except CudaError:
            self.capture.capture_failed(eng.name)
            return False
        try:
            ok = bool(ctx.ctx.execute_async_v3(self.cuda.stream_handle))
        except Exception:
            ok = False
        graph = self.cuda.end_capture()
        graph_exec = None
        if ok and graph is not None:
            try:
                graph_exec = self.cuda.instantiate(graph)
            except CudaError:
                graph_exec = None
        elif graph is not None:
            self.cuda.destroy_graph(graph)
        if graph_exec is None:
            self.cuda.clear_error()
            self.capture.capture_failed(eng.name)
            return False
        self.capture.captured(key, graph_exec)
        self.cuda.launch(graph_exec)
        self.capture.launches += 1
        return True

    # ---- K/V cache --------------------------------------------------------------------------

    def new_kv_cache(self, capacity: int, depth: int, rows: int, heads: int, head_dim: int,
                     dtype) -> "TrtKVCache":
        """The one K/V buffer of a request, for `capacity` tokens (all its CFG/UNCOND scales)."""
        # Drop the previous request's cache first: its buffer goes back to the pool and this one
        # gets the same address, so the graphs captured for the previous request replay.
        self.last_kv_cache = None
        cache = TrtKVCache(self, capacity, (depth, 2, rows, heads, head_dim), np.dtype(dtype))
        self.last_kv_cache = cache
        return cache
