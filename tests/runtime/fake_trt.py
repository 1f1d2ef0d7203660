"""CPU stand-ins for `tensorrt` and cuda-python's `cudart`, strict enough to test the trt backend.

`FakeGpu` holds device memory (numpy bytes at addresses far outside the process's address space,
bounds-checked on every access), streams whose work runs only at synchronisation (so a read
before `cudaStreamSynchronize` sees stale bytes), and stream capture into replayable graphs (a
captured run executes only when its graph is launched, with the addresses bound at capture).
Its fake TensorRT engine runs the exported ONNX graph with onnxruntime on the bound device
memory and enforces TensorRT 10's rules as the backend relies on them: integer stream handles,
one context per profile, shapes within the context's profile, every I/O address set and aligned
(`required_alignment`, 256 bytes like TensorRT), user-managed context memory, and no capture of
a context whose input shapes changed since its last plain run. Where the real API is strict in
ways the backend once missed (issue 15), so is the fake: a CUDA graph whose context was re-bound
(any address, shape or profile change since the capture) is refused at launch; `load_library`
returns None for a library whose creator is registered already or that cannot be loaded;
`get_tensor_profile_shape` gives an invalid (dimensionless) shape for static inputs; TensorRT 11
engines have no `device_memory_size`; cudaMalloc aligns to 256 bytes and no more; uploads from
cudaMallocHost memory are read when the copy runs (pageable ones at the call), and logged.

A "plan" is JSON: {"onnx": path, "profiles": [{input: [min, opt, max]}], "device_memory": bytes,
"capture_fails": bool}. `gpu.events` logs executions, captures and launches for assertions.
"""

from __future__ import annotations

import bisect
import ctypes
import enum
import itertools
import json
import types
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnxruntime as ort

from stagevar.runtime.ort_backend import _session_options

DEVICE_BASE = 0xD000_0000_0000  # above x86-64 user space: never a valid host address


class FakeFault(RuntimeError):
    """What would be an illegal memory access, a wrong API use or a crash on a real GPU."""


class cudaError_t(enum.IntEnum):
    cudaSuccess = 0
    cudaErrorInvalidValue = 1
    cudaErrorMemoryAllocation = 2
    cudaErrorIllegalState = 401
    cudaErrorStreamCaptureUnsupported = 900
    cudaErrorStreamCaptureInvalidated = 901


class cudaMemcpyKind(enum.IntEnum):
    cudaMemcpyHostToHost = 0
    cudaMemcpyHostToDevice = 1
    cudaMemcpyDeviceToHost = 2
    cudaMemcpyDeviceToDevice = 3
    cudaMemcpyDefault = 4


class cudaStreamCaptureMode(enum.IntEnum):
    cudaStreamCaptureModeGlobal = 0
    cudaStreamCaptureModeThreadLocal = 1
    cudaStreamCaptureModeRelaxed = 2


OK = cudaError_t.cudaSuccess


class FakeStream:
    def __init__(self, handle: int):
        self.handle = handle
        self.queue: list = []
        self.capture: list | None = None
        self.capture_invalid = False

    def __int__(self):
        return self.handle


class FakeGraph:
    _ids = itertools.count(1)

    def __init__(self, ops):
        self.ops, self.id, self.destroyed = list(ops), next(self._ids), False

    def check_contexts(self) -> None:
        """TensorRT ties a captured enqueue to its context's state at capture (addresses, shapes,
        profile): replaying it after the context was re-bound runs with stale parameters."""
        for op in self.ops:
            ctx, generation = getattr(op, "context", (None, None))
            if ctx is not None and ctx.generation != generation:
                raise FakeFault(f"CUDA graph {self.id} replayed after its execution context was re-bound "
                                f"(addresses or shapes changed since the capture)")


