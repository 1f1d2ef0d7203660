"""Export of the transformer graphs (text_cond, step, fidelity) with one shared weights file.

All three trace in this process, one after the other (a forked tracer deadlocked once); step and
fidelity trace one block for all their blocks (block_stitch.py).
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from stagevar.runtime import graph_io as gio

from ..onnx_export import export_program
from ..onnx_io import SharedWeightsWriter, save_graph
from .block_op import block_translations, placeholder_blocks
from .block_stitch import BlockFunction, block_paths, stitch_blocks, trace_block
from .config import InfinityConfig
from .graphs_transformer import FidelityGraph, StepGraph, TextCondGraph
from .transformer import InfinityTransformer

WEIGHTS_NAME = "transformer.weights"

# Example sizes for tracing: >= 2 on every dynamic axis and pairwise distinct, so torch.export
# neither specialises an axis nor confuses two of them.
_N, _T, _L, _P = 2, 3, 5, 7
# Fidelity grids: current (gh, gw) = (4, 3), cache (h, w) = (3, 2); m and mc are their products.
_GH, _GW, _H, _W = 4, 3, 3, 2
_M, _MC = _GH * _GW, _H * _W


def _text_cond_example(cfg: InfinityConfig):
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(_N, _T, cfg.text_channels, generator=g)
    mask = torch.ones(_N, _T, dtype=torch.int64)
    return (feats, mask), {
        "text_features": {0: "n", 1: ("t", 1, cfg.text_maxlen)},
        "attention_mask": {0: "n", 1: ("t", 1, cfg.text_maxlen)},
    }


def kv_dtype(model: InfinityTransformer) -> torch.dtype:
    """dtype of the K/V caches and text K/V: the blocks' compute dtype (fp16 in fp16 exports)."""
    return model.block_chunks[0].module[0].sa.mat_qkv.weight.dtype


