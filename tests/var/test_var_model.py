"""The VAR model's cached per-scale step equals the whole-sequence masked forward (teacher forcing
with attn_bias_for_masking, reference var.md §3): one computation states the network twice.

Guards: the K/V cache not carrying earlier scales, the un-normalised k cached, a wrong AdaLN chunk
order between condition() and the blocks, rows interleaved instead of [cond; null], scale 0
without pos_start, positions read at the wrong token offset, the null class row.
"""

import torch

from stagevar.exporter.var.checkpoint import random_var
from stagevar.exporter.var.config import var_tiny, var_tiny_saln


def _check(cfg):
    model = random_var(cfg, seed=3)
    labels = torch.tensor([7, 311, cfg.num_classes, cfg.num_classes])  # [cond x2; null x2]
    n, R = 2, 4
    g = torch.Generator().manual_seed(0)
    tokens = torch.randn(n, cfg.total_tokens - 1, cfg.code_dim, generator=g)
    with torch.no_grad():
        full = model.forward_teacher(labels, tokens.repeat(2, 1, 1))
        sos, gss, head_ss = model.condition(labels)
        past = None
        start = 0
        for si, pn in enumerate(cfg.patch_nums):
            l = pn * pn
            tok = tokens[:, start - 1:start - 1 + l] if si else torch.zeros(n, 1, cfg.code_dim)
            x = model.embed_scale(tok, torch.tensor(si), sos)
            logits, kv = model.step(x, gss, head_ss, past)
            torch.testing.assert_close(logits, full[:, start:start + l], atol=2e-4, rtol=1e-4)
            past = kv if past is None else torch.cat((past, kv), 0)
            start += l


def test_cached_step_equals_teacher_forward():
    _check(var_tiny().var)


def test_cached_step_equals_teacher_forward_shared_adaln():
    _check(var_tiny_saln().var)
