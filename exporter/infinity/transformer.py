"""The Infinity transformer, written for export (reference/infinity.md §2-§3).

The parameter names equal the official checkpoint's (`block_chunks.{c}.module.{j}.*`), so
checkpoints load without renaming. Compared with the official module:
- the K/V cache is explicit: every block takes past K/V and returns the new K/V;
- RoPE cos/sin come in as tensors (computed by `stagevar.runtime.rope`);
- text is padded with an additive key bias instead of packed varlen flash-attention;
- no in-place ops, no flash-attn, no torch.compile, no distributed calls.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .attention import _PoolWrapper
from .block import CrossAttnBlock, ada_layer_norm
from .config import InfinityConfig

KV = tuple[torch.Tensor, torch.Tensor]  # (k, v), each (B, H, tokens, head_dim)


@dataclass(frozen=True)
class TextCondition:
    """Everything a prompt contributes to the scales, computed once per request.

    Rows are images: for CFG, the cond rows of every image come first, then the null rows.
    """

    sos_BD: torch.Tensor  # pooled text: SOS token and AdaLN condition
    gss_B16C: torch.Tensor  # shared_ada_lin(sos), before each block's ada_gss
    head_ss_B12C: torch.Tensor  # head AdaLN (scale, shift)
    text_kv: tuple[KV, ...]  # per block: cross-attention K/V of the text
    text_bias_B11T: torch.Tensor  # 0 on valid text tokens, -inf on padding

    def rows(self, index: slice) -> "TextCondition":
        """The condition restricted to a range of rows (e.g. the null rows for UNCOND)."""
        return TextCondition(
            self.sos_BD[index],
            self.gss_B16C[index],
            self.head_ss_B12C[index],
            tuple((k[index], v[index]) for k, v in self.text_kv),
            self.text_bias_B11T[index],
        )


class _Chunk(nn.Module):
    """Registered as `block_chunks.{c}`, holding its blocks in `.module` as the checkpoint does."""

    def __init__(self, blocks: list[CrossAttnBlock]) -> None:
        super().__init__()
        self.module = nn.ModuleList(blocks)


class _HeadNorm(nn.Module):
    """`head_nm`: AdaLN before the head, with its own SiLU + Linear(D, 2C)."""

    def __init__(self, embed_dim: int) -> None:
        super().__init__()
        self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(embed_dim, 2 * embed_dim))


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class InfinityTransformer(nn.Module):
    def __init__(self, config: InfinityConfig) -> None:
        super().__init__()
        self.config = cfg = config
        C, Ct5 = cfg.embed_dim, cfg.text_channels
        self.cfg_uncond = nn.Parameter(torch.zeros(cfg.text_maxlen, Ct5))
        self.text_norm = RMSNorm(Ct5, cfg.norm_eps)
        self.text_proj_for_sos = _PoolWrapper(C, Ct5, cfg.pool_heads)
        self.text_proj_for_ca = nn.Sequential(nn.Linear(Ct5, C), nn.GELU(approximate="tanh"), nn.Linear(C, C))
        self.pos_start = nn.Parameter(torch.zeros(1, 1, C))
        self.lvl_embed = nn.Embedding(cfg.num_levels, C)
        self.word_embed = nn.Linear(cfg.bits_per_token, C)
        self.shared_ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(C, 6 * C))
        blocks = [CrossAttnBlock(C, cfg.num_heads, cfg.ffn_hidden, cfg.norm_eps) for _ in range(cfg.depth)]
        per = cfg.blocks_per_chunk
        self.block_chunks = nn.ModuleList(_Chunk(blocks[i * per : (i + 1) * per]) for i in range(cfg.block_chunks))
        self.head_nm = _HeadNorm(C)
        self.head = nn.Linear(C, cfg.vocab_out)

    # ---- per prompt -------------------------------------------------------------------------
    def null_text(self, num_rows: int, length: int) -> torch.Tensor:
        """The learned null text: the first `length` rows of `cfg_uncond`, for each row.

        Padded positions are masked like the prompt's, so every prompt i sees exactly
        `cfg_uncond[:len_i]` as in the official packed layout.
        """
        if length > self.cfg_uncond.shape[0]:
            raise ValueError(f"text length {length} exceeds text_maxlen {self.cfg_uncond.shape[0]}")
        return self.cfg_uncond[:length].unsqueeze(0).expand(num_rows, -1, -1)

    def text_condition(self, text_BTC: torch.Tensor, text_bias_B11T: torch.Tensor) -> TextCondition:
        """Pooled condition, AdaLN vectors and every block's cross-attention K/V for the rows given."""
        normed = self.text_norm(text_BTC)
        sos = self.text_proj_for_sos(normed, text_bias_B11T)
        C = self.config.embed_dim
        gss = self.shared_ada_lin(sos).view(-1, 1, 6, C)
        head_ss = self.head_nm.ada_lin(sos).view(-1, 1, 2, C)
        ca_feat = self.text_proj_for_ca(normed)
        text_kv = tuple(block.ca.text_kv(ca_feat) for block in self.blocks())
        return TextCondition(sos, gss, head_ss, text_kv, text_bias_B11T)

    # ---- per scale --------------------------------------------------------------------------
    def blocks(self) -> list[CrossAttnBlock]:
        return [b for chunk in self.block_chunks for b in chunk.module]

    def embed_scale(self, tokens_BLd: torch.Tensor | None, scale_index: int, cond: TextCondition) -> torch.Tensor:
        """Input of a scale: SOS + pos_start at scale 0, word_embed(codes) after; + lvl_embed."""
        if scale_index == 0:
            x = cond.sos_BD.unsqueeze(1) + self.pos_start
        else:
            x = self.word_embed(tokens_BLd)
        return x + self.lvl_embed.weight[scale_index]

    def run_chunk(
        self,
        chunk_index: int,
        x_BLC: torch.Tensor,
        cond: TextCondition,
        cos_Lh: torch.Tensor,
        sin_Lh: torch.Tensor,
        past: list[KV] | None,
        attn_bias: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, list[KV]]:
        """Run one block chunk; `past` holds this chunk's blocks' K/V (or None). Returns new K/V."""
        per = self.config.blocks_per_chunk
        new_kv: list[KV] = []
        for j, block in enumerate(self.block_chunks[chunk_index].module):
            g = chunk_index * per + j
            pk, pv = past[j] if past is not None else (None, None)
            tk, tv = cond.text_kv[g]
            x_BLC, k, v = block(x_BLC, cond.gss_B16C, cos_Lh, sin_Lh, pk, pv, tk, tv, cond.text_bias_B11T, attn_bias)
            new_kv.append((k, v))
        return x_BLC, new_kv

    def chunk_past(self, past: list[KV] | None, chunk_index: int) -> list[KV] | None:
        per = self.config.blocks_per_chunk
        return None if past is None else past[chunk_index * per : (chunk_index + 1) * per]

    def forward_scale(
        self,
        x_BLC: torch.Tensor,
        cond: TextCondition,
        cos_Lh: torch.Tensor,
        sin_Lh: torch.Tensor,
        past: list[KV] | None,
        attn_bias: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, list[KV], list[torch.Tensor]]:
        """All blocks on one scale's tokens. Returns (hidden, new K/V per block, output per chunk)."""
        new_kv: list[KV] = []
        chunk_outputs: list[torch.Tensor] = []
        for c in range(self.config.block_chunks):
            x_BLC, kv = self.run_chunk(c, x_BLC, cond, cos_Lh, sin_Lh, self.chunk_past(past, c), attn_bias)
            new_kv.extend(kv)
            chunk_outputs.append(x_BLC)
        return x_BLC, new_kv, chunk_outputs

    def head_logits(self, x_BLC: torch.Tensor, cond: TextCondition) -> torch.Tensor:
        """Bit logits (B, L, 2d): consecutive (bit-0, bit-1) pairs."""
        scale, shift = cond.head_ss_B12C.unbind(2)
        return self.head(ada_layer_norm(x_BLC, scale, shift, self.config.norm_eps))


def cfg_combine(logits_2BLV: torch.Tensor, cfg: float, tau: float) -> torch.Tensor:
    """Official CFG on logits: divide by tau, then `cfg * cond + (1 - cfg) * null`; rows are [cond; null]."""
    cond, null = (logits_2BLV / tau).chunk(2, dim=0)
    return cfg * cond + (1 - cfg) * null


def block_causal_bias(token_counts: list[int], dtype=torch.float32) -> torch.Tensor:
    """Additive mask of the uncached full-sequence forward: key scale <= query scale."""
    scale_of = torch.cat([torch.full((n,), i) for i, n in enumerate(token_counts)])
    allowed = scale_of[None, :] <= scale_of[:, None]
    return torch.zeros(allowed.shape, dtype=dtype).masked_fill(~allowed, float("-inf"))


def text_key_bias(mask_BT: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
    """(B, 1, 1, T) additive bias from a 0/1 attention mask."""
    bias = torch.zeros(mask_BT.shape, dtype=dtype, device=mask_BT.device).masked_fill(mask_BT == 0, float("-inf"))
    return bias[:, None, None, :]


