"""Model presets of the Infinity family: plain functions returning frozen configs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from stagevar.runtime.errors import StagevarError

from .config import InfinityConfig
from .text_encoder import TextEncoderConfig, flan_t5_xl_config, tiny_t5_config
from .vae_decoder import VAEDecoderConfig, vae_d14_patchify_config, vae_d32_config, vae_tiny_config


@dataclass(frozen=True)
class InfinityPreset:
    """Everything needed to build one Infinity model: transformer, VAE decoder, text encoder."""

    name: str
    transformer: InfinityConfig
    vae: VAEDecoderConfig
    text: TextEncoderConfig
    default_cfg: float
    default_tau: float
    # True for presets that exist only with random weights (no released checkpoint).
    random_init_only: bool = False
    # Name of the weights folder shipped inside the package (stagevar/exporter/weights/), if any.
    shipped_weights: str | None = None
    # Resolution an export uses when --resolution is not given.
    default_resolution: str = "1M"
    # Where the architecture came from: "preset" (a named one), "checkpoint" (--model auto),
    # with "+config" when --config changed it. Recorded in the manifest.
    source: str = "preset"

    @property
    def pixels_per_token(self) -> int:
        """Image pixels per transformer-grid cell along each side (16 for 2B and 8B)."""
        return self.vae.upsample_factor * (2 if self.transformer.patchify else 1)


def infinity2b() -> InfinityPreset:
    """Infinity-2B: 32 blocks x 2048, 8 chunks, d=32 bits, flan-T5-XL, VAE d32 (patch 16)."""
    return InfinityPreset(
        name="infinity2b",
        transformer=InfinityConfig(
            depth=32, embed_dim=2048, num_heads=16, block_chunks=8, text_channels=2048,
            text_maxlen=512, code_dim=32, patchify=False,
        ),
        vae=vae_d32_config(),
        text=flan_t5_xl_config(),
        default_cfg=3.0,
        default_tau=0.5,
    )


def infinity8b() -> InfinityPreset:
    """Infinity-8B: 40 blocks x 3584, 8 chunks, 56 bits per token (14 x 2x2 patchify)."""
    return InfinityPreset(
        name="infinity8b",
        transformer=InfinityConfig(
            depth=40, embed_dim=3584, num_heads=28, block_chunks=8, text_channels=2048,
            text_maxlen=512, code_dim=14, patchify=True,
        ),
        vae=vae_d14_patchify_config(),
        text=flan_t5_xl_config(),
        default_cfg=3.0,
        default_tau=1.0,
    )


def infinity_tiny() -> InfinityPreset:
    """A few narrow blocks with random weights: the tests' model and the default demo.

    Same architecture as Infinity-2B (8 chunks, so the StageVAR rank table applies), small
    enough that a full 1M-schedule generation runs in seconds on 2 CPU cores (256x256 image).
    """
    return _small_random_preset("infinity-tiny", embed_dim=64, num_heads=2)


def infinity_mid() -> InfinityPreset:
    """A mid-size random-weight model for CPU benchmarks where GEMMs are a realistic share of the work.

    Same architecture family as Infinity-2B (8 chunks of 1 block, so the StageVAR rank table
    applies), 512 wide: large enough that matrix products, not per-call overhead, dominate a
    scale's time on a CPU, small enough to export and run on a laptop. Tiny VAE and T5.
    """
    return _small_random_preset("infinity-mid", embed_dim=512, num_heads=8)


def infinity_tiny_patchify() -> InfinityPreset:
    """infinity-tiny with Infinity-8B's token layout: 56 bits = 14 code channels x 2x2 pixel
    unshuffle, and a VAE over 14 channels. For tests of the patchified path."""
    tiny = infinity_tiny()
    return replace(
        tiny,
        name="infinity-tiny-patchify",
        transformer=replace(tiny.transformer, code_dim=14, patchify=True),
        vae=VAEDecoderConfig(code_dim=14, base_channels=32, channel_mult=(1, 2), num_res_blocks=1),
    )


def infinity_shapes() -> InfinityPreset:
    """A small Infinity trained here on the synthetic shapes world: the default of stagevar-export.

    Infinity-2B's architecture at 64 wide (8 chunks of 1 block, so the StageVAR rank table
    applies), 16 bits per token, tiny T5 (trained with the transformer) and a x4 BSQ-VAE:
    32x32 images on the 7-scale "8x8" schedule (1,2,3,4,5,6,8). Weights ship with the package
    (exporter/weights/infinity-shapes, with provenance); `stagevar-train` reproduces them.
    """
    return InfinityPreset(
        name="infinity-shapes",
        transformer=InfinityConfig(
            depth=8, embed_dim=64, num_heads=2, block_chunks=8, text_channels=128,
            text_maxlen=64, code_dim=16, patchify=False,
        ),
        vae=VAEDecoderConfig(code_dim=16, base_channels=16, channel_mult=(1, 2, 2), num_res_blocks=1,
                             norm_groups=8),
        text=tiny_t5_config(),
        default_cfg=3.0,
        default_tau=0.5,
        shipped_weights="infinity-shapes",
        default_resolution="8x8",
    )


def _small_random_preset(name: str, embed_dim: int, num_heads: int) -> InfinityPreset:
    """8 chunks of 1 block (the rank table's 8 entries apply), tiny T5 and VAE, random weights."""
    return InfinityPreset(
        name=name,
        transformer=InfinityConfig(
            depth=8, embed_dim=embed_dim, num_heads=num_heads, block_chunks=8, text_channels=128,
            text_maxlen=64, code_dim=32, patchify=False,
        ),
        vae=vae_tiny_config(),
        text=tiny_t5_config(),
        default_cfg=3.0,
        default_tau=0.5,
        random_init_only=True,
    )


PRESETS: dict[str, Callable[[], InfinityPreset]] = {
    "infinity-shapes": infinity_shapes,
    "infinity-tiny": infinity_tiny,
    "infinity2b": infinity2b,
    "infinity8b": infinity8b,
    "infinity-mid": infinity_mid,
}


def get_preset(name: str) -> InfinityPreset:
    """Look a preset up by its user-facing name (`infinity-tiny`, `infinity2b`, `infinity8b`)."""
    key = name.lower().replace("_", "-")
    aliases = {"infinity-2b": "infinity2b", "infinity-8b": "infinity8b", "tiny": "infinity-tiny", "shapes": "infinity-shapes"}
    key = aliases.get(key, key)
    if key not in PRESETS:
        raise StagevarError(f"Unknown model '{name}'; choose one of: {', '.join(PRESETS)}.")
    return PRESETS[key]()
