"""The whole export of an Infinity model: graphs, tokenizer and manifest, staged atomically."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

from stagevar import __version__
from stagevar.runtime import graph_io as gio
from stagevar.runtime.manifest import write_manifest
from stagevar.runtime.manifest_rank_table import none_entry, released_entry
from stagevar.runtime.rank_table import NONE, RankTable, canonical_alpha, table_for_chunks
from stagevar.runtime.schedules import get_schedule
from stagevar.runtime.stage_plan import PLAN_PRESETS, Mode, make_plan, runnable_plans

from ..artifact_dir import staged_output
from ..graph_spec import graph_io_spec
from ..token_pairing import DEFAULT_PAIRING, check_pairing, token_pairing
from ..attention_form import DEFAULT_ATTENTION, AttentionSpec, attention_export, check_form, query_chunks_for
from ..onnx_io import SharedWeightsWriter, graph_proto, write_graph
from .export_transformer import WEIGHTS_NAME, TransformerTracer, export_graph
from .graph_text_encoder import export_text_encoder
from .graph_vae import export_vae_decoder
from .model_bundle import InfinityBundle
from .precision import to_fp16_blocks
from .side_graphs import SideGraphs, SideJob, check_workers

PRECISIONS = ("fp32", "fp16")
Progress = Callable[[str, str], None]  # (phase, detail)


def _tool_versions() -> dict:
    import onnx
    import onnxscript
    import torch

    versions = {"stagevar": __version__, "torch": torch.__version__, "onnx": onnx.__version__, "onnxscript": onnxscript.__version__}
    try:
        import onnxruntime

        versions["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    return versions


def scale_entries(bundle: InfinityBundle, aspects: Sequence[str], resolution: str, alpha: str, batch: int,
                  table: RankTable | None = None, plans: Sequence[str] | None = None) -> list[dict]:
    """One engine entry per (aspect, scale, graph, shapes) that the export's plans execute."""
    cfg = bundle.preset.transformer
    table = table_for_chunks(cfg.block_chunks) if table is None else table
    return engine_entries(cfg.block_chunks, aspects, resolution, alpha, batch, table, plans)


def engine_entries(num_chunks: int, aspects: Sequence[str], resolution: str, alpha: str, batch: int,
                   table: RankTable, plans: Sequence[str] | None = None) -> list[dict]:
    """One engine entry per (aspect, scale, graph, shapes) that any of `plans` executes.

    TensorRT builds one optimisation profile per entry (min = opt = max); ONNX Runtime ignores
    them. Past tokens depend on the plan: LOWRANK scales append no K/V. The ranks come from
    `table`, so calibrating an export rewrites these entries.
    """
    entries, seen = [], set()
    for aspect in aspects:
        schedule = get_schedule(aspect, resolution)
        for preset in (runnable_plans(schedule, num_chunks, table, alpha) if plans is None else plans):
            plan = make_plan(preset, schedule, num_chunks=num_chunks, alpha=alpha, table=table)
            past = 0
            for k, mode in enumerate(plan.modes):
                if mode is Mode.SKIP:
                    continue
                tokens = schedule.token_counts[k]
                graph = gio.FIDELITY if mode is Mode.LOWRANK else gio.STEP
                rows = 2 * batch if mode is Mode.CFG else batch
                key = (schedule.aspect_name, k, graph, rows, past)
                if key not in seen:
                    seen.add(key)
                    entry = {"aspect": schedule.aspect_name, "scale": k, "hw": list(schedule.scales[k]),
                             "graph": graph, "images": batch, "rows": rows, "tokens": tokens, "past_tokens": past}
                    if mode is Mode.LOWRANK:
                        entry["ranks"] = list(plan.ranks[k])
                    entries.append(entry)
                if mode is not Mode.LOWRANK:
                    past += tokens
    return entries


def check_plans(num_chunks: int, aspects: Sequence[str], resolution: str, alpha: str,
                plans: Sequence[str] | None) -> tuple[str, ...]:
    """The plans the export records: those asked for (each must run with the table this model
    has, else one sentence, before any tracing), or every preset that can run."""
    table = table_for_chunks(num_chunks)
    schedule = get_schedule(aspects[0], resolution)
    if plans is None:
        return runnable_plans(schedule, num_chunks, table, alpha)
    for name in plans:
        make_plan(name, schedule, num_chunks=num_chunks, alpha=alpha, table=table)  # raises StagevarError
    return tuple(plans)


