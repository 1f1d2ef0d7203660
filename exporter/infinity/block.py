"""One Infinity transformer block (CrossAttnBlock, fused-norm inference path, reference §3.2)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .attention import CrossAttention, SelfAttention
from .precision import linear


class FFN(nn.Module):
    """fc1 -> GELU(tanh) -> fc2, biases on both."""

    def __init__(self, embed_dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(embed_dim, hidden)
        self.fc2 = nn.Linear(hidden, embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(self.fc2, F.gelu(linear(self.fc1, x), approximate="tanh")).float()


def ada_layer_norm(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, eps: float) -> torch.Tensor:
    """LayerNorm without affine, modulated as `ln(x) * (1 + scale) + shift`."""
    return F.layer_norm(x, (x.shape[-1],), eps=eps) * (1 + scale) + shift


class CrossAttnBlock(nn.Module):
    """Self-attention, cross-attention to text, FFN; AdaLN from the shared modulation."""

    def __init__(self, embed_dim: int, num_heads: int, ffn_hidden: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.ada_gss = nn.Parameter(torch.zeros(1, 1, 6, embed_dim))
        self.sa = SelfAttention(embed_dim, num_heads)
        self.ca = CrossAttention(embed_dim, embed_dim, num_heads)
        self.ca_norm = nn.LayerNorm(embed_dim, eps=eps)
        self.ffn = FFN(embed_dim, ffn_hidden)

    def forward(
        self,
        x_BLC: torch.Tensor,
        gss_B16C: torch.Tensor,
        cos_Lh: torch.Tensor,
        sin_Lh: torch.Tensor,
        past_k: torch.Tensor | None,
        past_v: torch.Tensor | None,
        text_k: torch.Tensor,
        text_v: torch.Tensor,
        text_bias_B11T: torch.Tensor,
        attn_bias: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return (x, new k, new v) for this block."""
        # Order of the six modulation vectors as released: gamma1, gamma2, scale1, scale2, shift1, shift2.
        gamma1, gamma2, scale1, scale2, shift1, shift2 = (self.ada_gss + gss_B16C).unbind(2)
        h = ada_layer_norm(x_BLC, scale1, shift1, self.eps)
        attn, k, v = self.sa(h, cos_Lh, sin_Lh, past_k, past_v, attn_bias)
        x = x_BLC + attn * gamma1
        x = x + self.ca(self.ca_norm(x), text_k, text_v, text_bias_B11T)
        x = x + self.ffn(ada_layer_norm(x, scale2, shift2, self.eps)) * gamma2
        return x, k, v
