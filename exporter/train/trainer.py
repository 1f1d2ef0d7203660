"""The training loop of `stagevar-train`: BSQ-VAE first, then the transformer with the text
encoder, on batches of the shapes world generated from (seed, step).

Every batch and every condition-dropout mask is a function of (seed, phase, step), so a run
resumed from a checkpoint continues exactly as if it had not stopped. Checkpoints (all weights,
optimizer states, step) are written atomically every `save_every` steps and at each phase end.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from stagevar.runtime.schedules import get_schedule
from stagevar.runtime.shapes_world import sample_batch
from stagevar.runtime.tokenize import encode_prompts

from ..infinity.presets import InfinityPreset
from ..infinity.random_init import randomize_
from ..infinity.text_encoder import build_random_text_encoder
from ..infinity.tokenizer import build_tiny_tokenizer
from ..infinity.transformer import InfinityTransformer
from .bsq_vae import BSQVAE, images_to_tensor, multiscale_quantize
from .teacher_forcing import TeacherForcing


@dataclass(frozen=True)
class TrainConfig:
    # The shipped recipe: ~50 min on one idle core of the 2-core CPU machine (VAE 0.3 s/step,
    # transformer 0.82 s/step at batch 32, measured); 600 steps at batch 16 left adherence at 0%.
    vae_steps: int = 1000
    steps: int = 3000
    batch: int = 32
    vae_lr: float = 2e-3
    lr: float = 2e-3
    cond_dropout: float = 0.1
    seed: int = 0
    resolution: str = "8x8"
    save_every: int = 100
    threads: int = 1


def _lr(base: float, step: int, total: int, warmup: int = 30) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(t, 1.0))))


class Trainer:
    def __init__(self, preset: InfinityPreset, cfg: TrainConfig, out: Path, log=None) -> None:
        torch.set_num_threads(cfg.threads)
        self.preset, self.cfg, self.out = preset, cfg, Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.schedule = get_schedule("1:1", cfg.resolution)
        self.tokenizer = build_tiny_tokenizer()
        self.log_stream = log or sys.stderr
        torch.manual_seed(cfg.seed)
        self.vae = BSQVAE(preset.vae)
        self.transformer = randomize_(InfinityTransformer(preset.transformer), cfg.seed)
        with torch.no_grad():  # start with silent residual branches' head: uniform bit logits
            self.transformer.head.weight.mul_(0.0)
            self.transformer.head.bias.zero_()
        self.text = build_random_text_encoder(preset.text, cfg.seed + 2)
        self.vae_opt = torch.optim.Adam(self.vae.parameters(), lr=cfg.vae_lr)
        params = list(self.transformer.parameters()) + list(self.text.parameters())
        self.opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.01, betas=(0.9, 0.97))
        self.tf = TeacherForcing(self.transformer, self.schedule)
        self.phase, self.step = "vae", 0
        self.history: list[dict] = []
        self.seconds = {"vae": 0.0, "transformer": 0.0}
        self._maybe_resume()

    # ---- checkpoints --------------------------------------------------------------------
    @property
    def ckpt_path(self) -> Path:
        return self.out / "checkpoint.pt"

    def _state(self) -> dict:
        return {"config": asdict(self.cfg), "preset": self.preset.name, "phase": self.phase, "step": self.step,
                "vae": self.vae.state_dict(), "vae_opt": self.vae_opt.state_dict(),
                "transformer": self.transformer.state_dict(), "text": self.text.state_dict(),
                "opt": self.opt.state_dict(), "history": self.history, "seconds": self.seconds}

    def save(self) -> None:
        tmp = self.ckpt_path.with_suffix(".tmp")
        torch.save(self._state(), tmp)
        os.replace(tmp, self.ckpt_path)

    def _maybe_resume(self) -> None:
        if not self.ckpt_path.exists():
            return
        from stagevar.runtime.errors import StagevarError

        state = torch.load(self.ckpt_path, weights_only=False)
        if state["config"] != asdict(self.cfg) or state["preset"] != self.preset.name:
            raise StagevarError(f"{self.ckpt_path} was written by a run with other settings "
                                f"({state['config']}); use the same options or another --out.")
        self.vae.load_state_dict(state["vae"])
        self.vae_opt.load_state_dict(state["vae_opt"])
        self.transformer.load_state_dict(state["transformer"])
        self.text.load_state_dict(state["text"])
        self.opt.load_state_dict(state["opt"])
        self.phase, self.step = state["phase"], state["step"]
        self.history, self.seconds = state["history"], state["seconds"]
        self._print(f"resumed from {self.ckpt_path}: phase {self.phase}, step {self.step}")

    # ---- steps --------------------------------------------------------------------------
    def _batch(self, phase: str, step: int):
        phase_id = 0 if phase == "vae" else 1
        seed = (self.cfg.seed * 1_000_003 + phase_id * 100_003 + step) % 2**31
        images, captions, _ = sample_batch(seed, self.cfg.batch)
        return images_to_tensor(images), captions, seed

    def vae_step(self) -> dict:
        x, _, _ = self._batch("vae", self.step)
        for g in self.vae_opt.param_groups:
            g["lr"] = _lr(self.cfg.vae_lr, self.step, self.cfg.vae_steps)
        recon, commit = self.vae(x, self.schedule.scales)
        rec = torch.nn.functional.mse_loss(recon, x)
        loss = rec + 0.25 * commit
        self.vae_opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.vae.parameters(), 1.0)
        self.vae_opt.step()
        return {"recon_mse": rec.item(), "commit": commit.item()}

    def transformer_step(self) -> dict:
        x, captions, seed = self._batch("transformer", self.step)
        with torch.no_grad():
            z = self.vae.encoder(x)
            _, bits, inputs = multiscale_quantize(z, self.schedule.scales)
        ids, mask, _ = encode_prompts(self.tokenizer, captions, max_length=self.preset.transformer.text_maxlen)
        gen = torch.Generator().manual_seed(seed)
        drop = torch.rand(len(captions), generator=gen) < self.cfg.cond_dropout
        for g in self.opt.param_groups:
            g["lr"] = _lr(self.cfg.lr, self.step, self.cfg.steps)
        feats = self.text(torch.from_numpy(ids), torch.from_numpy(mask))
        logits = self.tf.logits(feats, torch.from_numpy(mask), drop, inputs)
        ce, acc = self.tf.loss(logits, bits)
        self.opt.zero_grad(set_to_none=True)
        ce.backward()
        torch.nn.utils.clip_grad_norm_(list(self.transformer.parameters()) + list(self.text.parameters()), 1.0)
        self.opt.step()
        return {"bit_ce": ce.item(), "bit_acc": acc.item()}

    def run(self, stop_after: int | None = None) -> None:
        """Train to the end of both phases, or stop after `stop_after` transformer steps (the
        learning-rate schedule stays the one of the full run, so a stopped run equals the full
        run's state at that step)."""
        self.vae.train(), self.transformer.train(), self.text.train()
        for phase, total, fn in (("vae", self.cfg.vae_steps, self.vae_step),
                                 ("transformer", self.cfg.steps, self.transformer_step)):
            if phase == "transformer" and self.phase == "vae":
                self.phase, self.step = "transformer", 0
            if phase != self.phase:
                continue
            if phase == "transformer":
                self.vae.eval()
            t_phase = time.perf_counter()
            done_at_start = self.step
            limit = total if phase == "vae" or stop_after is None else min(total, stop_after)
            while self.step < limit:
                metrics = fn()
                self.step += 1
                elapsed = time.perf_counter() - t_phase
                self.seconds[phase] += 0  # accumulated at save points below
                record = {"phase": phase, "step": self.step, **{k: round(v, 5) for k, v in metrics.items()}}
                self.history.append(record)
                per = elapsed / (self.step - done_at_start)
                if self.step % 10 == 0 or self.step == total:
                    metr = " ".join(f"{k} {v:.4f}" for k, v in metrics.items())
                    self._print(f"{phase} step {self.step}/{total} {metr}  {per:.2f} s/step, ETA {_fmt((total - self.step) * per)}")
                if self.step % self.cfg.save_every == 0 or self.step == limit:
                    self.seconds[phase] = self.seconds.get(phase, 0.0) + elapsed - getattr(self, "_saved_elapsed", 0.0)
                    self._saved_elapsed = elapsed
                    self.save()
            self._saved_elapsed = 0.0
            if phase == "transformer" and self.step < total:
                break
            if phase == "vae":
                self.phase, self.step = "transformer", 0
                self.save()
        self.vae.eval(), self.transformer.eval(), self.text.eval()

    def _print(self, msg: str) -> None:
        print(msg, file=self.log_stream, flush=True)


def _fmt(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"
