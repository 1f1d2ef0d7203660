"""The graph contracts: names, roles and shapes of every exported graph's inputs and outputs.

Shared by the exporter (which builds graphs with exactly these names) and the runtime (which
binds buffers by them). Symbolic axes: n images, r condition rows (2n for CFG scales: cond rows
then null rows; n for UNCOND/LOWRANK scales: the null rows), t text tokens, l tokens of the
current scale, p past tokens, m tokens of a LOWRANK scale, mc tokens of its cache scale.
Model constants: C width, H heads, hd head dim, depth blocks, chunks block chunks, d bits per
token, V = 2d logits per token, Ct5 text width.

text_encoder  input_ids int64 [n, t], attention_mask int64 [n, t]
              -> text_features [n, t, Ct5]
text_cond     text_features [n, t, Ct5], attention_mask int64 [n, t]
              -> sos [2n, C], gss [2n, 6, C], head_ss [2n, 2, C],
                 text_kv [depth, 2, 2n, H, t, hd], text_bias [2n, t]      (once per prompt batch)
step          codes [n, l, d], scale_index int64 [], sos [r, C], gss [r, 6, C], head_ss [r, 2, C],
              text_kv [depth, 2, r, H, t, hd], text_bias [r, t], past_kv [p, depth, 2, r, H, hd],
              rope_cos [l, hd/2], rope_sin [l, hd/2], guidance [2], tau []
              -> logits [n, l, V]  (CFG-combined with guidance[:r/n], divided by tau)
                 new_kv [l, depth, 2, r, H, hd]  (the slot of this scale in the token-major cache)
                 chunk_outputs [chunks, n, l, C]  (null rows: the RTR cache of a next LOWRANK scale)
              At scale 0, codes is [n, 1, d] of zeros and ignored (the SOS token is used).
              guidance = [cfg, 1 - cfg] on CFG scales (r = 2n), [1, 0] on UNCOND scales (r = n).
fidelity      codes [n, m, d], scale_index, gss [n, 6, C], head_ss [n, 2, C],
              text_kv [depth, 2, n, H, t, hd], text_bias [n, t], past_kv [p, depth, 2, n, H, hd],
              rope_cos [m, hd/2], rope_sin [m, hd/2], tau [],
              cache [chunks, n, mc, C], area_h [gh, h], area_w [gw, w] (1-D area-resize matrices
              from the cache grid h x w = mc to this grid gh x gw = m),
              gumbel [chunks, n, m], proj_{c} [n, m, r_c] for each chunk c
              -> logits [n, m, V], chunk_outputs [chunks, n, m, C], indices_{c} int64 [n, r_c]
              Appends no K/V. Pseudo-tokens of chunk c use rope rows [0, r_c). Each chunk's
              restoration is one `stagevar.TokenRestore` node (model-local function inside).
vae_decoder   codes [n, code_dim, fh, fw] -> image uint8 [n, H_px, W_px, 3] (RGB)
"""

from __future__ import annotations

TEXT_ENCODER = "text_encoder"
TEXT_COND = "text_cond"
STEP = "step"
FIDELITY = "fidelity"
VAE_DECODER = "vae_decoder"
GRAPHS = (TEXT_ENCODER, TEXT_COND, STEP, FIDELITY, VAE_DECODER)

TEXT_ENCODER_INPUTS = ("input_ids", "attention_mask")
TEXT_ENCODER_OUTPUTS = ("text_features",)
TEXT_COND_INPUTS = ("text_features", "attention_mask")
TEXT_COND_OUTPUTS = ("sos", "gss", "head_ss", "text_kv", "text_bias")
STEP_INPUTS = (
    "codes", "scale_index", "sos", "gss", "head_ss", "text_kv", "text_bias",
    "past_kv", "rope_cos", "rope_sin", "guidance", "tau",
)
STEP_OUTPUTS = ("logits", "new_kv", "chunk_outputs")
VAE_INPUTS = ("codes",)
VAE_OUTPUTS = ("image",)


def fidelity_inputs(num_chunks: int) -> tuple[str, ...]:
    return (
        "codes", "scale_index", "gss", "head_ss", "text_kv", "text_bias", "past_kv",
        "rope_cos", "rope_sin", "tau", "cache", "area_h", "area_w", "gumbel",
    ) + tuple(f"proj_{c}" for c in range(num_chunks))


def fidelity_outputs(num_chunks: int) -> tuple[str, ...]:
    return ("logits", "chunk_outputs") + tuple(f"indices_{c}" for c in range(num_chunks))


def contract(graph: str, num_chunks: int) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(input names, output names) of a graph (fidelity's depend on the chunk count)."""
    if graph == FIDELITY:
        return fidelity_inputs(num_chunks), fidelity_outputs(num_chunks)
    from . import var_graph_io  # the VAR family's graphs

    if graph in var_graph_io.VAR_GRAPHS:
        return var_graph_io.contract(graph, num_chunks)
    return {
        TEXT_ENCODER: (TEXT_ENCODER_INPUTS, TEXT_ENCODER_OUTPUTS),
        TEXT_COND: (TEXT_COND_INPUTS, TEXT_COND_OUTPUTS),
        STEP: (STEP_INPUTS, STEP_OUTPUTS),
        VAE_DECODER: (VAE_INPUTS, VAE_OUTPUTS),
    }[graph]
