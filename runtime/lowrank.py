"""numpy reference of StageVAR's low-rank pieces (stagevar.md sections 3-4).

Per block chunk of a LOWRANK scale: pick r representative positions by sampling without
replacement with probability proportional to ||x_i||^2 (Gumbel top-k on injected noise), run the
chunk on r projected pseudo-tokens, then restore M tokens: the previous scale's chunk output,
area-upsampled to this grid, with row j of the chunk's r outputs written at position I_j.
"""

from __future__ import annotations

import numpy as np

from .resize import area_resize_tokens


def representative_indices(x_BMC: np.ndarray, gumbel_BM: np.ndarray, r: int, pairing: str = "raster") -> np.ndarray:
    """(B, r) int64: the positions of the r largest log(||x_i||^2) + g_i, in ascending order
    (`pairing="sample"`: in sampling order, highest score first, as released).

    Ascending (raster) order, not sample order: the released code pairs chunk output j with the
    j-th sampled index, an arbitrary pairing of random projections with positions; sample order
    flips between backends whenever two selected scores are within float rounding, which changes
    the restored image. Raster order depends only on the selected set (deliberate deviation).

    Gumbel top-k: argtop-r of log(w_i) + Gumbel noise is a draw of r distinct indices without
    replacement with probability proportional to w_i, the same law as the released
    `torch.multinomial(||x_i||^2, r, replacement=False)`. Computed in float32 as the graph does;
    ties go to the lower index (ONNX TopK's rule).
    """
    x = np.asarray(x_BMC, dtype=np.float32)
    g = np.asarray(gumbel_BM, dtype=np.float32)
    b, m = x.shape[:2]
    if g.shape != (b, m):
        raise ValueError(f"gumbel shape {g.shape} does not match tokens {(b, m)}")
    if not 0 < r <= m:
        raise ValueError(f"r must be in 1..{m}, got {r}")
    with np.errstate(divide="ignore"):
        # Zero-norm tokens get -inf: they have probability 0 and are picked last.
        score = np.log(np.sum(x * x, axis=-1, dtype=np.float32)) + g
    order = np.argsort(-score, axis=-1, kind="stable")
    picked = order[:, :r].astype(np.int64)
    return picked if pairing == "sample" else np.sort(picked, axis=-1)


def restore_tokens(
    prev_BmC: np.ndarray,
    prev_hw: tuple[int, int],
    cur_hw: tuple[int, int],
    rows_BrC: np.ndarray,
    indices_Br: np.ndarray,
) -> np.ndarray:
    """(B, M, C): prev area-upsampled from prev_hw to cur_hw, then rows[:, j] written at indices[:, j].

    Indices must be distinct per batch row (they come from `representative_indices`).
    """
    base = area_resize_tokens(prev_BmC, prev_hw, cur_hw)
    rows = np.asarray(rows_BrC)
    idx = np.asarray(indices_Br, dtype=np.int64)
    if rows.shape[0] != base.shape[0] or rows.shape[2] != base.shape[2] or idx.shape != rows.shape[:2]:
        raise ValueError(f"rows {rows.shape} / indices {idx.shape} do not fit tokens {base.shape}")
    if idx.size and (idx.min() < 0 or idx.max() >= base.shape[1]):
        raise ValueError(f"indices must lie in 0..{base.shape[1] - 1}")
    np.put_along_axis(base, idx[:, :, None], rows.astype(base.dtype), axis=1)
    return base
