"""Export of the transformer graphs (text_cond, step, fidelity) with one shared weights file."""

from __future__ import annotations

from pathlib import Path

import torch

from stagevar.runtime import graph_io as gio

from ..onnx_export import export_program
from ..background import BackgroundJob
from ..onnx_io import SharedWeightsWriter, merge_weights, save_graph
from .config import InfinityConfig
from .graphs_transformer import FidelityGraph, StepGraph, TextCondGraph
from .transformer import InfinityTransformer

WEIGHTS_NAME = "transformer.weights"
_FIDELITY_PARTIAL = "fidelity.partial.weights"

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


def _programs(model: InfinityTransformer, names: tuple[str, ...], progress=None) -> dict:
    cfg = model.config
    chunks = cfg.block_chunks
    dt = kv_dtype(model)
    jobs = {
        gio.TEXT_COND: lambda: (TextCondGraph(model), _text_cond_example(cfg), gio.TEXT_COND_INPUTS, gio.TEXT_COND_OUTPUTS),
        gio.STEP: lambda: (StepGraph(model), _step_example(cfg, dt), gio.STEP_INPUTS, gio.STEP_OUTPUTS),
        gio.FIDELITY: lambda: (FidelityGraph(model), _fidelity_example(cfg, dt), gio.fidelity_inputs(chunks), gio.fidelity_outputs(chunks)),
    }
    programs = {}
    for name in names:
        if progress is not None:
            progress(name)
        module, (args, axes), inputs, outputs = jobs[name]()
        programs[name] = export_program(module, args, inputs, outputs, axes)
    return programs


def _save(program, path: Path, writer: SharedWeightsWriter, source) -> None:
    if source is None:
        save_graph(program, path, writer)
    else:
        save_graph(program, path, writer, source)


def start_fidelity_export(model: InfinityTransformer, folder: Path, source=None) -> BackgroundJob:
    """Export the fidelity graph in a forked process (its own weights file until merged)."""

    def job() -> None:
        program = _programs(model, (gio.FIDELITY,))[gio.FIDELITY]
        writer = SharedWeightsWriter(folder / _FIDELITY_PARTIAL)
        try:
            _save(program, folder / f"{gio.FIDELITY}.onnx", writer, source)
        finally:
            writer.close()

    return BackgroundJob(job).start()


def export_cond_and_step(model: InfinityTransformer, folder: Path, writer: SharedWeightsWriter, progress=None, source=None) -> None:
    """Export text_cond and step into `folder`, their weights into the shared writer."""
    for name in (gio.TEXT_COND, gio.STEP):
        program = _programs(model, (name,), progress)[name]
        _save(program, folder / f"{name}.onnx", writer, source)
        del program  # one traced graph in memory at a time


def finish_fidelity_export(job: BackgroundJob, folder: Path, writer: SharedWeightsWriter) -> None:
    """Wait for the fidelity export and move its weights into the shared file (deduplicated)."""
    job.join()
    merge_weights(folder / f"{gio.FIDELITY}.onnx", writer)


def export_transformer_graphs(model: InfinityTransformer, folder: Path, progress=None) -> dict:
    """Export text_cond, step and fidelity into `folder`, weights shared in one file."""
    writer = SharedWeightsWriter(folder / WEIGHTS_NAME)
    job = start_fidelity_export(model, folder)
    try:
        export_cond_and_step(model, folder, writer, progress)
        finish_fidelity_export(job, folder, writer)
    finally:
        job.kill()
        writer.close()
    return {"weights": WEIGHTS_NAME, "tensors_written": writer.tensors_written, "tensors_reused": writer.tensors_reused}