class FakeGpu:
    """Device memory, streams, graphs and the two fake modules over them."""

    def __init__(self, required_alignment: int = 256, total_memory: int = 1 << 34):
        self.required_alignment = required_alignment
        self.total_memory = total_memory
        self.blocks: dict[int, np.ndarray] = {}
        self.bases: list[int] = []
        # cudaMalloc guarantees 256-byte alignment and no more: addresses here are 256 mod 512
        # (`malloc_alignment` mod twice it), so code that assumes a coarser alignment breaks.
        self.malloc_alignment = 256
        self._next = DEVICE_BASE
        self.streams: dict[int, FakeStream] = {}
        self._handles = itertools.count(0x5000)
        self.events: list[dict] = []
        self.mallocs = 0
        self.trt_version = "10.9.0.34"
        self.pinned: dict[int, np.ndarray] = {}  # cudaMallocHost blocks by address

    # ---- memory ------------------------------------------------------------------------------

    def used(self) -> int:
        return sum(b.nbytes for b in self.blocks.values())

    def malloc(self, size: int) -> int:
        if size == 0:
            return 0
        if self.used() + size > self.total_memory:
            raise MemoryError
        a = self.malloc_alignment
        base = -(-self._next // (2 * a)) * (2 * a) + a
        self.blocks[base] = np.zeros(size, np.uint8)
        bisect.insort(self.bases, base)
        self._next = base + size + 256  # a gap after every block
        self.mallocs += 1
        return base

    def free(self, ptr: int) -> None:
        if ptr not in self.blocks:
            raise FakeFault(f"cudaFree of {ptr:#x}, which is not an allocation")
        del self.blocks[ptr]
        self.bases.remove(ptr)

    def view(self, ptr: int, nbytes: int) -> np.ndarray:
        """Device bytes [ptr, ptr + nbytes), bounds-checked against one live allocation."""
        i = bisect.bisect_right(self.bases, ptr) - 1
        if i < 0:
            raise FakeFault(f"device address {ptr:#x} is not in any allocation")
        base = self.bases[i]
        block = self.blocks[base]
        if ptr + nbytes > base + block.nbytes:
            raise FakeFault(f"device access [{ptr:#x}, +{nbytes}) overruns the allocation at {base:#x} "
                            f"of {block.nbytes} bytes")
        return block[ptr - base:ptr - base + nbytes]

    def read(self, ptr: int, shape, dtype) -> np.ndarray:
        dtype = np.dtype(dtype)
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        return self.view(ptr, nbytes).copy().view(dtype).reshape(shape)

    def write(self, ptr: int, array: np.ndarray) -> None:
        array = np.ascontiguousarray(array)
        self.view(ptr, array.nbytes)[:] = array.reshape(-1).view(np.uint8)

    @staticmethod
    def host(ptr: int, nbytes: int) -> np.ndarray:
        if not isinstance(ptr, int) or ptr >= DEVICE_BASE or ptr == 0:
            raise FakeFault(f"{ptr!r} is not a host address")
        return np.ctypeslib.as_array((ctypes.c_ubyte * nbytes).from_address(ptr)) if nbytes else np.empty(0, np.uint8)

    # ---- streams -----------------------------------------------------------------------------

    def is_pinned(self, ptr: int, nbytes: int) -> bool:
        return any(base <= ptr and ptr + nbytes <= base + block.nbytes for base, block in self.pinned.items())

    def stream(self, value) -> FakeStream:
        handle = int(value)
        if handle not in self.streams:
            raise FakeFault(f"stream {value!r} does not exist")
        return self.streams[handle]

    def submit(self, stream: FakeStream, op, what: str) -> cudaError_t:
        """Queue `op` on the stream, or record it into the stream's capture."""
        if stream.capture is not None:
            if what in ("h2d", "d2h"):  # pageable host memory cannot be captured
                return self.invalidate(stream, what)
            stream.capture.append(op)
        else:
            stream.queue.append(op)
        return OK

    def invalidate(self, stream: FakeStream, why: str) -> cudaError_t:
        stream.capture_invalid = True
        self.events.append({"op": "capture_invalidated", "why": why})
        return cudaError_t.cudaErrorStreamCaptureUnsupported

    def capturing(self) -> FakeStream | None:
        return next((s for s in self.streams.values() if s.capture is not None), None)

    def flush(self, stream: FakeStream) -> None:
        while stream.queue:
            stream.queue.pop(0)()

    # ---- cudart --------------------------------------------------------------------------------

    def cudart(self) -> types.ModuleType:
        gpu = self
        rt = types.ModuleType("cuda.bindings.runtime")
        rt.cudaError_t, rt.cudaMemcpyKind, rt.cudaStreamCaptureMode = cudaError_t, cudaMemcpyKind, cudaStreamCaptureMode
        rt.cudaStreamNonBlocking = 1

        def cudaSetDevice(device):
            return (OK,) if device == 0 else (cudaError_t.cudaErrorInvalidValue,)

        def cudaGetDeviceProperties(device):
            return OK, SimpleNamespace(major=9, minor=0, name=b"Fake H100" + b"\0" * 8)

        def cudaGetErrorName(err):
            return OK, cudaError_t(err).name.encode()

        def cudaMalloc(size):
            s = gpu.capturing()
            if s is not None:  # thread-local capture forbids allocation
                return gpu.invalidate(s, "cudaMalloc"), None
            try:
                return OK, gpu.malloc(int(size))
            except MemoryError:
                return cudaError_t.cudaErrorMemoryAllocation, None

        def cudaFree(ptr):
            s = gpu.capturing()
            if s is not None:
                return (gpu.invalidate(s, "cudaFree"),)
            for stream in gpu.streams.values():  # cudaFree synchronises the device
                gpu.flush(stream)
            gpu.free(int(ptr))
            return (OK,)

        def cudaMallocHost(size):
            block = np.zeros(int(size), np.uint8)
            gpu.pinned[block.ctypes.data] = block
            return OK, block.ctypes.data

        def cudaFreeHost(ptr):
            if gpu.pinned.pop(int(ptr), None) is None:
                raise FakeFault(f"cudaFreeHost of {ptr:#x}, which cudaMallocHost did not return")
            return (OK,)

        def cudaStreamCreateWithFlags(flags):
            s = FakeStream(next(gpu._handles))
            gpu.streams[s.handle] = s
            return OK, s

        def cudaStreamDestroy(stream):
            s = gpu.stream(stream)
            gpu.flush(s)
            del gpu.streams[s.handle]
            return (OK,)

        def cudaStreamSynchronize(stream):
            s = gpu.stream(stream)
            if s.capture is not None:
                return (gpu.invalidate(s, "synchronize"),)
            gpu.flush(s)
            return (OK,)

        def cudaMemcpyAsync(dst, src, count, kind, stream):
            s, count = gpu.stream(stream), int(count)
            if kind == cudaMemcpyKind.cudaMemcpyHostToDevice:
                pinned = gpu.is_pinned(src, count)
                gpu.events.append({"op": "h2d", "dst": int(dst), "bytes": count, "pinned": pinned})
                gpu.view(dst, count)  # bounds check now, like a real invalid-argument error
                if pinned:  # page-locked: read when the copy runs, so a reuse before sync shows
                    op = lambda: gpu.view(dst, count).__setitem__(slice(None), gpu.host(src, count))  # noqa: E731
                else:
                    data = gpu.host(src, count).copy()  # pageable: staged at the call
                    op = lambda: gpu.view(dst, count).__setitem__(slice(None), data)  # noqa: E731
                what = "h2d"
            elif kind == cudaMemcpyKind.cudaMemcpyDeviceToHost:
                gpu.view(src, count)
                gpu.host(dst, count)
                op, what = (lambda: gpu.host(dst, count).__setitem__(slice(None), gpu.view(src, count))), "d2h"
            elif kind == cudaMemcpyKind.cudaMemcpyDeviceToDevice:
                gpu.view(src, count), gpu.view(dst, count)
                op, what = (lambda: gpu.view(dst, count).__setitem__(slice(None), gpu.view(src, count).copy())), "d2d"
            else:
                raise FakeFault(f"cudaMemcpyAsync kind {kind!r} is not used by the backend")
            return (gpu.submit(s, op, what),)

        def cudaMemcpy2DAsync(dst, dpitch, src, spitch, width, height, kind, stream):
            if kind != cudaMemcpyKind.cudaMemcpyDeviceToDevice:
                raise FakeFault("the backend only copies 2-D device to device")
            if width > dpitch or width > spitch:
                return (cudaError_t.cudaErrorInvalidValue,)

            def op():
                for r in range(height):
                    gpu.view(dst + r * dpitch, width)[:] = gpu.view(src + r * spitch, width)
            gpu.view(src, (height - 1) * spitch + width), gpu.view(dst, (height - 1) * dpitch + width)
            return (gpu.submit(gpu.stream(stream), op, "2d"),)

        def cudaStreamBeginCapture(stream, mode):
            s = gpu.stream(stream)
            if s.capture is not None:
                return (cudaError_t.cudaErrorIllegalState,)
            if mode != cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal:
                raise FakeFault("the backend captures thread-locally")
            s.capture, s.capture_invalid = [], False
            gpu.events.append({"op": "capture_begin"})
            return (OK,)

        def cudaStreamEndCapture(stream):
            s = gpu.stream(stream)
            if s.capture is None:
                return cudaError_t.cudaErrorIllegalState, None
            ops, invalid = s.capture, s.capture_invalid
            s.capture, s.capture_invalid = None, False
            if invalid:
                return cudaError_t.cudaErrorStreamCaptureInvalidated, None
            return OK, FakeGraph(ops)

        def cudaGraphInstantiateWithFlags(graph, flags):
            if graph.destroyed:
                raise FakeFault("instantiating a destroyed graph")
            return OK, FakeGraph(graph.ops)

        def cudaGraphDestroy(graph):
            graph.destroyed = True
            return (OK,)

        def cudaGraphExecDestroy(graph_exec):
            graph_exec.destroyed = True
            return (OK,)

        def cudaGraphLaunch(graph_exec, stream):
            if graph_exec.destroyed:
                raise FakeFault("launching a destroyed graph")
            s = gpu.stream(stream)
            graph_exec.check_contexts()
            gpu.events.append({"op": "launch", "graph": graph_exec.id})
            for op in graph_exec.ops:
                gpu.submit(s, op, "graph")
            return (OK,)

        def cudaGetLastError():
            return (OK,)

        for fn in (cudaSetDevice, cudaGetDeviceProperties, cudaGetErrorName, cudaMalloc, cudaFree, cudaMallocHost,
                   cudaFreeHost,
                   cudaStreamCreateWithFlags, cudaStreamDestroy, cudaStreamSynchronize, cudaMemcpyAsync,
                   cudaMemcpy2DAsync, cudaStreamBeginCapture, cudaStreamEndCapture, cudaGraphInstantiateWithFlags,
                   cudaGraphDestroy, cudaGraphExecDestroy, cudaGraphLaunch, cudaGetLastError):
            setattr(rt, fn.__name__, fn)
        return rt

    def modules(self, trt_version: str = "10.9.0.34") -> dict[str, types.ModuleType]:
        """sys.modules entries: tensorrt, cuda, cuda.bindings, cuda.bindings.runtime."""
        self.trt_version = trt_version
        rt = self.cudart()
        bindings = types.ModuleType("cuda.bindings")
        bindings.__path__, bindings.runtime = [], rt
        cuda = types.ModuleType("cuda")
        cuda.__path__, cuda.bindings = [], bindings
        return {"tensorrt": fake_tensorrt(self, trt_version), "cuda": cuda, "cuda.bindings": bindings,
                "cuda.bindings.runtime": rt}


# ---- tensorrt ------------------------------------------------------------------------------------


class DataType(enum.Enum):
    FLOAT = "float32"
    HALF = "float16"
    BF16 = "bfloat16"
    INT8 = "int8"
    INT32 = "int32"
    INT64 = "int64"
    BOOL = "bool"
    UINT8 = "uint8"


_ORT_TO_TRT = {"tensor(float)": DataType.FLOAT, "tensor(float16)": DataType.HALF, "tensor(int64)": DataType.INT64,
               "tensor(int32)": DataType.INT32, "tensor(uint8)": DataType.UINT8, "tensor(bool)": DataType.BOOL,
               "tensor(int8)": DataType.INT8, "tensor(bfloat16)": DataType.BF16}


def nptype(dtype: DataType):
    if dtype is DataType.BF16:
        raise TypeError("Could not resolve TensorRT datatype to an equivalent numpy datatype.")
    return np.dtype(dtype.value).type


class TensorIOMode(enum.Enum):
    NONE = 0
    INPUT = 1
    OUTPUT = 2


class ExecutionContextAllocationStrategy(enum.Enum):
    STATIC = 0
    ON_PROFILE_CHANGE = 1
    USER_MANAGED = 2


def _require_int(value, what):
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{what}: incompatible function arguments ({type(value).__name__} is not int)")


class FakeEngine:
    def __init__(self, gpu: FakeGpu, spec: dict):
        self.gpu, self.spec = gpu, spec
        self.name = spec.get("name", spec["onnx"])
        self.session = ort.InferenceSession(spec["onnx"], _session_options(), providers=["CPUExecutionProvider"])
        self.io = {}
        for mode, args in ((TensorIOMode.INPUT, self.session.get_inputs()),
                           (TensorIOMode.OUTPUT, self.session.get_outputs())):
            for a in args:
                shape = tuple(d if isinstance(d, int) else -1 for d in a.shape)
                self.io[a.name] = (mode, _ORT_TO_TRT[a.type], shape)
        self.names = list(self.io)
        self.input_names = [n for n in self.names if self.io[n][0] is TensorIOMode.INPUT]
        self.output_names = [n for n in self.names if self.io[n][0] is TensorIOMode.OUTPUT]
        self.profiles = [{n: [tuple(s) for s in r] for n, r in p.items()} for p in spec["profiles"]]
        self.num_optimization_profiles = len(self.profiles)
        self.device_memory_size_v2 = int(spec.get("device_memory", 1 << 16))
        if int(gpu.trt_version.split(".")[0]) < 11:  # TensorRT 11's bindings drop device_memory_size
            self.device_memory_size = self.device_memory_size_v2
        self.capture_fails = bool(spec.get("capture_fails", False))
        self.profile_owner: dict[int, "FakeContext"] = {}
        self._out_shapes: dict[tuple, dict] = {}

    @property
    def num_io_tensors(self):
        return len(self.names)

    def get_tensor_name(self, i):
        return self.names[i]

    def get_tensor_mode(self, name):
        return self.io[name][0] if name in self.io else TensorIOMode.NONE

    def get_tensor_dtype(self, name):
        return self.io[name][1]

    def get_tensor_shape(self, name):
        return self.io[name][2]

    def is_shape_inference_io(self, name):
        return False

    def get_tensor_profile_shape(self, name, index):
        if self.io[name][0] is not TensorIOMode.INPUT:
            raise RuntimeError(f"{name} is not an input")
        if -1 not in self.io[name][2] or name not in self.profiles[index]:
            # A static input has no profile shapes: TensorRT returns an invalid Dims (nbDims -1),
            # which reads as shapes without dimensions; the engine's own shape is the valid one.
            return [(), (), ()]
        return [list(s) for s in self.profiles[index][name]]

    def get_device_memory_size_for_profile_v2(self, index):
        return self.device_memory_size_v2

    def create_execution_context(self, strategy=ExecutionContextAllocationStrategy.STATIC):
        return FakeContext(self, strategy)

    def output_shapes(self, shapes: dict) -> dict:
        """Output shapes for input shapes, from one onnxruntime run on zeros (cached)."""
        key = tuple(sorted(shapes.items()))
        if key not in self._out_shapes:
            feeds = {n: np.zeros(s, nptype(self.io[n][1])) for n, s in shapes.items()}
            outs = self.session.run(self.output_names, feeds)
            self._out_shapes[key] = {n: tuple(o.shape) for n, o in zip(self.output_names, outs)}
        return self._out_shapes[key]


class FakeContext:
    def __init__(self, engine: FakeEngine, strategy):
        self.engine, self.gpu, self.strategy = engine, engine.gpu, strategy
        self.profile: int | None = None
        self.static = {n: engine.io[n][2] for n in engine.input_names if -1 not in engine.io[n][2]}
        self.shapes: dict[str, tuple] = dict(self.static)
        self.addresses: dict[str, int] = {}
        self.memory: tuple[int, int] | None = None
        self.generation = 0  # bumped by every change of addresses, shapes or profile
        self.shapes_dirty = True  # a plain run must follow new input shapes before a capture

    def set_device_memory(self, ptr, size):
        _require_int(ptr, "set_device_memory"), _require_int(size, "set_device_memory")
        if self.strategy is not ExecutionContextAllocationStrategy.USER_MANAGED:
            raise FakeFault("set_device_memory on a context that manages its own memory")
        if size < self.engine.device_memory_size_v2 or ptr % 256:
            raise FakeFault("context memory too small or misaligned")
        self.gpu.view(ptr, size)
        self.memory = (ptr, size)

    def set_optimization_profile_async(self, index, stream_handle):
        _require_int(index, "set_optimization_profile_async")
        _require_int(stream_handle, "set_optimization_profile_async")
        self.gpu.stream(stream_handle)
        if not 0 <= index < self.engine.num_optimization_profiles:
            return False
        owner = self.engine.profile_owner.get(index)
        if owner is not None and owner is not self:
            return False  # a profile serves one context at a time
        self.engine.profile_owner[index] = self
        self.profile, self.shapes, self.shapes_dirty = index, dict(self.static), True
        self.generation += 1
        return True

    def set_input_shape(self, name, shape):
        shape = tuple(shape)
        if self.profile is None or self.engine.get_tensor_mode(name) is not TensorIOMode.INPUT:
            return False
        if name in self.static:
            return shape == self.static[name]
        lo, _, hi = self.engine.profiles[self.profile][name]
        if len(shape) != len(lo) or not all(a <= s <= b for s, a, b in zip(shape, lo, hi)):
            return False
        if self.shapes.get(name) != shape:
            self.shapes[name], self.shapes_dirty = shape, True
            self.generation += 1
        return True

    def get_tensor_shape(self, name):
        if self.engine.get_tensor_mode(name) is TensorIOMode.INPUT:
            return self.shapes.get(name, self.engine.get_tensor_shape(name))
        if set(self.shapes) != set(self.engine.input_names):
            return tuple(-1 for _ in self.engine.get_tensor_shape(name))
        return self.engine.output_shapes(self.shapes)[name]

    def set_tensor_address(self, name, ptr):
        _require_int(ptr, "set_tensor_address")
        if name not in self.engine.io or ptr % self.gpu.required_alignment:
            return False  # TensorRT logs an API usage error and refuses
        if self.addresses.get(name) != ptr:
            self.addresses[name] = ptr
            self.generation += 1
        return True

    def execute_async_v3(self, stream_handle):
        _require_int(stream_handle, "execute_async_v3")
        stream = self.gpu.stream(stream_handle)
        eng = self.engine
        if self.profile is None or self.memory is None or set(self.shapes) != set(eng.input_names):
            raise FakeFault("enqueue before profile, memory or every input shape was set")
        if set(self.addresses) != set(eng.names):
            raise FakeFault(f"enqueue without addresses for {sorted(set(eng.names) - set(self.addresses))}")
        bindings, shapes = dict(self.addresses), dict(self.shapes)
        out_shapes = eng.output_shapes(shapes)
        for name in eng.names:  # every binding must lie inside device memory
            mode, dtype, _ = eng.io[name]
            shape = shapes[name] if mode is TensorIOMode.INPUT else out_shapes[name]
            self.gpu.view(bindings[name], int(np.prod(shape, dtype=np.int64)) * np.dtype(nptype(dtype)).itemsize)
        captured = stream.capture is not None
        event = {"op": "execute", "engine": eng.name, "profile": self.profile, "captured": captured,
                 "bindings": bindings, "shapes": shapes, "context": id(self)}
        self.gpu.events.append(event)
        if captured and (self.shapes_dirty or eng.capture_fails):
            self.gpu.invalidate(stream, "shapes changed since the last plain enqueue" if self.shapes_dirty
                                else "engine cannot be captured")
            event["refused"] = True
            return False
        memory = self.memory

        def run():
            feeds = {n: self.gpu.read(bindings[n], shapes[n], nptype(eng.io[n][1])) for n in eng.input_names}
            outs = eng.session.run(eng.output_names, feeds)
            self.gpu.view(memory[0], min(memory[1], 4096))[:] = 0xAB  # activations clobber the scratch
            for name, value in zip(eng.output_names, outs):
                if tuple(value.shape) != out_shapes[name]:
                    raise FakeFault(f"{name}: shape {value.shape} != {out_shapes[name]}")
                self.gpu.write(bindings[name], value.astype(nptype(eng.io[name][1]), copy=False))
        run.context = (self, self.generation)
        self.gpu.submit(stream, run, "execute")
        if not captured:
            self.shapes_dirty = False
        return True


class FakePluginRegistry:
    """TensorRT's plugin registry as the loaders see it. `load_library` returns None, like the
    real one, both when the library's creators are registered already (a second load in one
    process) and when it cannot be loaded (a missing dependency: here any file that does not
    start with PLUGIN_BYTES); otherwise it registers the stagevar creator and returns a handle.
    `get_creator(name, version, namespace)` looks a creator up (None when absent)."""

    PLUGIN_BYTES = b"fake plugin"
    CREATOR = ("StageVarTokenRestore", "1", "")

    def __init__(self):
        self.creators: dict[tuple, object] = {}
        self.loaded: list[str] = []

    def load_library(self, path):
        if not isinstance(path, str):
            raise TypeError("load_library(): incompatible function arguments (path must be str)")
        self.loaded.append(path)
        try:
            data = Path(path).read_bytes()
        except OSError:
            return None
        if not data.startswith(self.PLUGIN_BYTES) or self.CREATOR in self.creators:
            return None  # TensorRT logs the dlopen error or "creator already registered"
        self.creators[self.CREATOR] = object()
        return object()

    def get_creator(self, name, version, plugin_namespace=""):
        return self.creators.get((name, version, plugin_namespace))


def fake_tensorrt(gpu: FakeGpu, version: str) -> types.ModuleType:
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.DataType, trt.nptype, trt.TensorIOMode = DataType, nptype, TensorIOMode
    trt.ExecutionContextAllocationStrategy = ExecutionContextAllocationStrategy
    trt.Logger = type("Logger", (), {"WARNING": 2, "ERROR": 1, "INFO": 3, "__init__": lambda self, level=2: None})
    trt.loaded_libraries = []

    class Runtime:
        def __init__(self, logger):
            self.logger = logger

        def deserialize_cuda_engine(self, blob):
            try:
                spec = json.loads(bytes(blob))
            except ValueError:
                return None  # TensorRT logs a deserialization error and returns None
            return FakeEngine(gpu, spec)

    registry = FakePluginRegistry()
    trt.loaded_libraries = registry.loaded
    trt.Runtime = Runtime
    trt.init_libnvinfer_plugins = lambda logger, namespace: True
    trt.get_plugin_registry = lambda: registry
    return trt
