"""StageVAR's LOWRANK scale in torch: random projection + representative-token restoration.

Follows the released FasterVAR Infinity code (reference/stagevar.md §3-§5): per block chunk,
sample r token indices without replacement with probability proportional to ||x_i||^2, project
the M tokens onto r pseudo-tokens with a Gaussian Q (N(0, 1/r)), run the chunk's blocks on them
with the RoPE of the first r positions of the scale, then write the r outputs at the sampled
indices into the previous executed scale's output of the same chunk, area-upsampled.
Randomness is injected (Gumbel noise, Q) so every backend can replay the same run.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from stagevar.runtime.resize import area_matrix

from ..token_pairing import SAMPLE, current_pairing
from ..token_restore_op import area_resize_separable
from .transformer import KV, InfinityTransformer, TextCondition


def representative_indices(x_BMC: torch.Tensor, gumbel_BM: torch.Tensor, rank: int) -> torch.Tensor:
    """Gumbel-top-k: r distinct indices, sampled proportionally to ||x_i||^2.

    In ascending order by default, so the output-to-position pairing depends only on the selected
    set (see `stagevar.runtime.lowrank.representative_indices`); in sampling order (descending
    perturbed score, the order of sequential draws) under `--token-pairing sample`.
    """
    scores = torch.log(x_BMC.pow(2).sum(-1)) + gumbel_BM
    sampled = torch.topk(scores, rank, dim=-1, sorted=True).indices
    return sampled if current_pairing() == SAMPLE else sampled.sort(dim=-1).values


def area_upsample_tokens(prev_BmC: torch.Tensor, prev_hw: tuple[int, int], cur_hw: tuple[int, int]) -> torch.Tensor:
    """Token-major (B, h*w, C) -> (B, H*W, C): `interpolate(mode="area")` as released, computed
    as the separable product the exported graphs use (equal values; the same bits on every
    backend, see `area_resize_separable`)."""
    B, _, C = prev_BmC.shape
    dt = prev_BmC.dtype
    area_h = torch.from_numpy(area_matrix(prev_hw[0], cur_hw[0])).to(dt)
    area_w = torch.from_numpy(area_matrix(prev_hw[1], cur_hw[1])).to(dt)
    return area_resize_separable(prev_BmC, area_h, area_w).reshape(B, cur_hw[0] * cur_hw[1], C)


@dataclass(frozen=True)
class LowRankTrace:
    """What a LOWRANK scale sampled, per chunk (for parity tests and replay)."""

    indices: tuple[torch.Tensor, ...]  # (B, r_c) int64


def lowrank_scale(
    model: InfinityTransformer,
    x_BMC: torch.Tensor,
    cond: TextCondition,
    cos_Mh: torch.Tensor,
    sin_Mh: torch.Tensor,
    past: list[KV] | None,
    cache_chunk_outputs: list[torch.Tensor],
    cache_hw: tuple[int, int],
    cur_hw: tuple[int, int],
    ranks: tuple[int, ...],
    gumbel: tuple[torch.Tensor, ...],
    projections: tuple[torch.Tensor, ...],
    indices: tuple[torch.Tensor, ...] | None = None,
) -> tuple[torch.Tensor, list[torch.Tensor], LowRankTrace]:
    """Run one LOWRANK scale on the rows of `cond` (the null rows). Appends no K/V.

    `cos_Mh`/`sin_Mh` are the scale's RoPE rows; the pseudo-tokens use the first r of them.
    `cache_chunk_outputs[c]` is chunk c's output (B, m, C) at the previous executed scale.
    Returns (hidden (B, M, C), chunk outputs after restoration, sampled indices).
    """
    chunk_outputs: list[torch.Tensor] = []
    used: list[torch.Tensor] = []
    for c, rank in enumerate(ranks):
        idx = indices[c] if indices is not None else representative_indices(x_BMC, gumbel[c], rank)
        pseudo = torch.einsum("bmr,bmc->brc", projections[c], x_BMC)
        out, _ = model.run_chunk(c, pseudo, cond, cos_Mh[:rank], sin_Mh[:rank], model.chunk_past(past, c))
        base = area_upsample_tokens(cache_chunk_outputs[c], cache_hw, cur_hw)
        x_BMC = base.scatter(1, idx.unsqueeze(-1).expand(-1, -1, base.shape[-1]), out)
        chunk_outputs.append(x_BMC)
        used.append(idx)
    return x_BMC, chunk_outputs, LowRankTrace(tuple(used))
