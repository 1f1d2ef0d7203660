"""The eager reference sampler: text -> scales (by stage plan) -> VAE, in torch.

This is the ground truth for parity checks and the baseline in benchmarks. The host-side math
between scales (bit sampling, code accumulation, bilinear resizes) is the runtime's numpy code,
so the ONNX runtime and this sampler share it by construction; the network parts are torch.
All randomness comes from per-image numpy generators (`stagevar.runtime.noise`): image i of a
request with seed s uses seed s + i, so a batch of prompts equals the same prompts run alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from stagevar.runtime.codes import CodeAccumulator, tokens_bits_to_code_map
from stagevar.runtime.noise import ScaleNoise, draw_batch_noise
from stagevar.runtime.rope import rope_cos_sin
from stagevar.runtime.sampling import sample_bits
from stagevar.runtime.schedules import ScaleSchedule, get_schedule
from stagevar.runtime.stage_plan import DEFAULT_ALPHA, Mode, StagePlan, make_plan

from stagevar.runtime.prompts import normalize_prompts
from .lowrank import lowrank_scale
from .model_bundle import InfinityBundle
from .transformer import KV, cfg_combine, text_key_bias


@dataclass
class ScaleRecord:
    """Per-scale intermediates, for parity tests (numpy, float32 unless stated)."""

    index: int
    mode: Mode
    hw: tuple[int, int]
    token_passes: float = 0.0  # rows x tokens through the blocks (LOWRANK: mean over chunks)
    logits: np.ndarray | None = None  # (N, L, 2d) CFG-combined, tau-scaled
    bits: np.ndarray | None = None  # (N, L, d) uint8
    chunk_outputs: list[np.ndarray] = field(default_factory=list)
    indices: list[np.ndarray] = field(default_factory=list)  # LOWRANK: (N, r_c) per chunk
    noise: ScaleNoise | None = None


@dataclass
class SampleResult:
    images: np.ndarray  # (N, H, W, 3) uint8 RGB
    codes: np.ndarray  # (N, code_dim, FH, FW) summed code map that was decoded
    plan: StagePlan
    schedule: ScaleSchedule
    records: list[ScaleRecord]

    @property
    def token_passes(self) -> float:
        return sum(r.token_passes for r in self.records)


class ReferenceSampler:
    """Runs a whole generation eagerly on CPU in fp32."""

    def __init__(self, bundle: InfinityBundle) -> None:
        self.bundle = bundle
        self.model = bundle.transformer

    @torch.no_grad()
    def encode_text(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """T5 features (N, T, Ct5) and the 0/1 mask (N, T), padded to the longest prompt."""
        ids, mask = self.bundle.tokenize(prompts)
        feats = self.bundle.text_encoder(torch.from_numpy(ids), torch.from_numpy(mask))
        return feats.float(), torch.from_numpy(mask)

    @torch.no_grad()
    def generate(
        self,
        prompts: str | list[str],
        *,
        plan: str | StagePlan = "stagevar",
        cfg: float = 3.0,
        tau: float = 0.5,
        aspect: str | float = "1:1",
        resolution: str = "1M",
        seed: int | list[int] = 0,
        alpha: str = DEFAULT_ALPHA,
        num_images_per_prompt: int = 1,
        noise: list[ScaleNoise | None] | None = None,
        indices: dict[int, list[np.ndarray]] | None = None,
        keep_intermediates: bool = False,
    ) -> SampleResult:
        """Generate images; `noise`/`indices` replay another implementation's randomness."""
        cfg_model = self.model.config
        prompt_list = [p for p in normalize_prompts(prompts) for _ in range(num_images_per_prompt)]
        n = len(prompt_list)
        schedule = get_schedule(aspect, resolution)
        if isinstance(plan, str):
            plan = make_plan(plan, schedule, num_chunks=cfg_model.block_chunks, alpha=alpha)
        if noise is None:
            seeds = [seed + i for i in range(n)] if isinstance(seed, int) else list(seed)
            noise = draw_batch_noise(seeds, plan, schedule, cfg_model.bits_per_token)

        feats, mask = self.encode_text(prompt_list)
        bias = text_key_bias(mask)
        null = self.model.null_text(n, feats.shape[1])
        cond = self.model.text_condition(torch.cat((feats, null)), torch.cat((bias, bias)))
        rows = 2 * n
        cos_all, sin_all = (torch.from_numpy(t) for t in rope_cos_sin(schedule, cfg_model.head_dim))

        acc = CodeAccumulator(schedule, n, cfg_model.code_dim, cfg_model.patchify)
        past: list[KV] | None = None
        prev_outputs: list[torch.Tensor] | None = None
        prev_hw: tuple[int, int] | None = None
        records: list[ScaleRecord] = []
        for k, mode in enumerate(plan.modes):
            hw = schedule.scales[k]
            record = ScaleRecord(k, mode, hw, noise=noise[k] if keep_intermediates else None)
            records.append(record)
            if mode is Mode.SKIP:
                continue
            if mode is not Mode.CFG and rows == 2 * n:
                # First non-CFG scale: keep the null rows for good (one compaction, as released).
                cond = cond.rows(slice(n, 2 * n))
                past = None if past is None else [(pk[n:], pv[n:]) for pk, pv in past]
                if prev_outputs is not None:
                    prev_outputs = [o[n:] for o in prev_outputs]
                rows = n
            tokens = None if k == 0 else torch.from_numpy(acc.next_input(hw))
            if tokens is not None and rows == 2 * n:
                tokens = torch.cat((tokens, tokens))
            x = self.model.embed_scale(tokens, k, cond)
            start, count = schedule.offsets[k], schedule.token_counts[k]
            cos, sin = cos_all[start : start + count], sin_all[start : start + count]
            if mode is Mode.LOWRANK:
                ranks = plan.ranks[k]
                scale_noise = noise[k]
                hidden, outputs, trace = lowrank_scale(
                    self.model, x, cond, cos, sin, past, prev_outputs, prev_hw, hw, ranks,
                    tuple(torch.from_numpy(g) for g in scale_noise.gumbel),
                    tuple(torch.from_numpy(q) for q in scale_noise.projections),
                    None if indices is None or k not in indices else tuple(torch.from_numpy(i) for i in indices[k]),
                )
                record.token_passes = rows * float(np.mean(ranks))
                if keep_intermediates:
                    record.indices = [i.numpy() for i in trace.indices]
            else:
                hidden, new_kv, outputs = self.model.forward_scale(x, cond, cos, sin, past)
                past = new_kv if past is None else [
                    (torch.cat((pk, nk), 2), torch.cat((pv, nv), 2)) for (pk, pv), (nk, nv) in zip(past, new_kv)
                ]
                record.token_passes = float(rows * count)
            logits = self.model.head_logits(hidden, cond)
            logits = cfg_combine(logits, cfg, tau) if rows == 2 * n else logits / tau
            logits_np = logits.numpy()
            bits = sample_bits(logits_np, noise[k].uniforms)
            acc.add(tokens_bits_to_code_map(bits, hw, cfg_model.code_dim, cfg_model.patchify))
            prev_outputs, prev_hw = outputs, hw
            if keep_intermediates:
                record.logits, record.bits = logits_np, bits
                record.chunk_outputs = [o.numpy() for o in outputs]

        codes = acc.summed
        images = self.bundle.decode(codes)
        return SampleResult(images, codes, plan, schedule, records)