def attention_spec(bundle: InfinityBundle, form: str, aspects: Sequence[str], resolution: str, batch: int) -> AttentionSpec:
    """The attention form with its query chunking, sized by the largest CFG scale of any aspect."""
    check_form(form)
    cfg = bundle.preset.transformer
    chunks = 1
    for aspect in aspects:
        tokens = get_schedule(aspect, resolution).token_counts
        chunks = max(chunks, query_chunks_for(2 * batch, cfg.num_heads, max(tokens), sum(tokens)))
    return AttentionSpec(form, chunks if form == "fused" else 1)


def build_manifest(bundle: InfinityBundle, graphs: dict, aspects, resolution, precision, alpha, batch, timings,
                   attention: AttentionSpec | None = None, plans: Sequence[str] | None = None,
                   pairing: str = DEFAULT_PAIRING) -> dict:
    preset = bundle.preset
    cfg = preset.transformer
    table = table_for_chunks(cfg.block_chunks)
    plans = check_plans(cfg.block_chunks, aspects, resolution, alpha, plans)
    schedules = {}
    for aspect in aspects:
        s = get_schedule(aspect, resolution)
        schedules[s.aspect_name] = {"h_div_w": s.h_div_w, "resolution": s.resolution,
                                    "scales": [list(x) for x in s.scales], "full_scales": [list(x) for x in s.full_scales]}
    return {
        "family": "infinity",
        "model": {
            "preset": preset.name,
            "architecture_source": preset.source,
            "config": asdict(cfg),
            "config_hash": cfg.config_hash(),
            "head_dim": cfg.head_dim,
            "bits_per_token": cfg.bits_per_token,
            "vae": asdict(preset.vae),
            "pixels_per_token": preset.pixels_per_token,
            "text_encoder": asdict(preset.text),
            "default_cfg": preset.default_cfg,
            "default_tau": preset.default_tau,
            "random_init": "random_init" in bundle.provenance,
            "weights": bundle.provenance,
            **({"checkpoint_paths": bundle.paths} if bundle.paths else {}),
        },
        "precision": precision,
        "opset": (attention or AttentionSpec()).opset,
        "attention": (attention or AttentionSpec()).manifest_entry(),
        "token_pairing": pairing,
        "tools": _tool_versions(),
        "tokenizer": {"path": "tokenizer/tokenizer.json", "max_length": bundle.max_text_tokens},
        "resolution": resolution,
        "aspects": list(schedules),
        "schedules": schedules,
        "alpha": alpha,
        "rank_table": none_entry(cfg.block_chunks) if table.source == NONE else released_entry(alpha),
        "plans": list(plans),
        "batch": batch,
        "graphs": graphs,
        "engines": engine_entries(cfg.block_chunks, aspects, resolution, alpha, batch, table, plans),
        "export_seconds": timings,
    }


def _export_two_processes(job: SideJob, side: SideGraphs, onnx_dir: Path, timed, report, timings: dict) -> TransformerTracer:
    """The block, step, text_cond and vae_decoder traced here while the second process traces
    text_encoder and fidelity (side_graphs.py); the transformer graphs are written in one-process
    order (text_cond, step, fidelity), so the shared weights file is the same bytes.

    The second process only saves time: if it crashes (killed, or a bug there), its graphs are
    traced here instead, with one note. Bad input (a StagevarError there) is raised as usual.
    """
    tracer = TransformerTracer(job.model, block_traced=side.hand_block)
    with side:
        side.submit(job)
        ours = {name: timed(name, lambda: graph_proto(tracer.program(name))) for name in (gio.STEP, gio.TEXT_COND)}
        timed(gio.VAE_DECODER, lambda: export_vae_decoder(job.bundle, onnx_dir, job.precision))
        report("export", "text_encoder, fidelity (second process)")
        try:
            result = side.result()
        except RuntimeError as exc:
            reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
            print(f"note: the export's second process failed ({reason}); tracing text_encoder and fidelity in this "
                  "one instead (or pass --jobs 1)", file=sys.stderr, flush=True)
            result = None
    if result is None:
        timed(gio.TEXT_ENCODER, lambda: export_text_encoder(job.bundle, onnx_dir, job.precision))
        fidelity = timed(gio.FIDELITY, lambda: graph_proto(tracer.program(gio.FIDELITY)))
    else:
        fidelity = result.graphs[gio.FIDELITY]
        timings.update(result.timings)
    writer = SharedWeightsWriter(onnx_dir / WEIGHTS_NAME)
    try:
        for name in (gio.TEXT_COND, gio.STEP):
            write_graph(*ours[name], onnx_dir / f"{name}.onnx", writer)
        # From the second process its weights come as arrays; write_graph takes either.
        write_graph(*fidelity, onnx_dir / f"{gio.FIDELITY}.onnx", writer)
    finally:
        writer.close()
    return tracer


