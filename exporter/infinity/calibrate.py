"""`stagevar-export calibrate` for Infinity exports: measure this model's StageVAR rank table.

Runs on the torch model (rebuilt from the checkpoints the export recorded, their sha256 checked
against the manifest), not on the exported graphs: the graphs output each chunk's *output*, but
chunk 0's input (word_embed of the codes plus the level embedding) is not a graph output, and a
forward hook on the first block of each chunk sees exactly the tensor StageVAR projects.

Each prompt is generated with the `cfg-off` plan (CFG scales as usual, the three fidelity scales
on the null rows with all tokens): the inputs StageVAR's low-rank scales would project, before
any approximation. The chunk inputs of the three fidelity scales feed the energy-rank core.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from stagevar.runtime.errors import StagevarError
from stagevar.runtime.manifest import Manifest, fsync_dir, load_manifest, write_manifest
from stagevar.runtime.manifest_rank_table import TABLE_FILE, calibrated_entry
from stagevar.runtime.rank_table import TABLE_FORMAT, CALIBRATED, table_from_json, table_to_json
from stagevar.runtime.schedules import get_schedule
from stagevar.runtime.stage_plan import fidelity_scales, runnable_plans

from ..rank_calibration import RankAccumulator
from .export_artifacts import engine_entries
from .model_bundle import InfinityBundle
from .preset_from_manifest import preset_from_manifest
from .sampler import ReferenceSampler

DEFAULT_ALPHAS = ("0.96",)
DEFAULT_NUM_PROMPTS = 16
CALIBRATION_PLAN = "cfg-off"
METHOD = ("per fidelity scale and block chunk: smallest rank r whose centred squared singular values of the chunk's "
          "input tokens (M x C, null rows, cfg-off generation) reach alpha of their sum; ratio r/M averaged over "
          "the prompts")
Say = Callable[[str], None]


def parse_alphas(text: str) -> tuple[str, ...]:
    """'0.96,0.98' -> ('0.96', '0.98'); each strictly between 0 and 1, no repeats."""
    alphas = tuple(a.strip() for a in str(text).split(",") if a.strip())
    if not alphas:
        raise StagevarError("--alpha is empty; give one or more thresholds such as 0.96 or 0.96,0.98.")
    for a in alphas:
        try:
            value = float(a)
        except ValueError:
            raise StagevarError(f"--alpha {a!r} is not a number; give thresholds such as 0.96,0.98.") from None
        if not 0.0 < value < 1.0:
            raise StagevarError(f"--alpha {a} must lie strictly between 0 and 1 (an energy fraction such as 0.96).")
    if len({float(a) for a in alphas}) != len(alphas):
        raise StagevarError(f"--alpha lists a threshold twice ({', '.join(alphas)}); give each once.")
    return alphas


def read_prompts(path: str | os.PathLike | None, num_prompts: int | None) -> tuple[list[str], str]:
    """Prompts from a file (one per non-empty line) or the built-in list; first `num_prompts`."""
    if path is None:
        from ..calibration_prompts import BUILTIN_PROMPTS

        prompts, source = list(BUILTIN_PROMPTS), "built-in"
        default_n = DEFAULT_NUM_PROMPTS
    else:
        p = Path(path)
        try:
            prompts = [line.strip() for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
        except (OSError, UnicodeDecodeError) as exc:
            raise StagevarError(f"--prompts {p} could not be read ({type(exc).__name__}); pass a UTF-8 text file "
                                f"with one prompt per line.") from None
        if not prompts:
            raise StagevarError(f"--prompts {p} holds no prompt; write one prompt per line.")
        source, default_n = str(p), len(prompts)
    n = default_n if num_prompts is None else num_prompts
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise StagevarError(f"--num-prompts must be a positive integer, not {n!r}.")
    if n > len(prompts):
        raise StagevarError(f"--num-prompts {n} is more than the {len(prompts)} prompts of {source}; "
                            f"give at most {len(prompts)} or a longer --prompts file.")
    return prompts[:n], source


def prompts_digest(prompts: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(prompts).encode("utf-8")).hexdigest()


def rebuild_bundle(manifest: Manifest, weights=None, vae=None, text_encoder=None, say: Say = print) -> InfinityBundle:
    """The torch model of an export: its random-init seed, or its checkpoints (sha256 checked)."""
    model = manifest.model
    preset = preset_from_manifest(model)
    provenance = model.get("weights", {})
    if "trained" in provenance:  # a stagevar-train model (infinity-shapes): its weights folder
        from .presets import get_preset

        if any((weights, vae, text_encoder)):
            raise StagevarError(f"Export {manifest.root} has trained weights of its own; drop --weights/--vae/--text-encoder.")
        bundle = InfinityBundle.shipped(get_preset(model["preset"]), provenance.get("folder"))
        if bundle.provenance["trained"].get("sha256") != provenance["trained"].get("sha256"):
            raise StagevarError(f"The weights of {model['preset']} changed since {manifest.root} was exported; export again.")
        return bundle
    if "random_init" in provenance:
        if any((weights, vae, text_encoder)):
            raise StagevarError(f"Export {manifest.root} has random weights; drop --weights/--vae/--text-encoder.")
        return InfinityBundle.random(preset, seed=int(provenance["random_init"]), lazy=False)
    recorded = model.get("checkpoint_paths", {}) or {}
    paths = {"weights": weights or recorded.get("weights"), "vae": vae or recorded.get("vae"),
             "text_encoder": text_encoder or recorded.get("text_encoder")}
    missing = [f"--{k.replace('_', '-')}" for k, v in paths.items() if not v or not Path(v).exists()]
    if missing:
        raise StagevarError(f"Calibrating {manifest.root} needs the checkpoints it was exported from; pass "
                            f"{', '.join(missing)}.")
    from .model_bundle import _digest

    for key, path in paths.items():
        say(f"checking {key} checkpoint {path} against the export's sha256")
        if provenance.get(key) is not None and _digest(path) != provenance[key]:
            raise StagevarError(f"--{key.replace('_', '-')} {path} is not the checkpoint {manifest.root} was exported "
                                f"from (sha256 differs); pass the same file.")
    return InfinityBundle.from_checkpoints(preset, paths["weights"], paths["vae"], paths["text_encoder"])


class _ChunkInputRecorder:
    """Forward pre-hooks on the first block of every chunk; keeps the fidelity scales' inputs."""

    def __init__(self, model, fidelity_token_counts: Sequence[int], acc: RankAccumulator) -> None:
        self.position = {m: p for p, m in enumerate(fidelity_token_counts)}
        self.acc = acc
        self.handles = []
        for c, chunk in enumerate(model.block_chunks):
            self.handles.append(chunk.module[0].register_forward_pre_hook(self._hook(c)))

    def _hook(self, chunk: int):
        def hook(module, args):
            x = args[0]
            p = self.position.get(int(x.shape[1]))
            if p is not None:
                self.acc.add(p, chunk, x.detach().float().numpy())
        return hook

    def close(self) -> None:
        for h in self.handles:
            h.remove()


