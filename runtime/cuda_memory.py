"""Device memory for the TensorRT backend through cuda-python's runtime API (no torch).

`Cuda` wraps the cudart module and the backend's one stream; every call's error code is checked
(`CudaError` names it). `MemoryPool` keeps freed device buffers by size and hands out the lowest
free address first, so the same request allocates the same addresses every time and the CUDA
graphs captured for its runs stay valid. `CudaArray` is the backend's `DeviceArray`: the same
fields and methods the pipeline uses (`ptr`, `shape`, `dtype`, `nbytes`, `rows`, `numpy`), backed
by a pooled `Allocation` on the device or by numpy memory on the host. `TrtKVCache` is the
request's token-major K/V cache in such memory, compacted with one strided device copy.
"""

from __future__ import annotations

import bisect
import threading
from dataclasses import dataclass

import numpy as np

from .kv_cache import KVCache
from .pointer_array import PointerRows
from .trt_profiles import ALIGNMENT, row_range_copy


def load_cudart():
    """cuda-python's runtime module: `cuda.bindings.runtime` (12.6+), else `cuda.cudart`."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        from cuda import cudart  # cuda-python < 12.6
    return cudart


class CudaError(RuntimeError):
    """A CUDA runtime call failed; `code` is the cudaError_t value."""

    def __init__(self, call: str, code, name: str):
        super().__init__(f"{call} failed: {name}")
        self.call, self.code, self.name = call, code, name


class Cuda:
    """The cudart module bound to one device and one stream (created non-blocking)."""

    def __init__(self, cudart, device: int = 0):
        self.rt = cudart
        self._success = cudart.cudaError_t.cudaSuccess
        self.device = device
        self._thread = None
        self.activate()
        self.stream = self.call("cudaStreamCreateWithFlags", cudart.cudaStreamNonBlocking)
        self.stream_handle = int(self.stream)  # TensorRT takes the stream as an integer handle
        kinds = cudart.cudaMemcpyKind
        self.H2D, self.D2H, self.D2D = (kinds.cudaMemcpyHostToDevice, kinds.cudaMemcpyDeviceToHost,
                                        kinds.cudaMemcpyDeviceToDevice)

    def activate(self) -> None:
        """Make the device current in this thread (CUDA's current device is per thread, and a
        pipeline may be called from threads other than the one that created it)."""
        thread = threading.get_ident()
        if thread != self._thread:
            err, *_ = self.rt.cudaSetDevice(self.device)
            if err != self._success:
                raise CudaError("cudaSetDevice", err, self.error_name(err))
            self._thread = thread

    def call(self, name: str, *args):
        """Call cudart `name`; raise CudaError unless it succeeded; return its results, if any.

        cuda-python returns (error,) or (error, result, ...) from every call."""
        if threading.get_ident() != self._thread:
            self.activate()
        err, *results = getattr(self.rt, name)(*args)
        if err != self._success:
            raise CudaError(name, err, self.error_name(err))
        if not results:
            return None
        return results[0] if len(results) == 1 else tuple(results)

    def error_name(self, err) -> str:
        try:
            ok, name = self.rt.cudaGetErrorName(err)
            if ok == self._success:
                return name.decode() if isinstance(name, bytes) else str(name)
        except Exception:  # a failed lookup must not hide the original error
            pass
        return getattr(err, "name", str(err))

    def clear_error(self) -> None:
        """Reset the thread's last error after an expected failure (a refused capture)."""
        self.rt.cudaGetLastError()

    # ---- device -------------------------------------------------------------------------------

    def properties(self) -> tuple[int, int, str]:
        """(major, minor, name) of the device."""
        prop = self.call("cudaGetDeviceProperties", self.device)
        name = prop.name
        if isinstance(name, (bytes, bytearray)):
            name = bytes(name).split(b"\0", 1)[0].decode(errors="replace")
        return int(prop.major), int(prop.minor), str(name)

    # ---- memory ------------------------------------------------------------------------------

    def malloc(self, nbytes: int) -> int:
        return int(self.call("cudaMalloc", int(nbytes)))

    def free(self, ptr: int) -> None:
        self.call("cudaFree", int(ptr))

    def pinned(self, nbytes: int) -> "PinnedBuffer":
        """Page-locked host memory (cudaMallocHost), freed when the buffer is collected."""
        return PinnedBuffer(int(self.call("cudaMallocHost", max(int(nbytes), 1))), max(int(nbytes), 1), self)

    def upload(self, dst: int, host: np.ndarray) -> None:
        """Copy a C-contiguous host array to device address `dst` (stream-ordered)."""
        self.to_device(dst, host.ctypes.data, host.nbytes)

    def download(self, host: np.ndarray, src: int) -> None:
        """Copy device bytes at `src` into a C-contiguous host array (complete after `sync`)."""
        self.to_host(host.ctypes.data, src, host.nbytes)

    def to_device(self, dst: int, host_ptr: int, nbytes: int) -> None:
        if nbytes:
            self.call("cudaMemcpyAsync", int(dst), int(host_ptr), int(nbytes), self.H2D, self.stream)

    def to_host(self, host_ptr: int, src: int, nbytes: int) -> None:
        if nbytes:
            self.call("cudaMemcpyAsync", int(host_ptr), int(src), int(nbytes), self.D2H, self.stream)

    def copy(self, dst: int, src: int, nbytes: int) -> None:
        """Device-to-device copy of `nbytes` (stream-ordered)."""
        if nbytes:
            self.call("cudaMemcpyAsync", int(dst), int(src), int(nbytes), self.D2D, self.stream)

    def copy_2d(self, dst: int, dst_pitch: int, src: int, src_pitch: int, width: int, height: int) -> None:
        """Device-to-device strided copy: `height` rows of `width` bytes."""
        if width and height:
            self.call("cudaMemcpy2DAsync", int(dst), int(dst_pitch), int(src), int(src_pitch),
                      int(width), int(height), self.D2D, self.stream)

    def sync(self) -> None:
        self.call("cudaStreamSynchronize", self.stream)

    # ---- CUDA graphs ---------------------------------------------------------------------------

    def begin_capture(self) -> None:
        self.call("cudaStreamBeginCapture", self.stream,
                  self.rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal)

    def end_capture(self):
        """End the stream's capture; the graph, or None when the capture was invalidated."""
        err, *graph = self.rt.cudaStreamEndCapture(self.stream)
        if err != self._success:
            self.clear_error()
            return None
        return graph[0] if graph else None

    def instantiate(self, graph):
        """An executable graph of `graph` (which is destroyed: the executable does not need it)."""
        try:
            return self.call("cudaGraphInstantiateWithFlags", graph, 0)
        finally:
            self.destroy_graph(graph)

    def destroy_graph(self, graph) -> None:
        if graph is not None:
            self.rt.cudaGraphDestroy(graph)

    def launch(self, graph_exec) -> None:
        self.call("cudaGraphLaunch", graph_exec, self.stream)

    def destroy_exec(self, graph_exec) -> None:
        # An executable graph still in flight is freed by CUDA when it completes.
        self.rt.cudaGraphExecDestroy(graph_exec)

    def close(self) -> None:
        if self.stream is not None:
            self.rt.cudaStreamSynchronize(self.stream)
            self.rt.cudaStreamDestroy(self.stream)
            self.stream = None