def _step_example(cfg: InfinityConfig, dt: torch.dtype = torch.float32):
    g = torch.Generator().manual_seed(1)
    R, C, H, hd, D = 2 * _N, cfg.embed_dim, cfg.num_heads, cfg.head_dim, cfg.depth
    args = (
        torch.randn(_N, _L, cfg.bits_per_token, generator=g),
        torch.tensor(3, dtype=torch.int64),
        torch.randn(R, C, generator=g),
        torch.randn(R, 6, C, generator=g) * 0.1,
        torch.randn(R, 2, C, generator=g) * 0.1,
        torch.randn(D, 2, R, H, _T, hd, generator=g).to(dt),
        torch.zeros(R, _T),
        torch.randn(_P, D, 2, R, H, hd, generator=g).to(dt),
        torch.randn(_L, hd // 2, generator=g),
        torch.randn(_L, hd // 2, generator=g),
        torch.tensor([3.0, -2.0]),
        torch.tensor(0.5),
    )
    axes = {
        "codes": {0: "n", 1: "l"}, "sos": {0: "r"}, "gss": {0: "r"}, "head_ss": {0: "r"},
        "text_kv": {2: "r", 4: "t"}, "text_bias": {0: "r", 1: "t"}, "past_kv": {0: "p", 3: "r"},
        "rope_cos": {0: "l"}, "rope_sin": {0: "l"},
    }
    return args, axes


def _fidelity_example(cfg: InfinityConfig, dt: torch.dtype = torch.float32):
    g = torch.Generator().manual_seed(2)
    C, H, hd, D = cfg.embed_dim, cfg.num_heads, cfg.head_dim, cfg.depth
    ranks = [2 + c % 4 for c in range(cfg.block_chunks)]  # distinct-ish, all < m
    args = [
        torch.randn(_N, _M, cfg.bits_per_token, generator=g),
        torch.tensor(3, dtype=torch.int64),
        torch.randn(_N, 6, C, generator=g) * 0.1,
        torch.randn(_N, 2, C, generator=g) * 0.1,
        torch.randn(D, 2, _N, H, _T, hd, generator=g).to(dt),
        torch.zeros(_N, _T),
        torch.randn(_P, D, 2, _N, H, hd, generator=g).to(dt),
        torch.randn(_M, hd // 2, generator=g),
        torch.randn(_M, hd // 2, generator=g),
        torch.tensor(0.5),
        torch.randn(cfg.block_chunks, _N, _MC, C, generator=g),
        torch.rand(_GH, _H, generator=g),
        torch.rand(_GW, _W, generator=g),
        torch.randn(cfg.block_chunks, _N, _M, generator=g),
    ] + [torch.randn(_N, _M, r, generator=g) for r in ranks]
    axes = {
        "codes": {0: "n", 1: "m"}, "gss": {0: "n"}, "head_ss": {0: "n"},
        "text_kv": {2: "n", 4: "t"}, "text_bias": {0: "n", 1: "t"}, "past_kv": {0: "p", 3: "n"},
        "rope_cos": {0: "m"}, "rope_sin": {0: "m"}, "cache": {1: "n", 2: "mc"},
        "area_h": {0: "gh", 1: "h"}, "area_w": {0: "gw", 1: "w"},
        "gumbel": {1: "n", 2: "m"},
    }
    axes.update({f"proj_{c}": {0: "n", 1: "m", 2: f"r{c}"} for c in range(cfg.block_chunks)})
    return tuple(args), axes


class TransformerTracer:
    """Traces the transformer graphs of one model; `step` and `fidelity` share one traced block.

    The block is traced on first use (block_stitch.py) and its time is counted in the graph that
    needed it first (`block_seconds` says how much).
    """

    def __init__(self, model: InfinityTransformer, block_traced=None, block_model=None) -> None:
        """`block_traced(ir_model)` sees the traced block before it is used (an export hands it
        to its second process); `block_model` is such a block, traced by another process."""
        self.model = model
        self.kv_dtype = kv_dtype(model)
        self._block: BlockFunction | None = None if block_model is None else BlockFunction(block_model)
        self._block_traced = block_traced
        self.block_seconds = 0.0

    def block_function(self) -> BlockFunction:
        if self._block is None:
            t0 = time.perf_counter()
            block0 = self.model.block_chunks[0].module[0]
            traced = trace_block(block0, self.model.config, self.kv_dtype)
            if self._block_traced is not None:
                self._block_traced(traced)
            self._block = BlockFunction(traced)
            self.block_seconds = time.perf_counter() - t0
        return self._block

    def program(self, name: str):
        m, cfg = self.model, self.model.config
        chunks = cfg.block_chunks
        if name == gio.TEXT_COND:
            (args, axes) = _text_cond_example(cfg)
            return export_program(TextCondGraph(m), args, gio.TEXT_COND_INPUTS, gio.TEXT_COND_OUTPUTS, axes)
        if name == gio.STEP:
            module, (args, axes) = StepGraph(m), _step_example(cfg, self.kv_dtype)
            inputs, outputs = gio.STEP_INPUTS, gio.STEP_OUTPUTS
        elif name == gio.FIDELITY:
            module, (args, axes) = FidelityGraph(m), _fidelity_example(cfg, self.kv_dtype)
            inputs, outputs = gio.fidelity_inputs(chunks), gio.fidelity_outputs(chunks)
        else:
            raise ValueError(f"no transformer graph {name!r}")
        fn = self.block_function()
        blocks, paths = block_paths(m)
        with placeholder_blocks(m):
            return export_program(module, args, inputs, outputs, axes, translations=block_translations(),
                                  rewrite=lambda onnx_model: stitch_blocks(onnx_model, fn, blocks, paths))


def _save(program, path: Path, writer: SharedWeightsWriter, source) -> None:
    if source is None:
        save_graph(program, path, writer)
    else:
        save_graph(program, path, writer, source)


def export_graph(tracer: TransformerTracer, name: str, folder: Path, writer: SharedWeightsWriter, source=None) -> None:
    """Trace one transformer graph and write it to `folder`, its weights into the shared writer."""
    program = tracer.program(name)
    _save(program, folder / f"{name}.onnx", writer, source)


def export_transformer_graphs(model: InfinityTransformer, folder: Path, progress=None) -> dict:
    """Export text_cond, step and fidelity into `folder`, weights shared in one file."""
    writer = SharedWeightsWriter(folder / WEIGHTS_NAME)
    tracer = TransformerTracer(model)
    try:
        for name in (gio.TEXT_COND, gio.STEP, gio.FIDELITY):
            if progress is not None:
                progress(name)
            export_graph(tracer, name, folder, writer)
    finally:
        writer.close()
    return {"weights": WEIGHTS_NAME, "tensors_written": writer.tensors_written, "tensors_reused": writer.tensors_reused}
