"""Torch wrappers with exactly the VAR graph contracts (runtime/var_graph_io.py)."""

from __future__ import annotations

import torch
from torch import nn

from .lowrank import lowrank_scale
from .model import VAR
from .vqvae import VQVAE, to_uint8_rgb


class ClassCondGraph(nn.Module):
    def __init__(self, model: VAR):
        super().__init__()
        self.model = model

    def forward(self, labels):
        return self.model.condition(labels)


class VarStepGraph(nn.Module):
    def __init__(self, model: VAR):
        super().__init__()
        self.model = model

    def forward(self, tokens, scale_index, sos, gss, head_ss, past_kv, guidance):
        n = tokens.shape[0]
        x = self.model.embed_scale(tokens.to(sos.dtype), scale_index, sos)
        outputs: list = []
        logits, new_kv = self.model.step(x, gss, head_ss, past_kv, outputs)
        R = logits.shape[0]
        combined = logits[:n] * guidance[0] + logits[R - n:] * guidance[1]
        chunk_outputs = torch.stack([o[R - n:] for o in outputs])  # null rows: the RTR cache
        return combined, new_kv.to(past_kv.dtype), chunk_outputs


class VarFidelityGraph(nn.Module):
    """One LOWRANK scale on the null rows (exporter/var/lowrank.py); appends no K/V."""

    def __init__(self, model: VAR):
        super().__init__()
        self.model = model

    def forward(self, tokens, scale_index, gss, head_ss, past_kv, cache, area_h, area_w, gumbel, *projections):
        # gss[:, 0, 0] stands in for the start token: unused, a fidelity scale is never scale 0.
        x = self.model.embed_scale(tokens.to(gss.dtype), scale_index, gss[:, 0, 0])
        logits, outputs, indices = lowrank_scale(self.model, x, gss, head_ss, past_kv, cache, area_h, area_w,
                                                 gumbel, projections)
        return (logits, outputs, *indices)


class VqvaeDecoderGraph(nn.Module):
    def __init__(self, vae: VQVAE):
        super().__init__()
        self.vae = vae

    def forward(self, f_hat):
        return to_uint8_rgb(self.vae.decode(f_hat))
