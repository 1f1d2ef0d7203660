"""What every backend's pointer-addressed array shares: sizes and row views of axis 0.

Token-major buffers (the K/V cache, chunk outputs) are sliced by rows of their outermost axis:
such a slice is contiguous, so a view is the same memory at an offset, with no copy.
"""

from __future__ import annotations

import dataclasses

import numpy as np


class PointerRows:
    """Mixin for frozen dataclasses with fields `ptr`, `shape`, `dtype` and `row0`."""

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize

    @property
    def row_bytes(self) -> int:
        return int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize

    def rows(self, start: int, stop: int):
        """Rows [start, stop) of axis 0: contiguous because axis 0 is outermost."""
        if not 0 <= start <= stop <= self.shape[0]:
            raise ValueError(f"rows [{start}, {stop}) out of range for {self.shape[0]} rows")
        return dataclasses.replace(self, ptr=self.ptr + start * self.row_bytes,
                                   shape=(stop - start, *self.shape[1:]), row0=self.row0 + start)
