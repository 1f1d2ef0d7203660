"""Loading and writing Infinity transformer checkpoints in the official layouts.

2B: one `.pth` state dict. 8B: an HF-style sharded folder. Safetensors files work too.
Every load is strict: a mismatch names the missing and unexpected keys instead of
`load_state_dict(strict=False)` silently keeping random weights.
"""

from __future__ import annotations

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


def load_transformer(path: str | Path, config: InfinityConfig, what: str = "Infinity transformer") -> InfinityTransformer:
    """Build the transformer and load a checkpoint strictly (fp32, eval mode)."""
    state = adapt_cfg_uncond(read_state_dict(path), config)
    with torch.device("meta"):
        model = InfinityTransformer(config)
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
