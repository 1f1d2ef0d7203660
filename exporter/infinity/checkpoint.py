"""Loading and writing Infinity transformer checkpoints in the official layouts.

2B: one `.pth` state dict. 8B: an HF-style sharded folder. Safetensors files work too.
Every load is strict: a mismatch names the missing and unexpected keys instead of
`load_state_dict(strict=False)` silently keeping random weights.

Two quirks of the official files are accepted, exactly as the official loader treats them
(FoundationVision/Infinity `Infinity.load_state_dict`): the legacy buffers it pops before
loading (`lvl_1L`, `attn_bias_for_masking`, `Infinity_visible_kvlen`, `Infinity_invisible_qlen`)
are ignored, and the `zero_k_bias` buffers (constant zeros, which a checkpoint saved without
persistent buffers lacks) are filled with zeros. Each load says in one line what it did.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import torch

from ..checkpoint_io import match_state_dict, read_state_dict, write_sharded, write_state_dict
from .config import InfinityConfig
from .random_init import official_cfg_uncond_rows
from .transformer import InfinityTransformer


def adapt_cfg_uncond(state: dict[str, torch.Tensor], config: InfinityConfig) -> dict[str, torch.Tensor]:
    """Match the stored null text to text_maxlen rows as the official loader does.

    Fewer rows: append the model's deterministic init rows; more rows: truncate.
    """
    stored = state.get("cfg_uncond")
    if stored is None or stored.dim() != 2 or stored.shape[1] != config.text_channels:
        return state  # the strict key/shape check reports it
    rows = config.text_maxlen
    if stored.shape[0] == rows:
        return state
    state = dict(state)
    if stored.shape[0] > rows:
        state["cfg_uncond"] = stored[:rows]
    else:
        init = official_cfg_uncond_rows(rows, config.text_channels).to(stored.dtype)
        state["cfg_uncond"] = torch.cat((stored, init[stored.shape[0] :]), dim=0)
    return state


#: Buffers the official loader pops from every checkpoint before loading (runtime-only state).
LEGACY_BUFFERS = ("lvl_1L", "attn_bias_for_masking", "Infinity_visible_kvlen", "Infinity_invisible_qlen")
ZERO_K_BIAS = "zero_k_bias"


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def apply_official_quirks(
    state: dict[str, torch.Tensor], model: InfinityTransformer, say: Callable[[str], None] = _stderr
) -> dict[str, torch.Tensor]:
    """Drop the legacy buffers and fill absent zero_k_bias buffers; everything else is untouched.

    Only these two differences are forgiven; any other missing or extra key still fails the
    strict match that follows. A zero_k_bias the checkpoint does hold is loaded as stored.
    """
    state = dict(state)
    dropped = [k for k in LEGACY_BUFFERS if state.pop(k, None) is not None]
    expected = model.state_dict()
    filled = [k for k in expected if k.rsplit(".", 1)[-1] == ZERO_K_BIAS and k not in state]
    for key in filled:
        state[key] = torch.zeros(expected[key].shape, dtype=torch.float32)
    notes = []
    if dropped:
        notes.append(f"ignored the legacy buffer{'s' if len(dropped) > 1 else ''} {', '.join(dropped)} "
                     f"(the official loader drops them)")
    if filled:
        notes.append(f"filled {len(filled)} absent zero_k_bias buffer{'s' if len(filled) > 1 else ''} with zeros")
    if notes:
        say("checkpoint: " + "; ".join(notes) + ".")
    return state


def load_transformer(path: str | Path, config: InfinityConfig, what: str = "Infinity transformer",
                     say: Callable[[str], None] = _stderr) -> InfinityTransformer:
    """Build the transformer and load a checkpoint strictly (fp32, eval mode), official quirks accepted."""
    state = adapt_cfg_uncond(read_state_dict(path), config)
    with torch.device("meta"):
        model = InfinityTransformer(config)
    state = apply_official_quirks(state, model, say)
    match_state_dict(model, state, what)
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval()


def write_transformer(model: InfinityTransformer, path: str | Path, sharded_max_bytes: int | None = None) -> Path:
    """Save in the official layout: a `.pth`/`.safetensors` file, or a sharded folder (8B style)."""
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    path = Path(path)
    if sharded_max_bytes is not None:
        write_sharded(state, path, sharded_max_bytes)
    else:
        write_state_dict(state, path)
    return path