class _NoDecode:
    """The bundle without the VAE decode: calibration needs the transformer only."""

    def __init__(self, bundle: InfinityBundle) -> None:
        self._bundle = bundle

    def __getattr__(self, name):
        return getattr(self._bundle, name)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        return np.zeros((codes.shape[0], 1, 1, 3), np.uint8)


def measure_table(bundle: InfinityBundle, prompts: Sequence[str], alphas: Sequence[str], *, aspect: str,
                  resolution: str, seed: int, batch: int = 4, say: Say = print) -> dict[str, list[list[float]]]:
    """alpha -> [fidelity scale][chunk] mean energy-rank ratios over `prompts` (image i: seed + i)."""
    cfg = bundle.preset.transformer
    schedule = get_schedule(aspect, resolution)
    fid = fidelity_scales(schedule.num_scales)
    acc = RankAccumulator([float(a) for a in alphas], len(fid), cfg.block_chunks)
    sampler = ReferenceSampler(bundle)
    sampler.bundle = _NoDecode(bundle)
    recorder = _ChunkInputRecorder(bundle.transformer, [schedule.token_counts[k] for k in fid], acc)
    t0 = time.perf_counter()
    try:
        for start in range(0, len(prompts), batch):
            group = list(prompts[start:start + batch])
            sampler.generate(group, plan=CALIBRATION_PLAN, cfg=bundle.preset.default_cfg,
                             tau=bundle.preset.default_tau, aspect=aspect, resolution=resolution,
                             seed=[seed + start + i for i in range(len(group))])
            done = start + len(group)
            elapsed = time.perf_counter() - t0
            say(f"calibrate: {done}/{len(prompts)} prompts, {elapsed:.1f} s "
                f"(about {elapsed / done * (len(prompts) - done):.0f} s left)")
    finally:
        recorder.close()
    measured = acc.ratios()
    return {a: measured[float(a)] for a in alphas}


