"""StageVAR's LOWRANK scale on VAR blocks: random projection + representative-token restoration.

The Infinity mechanism (exporter/infinity/lowrank.py, DESIGN.md §3-§4) on VAR's chunks: per
block chunk c, r_c indices sampled without replacement with probability proportional to
||x_i||^2 (Gumbel top-k on injected noise), the M tokens projected onto r_c pseudo-tokens with
the injected Gaussian Q_c (N(0, 1/r_c)), the chunk's blocks run on them (attending to the null
rows' K/V of the executed scales; VAR has no RoPE: positions were added at the input and are
projected with the tokens), and the r_c outputs written at the selected indices into the
previous executed scale's output of the same chunk, area-upsampled. Null rows only, no CFG;
appends no K/V. Shared by the exported fidelity graph and the eager reference sampler.
"""

from __future__ import annotations

import torch

from ..infinity.lowrank import representative_indices
from ..token_restore_op import token_restore
from .model import VAR


def lowrank_scale(model: VAR, x, gss, head_ss, past_kv, cache, area_h, area_w, gumbel, projections):
    """x (n, M, C) scale input; cache (chunks, n, mc, C); gumbel (chunks, n, M); projections
    [(n, M, r_c)]. Returns logits (n, M, V), chunk outputs (chunks, n, M, C), indices [(n, r_c)]."""
    outputs, indices = [], []
    for c, proj in enumerate(projections):
        idx = representative_indices(x, gumbel[c], proj.shape[2])
        pseudo = torch.einsum("bmr,bmc->brc", proj, x)
        out, _ = model.run_blocks(pseudo, gss, past_kv, model.chunk_blocks(c))
        x = token_restore(x, cache[c].to(x.dtype), out, idx, area_h.to(x.dtype), area_w.to(x.dtype))
        outputs.append(x)
        indices.append(idx)
    return model.logits(x, head_ss), torch.stack(outputs), indices
