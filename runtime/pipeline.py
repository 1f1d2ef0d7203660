"""The text-to-image pipeline over exported artifacts (DESIGN.md section 2).

prompt -> tokenizer -> text_encoder -> text_cond (cond and null rows, once per request)
-> per scale, by the stage plan: step (CFG / UNCOND), fidelity (LOWRANK) or nothing (SKIP)
-> host: sample bits with the request's injected noise, accumulate codes -> vae_decoder.

The algorithm is `stagevar.exporter.infinity.sampler.ReferenceSampler.generate` step for step,
with the network parts replaced by graph runs, so on ORT CPU fp32 the same seed gives the
reference's bits and images. This module imports numpy, onnxruntime, tokenizers and pillow
only: it is what production applications embed.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from . import graph_io as gio
from .codes import CodeAccumulator, tokens_bits_to_code_map
from .errors import StagevarError
from .manifest import Manifest, load_manifest
from .manifest_rank_table import load_rank_table
from .noise import ScaleNoise, draw_batch_noise
from .ort_backend import DeviceArray, KVCache, OrtBackend
from .prompts import normalize_prompts
from .resize import area_matrix
from .rope import rope_cos_sin
from .sampling import sample_bits
from .schedules import ScaleSchedule, get_schedule
from .stage_plan import Mode, StagePlan, make_plan, validate
from .tokenize import encode_prompts, load_tokenizer_json

BACKENDS = ("ort", "trt")
OUTPUT_TYPES = ("pil", "np")
_COND = gio.TEXT_COND_OUTPUTS  # sos, gss, head_ss, text_kv, text_bias
_ROW_AXIS = {"sos": 0, "gss": 0, "head_ss": 0, "text_kv": 2, "text_bias": 0}


@dataclass(frozen=True)
class ModelSpec:
    """What the pipeline needs to know about the exported model, read from the manifest."""

    preset: str
    depth: int
    embed_dim: int
    num_heads: int
    head_dim: int
    block_chunks: int
    code_dim: int
    patchify: bool
    bits_per_token: int
    default_cfg: float
    default_tau: float
    max_text_tokens: int

    @classmethod
    def from_manifest(cls, manifest: Manifest) -> "ModelSpec":
        """Read the model entry; a missing key means an export this runtime cannot use."""
        try:
            model, tok = manifest.model, manifest.data["tokenizer"]
            cfg = model["config"]
            return cls(model["preset"], int(cfg["depth"]), int(cfg["embed_dim"]), int(cfg["num_heads"]),
                       int(model["head_dim"]), int(cfg["block_chunks"]), int(cfg["code_dim"]),
                       bool(cfg["patchify"]), int(model["bits_per_token"]), float(model["default_cfg"]),
                       float(model["default_tau"]), int(tok["max_length"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise StagevarError(f"manifest.json in {manifest.root} lacks model information ({exc}); "
                                f"export again with this stagevar version.") from None


@dataclass(frozen=True, eq=False)
class ScaleTrace:
    """Intermediates of one scale (like the reference's ScaleRecord), for parity checks."""

    index: int
    mode: Mode
    hw: tuple[int, int]
    logits: np.ndarray | None = None  # (N, L, 2d) float32, CFG-combined and tau-scaled
    bits: np.ndarray | None = None  # (N, L, d) uint8
    indices: tuple[np.ndarray, ...] = ()  # LOWRANK: (N, r_c) int64 per chunk


@dataclass(frozen=True, eq=False)
class PipelineOutput:
    """Images and what it took to make them.

    `images`: a list of PIL images, or uint8 (N, H, W, 3) for output_type="np".
    `timings`: seconds for "text", per scale ("scales": dicts scale/hw/mode/seconds), "vae",
    "total", "session" (inside onnxruntime) and "overhead" (total minus session).
    `seeds`: the per-image seeds (None when noise was supplied). With return_intermediates:
    `intermediates` (one trace per scale) and `codes`, the summed code map (N, code_dim, FH, FW)
    that the VAE decoded.
    """

    images: list | np.ndarray
    timings: dict
    plan: str
    seeds: list[int] | None
    intermediates: list[ScaleTrace] | None = None
    codes: np.ndarray | None = None
    #: The rank table the plan's LOWRANK ranks came from (released / calibrated + date), or None.
    rank_table: str | None = None


class Pipeline:
    """Generate images from an export directory.

    Thread safety: one lock guards `__call__`, so concurrent calls on one Pipeline are
    serialised (the sessions and buffers are shared). For parallel requests create one
    Pipeline per thread; their sessions memory-map the same weights files.
    """

    def __init__(self, manifest: Manifest, backend: OrtBackend, tokenizer) -> None:
        self.manifest = manifest
        self.backend = backend
        self.tokenizer = tokenizer
        self.spec = ModelSpec.from_manifest(manifest)
        # Checked now (digest, chunk count), so a bad table fails at load, not mid-request.
        self.rank_table = load_rank_table(manifest, self.spec.block_chunks)
        self._lock = threading.Lock()
        self._rope: dict[tuple[float, str], tuple[np.ndarray, np.ndarray]] = {}
        self._area: dict[tuple[tuple[int, int], tuple[int, int]], dict[str, DeviceArray]] = {}

    @classmethod
    def from_dir(cls, path, backend: str = "ort", device: str | None = None, verify: bool | str = "quick",
                 plugins: str | None = None, cuda_graphs: bool = True) -> "Pipeline":
        """Load an export: check its manifest (`verify`: "full" hashes every file, "quick" sizes
        only), then open its graphs on `backend`: "ort" (onnxruntime sessions on `device`, "cpu"
        by default or "cuda") or "trt" (the TensorRT engines built for this GPU by
        `stagevar-export build`, on "cuda"; `plugins` overrides the plugin library path the build
        recorded; `cuda_graphs` replays each scale as a captured CUDA graph)."""
        if backend not in BACKENDS:
            raise StagevarError(f"Backend {backend!r} is not known; use 'ort' or 'trt'.")
        if backend != "trt" and (plugins is not None or not cuda_graphs):
            raise StagevarError("plugins and cuda_graphs apply to backend 'trt' only; drop them or use backend='trt'.")
        manifest = load_manifest(path, verify=verify)
        if manifest.data.get("family") != "infinity":
            raise StagevarError(f"Export {manifest.root} is of model family {manifest.data.get('family')!r}, "
                                f"which this runtime does not run; export an Infinity model.")
        tok_entry = manifest.data.get("tokenizer")
        if not isinstance(tok_entry, dict) or not isinstance(tok_entry.get("path"), str):
            raise StagevarError(f"manifest.json in {manifest.root} has no tokenizer entry; export again.")
        tokenizer = load_tokenizer_json(Path(manifest.root) / tok_entry["path"])
        if backend == "trt":
            from .trt_backend import TrtBackend  # lazy: TensorRT is an optional extra

            engine = TrtBackend(manifest, device=device or "cuda", plugins=plugins, cuda_graphs=cuda_graphs)
        else:
            engine = OrtBackend(manifest, device=device or "cpu")
        return cls(manifest, engine, tokenizer)

    # ---- public call ------------------------------------------------------------------------

    def __call__(
        self,
        prompt: str | Sequence[str],
        *,
        seed: int | Sequence[int] = 0,
        plan: str | StagePlan = "stagevar",
        cfg: float | None = None,
        tau: float | None = None,
        aspect: str | float = "1:1",
        resolution: str | None = None,
        alpha: str | float | None = None,
        num_images_per_prompt: int = 1,
        output_type: str = "pil",
        noise: list[ScaleNoise | None] | None = None,
        return_intermediates: bool = False,
    ) -> PipelineOutput:
        """Generate one image per prompt and per `num_images_per_prompt` (prompt-major order).

        Image i uses seed `seed + i` (or `seed[i]` for a list). `cfg`, `tau`, `resolution` and
        `alpha` default to the export's values. `noise` replays given per-scale noise instead.
        """
        with self._lock:
            return self._call(prompt, seed, plan, cfg, tau, aspect, resolution, alpha,
                              num_images_per_prompt, output_type, noise, return_intermediates)

    def _call(self, prompt, seed, plan, cfg, tau, aspect, resolution, alpha, per_prompt,
              output_type, noise, keep) -> PipelineOutput:
        start = time.perf_counter()
        session_start = self.backend.session_seconds
        if output_type not in OUTPUT_TYPES:
            raise StagevarError(f"output_type {output_type!r} is not known; use 'pil' or 'np'.")
        if isinstance(per_prompt, bool) or not isinstance(per_prompt, (int, np.integer)) or per_prompt < 1:
            raise StagevarError(f"num_images_per_prompt must be a positive integer, not {per_prompt!r}.")
        prompts = [p for p in normalize_prompts(prompt) for _ in range(int(per_prompt))]
        n = len(prompts)
        spec = self.spec
        cfg = spec.default_cfg if cfg is None else float(cfg)
        tau = spec.default_tau if tau is None else float(tau)
        if not (np.isfinite(cfg) and np.isfinite(tau) and tau > 0):
            raise StagevarError(f"cfg must be finite and tau positive, got cfg={cfg} and tau={tau}.")
        resolution = self.manifest.data.get("resolution", "1M") if resolution is None else resolution
        alpha = self.manifest.data.get("alpha", "0.96") if alpha is None else alpha
        schedule = get_schedule(aspect, resolution)
        plan = self._plan(plan, schedule, alpha)
        seeds = None
        if noise is None:
            seeds = _seeds(seed, n)
            noise = draw_batch_noise(seeds, plan, schedule, spec.bits_per_token)
        elif len(noise) != schedule.num_scales or any(
                z is None for z, m in zip(noise, plan.modes) if m is not Mode.SKIP):
            raise StagevarError(f"noise must hold one entry per scale ({schedule.num_scales}), None only for "
                                f"skipped scales; draw it with stagevar.runtime.noise.draw_batch_noise.")

        timings: dict = {}
        cond = self._encode(prompts, timings)
        codes, scales, traces = self._scales(schedule, plan, cond, n, cfg, tau, noise, keep)
        timings["scales"] = scales
        t0 = time.perf_counter()
        (images,) = self.backend.run_plain(gio.VAE_DECODER, {"codes": codes})
        timings["vae"] = time.perf_counter() - t0
        images = np.asarray(images, dtype=np.uint8)
        if output_type == "pil":
            from PIL import Image

            images = [Image.fromarray(img) for img in images]  # (H, W, 3) uint8 is RGB
        timings["total"] = time.perf_counter() - start
        timings["session"] = self.backend.session_seconds - session_start
        timings["overhead"] = timings["total"] - timings["session"]
        return PipelineOutput(images, timings, plan.name, seeds, traces if keep else None,
                              codes if keep else None, plan.rank_table)

    def _plan(self, plan: str | StagePlan, schedule: ScaleSchedule, alpha) -> StagePlan:
        if isinstance(plan, StagePlan):
            validate(plan, schedule, self.spec.block_chunks)
            return plan
        return make_plan(plan, schedule, num_chunks=self.spec.block_chunks, alpha=alpha, table=self.rank_table)

    def _rope_tables(self, schedule: ScaleSchedule) -> tuple[np.ndarray, np.ndarray]:
        key = (schedule.h_div_w, schedule.resolution)
        if key not in self._rope:
            self._rope[key] = rope_cos_sin(schedule, self.spec.head_dim)
        return self._rope[key]

    # ---- text -------------------------------------------------------------------------------

    def _encode(self, prompts: list[str], timings: dict) -> dict[str, DeviceArray]:
        """text_encoder then text_cond: resident rows [cond (n); null (n)] of every text tensor."""
        t0 = time.perf_counter()
        spec, be = self.spec, self.backend
        ids, mask, _ = encode_prompts(self.tokenizer, prompts, max_length=spec.max_text_tokens)
        (features,) = be.run_plain(gio.TEXT_ENCODER, {"input_ids": ids, "attention_mask": mask})
        rows, t, C = 2 * len(prompts), ids.shape[1], spec.embed_dim
        shapes = {"sos": (rows, C), "gss": (rows, 6, C), "head_ss": (rows, 2, C),
                  "text_kv": (spec.depth, 2, rows, spec.num_heads, t, spec.head_dim), "text_bias": (rows, t)}
        cond = {name: be.alloc(shapes[name], be.output_dtype(gio.TEXT_COND, name)) for name in _COND}
        be.run_bound(gio.TEXT_COND, {"text_features": features, "attention_mask": mask}, cond)
        timings["text"] = time.perf_counter() - t0
        return cond

    def _compact(self, cond: dict[str, DeviceArray], n: int) -> dict[str, DeviceArray]:
        """The null rows [n, 2n) of every text tensor (first non-CFG scale, once)."""
        out = {}
        for name, arr in cond.items():
            index = [slice(None)] * len(arr.shape)
            index[_ROW_AXIS[name]] = slice(n, 2 * n)
            out[name] = self.backend.select(arr, tuple(index))
        return out

    # ---- scales -----------------------------------------------------------------------------

    def _scales(self, schedule, plan, cond, n, cfg, tau, noise, keep):
        """Run every scale of the plan; return the summed code map, scale timings and traces."""
        spec, be = self.spec, self.backend
        cos_all, sin_all = self._rope_tables(schedule)
        acc = CodeAccumulator(schedule, n, spec.code_dim, spec.patchify)
        capacity = sum(c for c, m in zip(schedule.token_counts, plan.modes) if m in (Mode.CFG, Mode.UNCOND))
        kv: KVCache | None = None
        rows = 2 * n
        prev_outputs: DeviceArray | None = None
        prev_hw: tuple[int, int] | None = None
        timings, traces = [], []
        for k, mode in enumerate(plan.modes):
            t0 = time.perf_counter()
            hw = schedule.scales[k]
            if mode is Mode.SKIP:
                traces.append(ScaleTrace(k, mode, hw))
                timings.append({"scale": k, "hw": list(hw), "mode": mode.value, "seconds": 0.0})
                continue
            if mode is not Mode.CFG and rows == 2 * n:
                # First non-CFG scale: keep the null rows for good (one compaction, as released).
                # The chunk outputs are null rows already (graph contract).
                cond = self._compact(cond, n)
                if kv is not None:
                    kv.compact(n, 2 * n)
                rows = n
            if kv is None:
                kv = be.new_kv_cache(capacity, spec.depth, rows, spec.num_heads, spec.head_dim,
                                     be.input_dtype(gio.STEP, "past_kv"))
            start, count = schedule.offsets[k], schedule.token_counts[k]
            rope = (cos_all[start:start + count], sin_all[start:start + count])
            codes = (np.zeros((n, 1, spec.bits_per_token), np.float32) if k == 0
                     else acc.next_input(hw))
            if mode is Mode.LOWRANK:
                logits, outputs, indices = self._fidelity(k, hw, codes, cond, kv, rope, tau, noise[k],
                                                          plan.ranks[k], prev_outputs, prev_hw)
            else:
                guidance = (cfg, 1.0 - cfg) if mode is Mode.CFG else (1.0, 0.0)
                logits, outputs = self._step(k, codes, cond, kv, rope, guidance, tau)
                indices = ()
            logits = np.asarray(logits, dtype=np.float32)
            bits = sample_bits(logits, noise[k].uniforms)
            acc.add(tokens_bits_to_code_map(bits, hw, spec.code_dim, spec.patchify))
            prev_outputs, prev_hw = outputs, hw
            traces.append(ScaleTrace(k, mode, hw, logits if keep else None, bits if keep else None,
                                     indices if keep else ()))
            timings.append({"scale": k, "hw": list(hw), "mode": mode.value,
                            "seconds": time.perf_counter() - t0})
        return acc.summed, timings, traces

    def _step(self, k, codes, cond, kv: KVCache, rope, guidance, tau):
        """One CFG/UNCOND scale: new K/V written in place into the cache slot of this scale."""
        spec, be = self.spec, self.backend
        n, count = codes.shape[0], rope[0].shape[0]
        logits = be.alloc((n, count, 2 * spec.bits_per_token), be.output_dtype(gio.STEP, "logits"), resident=False)
        outputs = be.alloc((spec.block_chunks, n, count, spec.embed_dim), be.output_dtype(gio.STEP, "chunk_outputs"))
        inputs = {
            "codes": codes, "scale_index": np.array(k, np.int64), **cond, "past_kv": kv.prefix(),
            "rope_cos": rope[0], "rope_sin": rope[1], "guidance": np.array(guidance, np.float32),
            "tau": np.array(tau, np.float32),
        }
        be.run_bound(gio.STEP, inputs, {"logits": logits, "new_kv": kv.slot(count), "chunk_outputs": outputs})
        kv.commit(count)
        return logits.numpy(), outputs

    def _fidelity(self, k, hw, codes, cond, kv: KVCache, rope, tau, noise: ScaleNoise, ranks,
                  cache: DeviceArray, cache_hw):
        """One LOWRANK scale (RP + RTR per chunk); appends no K/V."""
        spec, be = self.spec, self.backend
        n, m = codes.shape[0], rope[0].shape[0]
        inputs = {
            "codes": codes, "scale_index": np.array(k, np.int64),
            **{name: cond[name] for name in ("gss", "head_ss", "text_kv", "text_bias")},
            "past_kv": kv.prefix(), "rope_cos": rope[0], "rope_sin": rope[1],
            "tau": np.array(tau, np.float32), "cache": cache,
            **self._area_matrices(cache_hw, hw),
            "gumbel": np.stack(noise.gumbel),
            **{f"proj_{c}": q for c, q in enumerate(noise.projections)},
        }
        logits = be.alloc((n, m, 2 * spec.bits_per_token), be.output_dtype(gio.FIDELITY, "logits"), resident=False)
        outputs = be.alloc((spec.block_chunks, n, m, spec.embed_dim), be.output_dtype(gio.FIDELITY, "chunk_outputs"))
        indices = [be.alloc((n, int(r)), be.output_dtype(gio.FIDELITY, f"indices_{c}"), resident=False)
                   for c, r in enumerate(ranks)]
        bound = {"logits": logits, "chunk_outputs": outputs, **{f"indices_{c}": a for c, a in enumerate(indices)}}
        be.run_bound(gio.FIDELITY, inputs, bound)
        return logits.numpy(), outputs, tuple(a.numpy() for a in indices)


    def _area_matrices(self, cache_hw: tuple[int, int], hw: tuple[int, int]) -> dict[str, DeviceArray]:
        """The 1-D area-resize matrices from the cache grid to this grid (rows, then columns),
        kept resident per grid pair: inputs area_h [gh, h] and area_w [gw, w]."""
        key = (tuple(cache_hw), tuple(hw))
        if key not in self._area:
            self._area[key] = {
                name: self.backend.upload(area_matrix(src, dst).astype(self.backend.input_dtype(gio.FIDELITY, name)))
                for name, src, dst in (("area_h", cache_hw[0], hw[0]), ("area_w", cache_hw[1], hw[1]))
            }
        return self._area[key]


def _seeds(seed, n: int) -> list[int]:
    """Per-image seeds: seed + i for an int, the list itself (one per image) otherwise."""
    if isinstance(seed, (bool, np.bool_)):
        raise StagevarError(f"Seed {seed!r} is not valid; give a non-negative integer.")
    if isinstance(seed, (int, np.integer)):
        if seed < 0:
            raise StagevarError(f"Seed {seed!r} is not valid; give a non-negative integer.")
        return [int(seed) + i for i in range(n)]
    if isinstance(seed, (str, bytes)) or not isinstance(seed, Sequence):
        raise StagevarError(f"Seed {seed!r} is not valid; give a non-negative integer or one per image.")
    if len(seed) != n:
        raise StagevarError(f"{len(seed)} seeds were given for {n} images; give one seed per image or a single int.")
    return list(seed)
