"""The VAR transformer in the official key layout (reference var.md §2-§3), written from the facts.

The module tree reproduces `state_dict()` of FoundationVision/VAR key for key (buffers included),
so official `var_dXX.pth` files load strictly. The math is split the way the exported graphs use
it: `condition` (once per request: start token and every AdaLN vector) and `step` (one scale with
an explicit token-major K/V cache). `forward_teacher` is the whole-sequence masked forward, an
independent statement of the same network used to test the cached path.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from stagevar.runtime.var_schedule import token_offsets

from .config import VarConfig

_LN100 = math.log(100.0)


def _linear(layer: nn.Linear, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`layer(x)` as a GEMM in the weight's dtype, the result back in fp32: in an fp16 export
    (`to_fp16_blocks`) the blocks' GEMMs run in fp16 while the residual stream, LayerNorms,
    softmax, AdaLN and K/V stay fp32. In fp32 every cast is a no-op (the graph is unchanged)."""
    w = layer.weight
    b = layer.bias if bias is None else bias
    return F.linear(x.to(w.dtype), w, None if b is None else b.to(w.dtype)).float()


def to_fp16_blocks(model: "VAR") -> "VAR":
    """A copy of `model` whose blocks' linear layers (attention, FFN, per-block AdaLN) are fp16:
    the fp16 export policy, as Infinity's (all but embeddings, head and shared AdaLN; ~99% of
    var-d30's weights), halving the export and the GPU's weight memory."""
    # The fp16 parameters go into deepcopy's memo, so the copy is made with them directly: the
    # fp32 copy of the blocks is never materialised (var-d30: ~4 GB instead of ~8 GB extra).
    memo: dict = {}
    for block in model.blocks:
        layers = [block.attn.mat_qkv, block.attn.proj, block.ffn.fc1, block.ffn.fc2]
        if hasattr(block, "ada_lin"):  # per-block AdaLN (d16..d30): 6C^2 per block, a third of d30
            layers.append(block.ada_lin[1])
        for layer in layers:
            for param in layer.parameters(recurse=False):
                memo[id(param)] = nn.Parameter(param.detach().half(), requires_grad=param.requires_grad)
    return copy.deepcopy(model, memo)


