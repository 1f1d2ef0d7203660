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
import warnings
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np

from . import graph_io as gio
from .codes import CodeAccumulator, tokens_bits_to_code_map
from .errors import StagevarError, StagevarWarning
from .manifest import Manifest, load_manifest
from .manifest_rank_table import load_rank_table
from .micro_batches import merge_outputs
from .request import Request, check_request, micro_batch_size_for, warn_truncated
from .noise import ScaleNoise, draw_batch_noise
from .ort_backend import DeviceArray, KVCache, OrtBackend
from .resize import area_matrix
from .rope import rope_cos_sin
from .sampling import sample_bits
from .schedules import ScaleSchedule
from .stage_plan import Mode, StagePlan
from .tokenize import encode_prompts, load_tokenizer_json, pad_to_bucket

BACKENDS = ("ort", "trt")
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
        # Bytes a request may use: "auto" measures what is free at each call, None means no limit.
        self.memory_budget: int | None | str = "auto"
        self._rope: dict[tuple[float, str], tuple[np.ndarray, np.ndarray]] = {}
        self._area: dict[tuple[tuple[int, int], tuple[int, int]], dict[str, DeviceArray]] = {}

    @classmethod
    def from_dir(cls, path, backend: str = "ort", device: str | None = None, verify: bool | str = "record",
                 plugins: str | None = None, cuda_graphs: bool = True) -> "Pipeline":
        """Load an export: check its manifest (`verify`: "record", the default, checks every file
        by sha256 but trusts weights this machine already hashed and that did not change since;
        "full" hashes every file; "quick" sizes only), then open its graphs on `backend`: "ort"
        (onnxruntime sessions on `device`, "cpu" by default or "cuda") or "trt" (the TensorRT engines built for this GPU by
        `stagevar-export build`, on "cuda"; `plugins` overrides the plugin library path the build
        recorded; `cuda_graphs` replays each scale as a captured CUDA graph)."""
        if backend not in BACKENDS:
            raise StagevarError(f"Backend {backend!r} is not known; use 'ort' or 'trt'.")
        if backend != "trt" and (plugins is not None or not cuda_graphs):
            raise StagevarError("plugins and cuda_graphs apply to backend 'trt' only; drop them or use backend='trt'.")
        manifest = load_manifest(path, verify=verify)
        if manifest.data.get("family") == "var":  # the class-conditional family: its own pipeline
            from .var_pipeline import VarPipeline

            return VarPipeline.from_manifest(manifest, backend=backend, device=device, plugins=plugins,
                                             cuda_graphs=cuda_graphs)
        if manifest.data.get("family") != "infinity":
            raise StagevarError(f"Export {manifest.root} is of model family {manifest.data.get('family')!r}, "
                                f"which this runtime does not run; export an Infinity model.")
        tok_entry = manifest.data.get("tokenizer")
        if not isinstance(tok_entry, dict) or not isinstance(tok_entry.get("path"), str):
            raise StagevarError(f"manifest.json in {manifest.root} has no tokenizer entry; export again.")
        tokenizer = load_tokenizer_json(manifest.file_path(tok_entry["path"], "the tokenizer"))
        if backend == "trt":
            from .trt_backend import TrtBackend  # lazy: TensorRT is an optional extra

            engine = TrtBackend(manifest, device=device or "cuda", plugins=plugins, cuda_graphs=cuda_graphs)
        else:
            engine = OrtBackend(manifest, device=device or "cpu")
        return cls(manifest, engine, tokenizer)

    # ---- public call ------------------------------------------------------------------------

    def __call__(
        self,
        prompt: str | Sequence[str] | None = None,
        *,
        class_labels=None,
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
        max_batch: int | None = None,
        progress: Callable[[int, int, int, int], None] | None = None,
    ) -> PipelineOutput:
        """Generate one image per prompt and per `num_images_per_prompt` (prompt-major order).

        Image i uses seed `seed + i` (or `seed[i]` for a list). `cfg` is the classifier-free
        guidance scale (logits = cfg * cond + (1 - cfg) * uncond; 1 means no guidance, the
        model's default is 3); `cfg`, `tau`, `resolution` and `alpha` default to the export's
        values. `noise` replays given per-scale noise instead. A request larger than memory allows
        (request_memory.py) runs in micro-batches of at most `max_batch` images with the same
        images; one image that cannot fit is refused before any work. `progress(batch, batches,
        scale, scales)` is called after every scale.
        """
        if class_labels is not None:
            raise StagevarError(f"Export {self.manifest.root} is an Infinity text-to-image model: give a prompt, "
                                f"not class labels.")
        if prompt is None:
            raise StagevarError("Give a prompt (a string or a list of strings).")
        parts = list(self.batches(prompt, seed=seed, plan=plan, cfg=cfg, tau=tau, aspect=aspect,
                                  resolution=resolution, alpha=alpha, num_images_per_prompt=num_images_per_prompt,
                                  output_type=output_type, noise=noise, return_intermediates=return_intermediates,
                                  max_batch=max_batch, progress=progress))
        return merge_outputs(parts, output_type)

    def batches(self, prompt, *, seed=0, plan="stagevar", cfg=None, tau=None, aspect="1:1", resolution=None,
                alpha=None, num_images_per_prompt=1, output_type="pil", noise=None, return_intermediates=False,
                max_batch=None, progress=None) -> Iterator[PipelineOutput]:
        """`__call__` one micro-batch at a time: yields each batch's output (consecutive images) as soon
        as it is done, so a caller that saves and drops them holds one micro-batch of images."""
        request = self._request(prompt, seed, plan, cfg, tau, aspect, resolution, alpha, num_images_per_prompt,
                                output_type, noise, return_intermediates)
        n = len(request.prompts)
        size = self._micro_batch_size(request, max_batch)
        count = -(-n // size)
        for b, first in enumerate(range(0, n, size)):
            report = None if progress is None else (lambda k, total, b=b: progress(b, count, k, total))
            with self._lock:
                out = self._run(request, first, min(n, first + size), report)
            yield out

    def _request(self, prompt, seed, plan, cfg, tau, aspect, resolution, alpha, per_prompt, output_type, noise,
                 keep) -> Request:
        request = check_request(self.manifest, self.spec, prompt, seed, plan, cfg, tau, aspect, resolution, alpha,
                                per_prompt, output_type, noise, keep, rank_table=self.rank_table)
        warn_truncated(self.tokenizer, prompt, self.spec.max_text_tokens)
        return request

    def _micro_batch_size(self, request: Request, max_batch: int | None) -> int:
        return micro_batch_size_for(request, self, max_batch)

    def _run(self, request: Request, first: int, last: int, progress) -> PipelineOutput:
        """Generate images [first, last) of a checked request."""
        start = time.perf_counter()
        session_start = self.backend.session_seconds
        spec, schedule, plan = self.spec, request.schedule, request.plan
        prompts = request.prompts[first:last]
        n = len(prompts)
        cfg, tau, output_type, keep = request.cfg, request.tau, request.output_type, request.keep
        seeds = None if request.seeds is None else request.seeds[first:last]
        noise = request.noise
        if noise is None:
            noise = draw_batch_noise(seeds, plan, schedule, spec.bits_per_token)

        timings: dict = {}
        cond = self._encode(prompts, timings)
        codes, scales, traces = self._scales(schedule, plan, cond, n, cfg, tau, noise, keep, progress)
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
        with warnings.catch_warnings():  # said once per request, with the user's prompt index
            warnings.simplefilter("ignore", StagevarWarning)
            ids, mask, _ = encode_prompts(self.tokenizer, prompts, max_length=spec.max_text_tokens)
        # TensorRT: a fixed padded length per bucket keeps its contexts' shapes (and CUDA graphs).
        ids, mask = pad_to_bucket(ids, mask, getattr(be, "text_buckets", None), self.tokenizer)
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

    def _scales(self, schedule, plan, cond, n, cfg, tau, noise, keep, progress=None):
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
                if progress is not None:
                    progress(k, len(plan.modes))
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
            if progress is not None:
                progress(k, len(plan.modes))
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
