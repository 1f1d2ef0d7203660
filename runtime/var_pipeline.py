"""The class-conditional VAR pipeline over exported artifacts (reference var.md §4).

labels -> class_cond graph (start token and AdaLN vectors for [cond; null] rows, once)
-> per scale, by the stage plan (CFG or UNCOND): var_step graph (CFG ramp in-graph, K/V written
in place into the token-major cache) -> host: top-k / top-p and the inverse-CDF draw with the
request's injected uniforms -> host glue (codebook, bicubic up, phi, area down)
-> vqvae_decoder graph -> uint8 RGB.

The algorithm is `stagevar.exporter.var.sampler.VarReferenceSampler.generate` step for step;
with the same uniforms, ORT CPU fp32 gives the reference's ids at every scale. numpy and
onnxruntime only, like the Infinity pipeline.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from . import var_graph_io as vio
from .errors import StagevarError
from .manifest import Manifest
from .stage_plan import Mode, StagePlan
from .var_glue import VarGlue
from .manifest_rank_table import load_rank_table
from .resize import area_matrix
from .var_plans import DEFAULT_VAR_PLAN, make_var_plan
from .var_sampling import check_filters, draw_lowrank_noise, draw_uniforms, guidance_pair, sample_ids

OUTPUT_TYPES = ("pil", "np")


@dataclass(frozen=True)
class VarSpec:
    preset: str
    depth: int
    embed_dim: int
    num_heads: int
    head_dim: int
    block_chunks: int
    code_dim: int
    vocab_size: int
    num_classes: int
    patch_nums: tuple[int, ...]
    default_cfg: float
    default_top_k: int
    default_top_p: float

    @classmethod
    def from_manifest(cls, manifest: Manifest) -> "VarSpec":
        try:
            m = manifest.model
            c = m["config"]
            return cls(m["preset"], int(c["depth"]), int(c["embed_dim"]), int(c["num_heads"]), int(m["head_dim"]),
                       int(c["block_chunks"]), int(c["code_dim"]), int(c["vocab_size"]), int(c["num_classes"]),
                       tuple(int(p) for p in c["patch_nums"]), float(m["default_cfg"]), int(m["default_top_k"]),
                       float(m["default_top_p"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise StagevarError(f"manifest.json in {manifest.root} lacks VAR model information ({exc}); "
                                f"export again with this stagevar version.") from None


@dataclass(frozen=True, eq=False)
class VarScaleTrace:
    index: int
    mode: Mode
    logits: np.ndarray | None  # (N, l, V) CFG-combined, before filtering
    ids: np.ndarray | None  # (N, l) int64; None on SKIP scales
    indices: tuple = ()  # LOWRANK: (N, r_c) int64 per chunk


@dataclass(frozen=True, eq=False)
class VarPipelineOutput:
    """`images`: PIL images or uint8 (N, H, W, 3) RGB; `timings`: seconds for "cond", per scale
    ("scales"), "vae", "total", "session", "overhead"; with return_intermediates, one trace per
    scale and `f_hat` (N, Cv, HW, HW)."""

    images: list | np.ndarray
    timings: dict
    plan: str
    seeds: list[int] | None
    intermediates: list[VarScaleTrace] | None = None
    f_hat: np.ndarray | None = None
    rank_table: str | None = None  # no LOWRANK plans for VAR exports yet


class VarPipeline:
    """Generate ImageNet-class images from a VAR export. One lock serialises calls."""

    family = "var"

    def __init__(self, manifest: Manifest, backend) -> None:
        self.manifest = manifest
        self.backend = backend
        self.spec = VarSpec.from_manifest(manifest)
        glue = manifest.data.get("glue")
        if not isinstance(glue, dict) or not isinstance(glue.get("path"), str) or glue["path"] not in manifest.files:
            raise StagevarError(f"manifest.json in {manifest.root} lists no VAR glue file; export again.")
        self.glue = VarGlue.load(Path(manifest.root) / glue["path"], self.spec.patch_nums)
        # Checked now (digest, chunk count), so a bad table fails at load, not mid-request.
        self.rank_table = load_rank_table(manifest, self.spec.block_chunks)
        self._lock = threading.Lock()

    @classmethod
    def from_manifest(cls, manifest: Manifest, backend: str = "ort", device: str | None = None,
                      plugins: str | None = None, cuda_graphs: bool = True) -> "VarPipeline":
        """Open the graphs on "ort" (onnxruntime, `device` cpu by default) or "trt" (the TensorRT
        engines `stagevar-export build` made for this GPU, on cuda)."""
        if backend == "trt":
            from .trt_backend import TrtBackend  # lazy: TensorRT is an optional extra

            return cls(manifest, TrtBackend(manifest, device=device or "cuda", graphs=vio.engine_graphs(manifest.data),
                                            plugins=plugins, cuda_graphs=cuda_graphs))
        if backend != "ort":
            raise StagevarError(f"Backend {backend!r} is not known; use 'ort' or 'trt'.")
        from .ort_backend import OrtBackend

        return cls(manifest, OrtBackend(manifest, device=device or "cpu", graphs=vio.VAR_GRAPHS))

    def __call__(self, prompt=None, *, class_labels: int | Sequence[int] | None = None, seed: int | Sequence[int] = 0,
                 plan: str | StagePlan | None = None, cfg: float | None = None, top_k: int | None = None,
                 top_p: float | None = None, alpha: str | float | None = None, output_type: str = "pil",
                 uniforms: list[np.ndarray] | None = None, lowrank_noise: dict | None = None,
                 return_intermediates: bool = False) -> VarPipelineOutput:
        """One image per class label (an ImageNet class index, 0..999). Image i uses seed + i
        (or seed[i]); `uniforms` replays given per-scale uniforms (N, pn^2) instead, and
        `lowrank_noise` ({scale: (gumbel, projections)}) the noise of LOWRANK scales."""
        if prompt is not None:
            raise StagevarError(f"Export {self.manifest.root} is a class-conditional VAR model: give class_labels "
                                f"(ImageNet class indices such as 207), not a prompt.")
        with self._lock:
            return self._call(class_labels, seed, plan, cfg, top_k, top_p, alpha, output_type, uniforms, lowrank_noise,
                              return_intermediates)

    def _labels(self, class_labels) -> list[int]:
        if class_labels is None:
            raise StagevarError("Give class_labels: one ImageNet class index (0..999) per image, e.g. [207, 360].")
        labels = [class_labels] if isinstance(class_labels, (int, np.integer)) else list(class_labels)
        bad = [c for c in labels if isinstance(c, bool) or not isinstance(c, (int, np.integer))
               or not 0 <= c < self.spec.num_classes]
        if not labels or bad:
            raise StagevarError(f"Class labels must be integers between 0 and {self.spec.num_classes - 1}, "
                                f"got {bad[0] if bad else 'none'!r}.")
        return [int(c) for c in labels]

    def _call(self, class_labels, seed, plan, cfg, top_k, top_p, alpha, output_type, uniforms, lowrank_noise,
              keep) -> VarPipelineOutput:
        from .request import seeds_for  # the same seed rules as the Infinity pipeline

        start = time.perf_counter()
        session_start = self.backend.session_seconds
        spec, be = self.spec, self.backend
        if output_type not in OUTPUT_TYPES:
            raise StagevarError(f"output_type {output_type!r} is not known; use 'pil' or 'np'.")
        labels = self._labels(class_labels)
        n = len(labels)
        cfg = spec.default_cfg if cfg is None else float(cfg)
        top_k = spec.default_top_k if top_k is None else top_k
        top_p = spec.default_top_p if top_p is None else top_p
        if not np.isfinite(cfg):
            raise StagevarError(f"cfg must be a finite number, got {cfg}.")
        check_filters(top_k, top_p, spec.vocab_size)
        plan = make_var_plan(DEFAULT_VAR_PLAN if plan is None else plan, spec.patch_nums, spec.block_chunks,
                             self.rank_table, alpha)
        seeds = None
        if uniforms is None:
            seeds = seeds_for(seed, n)
            uniforms = draw_uniforms(seeds, spec.patch_nums)
            lowrank_noise = draw_lowrank_noise(seeds, plan, spec.patch_nums)
        elif len(uniforms) != len(spec.patch_nums) or any(
                np.shape(u) != (n, p * p) for u, p in zip(uniforms, spec.patch_nums)):
            raise StagevarError("uniforms must hold one (images, pn^2) array per scale; draw them with "
                                "stagevar.runtime.var_sampling.draw_uniforms.")
        timings: dict = {}
        t0 = time.perf_counter()
        cond = self._condition(labels)
        timings["cond"] = time.perf_counter() - t0
        f_hat, scales, traces = self._scales(plan, cond, n, cfg, top_k, top_p, uniforms, lowrank_noise or {}, keep)
        timings["scales"] = scales
        t0 = time.perf_counter()
        (images,) = be.run_plain(vio.VQVAE_DECODER, {"f_hat": f_hat})
        timings["vae"] = time.perf_counter() - t0
        images = np.asarray(images, dtype=np.uint8)
        if output_type == "pil":
            from PIL import Image

            images = [Image.fromarray(img) for img in images]
        timings["total"] = time.perf_counter() - start
        timings["session"] = be.session_seconds - session_start
        timings["overhead"] = timings["total"] - timings["session"]
        return VarPipelineOutput(images, timings, plan.name, seeds, traces if keep else None, f_hat if keep else None,
                                 plan.rank_table)

    def _condition(self, labels: list[int]) -> dict:
        spec, be = self.spec, self.backend
        rows = np.array(labels + [spec.num_classes] * len(labels), np.int64)  # [cond; null]
        R, C = len(rows), spec.embed_dim
        shapes = {"sos": (R, C), "gss": (R, spec.depth, 6, C), "head_ss": (R, 2, C)}
        cond = {k: be.alloc(s, be.output_dtype(vio.CLASS_COND, k)) for k, s in shapes.items()}
        be.run_bound(vio.CLASS_COND, {"labels": rows}, cond)
        return cond

    def _scales(self, plan: StagePlan, cond: dict, n: int, cfg, top_k, top_p, uniforms, lowrank_noise: dict, keep):
        spec, be = self.spec, self.backend
        S = len(spec.patch_nums)
        kv = None
        rows = 2 * n
        f_hat = self.glue.start(n)
        tokens = np.zeros((n, 1, spec.code_dim), np.float32)
        timings, traces = [], []
        # LOWRANK scales append no K/V (DESIGN.md §3): the cache holds the CFG/UNCOND scales only.
        capacity = sum(p * p for p, m in zip(spec.patch_nums, plan.modes) if m in (Mode.CFG, Mode.UNCOND))
        prev_outputs, prev_pn = None, None
        for si, mode in enumerate(plan.modes):
            t0 = time.perf_counter()
            pn = spec.patch_nums[si]
            if mode is Mode.SKIP:  # the image decodes from f_hat as it stands
                traces.append(VarScaleTrace(si, mode, None, None))
                timings.append({"scale": si, "hw": [pn, pn], "mode": mode.value, "seconds": 0.0})
                continue
            if mode is not Mode.CFG and rows == 2 * n:
                # First non-CFG scale: keep the null rows for good (one compaction).
                cond = {k: be.select(v, (slice(n, 2 * n),)) for k, v in cond.items()}
                if kv is not None:
                    kv.compact(n, 2 * n)
                rows = n
            if kv is None:
                kv = be.new_kv_cache(capacity, spec.depth, rows, spec.num_heads, spec.head_dim,
                                     be.input_dtype(vio.VAR_STEP, "past_kv"))
            count = pn * pn
            indices = ()
            if mode is Mode.LOWRANK:
                logits, outputs, indices = self._fidelity(si, tokens, cond, kv, prev_outputs, prev_pn, plan.ranks[si],
                                                          lowrank_noise[si])
            else:
                guidance = guidance_pair(cfg, si, S) if mode is Mode.CFG else (1.0, 0.0)
                logits = be.alloc((n, count, spec.vocab_size), be.output_dtype(vio.VAR_STEP, "logits"), resident=False)
                outputs = be.alloc((spec.block_chunks, n, count, spec.embed_dim),
                                   be.output_dtype(vio.VAR_STEP, "chunk_outputs"))
                inputs = {"tokens": tokens, "scale_index": np.array(si, np.int64), **cond, "past_kv": kv.prefix(),
                          "guidance": np.array(guidance, np.float32)}
                be.run_bound(vio.VAR_STEP, inputs, {"logits": logits, "new_kv": kv.slot(count), "chunk_outputs": outputs})
                kv.commit(count)
                logits = logits.numpy()
            combined = np.asarray(logits, np.float32)
            ids = sample_ids(combined, uniforms[si], top_k, top_p)
            tokens = self.glue.add(si, ids, f_hat)
            prev_outputs, prev_pn = outputs, pn
            traces.append(VarScaleTrace(si, mode, combined.copy() if keep else None, ids, indices))
            timings.append({"scale": si, "hw": [pn, pn], "mode": mode.value, "seconds": time.perf_counter() - t0})
        return f_hat, timings, traces

    def _fidelity(self, si, tokens, cond, kv, cache, cache_pn, ranks, noise):
        """One LOWRANK scale (RP + RTR per chunk) on the null rows; appends no K/V."""
        spec, be = self.spec, self.backend
        n, m = tokens.shape[0], tokens.shape[1]
        gumbel, projections = noise
        area = area_matrix(cache_pn, spec.patch_nums[si])
        inputs = {"tokens": tokens, "scale_index": np.array(si, np.int64), "gss": cond["gss"],
                  "head_ss": cond["head_ss"], "past_kv": kv.prefix(), "cache": cache,
                  "area_h": area.astype(np.float32), "area_w": area.astype(np.float32), "gumbel": np.stack(gumbel),
                  **{f"proj_{c}": q for c, q in enumerate(projections)}}
        logits = be.alloc((n, m, spec.vocab_size), be.output_dtype(vio.VAR_FIDELITY, "logits"), resident=False)
        outputs = be.alloc((spec.block_chunks, n, m, spec.embed_dim), be.output_dtype(vio.VAR_FIDELITY, "chunk_outputs"))
        indices = [be.alloc((n, int(r)), np.int64, resident=False) for r in ranks]
        be.run_bound(vio.VAR_FIDELITY, inputs, {"logits": logits, "chunk_outputs": outputs,
                                                 **{f"indices_{c}": a for c, a in enumerate(indices)}})
        return logits.numpy(), outputs, tuple(a.numpy().copy() for a in indices)