class SelfAttention(nn.Module):
    """Keys: scale_mul_1H11, q_bias, v_bias, zero_k_bias (buffer), mat_qkv, proj."""

    def __init__(self, cfg: VarConfig):
        super().__init__()
        C, H = cfg.embed_dim, cfg.num_heads
        self.num_heads, self.head_dim = H, cfg.head_dim
        self.scale_mul_1H11 = nn.Parameter(torch.full((1, H, 1, 1), 4.0).log())
        self.q_bias = nn.Parameter(torch.zeros(C))
        self.v_bias = nn.Parameter(torch.zeros(C))
        self.register_buffer("zero_k_bias", torch.zeros(C))
        self.mat_qkv = nn.Linear(C, 3 * C, bias=False)
        self.proj = nn.Linear(C, C)

    def qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q (scaled), k (L2-normalised) and v as (R, H, l, hd)."""
        R, l, C = x.shape
        # k has no bias: the zero block is a constant, not the checkpoint buffer (derivable).
        bias = torch.cat((self.q_bias, torch.zeros_like(self.q_bias), self.v_bias))
        qkv = _linear(self.mat_qkv, x, bias).view(R, l, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        scale = self.scale_mul_1H11.clamp(max=_LN100).exp()
        q = F.normalize(q, dim=-1, eps=1e-12) * scale
        k = F.normalize(k, dim=-1, eps=1e-12)
        return q, k, v

    def attend(self, q, K, V, mask=None) -> torch.Tensor:
        """softmax(q K^T) V with scale 1 (after L2 normalisation), heads merged and projected."""
        att = torch.matmul(q, K.transpose(-1, -2))
        if mask is not None:
            att = att + mask
        o = torch.matmul(att.softmax(dim=-1), V)  # (R, H, l, hd)
        R, H, l, hd = o.shape
        return _linear(self.proj, o.transpose(1, 2).reshape(R, l, H * hd))


class FFN(nn.Module):
    def __init__(self, cfg: VarConfig):
        super().__init__()
        self.fc1 = nn.Linear(cfg.embed_dim, cfg.ffn_hidden)
        self.fc2 = nn.Linear(cfg.ffn_hidden, cfg.embed_dim)

    def forward(self, x):
        return _linear(self.fc2, F.gelu(_linear(self.fc1, x), approximate="tanh"))


def _ada_lin(dim_in: int, dim_out: int) -> nn.Sequential:
    # Index 0 is SiLU, so the Linear's keys are `ada_lin.1.*` as in the official files.
    return nn.Sequential(nn.SiLU(), nn.Linear(dim_in, dim_out))


class AdaLNSelfAttn(nn.Module):
    """One block. AdaLN chunk order (gamma1, gamma2, scale1, scale2, shift1, shift2)."""

    def __init__(self, cfg: VarConfig):
        super().__init__()
        C = cfg.embed_dim
        self.shared_aln = cfg.shared_aln
        self.eps = cfg.norm_eps
        if cfg.shared_aln:
            self.ada_gss = nn.Parameter(torch.randn(1, 1, 6, C) / C**0.5)
        self.attn = SelfAttention(cfg)
        self.ffn = FFN(cfg)
        if not cfg.shared_aln:
            self.ada_lin = _ada_lin(C, 6 * C)

    def ln(self, x):
        return F.layer_norm(x, (x.shape[-1],), eps=self.eps)

    def run(self, x, gss, K_past=None, V_past=None, mask=None):
        """x (R, l, C), gss (R, 6, C); past K/V (R, H, p, hd) or None. Returns x, k, v (new)."""
        g1, g2, s1, s2, b1, b2 = gss.unsqueeze(2).unbind(1)  # each (R, 1, C)
        q, k, v = self.attn.qkv(self.ln(x) * (1 + s1) + b1)
        K = k if K_past is None else torch.cat((K_past, k), dim=2)
        V = v if V_past is None else torch.cat((V_past, v), dim=2)
        x = x + self.attn.attend(q, K, V, mask) * g1
        x = x + self.ffn(self.ln(x) * (1 + s2) + b2) * g2
        return x, k, v


class AdaLNBeforeHead(nn.Module):
    def __init__(self, cfg: VarConfig):
        super().__init__()
        self.eps = cfg.norm_eps
        self.ada_lin = _ada_lin(cfg.embed_dim, 2 * cfg.embed_dim)

    def run(self, x, head_ss):
        scale, shift = head_ss.unsqueeze(2).unbind(1)  # order (scale, shift)
        return F.layer_norm(x, (x.shape[-1],), eps=self.eps) * (1 + scale) + shift


class VAR(nn.Module):
    """Class-conditional VAR; `state_dict()` equals the official one (var_state_dict_keys.tsv)."""

    def __init__(self, cfg: VarConfig):
        super().__init__()
        self.config = cfg
        C, L, S = cfg.embed_dim, cfg.total_tokens, cfg.num_scales
        self.pos_start = nn.Parameter(torch.zeros(1, 1, C))
        self.pos_1LC = nn.Parameter(torch.zeros(1, L, C))
        lvl = torch.cat([torch.full((p * p,), i, dtype=torch.int64) for i, p in enumerate(cfg.patch_nums)])
        self.register_buffer("lvl_1L", lvl.view(1, L))
        self.register_buffer("attn_bias_for_masking", block_causal_bias(cfg.patch_nums).view(1, 1, L, L))
        self.word_embed = nn.Linear(cfg.code_dim, C)
        self.class_emb = nn.Embedding(cfg.num_classes + 1, C)
        self.lvl_embed = nn.Embedding(S, C)
        if cfg.shared_aln:
            self.shared_ada_lin = _ada_lin(C, 6 * C)
        self.blocks = nn.ModuleList(AdaLNSelfAttn(cfg) for _ in range(cfg.depth))
        self.head_nm = AdaLNBeforeHead(cfg)
        self.head = nn.Linear(C, cfg.vocab_size)
        self.register_buffer("_offsets", torch.tensor(token_offsets(cfg.patch_nums), dtype=torch.int64),
                             persistent=False)

    # ---- condition (once per request) ------------------------------------------------------

    def condition(self, labels_R: torch.Tensor):
        """labels (R,) int64, null class = num_classes -> sos (R, C), gss (R, depth, 6, C), head_ss (R, 2, C)."""
        cond = self.class_emb(labels_R)
        C = self.config.embed_dim
        if self.config.shared_aln:
            shared = self.shared_ada_lin(cond).view(-1, 1, 6, C)
            gss = torch.cat([shared + b.ada_gss[0] for b in self.blocks], dim=1)
        else:
            gss = torch.stack([_linear(b.ada_lin[1], F.silu(cond)).view(-1, 6, C) for b in self.blocks], dim=1)
        head_ss = self.head_nm.ada_lin(cond).view(-1, 2, C)
        return cond, gss, head_ss

    # ---- one scale with an explicit cache --------------------------------------------------

    def embed_scale(self, tokens_NlCv, scale_index, sos_R):
        """Input of one scale for R rows: scale 0 = sos + pos_start, else word_embed of the
        n images' tokens repeated [cond; null] (rows i and n + i share image i), plus positions."""
        R, n, l = sos_R.shape[0], tokens_NlCv.shape[0], tokens_NlCv.shape[1]
        idx = torch.arange(l, device=sos_R.device) + self._offsets[scale_index]
        pos = self.pos_1LC[0].index_select(0, idx) + self.lvl_embed.weight[scale_index]
        # Row r takes image r mod n. n as a tensor: the ONNX translation of `%` by a symbolic
        # int fails, tensor-by-tensor remainder exports as Mod.
        n_t = torch.ones_like(tokens_NlCv[:, 0, 0], dtype=torch.int64).sum()
        rows = torch.remainder(torch.arange(R, device=sos_R.device), n_t)
        words = self.word_embed(tokens_NlCv).index_select(0, rows)
        first = (sos_R[:, None, :] + self.pos_start).expand(R, l, -1)
        x = torch.where(scale_index == 0, first, words)
        return x + pos

    def run_blocks(self, x, gss, past_kv, blocks: range):
        """Blocks `blocks` on x (R, l, C) attending to past_kv (p, depth, 2, R, H, hd) or None;
        returns x and the new (k, v) of each block."""
        new = []
        for i in blocks:
            Kp = Vp = None
            if past_kv is not None:
                Kp = past_kv[:, i, 0].permute(1, 2, 0, 3).to(x.dtype)
                Vp = past_kv[:, i, 1].permute(1, 2, 0, 3).to(x.dtype)
            x, k, v = self.blocks[i].run(x, gss[:, i], Kp, Vp)
            new.append(torch.stack((k, v), dim=0))  # (2, R, H, l, hd)
        return x, new

    def chunk_blocks(self, c: int) -> range:
        per = self.config.blocks_per_chunk
        return range(c * per, (c + 1) * per)

    def logits(self, x, head_ss):
        return self.head(self.head_nm.run(x, head_ss)).float()

    def step(self, x, gss, head_ss, past_kv=None, chunk_outputs: list | None = None):
        """x (R, l, C); past_kv (p, depth, 2, R, H, hd) token-major or None.
        Returns logits (R, l, V) and new_kv (l, depth, 2, R, H, hd); appends each chunk's output
        (R, l, C) to `chunk_outputs` when given (the RTR cache of a next LOWRANK scale)."""
        new = []
        for c in range(self.config.block_chunks):
            x, kv = self.run_blocks(x, gss, past_kv, self.chunk_blocks(c))
            new += kv
            if chunk_outputs is not None:
                chunk_outputs.append(x)
        kv = torch.stack(new, dim=0).permute(4, 0, 1, 2, 3, 5)  # (l, depth, 2, R, H, hd)
        return self.logits(x, head_ss), kv

    # ---- teacher forcing (independent whole-sequence statement) ------------------------------

    def forward_teacher(self, labels_R, tokens_RLCv):
        """Logits (R, L, V) of the whole sequence with the block-causal mask, as official forward()
        with cond_drop_rate 0; tokens_RLCv are the next-scale inputs of scales 1.. (R, L-1, Cv)."""
        sos, gss, head_ss = self.condition(labels_R)
        x = torch.cat((sos[:, None] + self.pos_start, self.word_embed(tokens_RLCv)), dim=1)
        x = x + self.lvl_embed(self.lvl_1L) + self.pos_1LC
        mask = block_causal_bias(self.config.patch_nums).to(x)
        for i, block in enumerate(self.blocks):
            x, _, _ = block.run(x, gss[:, i], mask=mask)
        return self.head(self.head_nm.run(x, head_ss)).float()


def block_causal_bias(patch_nums) -> torch.Tensor:
    """(L, L): 0 where scale(query) >= scale(key), -inf elsewhere (attn_bias_for_masking)."""
    lvl = torch.cat([torch.full((p * p,), i) for i, p in enumerate(patch_nums)])
    return torch.where(lvl[:, None] >= lvl[None, :], 0.0, float("-inf"))