class PinnedBuffer:
    """`nbytes` of page-locked host memory at `ptr`; `array(n)` views its first n bytes."""

    def __init__(self, ptr: int, nbytes: int, cuda: Cuda):
        self.ptr, self.nbytes, self._cuda = ptr, nbytes, cuda

    def array(self, nbytes: int) -> np.ndarray:
        import ctypes

        return np.ctypeslib.as_array((ctypes.c_ubyte * nbytes).from_address(self.ptr))

    def __del__(self):
        try:
            if self._cuda.stream is not None:
                self._cuda.sync()  # an asynchronous copy may still read it
            self._cuda.rt.cudaFreeHost(self.ptr)
        except Exception:  # interpreter shutdown
            pass


# ---- pooled allocations -------------------------------------------------------------------------


class Allocation:
    """A device buffer from a `MemoryPool`; goes back to the pool when released or collected."""

    __slots__ = ("ptr", "nbytes", "pool", "__weakref__")

    def __init__(self, ptr: int, nbytes: int, pool: "MemoryPool"):
        self.ptr, self.nbytes, self.pool = ptr, nbytes, pool

    def release(self) -> None:
        if self.pool is not None:
            pool, self.pool = self.pool, None
            pool._give_back(self.ptr, self.nbytes)

    def __del__(self):
        try:
            self.release()
        except Exception:  # interpreter shutdown: the process frees device memory anyway
            pass


