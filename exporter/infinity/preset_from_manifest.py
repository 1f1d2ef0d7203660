"""Rebuild the InfinityPreset an export was made from, out of its manifest's model entry.

The manifest records every config (transformer, VAE decoder, text encoder) in full, so exports
of architectures that are no named preset (`--model auto`) can be reloaded for calibration.
"""

from __future__ import annotations

from stagevar.runtime.errors import StagevarError

from .config import InfinityConfig
from .presets import InfinityPreset
from .text_encoder import TextEncoderConfig
from .vae_decoder import VAEDecoderConfig


def preset_from_manifest(model: dict) -> InfinityPreset:
    """The preset of a manifest's "model" entry; its config hash must match the recorded one."""
    try:
        transformer = InfinityConfig(**model["config"])
        preset = InfinityPreset(
            name=str(model["preset"]), transformer=transformer, vae=VAEDecoderConfig(**model["vae"]),
            text=TextEncoderConfig(**model["text_encoder"]), default_cfg=float(model["default_cfg"]),
            default_tau=float(model["default_tau"]), random_init_only=bool(model.get("random_init")),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise StagevarError(f"The manifest's model entry cannot be rebuilt into a model ({exc}); export again.") from None
    if model.get("config_hash") not in (None, transformer.config_hash()):
        raise StagevarError("The manifest's model config does not match its recorded config hash (edited?); export again.")
    return preset
