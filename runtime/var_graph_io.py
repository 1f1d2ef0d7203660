"""The graph contracts of the VAR family (names, roles, shapes); see graph_io.py for Infinity's.

Symbolic axes: n images, r condition rows (2n on CFG scales: cond rows then null rows, i.e.
image i is rows i and n + i; n on UNCOND scales: the null rows), l tokens of the scale, p past
tokens. Constants: C width, H heads, hd head dim, depth blocks, Cv code width (32), V vocab.

class_cond     labels int64 [r] (class indices; num_classes = the null class)
               -> sos [r, C], gss [r, depth, 6, C], head_ss [r, 2, C]     (once per request)
var_step       tokens [n, l, Cv] (area-downsampled f_hat of the previous scales, row-major;
               ignored at scale 0, where the start token is used), scale_index int64 [],
               sos [r, C], gss [r, depth, 6, C], head_ss [r, 2, C], past_kv [p, depth, 2, r, H, hd],
               guidance [2] ((1 + t, -t) on CFG scales, (1, 0) on UNCOND ones)
               -> logits [n, l, V] (guidance[0] * rows[:n] + guidance[1] * rows[r-n:], float32)
                  new_kv [l, depth, 2, r, H, hd] (this scale's slot of the token-major cache)
                  chunk_outputs [chunks, n, l, C] (null rows: the RTR cache of a next LOWRANK scale)
var_fidelity   tokens [n, m, Cv], scale_index, gss [n, depth, 6, C], head_ss [n, 2, C],
               past_kv [p, depth, 2, n, H, hd], cache [chunks, n, mc, C], area_h [gh, h],
               area_w [gw, w] (1-D area matrices from the cache grid to this one),
               gumbel [chunks, n, m], proj_{c} [n, m, r_c] per chunk c
               -> logits [n, m, V] (null rows, no CFG), chunk_outputs [chunks, n, m, C],
                  indices_{c} int64 [n, r_c]; appends no K/V (exporter/var/lowrank.py)
vqvae_decoder  f_hat [n, Cv, h, w] -> image uint8 [n, 16h, 16w, 3] (RGB, truncated as the demo)
"""

from __future__ import annotations

CLASS_COND = "class_cond"
VAR_STEP = "var_step"
VQVAE_DECODER = "vqvae_decoder"
VAR_FIDELITY = "var_fidelity"
VAR_GRAPHS = (CLASS_COND, VAR_STEP, VAR_FIDELITY, VQVAE_DECODER)

CLASS_COND_INPUTS = ("labels",)
CLASS_COND_OUTPUTS = ("sos", "gss", "head_ss")
VAR_STEP_INPUTS = ("tokens", "scale_index", "sos", "gss", "head_ss", "past_kv", "guidance")
VAR_STEP_OUTPUTS = ("logits", "new_kv", "chunk_outputs")
VQVAE_INPUTS = ("f_hat",)
VQVAE_OUTPUTS = ("image",)


def engine_graphs(data: dict) -> tuple[str, ...]:
    """The graphs of a VAR export that get TensorRT engines: all but var_fidelity until
    `stagevar-export calibrate` has given the export LOWRANK engine entries (an engine needs at
    least one optimisation profile)."""
    lowrank = any(isinstance(e, dict) and e.get("graph") == VAR_FIDELITY for e in data.get("engines") or [])
    return tuple(g for g in VAR_GRAPHS if g != VAR_FIDELITY or lowrank)


def fidelity_inputs(num_chunks: int) -> tuple[str, ...]:
    return ("tokens", "scale_index", "gss", "head_ss", "past_kv", "cache", "area_h", "area_w", "gumbel") + tuple(
        f"proj_{c}" for c in range(num_chunks))


def fidelity_outputs(num_chunks: int) -> tuple[str, ...]:
    return ("logits", "chunk_outputs") + tuple(f"indices_{c}" for c in range(num_chunks))


def contract(graph: str, num_chunks: int) -> tuple[tuple[str, ...], tuple[str, ...]]:
    if graph == VAR_FIDELITY:
        return fidelity_inputs(num_chunks), fidelity_outputs(num_chunks)
    return CONTRACTS[graph]


CONTRACTS = {
    CLASS_COND: (CLASS_COND_INPUTS, CLASS_COND_OUTPUTS),
    VAR_STEP: (VAR_STEP_INPUTS, VAR_STEP_OUTPUTS),
    VQVAE_DECODER: (VQVAE_INPUTS, VQVAE_OUTPUTS),
}
