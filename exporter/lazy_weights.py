"""Weights supplied per tensor at save time, for exporting models too large to hold twice.

A large model is traced with its parameters on the meta device (no memory), and each
initializer's values are produced only when the graph is written: generated from a per-name
seed (random-init exports) or read from a checkpoint's state dict. Initializer names are the
module paths of the traced wrapper (e.g. `model.block_chunks.0...`); the source matches them
against its keys by dropping leading path components.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from stagevar.runtime.errors import StagevarError

Generate = Callable[[str, tuple[int, ...]], torch.Tensor]


class LazyWeights:
    """Maps state-dict keys to tensors produced on demand (fp32), cast to the graph's dtype."""

    def __init__(self, shapes: dict[str, tuple[int, ...]], generate: Generate, what: str) -> None:
        self.shapes = shapes
        self.generate = generate
        self.what = what

    def key_for(self, name: str) -> str:
        parts = name.split(".")
        for i in range(len(parts)):
            key = ".".join(parts[i:])
            if key in self.shapes:
                return key
        raise StagevarError(f"The {self.what} has no weight for graph initializer '{name}'.")

    def __call__(self, name: str, value) -> np.ndarray:
        """TensorSource for `onnx_io.save_graph`."""
        key = self.key_for(name)
        tensor = self.generate(key, self.shapes[key])
        dtype = _torch_dtype(value)
        return tensor.to(dtype).contiguous().numpy()


def _torch_dtype(value) -> torch.dtype:
    """dtype of an ONNX IR initializer (the traced parameter's dtype)."""
    raw = getattr(value.const_value, "raw", None)
    if isinstance(raw, torch.Tensor):
        return raw.dtype
    return {"FLOAT": torch.float32, "FLOAT16": torch.float16, "BFLOAT16": torch.bfloat16, "INT64": torch.int64}[value.dtype.name]


def from_state_dict(state: dict[str, torch.Tensor], what: str) -> LazyWeights:
    """A source backed by a loaded checkpoint (values converted per tensor when written)."""
    return LazyWeights({k: tuple(v.shape) for k, v in state.items()}, lambda key, shape: state[key].float() if state[key].is_floating_point() else state[key], what)


def meta_shapes(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}
