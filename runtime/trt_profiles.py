"""Pure decisions of the TensorRT backend, testable without TensorRT or a GPU.

- `select_profile`: which optimization profile of an engine takes a run's input shapes.
- `is_aligned` / `slot_is_aligned`: whether a tensor address meets TensorRT's 256-byte rule, so a
  K/V slot is bound in place or through an aligned scratch buffer (DESIGN.md section 4).
- `row_range` / `row_range_copy`: one strided 2-D copy that keeps rows [start, stop) of one axis
  (the null rows at compaction) without a device kernel of our own.
- `CapturePolicy`: when a run executes plainly, is captured into a CUDA graph, or replays one.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Hashable, Mapping, Sequence

from .errors import StagevarError

ALIGNMENT = 256  # bytes; TensorRT's requirement for every I/O tensor address
# A profile range per input: (min, opt, max) shapes of equal rank.
ShapeRange = tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]
Profile = Mapping[str, ShapeRange]


# ---- optimization profiles -----------------------------------------------------------------


def shape_in_range(shape: Sequence[int], lo: Sequence[int], hi: Sequence[int]) -> bool:
    """True when `shape` has the range's rank and lo <= shape <= hi in every dimension."""
    return len(shape) == len(lo) == len(hi) and all(a <= s <= b for s, a, b in zip(shape, lo, hi))


def select_profile(graph: str, profiles: Sequence[Profile], shapes: Mapping[str, Sequence[int]]) -> int:
    """The index of the profile whose [min, max] ranges contain every input shape.

    Inputs a profile does not list (static inputs) are not constrained by it. Among matching
    profiles one whose opt shapes equal the run's shapes wins (it was tuned for exactly them),
    then the first. Raises StagevarError (one sentence) when no profile fits.
    """
    shapes = {name: tuple(int(d) for d in s) for name, s in shapes.items()}
    best_misses: list[str] | None = None
    matching = []
    for index, profile in enumerate(profiles):
        misses = [name for name, s in shapes.items()
                  if name in profile and not shape_in_range(s, profile[name][0], profile[name][2])]
        if not misses:
            matching.append(index)
        elif best_misses is None or len(misses) < len(best_misses):
            best_misses = misses
    for index in matching:
        if all(tuple(profiles[index][n][1]) == s for n, s in shapes.items() if n in profiles[index]):
            return index
    if matching:
        return matching[0]
    names = best_misses or sorted(shapes)
    described = ", ".join(f"{n} {list(shapes[n])}" for n in names[:3]) + (", ..." if len(names) > 3 else "")
    raise StagevarError(f"No TensorRT optimization profile of the '{graph}' engine takes these input shapes "
                        f"({described}); build engines that cover this aspect ratio, resolution and batch size, "
                        f"or use backend='ort'.")


# ---- alignment -----------------------------------------------------------------------------


def is_aligned(ptr: int, alignment: int = ALIGNMENT) -> bool:
    """True when a device address meets TensorRT's alignment rule."""
    return int(ptr) % int(alignment) == 0


def slot_is_aligned(base_ptr: int, row_bytes: int, start: int, alignment: int = ALIGNMENT) -> bool:
    """Whether the K/V slot starting at token `start` of a token-major buffer can be bound in place."""
    return is_aligned(int(base_ptr) + int(row_bytes) * int(start), alignment)


# ---- strided row selection ------------------------------------------------------------------


@dataclass(frozen=True)
class Copy2D:
    """One cudaMemcpy2D: `height` rows of `width` bytes, source rows `src_pitch` apart starting at
    byte `src_offset`, destination rows packed (`dst_pitch` == `width`)."""

    src_offset: int
    width: int
    height: int
    src_pitch: int
    dst_pitch: int


def row_range(shape: Sequence[int], index) -> tuple[int, int, int] | None:
    """(axis, start, stop) when `index` keeps a contiguous range of one axis and all of every other
    axis (a tuple of step-1 slices); None for any other index."""
    if not isinstance(index, tuple) or len(index) > len(shape):
        return None
    found = None
    for axis, (item, size) in enumerate(zip(index, shape)):
        if not isinstance(item, slice):
            return None
        start, stop, step = item.indices(size)
        if step != 1:
            return None
        stop = max(start, stop)
        if (start, stop) != (0, size):
            if found is not None:
                return None
            found = (axis, start, stop)
    return found if found is not None else (0, 0, shape[0] if shape else 1)


def row_range_copy(shape: Sequence[int], itemsize: int, axis: int, start: int, stop: int) -> Copy2D:
    """The 2-D copy that keeps [start, stop) of `axis` of a C-contiguous tensor of `shape`.

    The tensor is viewed as [outer, shape[axis], inner]: each of the `outer` rows contributes
    (stop - start) * inner contiguous elements.
    """
    if not 0 <= start <= stop <= shape[axis]:
        raise ValueError(f"range [{start}, {stop}) out of bounds for axis {axis} of {tuple(shape)}")
    outer = 1
    for d in shape[:axis]:
        outer *= int(d)
    inner = int(itemsize)
    for d in shape[axis + 1:]:
        inner *= int(d)
    width = (stop - start) * inner
    return Copy2D(start * inner, width, outer, int(shape[axis]) * inner, width)


# ---- CUDA graph capture policy ----------------------------------------------------------------


class CapturePolicy:
    """Decides per run of an execution context: "plain" (execute_async_v3), "capture" (capture,
    then launch) or "launch" (replay its graph).

    One graph per context (as trtexec keeps): TensorRT ties a captured enqueue to the context's
    state at capture, so a graph is valid only while none of the context's addresses or shapes
    changed. The backend reports changes: `rebound` (addresses) drops the context's graph;
    `reshaped` (input shapes) also forgets its warm-up, because TensorRT must run once after new
    shapes before a capture. A context is captured on its next run after a plain (warm-up) run.
    An engine (`group`) whose capture failed once is never captured again. Graphs are kept in
    LRU order, `limit` at most; evicted and dropped ones are handed to `release`.
    """

    def __init__(self, enabled: bool = True, limit: int = 256, release=lambda graph: None):
        self.enabled = enabled
        self.limit = limit
        self.release = release
        self.graphs: OrderedDict[Hashable, object] = OrderedDict()
        self.warm: set[Hashable] = set()
        self.disabled: set[Hashable] = set()
        self.attempts = 0
        self.failures = 0
        self.launches = 0
        self.invalidations = 0  # graphs dropped because their context was re-bound or reshaped

    def decide(self, group: Hashable, context: Hashable) -> str:
        if context in self.graphs:
            self.graphs.move_to_end(context)
            return "launch"
        if not self.enabled or group in self.disabled or context not in self.warm:
            return "plain"
        return "capture"

    def ran_plain(self, context: Hashable) -> None:
        self.warm.add(context)

    def captured(self, context: Hashable, graph) -> None:
        self.attempts += 1
        self.graphs[context] = graph
        while len(self.graphs) > self.limit:
            _, old = self.graphs.popitem(last=False)
            self.release(old)

    def capture_failed(self, group: Hashable) -> None:
        self.attempts += 1
        self.failures += 1
        self.disabled.add(group)

    def rebound(self, context: Hashable) -> None:
        """An address of `context` changed: its graph would replay the old addresses."""
        if context in self.graphs:
            self.release(self.graphs.pop(context))
            self.invalidations += 1

    def reshaped(self, context: Hashable) -> None:
        """Input shapes of `context` changed: its graph is stale and it needs a plain run."""
        self.rebound(context)
        self.warm.discard(context)

    def clear(self) -> None:
        while self.graphs:
            self.release(self.graphs.popitem()[1])
        self.warm.clear()