def _write_json_atomic(path: Path, obj: dict) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=2, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def calibrate_export(root: str | os.PathLike, *, prompts_file=None, num_prompts: int | None = None,
                     alphas: str | Sequence[str] = DEFAULT_ALPHAS, seed: int = 0, weights=None, vae=None,
                     text_encoder=None, say: Say = print) -> dict:
    """Measure the table, write rank_table.json, record it in the manifest; return the table JSON.

    Everything is checked before the (long) measurement. The old manifest stays valid until the
    new one replaces it atomically, so an interrupted calibration loses nothing.
    """
    alphas = parse_alphas(alphas) if isinstance(alphas, str) else parse_alphas(",".join(alphas))
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise StagevarError(f"--seed must be a non-negative integer, not {seed!r}.")
    prompts, prompt_source = read_prompts(prompts_file, num_prompts)
    manifest = load_manifest(root, verify="full")
    if manifest.data.get("family") != "infinity":
        raise StagevarError(f"Export {manifest.root} is of family {manifest.data.get('family')!r}; calibrate "
                            f"runs on Infinity exports.")
    bundle = rebuild_bundle(manifest, weights, vae, text_encoder, say)
    cfg = bundle.preset.transformer
    resolution = manifest.data.get("resolution", "1M")
    aspect = "1:1"  # the release measured the square schedule; ratios apply by position to every template
    t0, cpu0 = time.perf_counter(), time.process_time()
    ratios = measure_table(bundle, prompts, alphas, aspect=aspect, resolution=resolution, seed=seed, say=say)
    seconds = round(time.perf_counter() - t0, 1)
    # CPU seconds too: on a shared machine the wall time says more about the neighbours.
    cpu_seconds = round(time.process_time() - cpu0, 1)
    schedule = get_schedule(aspect, resolution)
    provenance = {
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "method": METHOD, "plan": CALIBRATION_PLAN, "alphas": list(alphas),
        "prompt_source": prompt_source, "num_prompts": len(prompts), "prompts_sha256": prompts_digest(prompts),
        "prompts": prompts if prompt_source == "built-in" else None,
        "seeds": [seed, seed + len(prompts) - 1], "cfg": bundle.preset.default_cfg, "tau": bundle.preset.default_tau,
        "aspect": schedule.aspect_name, "resolution": resolution,
        "fidelity_scales": [list(schedule.scales[k]) for k in fidelity_scales(schedule.num_scales)],
        "model": {"config_hash": cfg.config_hash(), "weights": manifest.model.get("weights")},
        "seconds": seconds, "cpu_seconds": cpu_seconds,
    }
    table_json = {"format": TABLE_FORMAT, "source": CALIBRATED, "ratios": ratios, "provenance": provenance}
    table = table_from_json(table_json, cfg.block_chunks, "the measurement")  # same checks as at load
    table_json = table_to_json(table)
    record_table(manifest, table, table_json, say)
    return table_json


def record_table(manifest: Manifest, table, table_json: dict, say: Say) -> None:
    """Write `table_json` into an export and point its manifest (plans, engines) at it."""
    root = manifest.root
    data = {k: v for k, v in manifest.data.items() if k not in ("files", "schema_version")}
    old_alpha = str(data.get("alpha", "0.96"))
    try:
        alpha = table.canonical_alpha(old_alpha)
    except StagevarError:
        alpha = table.alphas[0]
    num_chunks = int(data["model"]["config"]["block_chunks"])
    aspects, resolution, batch = data["aspects"], data["resolution"], int(data.get("batch", 1))
    plans = runnable_plans(get_schedule(aspects[0], resolution), num_chunks, table, alpha)
    engines = engine_entries(num_chunks, aspects, resolution, alpha, batch, table, plans)
    if data.get("trt_builds") and engines != data.get("engines"):
        # The engines' optimisation profiles hold the old ranks: drop their records (the files stay)
        # so the TensorRT backend asks for a rebuild instead of failing on a shape.
        say(f"note: the TensorRT engines of {root} were built for the old ranks; rebuild them with "
            f"`stagevar-export build {root}`.")
        data.pop("trt_builds")
    _write_json_atomic(root / TABLE_FILE, table_json)
    data.update({"rank_table": calibrated_entry(table_json), "alpha": alpha, "plans": list(plans), "engines": engines})
    write_manifest(root, data)
