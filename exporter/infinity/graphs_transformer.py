"""Graph wrappers around the Infinity transformer: text_cond, step and fidelity.

Each wrapper turns the contract of `stagevar.runtime.graph_io` into calls of the unchanged model
code (`InfinityTransformer`, `lowrank`), so the eager reference sampler and the exported graphs
run the same math. K/V caches are token-major: [tokens, depth, 2 (k, v), rows, heads, head_dim].
"""

from __future__ import annotations

import torch
from torch import nn

from ..token_restore_op import token_restore
from .lowrank import representative_indices
from .transformer import KV, InfinityTransformer, TextCondition, text_key_bias


def _condition(sos, gss, head_ss, text_kv, text_bias) -> TextCondition:
    depth = text_kv.shape[0]
    return TextCondition(
        sos,
        gss.unsqueeze(1),
        head_ss.unsqueeze(1),
        tuple((text_kv[i, 0], text_kv[i, 1]) for i in range(depth)),
        text_bias[:, None, None, :],
    )


def _past(past_kv: torch.Tensor) -> list[KV]:
    """Token-major [p, depth, 2, r, H, hd] -> per block (k, v) as [r, H, p, hd]."""
    return [(past_kv[:, i, 0].permute(1, 2, 0, 3), past_kv[:, i, 1].permute(1, 2, 0, 3)) for i in range(past_kv.shape[1])]


class TextCondGraph(nn.Module):
    """Per prompt batch: rows [cond (n); null (n)] of every text-derived tensor."""

    def __init__(self, model: InfinityTransformer) -> None:
        super().__init__()
        self.model = model

    def forward(self, text_features: torch.Tensor, attention_mask: torch.Tensor):
        n, t = attention_mask.shape
        bias = text_key_bias(attention_mask)  # (n, 1, 1, t)
        null = self.model.null_text(n, t)
        cond = self.model.text_condition(torch.cat((text_features, null)), torch.cat((bias, bias)))
        text_kv = torch.stack([torch.stack((k, v)) for k, v in cond.text_kv])
        C = self.model.config.embed_dim
        return (
            cond.sos_BD,
            cond.gss_B16C.reshape(2 * n, 6, C),
            cond.head_ss_B12C.reshape(2 * n, 2, C),
            text_kv,
            cond.text_bias_B11T.reshape(2 * n, t),
        )


class StepGraph(nn.Module):
    """One CFG or UNCOND scale over the past K/V; CFG duplication and combination in-graph."""

    def __init__(self, model: InfinityTransformer) -> None:
        super().__init__()
        self.model = model

    def forward(self, codes, scale_index, sos, gss, head_ss, text_kv, text_bias, past_kv, rope_cos, rope_sin, guidance, tau):
        m = self.model
        n, r = codes.shape[0], sos.shape[0]
        groups = r // n  # 2 on CFG scales (cond rows, null rows), 1 on UNCOND scales
        cond = _condition(sos, gss, head_ss, text_kv, text_bias)
        # Scale 0 starts from SOS + pos_start; later scales from word_embed(codes). `where`
        # keeps both paths exact (no arithmetic mixing of the two).
        from_codes = m.word_embed(codes).repeat(groups, 1, 1)
        from_sos = cond.sos_BD.unsqueeze(1) + m.pos_start
        x = torch.where(scale_index == 0, from_sos, from_codes) + m.lvl_embed.weight[scale_index]
        hidden, new_kv, outputs = m.forward_scale(x, cond, rope_cos, rope_sin, _past(past_kv))
        logits = m.head_logits(hidden, cond) / tau
        logits = (logits.reshape(groups, n, logits.shape[1], -1) * guidance[:groups].reshape(groups, 1, 1, 1)).sum(0)
        new = torch.stack([torch.stack((k, v)) for k, v in new_kv])  # (depth, 2, r, H, l, hd)
        new = new.permute(4, 0, 1, 2, 3, 5)
        chunk_outputs = torch.stack([o[r - n :] for o in outputs])
        return logits, new, chunk_outputs


class FidelityGraph(nn.Module):
    """One LOWRANK scale (StageVAR RP + RTR) on the null rows; appends no K/V.

    For the accuracy check only (eager, never exported): `forced_indices` replaces the sampled
    indices of each chunk, and `scores` collects each chunk's selection scores, so a selection
    that flips at a near-tie between backends can be told apart from a real error.
    """

    def __init__(self, model: InfinityTransformer) -> None:
        super().__init__()
        self.model = model
        self.forced_indices: list[torch.Tensor] | None = None
        self.scores: list[torch.Tensor] | None = None

    def forward(self, codes, scale_index, gss, head_ss, text_kv, text_bias, past_kv, rope_cos, rope_sin, tau, cache, area_h, area_w,
                gumbel, *projections):
        m = self.model
        cond = _condition(gss[:, 0], gss, head_ss, text_kv, text_bias)  # sos is unused here
        x = m.word_embed(codes) + m.lvl_embed.weight[scale_index]
        past = _past(past_kv)
        outputs, indices = [], []
        for c, proj in enumerate(projections):
            rank = proj.shape[2]
            idx = representative_indices(x, gumbel[c], rank)
            if self.scores is not None:
                self.scores.append(torch.log(x.pow(2).sum(-1)) + gumbel[c])
            if self.forced_indices is not None:
                idx = self.forced_indices[c]
            pseudo = torch.einsum("bmr,bmc->brc", proj, x)
            out, _ = m.run_chunk(c, pseudo, cond, rope_cos[:rank], rope_sin[:rank], m.chunk_past(past, c))
            # Area-upsampled previous output of this chunk with the r outputs written at idx:
            # one op, exported as one stagevar.TokenRestore node (TensorRT plugin or local function).
            prev = cache[c].to(x.dtype)
            x = token_restore(x, prev, out.to(x.dtype), idx, area_h.to(x.dtype), area_w.to(x.dtype))
            outputs.append(x)
            indices.append(idx)
        logits = m.head_logits(x, cond) / tau
        return (logits, torch.stack(outputs), *indices)
