"""The whole export of a VAR model: class_cond, var_step, vqvae_decoder, the glue file, the manifest.

Written into a staged folder and renamed into place when complete (artifact_dir.staged_output);
manifest.json is written last, so an interrupted export leaves nothing that looks complete.
class_cond and var_step share one weights file (var.weights); the decoder has its own.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from stagevar import __version__
from stagevar.runtime import var_graph_io as vio
from stagevar.runtime.errors import StagevarError
from stagevar.runtime.manifest import write_manifest
from stagevar.runtime.manifest_rank_table import none_entry
from stagevar.runtime.stage_plan import Mode
from stagevar.runtime.var_plans import make_var_plan
from stagevar.runtime.var_schedule import as_scale_schedule

from ..artifact_dir import staged_output
from ..graph_spec import graph_io_spec
from ..attention_form import current_opset
from ..onnx_export import export_program
from ..onnx_io import SharedWeightsWriter, save_graph
from .bundle import VarBundle
from .model import to_fp16_blocks
from .graphs import ClassCondGraph, VarFidelityGraph, VarStepGraph, VqvaeDecoderGraph

PRECISIONS = ("fp32", "fp16")  # fp16: the blocks' GEMM weights (model.to_fp16_blocks)
GLUE_PATH = "glue/var_glue.npz"
_WEIGHTS = {vio.CLASS_COND: "var.weights", vio.VAR_STEP: "var.weights", vio.VAR_FIDELITY: "var.weights",
            vio.VQVAE_DECODER: "vqvae.weights"}
# Example sizes: >= 2 on every dynamic axis and pairwise distinct (torch.export specialises 0/1).
_N, _L, _P = 2, 5, 7


def _examples(bundle: VarBundle, precision: str = "fp32"):
    cfg = bundle.preset.var
    var = to_fp16_blocks(bundle.var) if precision == "fp16" else bundle.var
    g = torch.Generator().manual_seed(0)
    R, C, H, hd, D = 2 * _N, cfg.embed_dim, cfg.num_heads, cfg.head_dim, cfg.depth
    cond = ((torch.tensor([1, 2, cfg.num_classes, cfg.num_classes]),), {"labels": {0: "r"}})
    step = ((
        torch.randn(_N, _L, cfg.code_dim, generator=g), torch.tensor(3, dtype=torch.int64),
        torch.randn(R, C, generator=g), torch.randn(R, D, 6, C, generator=g) * 0.1,
        torch.randn(R, 2, C, generator=g) * 0.1, torch.randn(_P, D, 2, R, H, hd, generator=g),
        torch.tensor([2.0, -1.0]),
    ), {"tokens": {0: "n", 1: "l"}, "sos": {0: "r"}, "gss": {0: "r"}, "head_ss": {0: "r"}, "past_kv": {0: "p", 3: "r"}})
    hw = cfg.patch_nums[-1]
    dec = ((torch.randn(_N, cfg.code_dim, hw, hw, generator=g),), {"f_hat": {0: "n"}})
    # Fidelity grids: this scale (gh, gw) = (4, 3), the cache (h, w) = (3, 2).
    M, MC, chunks = 12, 6, cfg.block_chunks
    ranks = [2 + c % 4 for c in range(chunks)]
    fid_args = [
        torch.randn(_N, M, cfg.code_dim, generator=g), torch.tensor(5, dtype=torch.int64),
        torch.randn(_N, D, 6, C, generator=g) * 0.1, torch.randn(_N, 2, C, generator=g) * 0.1,
        torch.randn(_P, D, 2, _N, H, hd, generator=g), torch.randn(chunks, _N, MC, C, generator=g),
        torch.rand(4, 3, generator=g), torch.rand(3, 2, generator=g), torch.randn(chunks, _N, M, generator=g),
    ] + [torch.randn(_N, M, r, generator=g) for r in ranks]
    fid_axes = {"tokens": {0: "n", 1: "m"}, "gss": {0: "n"}, "head_ss": {0: "n"}, "past_kv": {0: "p", 3: "n"},
                "cache": {1: "n", 2: "mc"}, "area_h": {0: "gh", 1: "h"}, "area_w": {0: "gw", 1: "w"},
                "gumbel": {1: "n", 2: "m"}, **{f"proj_{c}": {0: "n", 1: "m", 2: f"r{c}"} for c in range(chunks)}}
    return {vio.CLASS_COND: (ClassCondGraph(var), *cond), vio.VAR_STEP: (VarStepGraph(var), *step),
            vio.VAR_FIDELITY: (VarFidelityGraph(var), tuple(fid_args), fid_axes),
            vio.VQVAE_DECODER: (VqvaeDecoderGraph(bundle.vae), *dec)}


def write_glue(bundle: VarBundle, path: Path) -> None:
    """Codebook and phi convs for the host glue (runtime/var_glue.py), float32."""
    q = bundle.vae.quantize
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        np.savez(f, codebook=q.embedding.weight.detach().float().numpy(),
                 phi_weights=torch.stack([c.weight for c in q.quant_resi.qresi_ls]).detach().float().numpy(),
                 phi_biases=torch.stack([c.bias for c in q.quant_resi.qresi_ls]).detach().float().numpy())


def scale_entries(bundle: VarBundle, batch: int, table=None, alpha=None) -> list[dict]:
    """One engine entry per (scale, graph, rows, past tokens) that a runnable plan preset executes
    (exact and cfg-off; stagevar and stagevar-full once a rank table is calibrated)."""
    from stagevar.runtime.stage_plan import PLAN_PRESETS

    cfg = bundle.preset.var
    schedule = as_scale_schedule(cfg.patch_nums)
    entries, seen = [], set()
    for name in PLAN_PRESETS:
        try:
            plan = make_var_plan(name, cfg.patch_nums, cfg.block_chunks, table, alpha)
        except StagevarError:
            continue  # needs a rank table this export does not have yet
        past = 0
        for k, mode in enumerate(plan.modes):
            if mode is Mode.SKIP:
                continue
            graph = vio.VAR_FIDELITY if mode is Mode.LOWRANK else vio.VAR_STEP
            rows = 2 * batch if mode is Mode.CFG else batch
            key = (k, graph, rows, past)
            if key not in seen:
                seen.add(key)
                entry = {"aspect": "1:1", "scale": k, "hw": list(schedule.scales[k]), "graph": graph, "images": batch,
                         "rows": rows, "tokens": schedule.token_counts[k], "past_tokens": past}
                if mode is Mode.LOWRANK:
                    entry["ranks"] = list(plan.ranks[k])
                entries.append(entry)
            if mode is not Mode.LOWRANK:
                past += schedule.token_counts[k]
    return entries


def _tools() -> dict:
    import onnx
    import onnxruntime
    import onnxscript

    return {"stagevar": __version__, "torch": torch.__version__, "onnx": onnx.__version__,
            "onnxscript": onnxscript.__version__, "onnxruntime": onnxruntime.__version__}


def build_manifest(bundle: VarBundle, graphs: dict, precision: str, batch: int, timings: dict) -> dict:
    p = bundle.preset
    cfg = p.var
    var_config = {**asdict(cfg), "patch_nums": list(cfg.patch_nums)}
    return {
        "family": "var",
        "model": {
            "preset": p.name, "config": var_config, "config_hash": cfg.config_hash(), "head_dim": cfg.head_dim,
            "vae": {**asdict(p.vae), "ch_mult": list(p.vae.ch_mult)}, "image_size": p.image_size,
            "default_cfg": p.default_cfg, "default_top_k": p.default_top_k, "default_top_p": p.default_top_p,
            "random_init": "random_init" in bundle.provenance, "weights": bundle.provenance,
            "checkpoint_paths": bundle.paths,
        },
        "precision": precision,
        "opset": current_opset(),  # VAR traces outside an attention form: the decomposed opset
        "tools": _tools(),
        "glue": {"path": GLUE_PATH},
        "schedules": {"1:1": {"patch_nums": list(cfg.patch_nums)}},
        "aspects": ["1:1"],
        "rank_table": none_entry(cfg.block_chunks),  # until `stagevar-export calibrate`
        "batch": batch,
        "graphs": graphs,
        "engines": scale_entries(bundle, batch),
        "export_seconds": timings,
    }


def export_var_artifacts(bundle: VarBundle, out_dir: str | Path, *, precision: str = "fp32", batch: int = 1,
                         force: bool = False, progress: Callable[[str], None] | None = None) -> Path:
    """Export every VAR graph, the glue file and the manifest into `out_dir` (atomically)."""
    if precision not in PRECISIONS:
        raise StagevarError(f"Precision {precision!r} is not known; use --precision fp32 or fp16.")
    if batch < 1:
        raise StagevarError("--batch must be at least 1.")
    report = progress or (lambda name: None)
    timings: dict[str, float] = {}
    out_dir = Path(out_dir)
    with staged_output(out_dir, force=force) as stage:
        onnx_dir = stage / "onnx"
        onnx_dir.mkdir()
        writers = {name: SharedWeightsWriter(onnx_dir / name) for name in set(_WEIGHTS.values())}
        graphs = {}
        try:
            for name, (module, args, axes) in _examples(bundle, precision).items():
                report(name)
                t0 = time.perf_counter()
                inputs, outputs = vio.contract(name, bundle.preset.var.block_chunks)
                program = export_program(module, args, inputs, outputs, axes)
                save_graph(program, onnx_dir / f"{name}.onnx", writers[_WEIGHTS[name]])
                del program
                timings[name] = round(time.perf_counter() - t0, 3)
        finally:
            for w in writers.values():
                w.close()
        for name in vio.VAR_GRAPHS:
            graphs[name] = {"path": f"onnx/{name}.onnx", "weights": f"onnx/{_WEIGHTS[name]}",
                            **graph_io_spec(onnx_dir / f"{name}.onnx")}
        write_glue(bundle, stage / GLUE_PATH)
        report("manifest")
        write_manifest(stage, build_manifest(bundle, graphs, precision, batch, timings))
    return out_dir
