"""Mixed precision of the exported transformer: fp16 GEMMs, fp32 everything numerically delicate.

In an fp16 export the blocks' linear layers (99% of the weights) hold fp16 weights and run in
fp16; the residual stream, LayerNorms, RoPE, the attention softmax, the AdaLN vectors and the
head stay fp32 (as the official bf16 autocast run does). K/V caches and text K/V are fp16.
In fp32 every cast below is a no-op, so the fp32 graphs equal the eager reference exactly.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from ..attention_form import FUSED, current_spec


def linear(layer: nn.Linear, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`layer(x)` computed in the weight's dtype (the result keeps that dtype)."""
    w = layer.weight
    b = layer.bias if bias is None else bias
    return F.linear(x.to(w.dtype), w, None if b is None else b.to(w.dtype))


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None, scale: float) -> torch.Tensor:
    """softmax(q k^T * scale + bias) v with the softmax in fp32; the result has v's dtype.

    While a fused-attention export traces (exporter/attention_form.py), the unmasked
    self-attention becomes query-chunked `scaled_dot_product_attention` calls (one ONNX `Attention`
    node each) and masked attention is spelled out, so no `Attention` node carries a mask.
    """
    spec = current_spec()
    if spec is not None and spec.form == FUSED:
        if bias is None:
            return _fused_chunked(q.to(v.dtype), k.to(v.dtype), v, scale, spec.query_chunks)
        return _explicit(q, k, v, bias, scale)
    if q.dtype == k.dtype == v.dtype == torch.float32:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale)
    return _explicit(q, k, v, bias, scale)


def _explicit(q, k, v, bias, scale):
    scores = torch.matmul(q.to(v.dtype), k.to(v.dtype).transpose(-1, -2)).float() * scale
    if bias is not None:
        scores = scores + bias
    return torch.matmul(scores.softmax(-1).to(v.dtype), v)


def _fused_chunked(q, k, v, scale: float, chunks: int) -> torch.Tensor:
    """`chunks` sequential attention calls over slices of the queries (rows are independent).

    The query axis is padded to chunks x ceil(L / chunks) so that no slice is empty (ONNX
    Runtime's `Attention` refuses zero queries, and small scales have fewer tokens than chunks);
    the padded rows are dropped again. In fp16 the fused kernels accumulate the softmax in fp32.
    """
    if chunks == 1:
        return F.scaled_dot_product_attention(q, k, v, scale=scale)
    L = q.shape[2]
    size = (L + chunks - 1) // chunks
    padded = F.pad(q, (0, 0, 0, chunks * size - L))
    parts = [F.scaled_dot_product_attention(padded[:, :, i * size:(i + 1) * size], k, v, scale=scale) for i in range(chunks)]
    return torch.cat(parts, dim=2)[:, :, :L]


def to_fp16_blocks(model: nn.Module) -> nn.Module:
    """A copy of the transformer whose blocks' linear layers are fp16 (the fp16 export policy)."""
    half = copy.deepcopy(model)
    for module in half.block_chunks.modules():
        if isinstance(module, nn.Linear):
            module.half()
    return half
