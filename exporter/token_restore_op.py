"""`stagevar::token_restore`: StageVAR's representative-token restoration as one torch op.

Inside the fidelity graph each block chunk restores its r outputs into the area-upsampled
previous output of the chunk. As one op (rather than matmul + scatter) it exports to one
`stagevar.TokenRestore` ONNX node (with a local-function body, see onnx_local_functions) that
TensorRT can hand to the plugin in plugins/. It also lets the graph take the two 1-D area
matrices: torch.export cannot reshape the cache's h*w tokens to (h, w) from symbolic h and w,
but the op's fake implementation only needs the output shape, which is x's.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .onnx_local_functions import DOMAIN, DOMAIN_VERSION, TOKEN_RESTORE, register_schemas


def area_resize_separable(prev: Tensor, area_h: Tensor, area_w: Tensor) -> Tensor:
    """(B, h*w, C) -> (B, H, W, C): rows with area_h [H, h] first, then columns with area_w [W, w].

    The same two products, in the same order, as the ONNX function body. When upsampling,
    every output mixes at most two inputs per axis with weights 1 or 1/2, so each product is
    exact up to one rounding and every GEMM implementation (torch, ONNX Runtime, TensorRT)
    gives the same bits - which F.interpolate's single 2-D window sum would not.
    """
    B, _, C = prev.shape
    grid = prev.reshape(B, area_h.shape[1], area_w.shape[1], C)  # [B, h, w, C]
    rows = torch.matmul(grid.permute(0, 2, 3, 1), area_h.transpose(0, 1))  # [B, w, C, H]
    cols = torch.matmul(rows.permute(0, 3, 2, 1), area_w.transpose(0, 1))  # [B, H, C, W]
    return cols.permute(0, 1, 3, 2)


@torch.library.custom_op("stagevar::token_restore", mutates_args=())
def token_restore(x: Tensor, prev: Tensor, rows: Tensor, indices: Tensor, area_h: Tensor, area_w: Tensor) -> Tensor:
    """(B, M, C) shaped like x: A_h @ prev-grid @ A_w^T, then rows[:, j] written at indices[:, j].

    All float inputs share one dtype (the ONNX op's type constraint); callers cast first.
    """
    base = area_resize_separable(prev, area_h, area_w).reshape(x.shape)
    return base.scatter(1, indices.unsqueeze(-1).expand(-1, -1, base.shape[-1]), rows)


@token_restore.register_fake
def _token_restore_shape(x, prev, rows, indices, area_h, area_w):
    return torch.empty_like(x)


def _token_restore_onnx(x, prev, rows, indices, area_h, area_w):
    from onnxscript.values import Opset

    return getattr(Opset(DOMAIN, DOMAIN_VERSION), TOKEN_RESTORE)(x, prev, rows, indices, area_h, area_w)


def onnx_translations() -> dict:
    """The exporter's custom_translation_table entries of stagevar's torch ops."""
    register_schemas()
    return {torch.ops.stagevar.token_restore.default: _token_restore_onnx}
