"""Loading and writing Infinity BSQ-VAE checkpoints (decoder weights only).

The official ``.pth`` is ``{"vae": state_dict}`` holding encoder, decoder and two int64
``mask`` buffers (``quantizer.lfq.mask`` and ``quantize.lfq.mask``, the same tensor twice).
Decoder keys come in two spellings: the module form with the ``Conv``/``Normalize`` wrapper
level (``decoder.conv_in.conv.weight``, ``decoder.mid.block_1.norm1.norm.weight``) and the
flux-style form without it (``decoder.conv_in.weight``); the official ``load_cnn`` accepts
both, and so do we, by renaming to the module form. The encoder and the masks are accepted
and dropped; every other difference is an error.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from stagevar.exporter.checkpoint_io import (
    load_strict,
    read_state_dict,
    write_state_dict,
)
from stagevar.exporter.infinity.vae_decoder import BSQVAEDecoder, VAEDecoderConfig
from stagevar.runtime.errors import StagevarError

WHAT = "Infinity VAE"
VAE_WRAPPER_KEY = "vae"
MASK_KEYS = ("quantizer.lfq.mask", "quantize.lfq.mask")
ENCODER_PREFIX = "encoder."
# The wrapper levels the flux-style spelling drops: `X.conv.weight` <-> `X.weight`.
_WRAPPER_LEVELS = ("conv", "norm")


def flux_style_key(module_key: str) -> str:
    """The flux-style spelling of a module-form key (the wrapper level dropped), or the key."""
    parts = module_key.split(".")
    if len(parts) >= 3 and parts[-2] in _WRAPPER_LEVELS:
        return ".".join(parts[:-2] + parts[-1:])
    return module_key


def normalise_vae_keys(found: dict[str, torch.Tensor], decoder: BSQVAEDecoder) -> dict:
    """Rename flux-style decoder keys to the module form of ``decoder``; keep other keys as-is.

    The aliases are derived from the module's own keys, so only the real wrapper levels are
    touched (``up.1.upsample.conv.weight`` -> ``up.1.upsample.conv.conv.weight``). A parameter
    present under both spellings is an error rather than a silent pick.
    """
    module_keys = set(decoder.state_dict().keys())
    alias = {flux_style_key(k): k for k in module_keys if flux_style_key(k) != k}
    out: dict[str, torch.Tensor] = {}
    for key, tensor in found.items():
        target = key if key in module_keys else alias.get(key, key)
        if target in out:
            raise StagevarError(f"The {WHAT} checkpoint holds {target} twice (with and without "
                                f"the wrapper level); keep one spelling.")
        out[target] = tensor
    return out


def load_vae_decoder(path: str | os.PathLike, config: VAEDecoderConfig) -> BSQVAEDecoder:
    """Load an Infinity VAE decoder (fp32, eval mode) from a ``.pth``/``.safetensors``/folder.

    Accepts the official ``{"vae": state_dict}`` file or a plain state dict, keys with or
    without the ``.conv``/``.norm`` wrapper level, and ignores ``encoder.*`` and the two
    quantizer mask buffers. Anything else missing, unexpected or mis-shaped raises
    ``StagevarError`` naming the keys.
    """
    found = read_state_dict(path, wrapper_key=(VAE_WRAPPER_KEY,))
    _check_masks(found, config)
    decoder = BSQVAEDecoder(config)
    found = normalise_vae_keys(found, decoder)
    hint = (f"Check that the VAE path points at the VAE of this model (code_dim "
            f"{config.code_dim}, x{config.upsample_factor} upsampling).")
    load_strict(decoder, found, WHAT, ignore_prefixes=(ENCODER_PREFIX,),
                ignore_keys=MASK_KEYS, hint=hint)
    return decoder.float().eval()


def _check_masks(found: dict[str, torch.Tensor], config: VAEDecoderConfig) -> None:
    # The masks are ignored for decoding, but their length is the VAE's bit count: a mismatch
    # means the 2B VAE was paired with the 8B model (or the reverse), so say exactly that.
    for key in MASK_KEYS:
        if key in found and tuple(found[key].shape) != (config.code_dim,):
            raise StagevarError(f"The {WHAT} checkpoint has {found[key].numel()}-bit quantizer "
                                f"masks but the model expects {config.code_dim} bits; use the "
                                f"VAE that belongs to this model.")


def quantizer_mask(code_dim: int) -> torch.Tensor:
    """The official int64 mask buffer 2**(code_dim-1), ..., 2, 1 (bit weights of a label)."""
    return 2 ** torch.arange(code_dim - 1, -1, -1, dtype=torch.int64)


def vae_checkpoint_state_dict(
    decoder: BSQVAEDecoder, flux_style: bool = False, code_dim: int | None = None
) -> dict[str, torch.Tensor]:
    """The decoder's weights as the official file stores them, mask buffers included."""
    code_dim = decoder.config.code_dim if code_dim is None else code_dim
    sd = {(flux_style_key(k) if flux_style else k): v.detach().clone()
          for k, v in decoder.state_dict().items()}
    mask = quantizer_mask(code_dim)
    sd.update({key: mask.clone() for key in MASK_KEYS})
    return sd


def write_vae_checkpoint(
    decoder: BSQVAEDecoder, path: str | os.PathLike, flux_style: bool = False,
    code_dim: int | None = None,
) -> Path:
    """Write ``decoder`` in the official layout: ``{"vae": state_dict}`` for ``.pth``.

    ``flux_style=True`` drops the ``.conv``/``.norm`` wrapper level from the key names.
    ``code_dim`` sizes the mask buffers (default: the decoder's). A ``.safetensors`` path
    gets the same keys, flat. Returns the path written.
    """
    sd = vae_checkpoint_state_dict(decoder, flux_style, code_dim)
    wrapper = None if Path(path).suffix.lower() == ".safetensors" else VAE_WRAPPER_KEY
    return write_state_dict(sd, path, wrapper_key=wrapper)
