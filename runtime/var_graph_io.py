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
vqvae_decoder  f_hat [n, Cv, h, w] -> image uint8 [n, 16h, 16w, 3] (RGB, truncated as the demo)
"""

from __future__ import annotations

CLASS_COND = "class_cond"
VAR_STEP = "var_step"
VQVAE_DECODER = "vqvae_decoder"
VAR_GRAPHS = (CLASS_COND, VAR_STEP, VQVAE_DECODER)

CLASS_COND_INPUTS = ("labels",)
CLASS_COND_OUTPUTS = ("sos", "gss", "head_ss")
VAR_STEP_INPUTS = ("tokens", "scale_index", "sos", "gss", "head_ss", "past_kv", "guidance")
VAR_STEP_OUTPUTS = ("logits", "new_kv")
VQVAE_INPUTS = ("f_hat",)
VQVAE_OUTPUTS = ("image",)

CONTRACTS = {
    CLASS_COND: (CLASS_COND_INPUTS, CLASS_COND_OUTPUTS),
    VAR_STEP: (VAR_STEP_INPUTS, VAR_STEP_OUTPUTS),
    VQVAE_DECODER: (VQVAE_INPUTS, VQVAE_OUTPUTS),
}
