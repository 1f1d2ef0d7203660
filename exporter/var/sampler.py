"""The eager torch reference sampler of VAR: the ground truth of `--check` and of the pipeline tests.

It restates `autoregressive_infer_cfg` (reference var.md §4) with torch ops only: the KV-cached
model step, the CFG ramp, top-k / top-p on the combined logits, the inverse-CDF draw with the
injected uniforms (instead of torch.multinomial with a generator), and the glue with
`F.interpolate` (bicubic up, area down) and the phi convs of the VQVAE. It shares no code with
the numpy runtime, so pipeline == reference is a real check of both.
Plans: every scale is CFG (rows [cond; null]) or UNCOND (null rows only, after compaction).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from stagevar.runtime.stage_plan import Mode
from stagevar.runtime.resize import area_matrix
from stagevar.runtime.var_schedule import phi_index

from .lowrank import lowrank_scale
from .model import VAR
from .vqvae import VQVAE, to_uint8_rgb


@dataclass
class VarScaleRecord:
    index: int
    mode: Mode
    logits: np.ndarray  # (N, l, V) combined, before filtering
    ids: np.ndarray  # (N, l) int64


@dataclass
class VarReferenceResult:
    images: np.ndarray  # (N, H, W, 3) uint8 RGB
    f_hat: np.ndarray  # (N, Cv, HW, HW)
    scales: list[VarScaleRecord]


def torch_filter(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """top-k then top-p as in the official helpers (ties at the k-th value kept)."""
    logits = logits.clone()
    V = logits.shape[-1]
    if 0 < top_k < V:
        kth = logits.topk(top_k, dim=-1, largest=True, sorted=False).values.amin(dim=-1, keepdim=True)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p > 0:
        srt, idx = logits.sort(dim=-1, descending=False, stable=True)
        remove = srt.softmax(dim=-1).cumsum(dim=-1) <= (1 - top_p)
        remove[..., -1] = False
        logits = logits.masked_fill(remove.scatter(-1, idx, remove), float("-inf"))
    return logits


def torch_draw(logits: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    probs = logits.softmax(dim=-1).double()
    cdf = probs.cumsum(dim=-1)
    target = uniforms.double() * cdf[..., -1]
    ids = torch.searchsorted(cdf, target.unsqueeze(-1), right=True).squeeze(-1)
    last = probs.shape[-1] - 1 - (probs > 0).flip(-1).int().argmax(dim=-1)
    return torch.minimum(ids, last)


class VarReferenceSampler:
    def __init__(self, var: VAR, vae: VQVAE):
        self.var, self.vae = var.eval(), vae.eval()

    @torch.no_grad()
    def generate(self, labels, uniforms: list[np.ndarray], cfg: float = 1.5, top_k: int = 900,
                 top_p: float = 0.96, modes: tuple[Mode, ...] | None = None, lowrank_noise: dict | None = None,
                 chunk_input_hook=None) -> VarReferenceResult:
        """`uniforms[si]` (N, pn^2) as drawn by stagevar.runtime.var_sampling.draw_uniforms;
        `lowrank_noise` {si: (gumbel per chunk, projections per chunk)} for LOWRANK scales (the
        ranks are the projections' widths); `chunk_input_hook(si, c, x)` sees every chunk's input
        of the null rows (calibration)."""
        var, cfg_m = self.var, self.var.config
        pns, S, n = cfg_m.patch_nums, cfg_m.num_scales, len(labels)
        modes = modes or (Mode.CFG,) * S
        lab = torch.tensor(list(labels) + [cfg_m.num_classes] * n, dtype=torch.int64)
        sos, gss, head_ss = var.condition(lab)
        K = [None] * cfg_m.depth
        V = [None] * cfg_m.depth
        hw = pns[-1]
        f_hat = torch.zeros(n, cfg_m.code_dim, hw, hw)
        nxt = torch.zeros(n, 1, cfg_m.code_dim)
        records = []
        offset = 0
        rows = 2 * n
        phis = phi_index(pns)
        prev_outputs, prev_pn = None, None
        for si, pn in enumerate(pns):
            mode = modes[si]
            l = pn * pn
            if mode is Mode.SKIP:
                offset += l
                continue
            if mode is not Mode.CFG and rows == 2 * n:
                sos, gss, head_ss = sos[n:], gss[n:], head_ss[n:]
                K = [k[n:] for k in K]
                V = [v[n:] for v in V]
                rows = n
            pos = var.pos_1LC[0, offset:offset + l] + var.lvl_embed.weight[si]
            if si == 0:
                x = sos[:, None, :] + var.pos_start + pos
            else:
                x = var.word_embed(nxt).repeat(rows // n, 1, 1) + pos
            if mode is Mode.LOWRANK:
                logits, outputs = self._lowrank(x, gss, head_ss, K, V, prev_outputs, prev_pn, pn, lowrank_noise[si])
            else:
                outputs = []
                for c in range(cfg_m.block_chunks):
                    if chunk_input_hook is not None:
                        chunk_input_hook(si, c, x[rows - n:])
                    for i in var.chunk_blocks(c):
                        x, k, v = var.blocks[i].run(x, gss[:, i], K[i], V[i])
                        K[i] = k if K[i] is None else torch.cat((K[i], k), dim=2)
                        V[i] = v if V[i] is None else torch.cat((V[i], v), dim=2)
                    outputs.append(x[rows - n:])
                logits = var.logits(x, head_ss)
                if rows == 2 * n:
                    t = cfg * si / (S - 1)
                    logits = (1 + t) * logits[:n] - t * logits[n:]
            prev_outputs, prev_pn = outputs, pn
            ids = torch_draw(torch_filter(logits, top_k, top_p), torch.from_numpy(np.asarray(uniforms[si])))
            records.append(VarScaleRecord(si, mode, logits.numpy(), ids.numpy()))
            h = self.vae.quantize.embedding(ids).transpose(1, 2).reshape(n, cfg_m.code_dim, pn, pn)
            if si < S - 1:
                h = F.interpolate(h, size=(hw, hw), mode="bicubic", align_corners=False)
            f_hat = f_hat + self.vae.quantize.quant_resi.phi(phis[si], h)
            if si < S - 1:
                small = F.interpolate(f_hat, size=(pns[si + 1], pns[si + 1]), mode="area")
                nxt = small.view(n, cfg_m.code_dim, -1).transpose(1, 2)
            offset += l
        images = to_uint8_rgb(self.vae.decode(f_hat)).numpy()
        return VarReferenceResult(images, f_hat.numpy(), records)

    def _lowrank(self, x, gss, head_ss, K, V, prev_outputs, prev_pn, pn, noise):
        """RP + RTR per chunk on the null rows, with the K/V of the executed scales (none appended)."""
        gumbel, projections = noise
        D = self.var.config.depth
        past = torch.stack([torch.stack((K[i], V[i])) for i in range(D)])  # (depth, 2, n, H, p, hd)
        past_kv = past.permute(4, 0, 1, 2, 3, 5)
        area = torch.from_numpy(area_matrix(prev_pn, pn)).float()
        cache = torch.stack(list(prev_outputs))
        logits, outputs, _ = lowrank_scale(self.var, x, gss, head_ss, past_kv, cache, area, area,
                                           torch.from_numpy(np.stack(gumbel)), [torch.from_numpy(q) for q in projections])
        return logits, list(outputs)
