"""The VAR model's cached per-scale step equals the whole-sequence masked forward (teacher forcing
with attn_bias_for_masking, reference var.md §3): one computation states the network twice.

Guards: the K/V cache not carrying earlier scales, the un-normalised k cached, rows interleaved
instead of [cond; null], scale 0 without pos_start, positions read at the wrong token offset.
The AdaLN chunk order (shared by both statements) is pinned separately from the reference facts.
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


def test_adaln_chunk_order_gamma_first():
    """(gamma1, gamma2, scale1, scale2, shift1, shift2), var.md §3: with both gammas zero a block
    is the identity whatever the scales and shifts; with gamma1 = 1 and the rest zero only the
    attention branch is added. Guards: a (shift, scale, gamma) order as in DiT-style blocks."""
    model = random_var(var_tiny().var, seed=1)
    block = model.blocks[0]
    x = torch.randn(2, 3, 64)
    gss = torch.randn(2, 6, 64)
    gss[:, 0:2] = 0
    with torch.no_grad():
        out, _, _ = block.run(x, gss)
        torch.testing.assert_close(out, x)
        only_attn = torch.zeros(2, 6, 64)
        only_attn[:, 0] = 1
        out, _, _ = block.run(x, only_attn)
        q, k, v = block.attn.qkv(block.ln(x))
        torch.testing.assert_close(out, x + block.attn.attend(q, k, v))
