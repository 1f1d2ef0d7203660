"""Attention modules of the Infinity transformer, written for export.

Key names match the official checkpoint (`sa.mat_qkv.weight`, `ca.mat_kv.weight`, ...).
K/V caches are explicit tensors passed in and returned, never module state, so the same
code serves the eager reference sampler and the traced ONNX graphs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .precision import attend, linear

# exp(clamp(scale_mul, max=ln 100)): the official cap on the cosine-attention temperature.
_MAX_SCALE_MUL = math.log(100.0)


def apply_rope(x_BHLd: torch.Tensor, cos_Lh: torch.Tensor, sin_Lh: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved channel pairs (2i, 2i+1) by angle i (reference/infinity.md §3.4)."""
    pairs = x_BHLd.reshape(*x_BHLd.shape[:-1], -1, 2)
    a, b = pairs[..., 0], pairs[..., 1]
    out = torch.stack((a * cos_Lh - b * sin_Lh, a * sin_Lh + b * cos_Lh), dim=-1)
    return out.reshape(x_BHLd.shape)


class SelfAttention(nn.Module):
    """Cosine self-attention with 2-D RoPE over [past tokens; current tokens]."""

    def __init__(self, embed_dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads, self.head_dim = num_heads, embed_dim // num_heads
        self.mat_qkv = nn.Linear(embed_dim, 3 * embed_dim, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(embed_dim))
        self.v_bias = nn.Parameter(torch.zeros(embed_dim))
        self.register_buffer("zero_k_bias", torch.zeros(embed_dim))
        self.scale_mul_1H11 = nn.Parameter(torch.full((1, num_heads, 1, 1), math.log(4.0)))
        self.proj = nn.Linear(embed_dim, embed_dim)

    def forward(
        self,
        x_BLC: torch.Tensor,
        cos_Lh: torch.Tensor,
        sin_Lh: torch.Tensor,
        past_k_BHPd: torch.Tensor | None,
        past_v_BHPd: torch.Tensor | None,
        attn_bias: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return (output, new k, new v); new k/v are post-RoPE, for this call's tokens only."""
        B, L, C = x_BLC.shape
        bias = torch.cat((self.q_bias, self.zero_k_bias, self.v_bias))
        qkv = linear(self.mat_qkv, x_BLC, bias).view(B, L, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, H, L, d)
        scale_mul = self.scale_mul_1H11.clamp(max=_MAX_SCALE_MUL).exp()
        # Normalisation and RoPE in fp32; the cache keeps K and V in the compute dtype.
        q = F.normalize(q.float(), dim=-1, eps=1e-12) * scale_mul
        k = F.normalize(k.float(), dim=-1, eps=1e-12)
        q = apply_rope(q, cos_Lh, sin_Lh)
        k = apply_rope(k, cos_Lh, sin_Lh).to(v.dtype)
        k_all = k if past_k_BHPd is None else torch.cat((past_k_BHPd, k), dim=2)
        v_all = v if past_v_BHPd is None else torch.cat((past_v_BHPd, v), dim=2)
        # Tokens of a scale see each other and every earlier scale: no mask with a cache.
        out = attend(q, k_all, v_all, attn_bias, scale=1.0)
        out = out.transpose(1, 2).reshape(B, L, C)
        return linear(self.proj, out).float(), k, v


class CrossAttention(nn.Module):
    """Attention from image tokens to the (padded, masked) text features."""

    def __init__(self, embed_dim: int, kv_dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads, self.head_dim = num_heads, embed_dim // num_heads
        self.mat_q = nn.Linear(embed_dim, embed_dim)
        self.mat_kv = nn.Linear(kv_dim, 2 * embed_dim, bias=False)
        self.v_bias = nn.Parameter(torch.zeros(embed_dim))
        self.register_buffer("zero_k_bias", torch.zeros(embed_dim))
        self.proj = nn.Linear(embed_dim, embed_dim)

    def text_kv(self, feats_BTD: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """K and V (B, H, T, d) of the text: depends only on the prompt, computed once."""
        B, T, _ = feats_BTD.shape
        bias = torch.cat((self.zero_k_bias, self.v_bias))
        kv = linear(self.mat_kv, feats_BTD, bias).view(B, T, 2, self.num_heads, self.head_dim)
        k, v = kv.permute(2, 0, 3, 1, 4).unbind(0)
        return k, v

    def forward(
        self, x_BLC: torch.Tensor, k_BHTd: torch.Tensor, v_BHTd: torch.Tensor, text_bias_B11T: torch.Tensor
    ) -> torch.Tensor:
        B, L, C = x_BLC.shape
        q = linear(self.mat_q, x_BLC).view(B, L, self.num_heads, self.head_dim).transpose(1, 2)
        out = attend(q, k_BHTd, v_BHTd, text_bias_B11T, scale=1.0 / math.sqrt(self.head_dim))
        return linear(self.proj, out.transpose(1, 2).reshape(B, L, C)).float()


class TextAttentivePool(nn.Module):
    """Learned-query attention pooling of the text into one condition vector per prompt.

    Registered as `text_proj_for_sos.ca.*`; Ct5 // 128 heads of width D / heads.
    """

    def __init__(self, embed_dim: int, kv_dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads, self.head_dim = num_heads, embed_dim // num_heads
        self.mat_q = nn.Parameter(torch.zeros(1, num_heads, self.head_dim))
        self.mat_kv = nn.Linear(kv_dim, 2 * embed_dim, bias=False)
        self.v_bias = nn.Parameter(torch.zeros(embed_dim))
        self.register_buffer("zero_k_bias", torch.zeros(embed_dim))
        self.proj = nn.Linear(embed_dim, embed_dim)

    def forward(self, feats_BTC: torch.Tensor, text_bias_B11T: torch.Tensor) -> torch.Tensor:
        B, T, _ = feats_BTC.shape
        bias = torch.cat((self.zero_k_bias, self.v_bias))
        kv = F.linear(feats_BTC, self.mat_kv.weight, bias).view(B, T, 2, self.num_heads, self.head_dim)
        k, v = kv.permute(2, 0, 3, 1, 4).unbind(0)
        q = self.mat_q.unsqueeze(2).expand(B, -1, -1, -1)  # (B, H, 1, d)
        out = attend(q, k, v, text_bias_B11T, scale=1.0 / math.sqrt(self.head_dim))
        return self.proj(out.transpose(1, 2).reshape(B, -1))


class _PoolWrapper(nn.Module):
    """Gives the pool its official key prefix `text_proj_for_sos.ca`."""

    def __init__(self, embed_dim: int, kv_dim: int, num_heads: int) -> None:
        super().__init__()
        self.ca = TextAttentivePool(embed_dim, kv_dim, num_heads)

    def forward(self, feats_BTC: torch.Tensor, text_bias_B11T: torch.Tensor) -> torch.Tensor:
        return self.ca(feats_BTC, text_bias_B11T)