def export_artifacts(
    bundle: InfinityBundle,
    out_dir: str | Path,
    *,
    aspects: Sequence[str] = ("1:1",),
    resolution: str = "1M",
    precision: str = "fp32",
    alpha: str = "0.96",
    batch: int = 1,
    force: bool = False,
    progress: Progress | None = None,
    plans: Sequence[str] | None = None,
    attention: str = DEFAULT_ATTENTION,
    pairing: str = DEFAULT_PAIRING,
    workers: int = 1,
    side: SideGraphs | None = None,
) -> Path:
    """Export every graph, the tokenizer and the manifest into `out_dir` (written last, atomically).

    `workers=2` traces text_encoder and fidelity in a second process (side_graphs.py;
    the CLI's default where it pays, see `default_workers`); the files are the same bytes. `side`
    is that process launched early by the caller (the CLI starts it before loading the model, so
    its imports overlap the loading), who also closes it.
    """
    from stagevar.runtime.errors import StagevarError

    if precision not in PRECISIONS:
        raise StagevarError(f"Unknown precision '{precision}'; choose fp32 or fp16.")
    if batch < 1:
        raise StagevarError("--batch must be at least 1.")
    alpha = canonical_alpha(alpha)
    aspects = [get_schedule(a, resolution).aspect_name for a in aspects]  # validates early
    # Plans this model cannot run (low-rank without a table) are refused here, before any tracing.
    plans = check_plans(bundle.preset.transformer.block_chunks, aspects, resolution, alpha, plans)
    form = attention_spec(bundle, attention, aspects, resolution, batch)
    check_pairing(pairing)
    workers = check_workers(workers, bundle)
    report = progress or (lambda phase, detail: None)
    out_dir = Path(out_dir)
    timings: dict[str, float] = {}
    with staged_output(out_dir, force=force) as stage, attention_export(form), token_pairing(pairing):
        onnx_dir = stage / "onnx"
        onnx_dir.mkdir()
        graphs: dict[str, dict] = {}

        def timed(name: str, fn, announce: bool = True):
            if announce:
                report("export", name)
            t0 = time.perf_counter()
            result = fn()
            timings[name] = round(time.perf_counter() - t0, 3)
            return result

        model = to_fp16_blocks(bundle.transformer) if precision == "fp16" else bundle.transformer
        t_source = bundle.sources.get("transformer")
        if workers == 2:
            job = SideJob(bundle, model, str(onnx_dir), precision, form, pairing)
            tracer = _export_two_processes(job, side or SideGraphs(), onnx_dir, timed, report, timings)
        else:
            tracer = TransformerTracer(model)
            writer = SharedWeightsWriter(onnx_dir / WEIGHTS_NAME)
            try:
                timed(gio.TEXT_ENCODER, lambda: export_text_encoder(bundle, onnx_dir, precision, bundle.sources.get("text_encoder")))
                for name in (gio.TEXT_COND, gio.STEP):
                    timed(name, lambda: export_graph(tracer, name, onnx_dir, writer, t_source))
                timed(gio.VAE_DECODER, lambda: export_vae_decoder(bundle, onnx_dir, precision))
                timed(gio.FIDELITY, lambda: export_graph(tracer, gio.FIDELITY, onnx_dir, writer, t_source))
            finally:
                writer.close()
        # Counted in the graph that traced it first (step); the manifest says how much it was.
        timings["shared_block"] = round(tracer.block_seconds, 3)
        weights = {gio.TEXT_ENCODER: "text_encoder.weights", gio.VAE_DECODER: "vae_decoder.weights",
                   gio.TEXT_COND: WEIGHTS_NAME, gio.STEP: WEIGHTS_NAME, gio.FIDELITY: WEIGHTS_NAME}
        for name in gio.GRAPHS:
            spec = graph_io_spec(onnx_dir / f"{name}.onnx")
            graphs[name] = {"path": f"onnx/{name}.onnx", "weights": f"onnx/{weights[name]}", **spec}
        (stage / "tokenizer").mkdir()
        bundle.tokenizer.save(str(stage / "tokenizer" / "tokenizer.json"))
        report("manifest", "hashing files")
        write_manifest(stage, build_manifest(bundle, graphs, aspects, resolution, precision, alpha, batch, timings, form,
                                             plans, pairing))
        if any(p in ("stagevar", "stagevar-full") for p in plans):
            # A trained preset's own calibrated table (exporter/weights/<preset>/rank_table.json),
            # installed before the export is published, so no reader sees it without.
            from .shipped_table import install_shipped_table

            install_shipped_table(stage, bundle, say=lambda m: print(m, file=sys.stderr, flush=True))
    return out_dir