class MemoryPool:
    """A caching allocator: freed buffers are kept per rounded size and reused, lowest address
    first, so a repeated sequence of allocations gets the same addresses.

    `malloc(nbytes) -> ptr` and `free(ptr)` are the device allocator (cudaMalloc/cudaFree via
    `Cuda`, or fakes in tests). Freed buffers are handed out again in stream order, which is
    safe because the backend uses one stream. When malloc fails the cached buffers are freed and
    the allocation is tried once more.
    """

    def __init__(self, malloc, free, granularity: int = ALIGNMENT):
        self._malloc, self._free = malloc, free
        self.granularity = granularity
        self._cached: dict[int, list[int]] = {}
        self.mallocs = 0
        self.reuses = 0
        self.live_bytes = 0
        self.cached_bytes = 0
        self.closed = False

    def size_class(self, nbytes: int) -> int:
        g = self.granularity
        return max(g, -(-int(nbytes) // g) * g)

    def acquire(self, nbytes: int) -> Allocation:
        if self.closed:
            raise RuntimeError("the device memory pool was closed")
        size = self.size_class(nbytes)
        free = self._cached.get(size)
        if free:
            ptr = free.pop(0)  # lowest address: deterministic whatever order buffers came back in
            self.cached_bytes -= size
            self.reuses += 1
        else:
            try:
                ptr = self._malloc(size)
            except Exception:
                if not self.cached_bytes:
                    raise
                self.trim()
                ptr = self._malloc(size)
            self.mallocs += 1
        self.live_bytes += size
        return Allocation(ptr, size, self)

    def _give_back(self, ptr: int, size: int) -> None:
        self.live_bytes -= size
        if self.closed:
            self._free(ptr)
            return
        bisect.insort(self._cached.setdefault(size, []), ptr)
        self.cached_bytes += size

    def discard(self, allocation: Allocation) -> None:
        """Free a live buffer now instead of caching it (a replaced staging buffer)."""
        if allocation.pool is self:
            allocation.pool = None
            self.live_bytes -= allocation.nbytes
            self._free(allocation.ptr)

    def trim(self) -> None:
        """Free every cached (unused) buffer."""
        for ptrs in self._cached.values():
            for ptr in ptrs:
                self._free(ptr)
        self._cached.clear()
        self.cached_bytes = 0

    def close(self) -> None:
        """Free the cache now and live buffers as they are released."""
        self.trim()
        self.closed = True


# ---- arrays ------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class CudaArray(PointerRows):
    """A dense C-contiguous tensor addressed by pointer: on the GPU (`device` "cuda", `owner` an
    `Allocation`) or on the host (`device` "cpu", `owner` the numpy array). Mirrors
    `ort_backend.DeviceArray`; `row0` is the first row of a `rows` view within the owner."""

    ptr: int
    shape: tuple[int, ...]
    dtype: np.dtype
    device: str
    owner: object
    row0: int = 0
    cuda: Cuda | None = None

    def numpy(self) -> np.ndarray:
        """Host values: a view of host memory, or a copy of device memory after the stream's work."""
        if self.device == "cpu":
            return self.owner[self.row0:self.row0 + self.shape[0]] if self.shape else self.owner
        host = np.empty(self.shape, self.dtype)
        self.cuda.download(host, self.ptr)
        self.cuda.sync()
        return host


def host_array(array: np.ndarray) -> CudaArray:
    """A host CudaArray over a C-contiguous numpy array (no copy when it already is one)."""
    array = np.asarray(array, order="C")  # keeps 0-d arrays 0-d, unlike ascontiguousarray
    return CudaArray(array.ctypes.data, tuple(array.shape), array.dtype, "cpu", array)


class TrtKVCache(KVCache):
    """`KVCache` on the GPU: compaction is one strided device copy instead of a host round trip."""

    def compact(self, start: int, stop: int) -> None:
        """Keep rows [start, stop) of every token (the null rows): one strided copy on the GPU."""
        old = self.buffer
        tail = (*self.tail[:2], stop - start, *self.tail[3:])
        self.buffer = self._allocate(tail, old.dtype)
        if self.length:
            plan = row_range_copy((self.length, *self.tail), old.dtype.itemsize, 3, start, stop)
            self.backend.cuda.copy_2d(self.buffer.ptr, plan.dst_pitch, old.ptr + plan.src_offset, plan.src_pitch,
                                      plan.width, plan.height)
        self.tail = tail
