"""The architecture of an Infinity-style model, read from its checkpoints' key names and shapes.

Rules (key -> field; the official layout, reference/infinity.md section 2):
  embed_dim C      pos_start (1, 1, C)
  block_chunks     1 + the largest c of block_chunks.{c}.module.{j}.*; depth = chunks x (1 + largest j),
                   every (c, j) must be present
  num_heads        block_chunks.0.module.0.sa.scale_mul_1H11 (1, H, 1, 1)
  FFN width        block_chunks.0.module.0.ffn.fc1.weight (F, C) -> mlp_ratio F / C
  text_channels    cfg_uncond (T, Ct5) columns; text_maxlen (null-prompt length) its rows
  bits per token   word_embed.weight (C, d); head.weight must be (2d, C)
  patchify         d = 4 x the VAE's code channels (2x2 unshuffle, 8B style), or d = code channels
  num_levels       lvl_embed.weight rows
  VAE decoder      code_dim from conv_in (out, code_dim, 3, 3); levels = number of decoder.up.{i};
                   channels of level i from up.{i}.block.0.conv1; base = level 0's channels;
                   num_res_blocks = blocks per level - 1; out_channels from conv_out
What keys cannot tell (the VAE's GroupNorm group count, norm epsilons, default cfg/tau) keeps
the Infinity defaults unless `--config FILE.json` says otherwise.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from stagevar.runtime.errors import StagevarError

_BLOCK = re.compile(r"^block_chunks\.(\d+)\.module\.(\d+)\.")
_UP = re.compile(r"^decoder\.up\.(\d+)\.block\.(\d+)\.")

Shapes = Mapping[str, tuple[int, ...]]


def shapes_of(state: Mapping[str, object]) -> dict[str, tuple[int, ...]]:
    """Key -> shape of a state dict (tensors or shapes)."""
    return {k: tuple(int(d) for d in (v.shape if hasattr(v, "shape") else v)) for k, v in state.items()}


def _need(shapes: Shapes, key: str, what: str, ndim: int) -> tuple[int, ...]:
    shape = shapes.get(key)
    if shape is None or len(shape) != ndim:
        raise StagevarError(f"The {what} checkpoint has no {key} of {ndim} dimensions, so its architecture cannot "
                            f"be read; pass an Infinity-style checkpoint, or --model with a preset name.")
    return shape


def infer_transformer_fields(shapes: Shapes, what: str = "transformer") -> dict:
    """InfinityConfig fields read from transformer keys (code_dim/patchify need the VAE: see
    `split_bits`). Raises StagevarError naming the key that is absent or malformed."""
    c = _need(shapes, "pos_start", what, 3)[-1]
    pairs = {(int(m.group(1)), int(m.group(2))) for k in shapes if (m := _BLOCK.match(k))}
    if not pairs:
        raise StagevarError(f"The {what} checkpoint has no block_chunks.{{c}}.module.{{j}} keys; pass an "
                            f"Infinity-style checkpoint (blocks grouped in chunks, as the official files are).")
    chunks = 1 + max(p[0] for p in pairs)
    per = 1 + max(p[1] for p in pairs)
    absent = [f"block_chunks.{a}.module.{b}" for a in range(chunks) for b in range(per) if (a, b) not in pairs]
    if absent:
        raise StagevarError(f"The {what} checkpoint lacks {', '.join(absent[:3])}{' ...' if len(absent) > 3 else ''} "
                            f"(chunks must hold the same number of blocks); the file is incomplete.")
    heads = _need(shapes, "block_chunks.0.module.0.sa.scale_mul_1H11", what, 4)[1]
    ffn = _need(shapes, "block_chunks.0.module.0.ffn.fc1.weight", what, 2)[0]
    text_rows, text_channels = _need(shapes, "cfg_uncond", what, 2)
    bits = _need(shapes, "word_embed.weight", what, 2)[1]
    head_out = _need(shapes, "head.weight", what, 2)[0]
    if head_out != 2 * bits:
        raise StagevarError(f"The {what} checkpoint's head has {head_out} outputs for {bits}-bit tokens (expected "
                            f"{2 * bits}: two logits per bit); it is not an Infinity bit-label model.")
    levels = _need(shapes, "lvl_embed.weight", what, 2)[0]
    return {"depth": chunks * per, "embed_dim": c, "num_heads": heads, "block_chunks": chunks,
            "text_channels": text_channels, "text_maxlen": text_rows, "mlp_ratio": ffn / c,
            "num_levels": levels, "bits_per_token": bits}


def split_bits(bits: int, vae_code_dim: int | None) -> tuple[int, bool]:
    """(code_dim, patchify) from the transformer's bits per token and the VAE's code channels."""
    if vae_code_dim is None or vae_code_dim == bits:
        return bits, False
    if 4 * vae_code_dim == bits:
        return vae_code_dim, True
    raise StagevarError(f"The transformer predicts {bits} bits per token but the VAE decodes {vae_code_dim} code "
                        f"channels (neither equal nor 2x2-patchified); pass the VAE that belongs to this model.")


def _up_key(shapes: Shapes, base: str) -> tuple[int, ...] | None:
    # Module form (X.conv.weight) or the flux-style spelling without the wrapper level (X.weight).
    return shapes.get(f"{base}.conv.weight") or shapes.get(f"{base}.weight")


def infer_vae_fields(shapes: Shapes, what: str = "VAE") -> dict:
    """VAEDecoderConfig fields read from decoder keys (module or flux-style spelling)."""
    conv_in = _up_key(shapes, "decoder.conv_in")
    conv_out = _up_key(shapes, "decoder.conv_out")
    if conv_in is None or conv_out is None or len(conv_in) != 4:
        raise StagevarError(f"The {what} checkpoint has no decoder.conv_in/conv_out weights, so its architecture "
                            f"cannot be read; pass an Infinity BSQ-VAE checkpoint.")
    blocks: dict[int, set[int]] = {}
    for k in shapes:
        if m := _UP.match(k):
            blocks.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
    if not blocks or sorted(blocks) != list(range(len(blocks))):
        raise StagevarError(f"The {what} checkpoint's decoder.up levels are missing or not numbered 0..n-1; the "
                            f"file is incomplete.")
    per_level = {len(b) for b in blocks.values()}
    if len(per_level) != 1:
        raise StagevarError(f"The {what} checkpoint's decoder levels hold different numbers of blocks; it is not an "
                            f"Infinity BSQ-VAE decoder.")
    widths = []
    for i in range(len(blocks)):
        conv1 = _up_key(shapes, f"decoder.up.{i}.block.0.conv1")
        if conv1 is None:
            raise StagevarError(f"The {what} checkpoint lacks decoder.up.{i}.block.0.conv1; the file is incomplete.")
        widths.append(conv1[0])
    base = widths[0]
    if any(w % base for w in widths):
        raise StagevarError(f"The {what} decoder's level widths {widths} are not multiples of level 0's; give "
                            f"base_channels and channel_mult in --config.")
    return {"code_dim": conv_in[1], "base_channels": base, "channel_mult": tuple(w // base for w in widths),
            "num_res_blocks": per_level.pop() - 1, "out_channels": conv_out[0]}
