"""Strict loading and writing of the official VAR files: `var_dXX.pth` and `vae_ch160v4096z32.pth`.

Both are plain state dicts (reference var.md §1, §7). Every key and shape must match the preset;
the derivable buffers (`lvl_1L`, `attn_bias_for_masking`, `zero_k_bias`) are checked for shape
like every key but their values are rebuilt, not trusted; `quantize.ema_vocab_hit_SV` (training
statistics, silently replaced by the official loader when the scale count differs) may have any
number of rows. A mismatch names the missing, unexpected and mis-shaped keys in one sentence.
"""

from __future__ import annotations

from pathlib import Path

import torch

from stagevar.runtime.var_schedule import token_offsets

from ..checkpoint_io import match_state_dict, read_state_dict, write_state_dict
from .config import VarConfig, VarPreset, VqvaeConfig
from .model import VAR, block_causal_bias
from .vqvae import VQVAE

_ZERO_K = ".attn.zero_k_bias"
_EMA = "quantize.ema_vocab_hit_SV"


def _floats(state: dict) -> dict:
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


def load_var(path: str | Path, cfg: VarConfig, name: str = "VAR") -> VAR:
    """Build the VAR of `cfg` and load `path` strictly (fp32, eval mode)."""
    state = read_state_dict(path)
    with torch.device("meta"):
        model = VAR(cfg)
    match_state_dict(model, state, name, hint=f"Check that --weights is the official {name} file (var_dXX.pth) "
                                                f"of the chosen --model.")
    fresh = derived_buffers(cfg)
    state = _floats({k: (fresh[k] if k in fresh else state[k]) for k in model.state_dict()})
    model.load_state_dict(state, strict=True, assign=True)
    # The non-persistent token-offset table is not in any file; rebuild it off the meta device.
    model._offsets = torch.tensor(token_offsets(cfg.patch_nums), dtype=torch.int64)
    return model.eval()


def derived_buffers(cfg: VarConfig) -> dict[str, torch.Tensor]:
    """The derivable buffers, rebuilt from the config (never read from a file)."""
    L = cfg.total_tokens
    lvl = torch.cat([torch.full((p * p,), i, dtype=torch.int64) for i, p in enumerate(cfg.patch_nums)])
    out = {"lvl_1L": lvl.view(1, L), "attn_bias_for_masking": block_causal_bias(cfg.patch_nums).view(1, 1, L, L)}
    out.update({f"blocks.{i}{_ZERO_K}": torch.zeros(cfg.embed_dim) for i in range(cfg.depth)})
    return out


def load_vqvae(path: str | Path, cfg: VqvaeConfig, num_scales: int) -> VQVAE:
    """Build the VQVAE and load the official file strictly (fp32, eval mode)."""
    state = dict(read_state_dict(path))
    with torch.device("meta"):
        model = VQVAE(cfg, num_scales)
    ema = state.get(_EMA)
    if ema is not None and ema.dim() == 2 and ema.shape[1] == cfg.vocab_size:
        # Any scale count is fine (as for the official loader); it is never used to generate.
        state[_EMA] = torch.zeros(num_scales, cfg.vocab_size)
    match_state_dict(model, state, "VAR VQVAE", hint="Check that --vae is the official vae_ch160v4096z32.pth.")
    model.load_state_dict(_floats({k: state[k] for k in model.state_dict()}), strict=True, assign=True)
    return model.eval()


def random_var(cfg: VarConfig, seed: int = 0) -> VAR:
    """Deterministic random weights of a VAR-like scale (not the training init: ours keeps the
    activations O(1) through the blocks so that tests see varied, non-degenerate logits)."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = VAR(cfg)
        C = cfg.embed_dim
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("scale_mul_1H11"):
                    p.uniform_(0.5, 2.5)  # exp in [1.6, 12]: inside the ln 100 clamp
                elif p.dim() >= 2 and "ada_lin" not in name:
                    p.normal_(0.0, 1.0 / p.shape[-1] ** 0.5)
                elif "ada_lin" in name or name.endswith("ada_gss"):
                    p.normal_(0.0, 0.3 / C**0.5)
                else:
                    p.normal_(0.0, 0.02)
            model.pos_1LC.normal_(0.0, 0.5)
            model.class_emb.weight.normal_(0.0, 1.0)
            model.head.weight.normal_(0.0, 3.0 / C**0.5)  # varied logits, so top-k/top-p both bite
    return model.eval()


def random_vqvae(cfg: VqvaeConfig, num_scales: int, seed: int = 1) -> VQVAE:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = VQVAE(cfg, num_scales)
        with torch.no_grad():
            model.quantize.embedding.weight.normal_(0.0, 1.0)
            for conv in model.quantize.quant_resi.qresi_ls:
                conv.weight.normal_(0.0, 0.1)
    return model.eval()


def write_official(model: torch.nn.Module, path: str | Path) -> Path:
    """Save a plain state dict, the official file layout."""
    write_state_dict({k: v.detach().contiguous() for k, v in model.state_dict().items()}, path)
    return Path(path)


def random_checkpoints(preset: VarPreset, folder: str | Path, seed: int = 0) -> tuple[Path, Path]:
    """Random `var_<name>.pth` and `vae_ch160v4096z32.pth`-layout files (tests, demos)."""
    folder = Path(folder)
    var = write_official(random_var(preset.var, seed), folder / f"{preset.name.replace('-', '_')}.pth")
    vae = write_official(random_vqvae(preset.vae, preset.var.num_scales, seed + 1), folder / "vae.pth")
    return var, vae
