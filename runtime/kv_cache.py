"""The token-major K/V cache of one request, shared by the ONNX Runtime and TensorRT backends.

[tokens, depth, 2 (k, v), rows, heads, head_dim] with tokens outermost (DESIGN.md section 4):
the past tokens are a contiguous prefix and each scale's new K/V a contiguous slot after it, so
a step graph reads the prefix and writes its slot in place. Memory comes from the backend
(`alloc`, `upload`, counters); backends with device kernels override `compact`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .ort_backend import DeviceArray


class KVCache:
    """A request's token-major K/V cache [tokens, depth, 2 (k, v), rows, heads, head_dim].

    Tokens are the outermost axis, so the past tokens are the contiguous prefix [0, length) and
    a scale's new K/V is the contiguous slot after it. `writes` lists (start, tokens) of each
    slot written. `debug_fill` (tests only) fills new buffers so unwritten slots show.
    """

    debug_fill: float | None = None

    def __init__(self, backend, capacity: int, tail: tuple[int, ...], dtype: np.dtype):
        self.backend = backend
        self.capacity = int(capacity)
        self.tail = tail
        self.length = 0
        self.allocations = 0
        self.writes: list[tuple[int, int]] = []
        self.buffer = self._allocate(tail, dtype)

    @property
    def rows(self) -> int:
        return self.tail[2]

    def _allocate(self, tail: tuple[int, ...], dtype: np.dtype) -> DeviceArray:
        buf = self.backend.alloc((max(self.capacity, 1), *tail), dtype, fill=self.debug_fill)
        self.allocations += 1
        self.backend.kv_allocations += 1
        self.backend.kv_bytes += buf.nbytes
        return buf

    def prefix(self) -> DeviceArray:
        """The past tokens [0, length): the `past_kv` input of the next scale."""
        return self.buffer.rows(0, self.length)

    def slot(self, tokens: int) -> DeviceArray:
        """The slot [length, length + tokens) that the next scale's `new_kv` output is bound to."""
        if self.length + tokens > self.capacity:
            raise RuntimeError(f"K/V cache of {self.capacity} tokens cannot take {tokens} more after {self.length}")
        return self.buffer.rows(self.length, self.length + tokens)

    def commit(self, tokens: int) -> None:
        """Record that the slot of `tokens` tokens was written; it becomes part of the prefix."""
        self.writes.append((self.length, tokens))
        self.length += tokens
        self.backend.kv_slot_writes += 1

    def compact(self, start: int, stop: int) -> None:
        """Keep rows [start, stop) of every token (the null rows): one copy into a new buffer,
        made on the backend's device (`copy_range`), never through host memory."""
        old = self.buffer
        tail = (*self.tail[:2], stop - start, *self.tail[3:])
        self.buffer = self._allocate(tail, old.dtype)
        self.tail = tail
        if self.length:
            self.backend.copy_range(old.rows(0, self.length), 3, start, stop, self.buffer.rows(0, self.length))
