"""Torch wrappers with exactly the VAR graph contracts (runtime/var_graph_io.py)."""

from __future__ import annotations

import torch
from torch import nn

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
        logits, new_kv = self.model.step(x, gss, head_ss, past_kv)
        R = logits.shape[0]
        combined = logits[:n] * guidance[0] + logits[R - n:] * guidance[1]
        return combined, new_kv.to(past_kv.dtype)


class VqvaeDecoderGraph(nn.Module):
    def __init__(self, vae: VQVAE):
        super().__init__()
        self.vae = vae

    def forward(self, f_hat):
        return to_uint8_rgb(self.vae.decode(f_hat))
