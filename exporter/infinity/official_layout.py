"""Write a model's three checkpoints in the official Infinity layouts, official quirks included.

Transformer `.pth` (optionally with the legacy buffers the released files carry and without the
zero_k_bias buffers), VAE `{"vae": state_dict}` `.pth`, and a T5 folder. Used by the tests and
to try `--model auto` end to end. `custom_preset()` is an architecture that is no named preset
(depth 4 in 2 chunks, width 128, 2 heads, 256 text channels, a 16-token null prompt, a VAE of
base width 32), the README's bring-your-own-checkpoint example.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .checkpoint import LEGACY_BUFFERS
from .config import InfinityConfig
from .presets import InfinityPreset
from .random_init import random_transformer
from .text_encoder import TextEncoderConfig, build_random_text_encoder, write_text_encoder
from .tokenizer import build_tiny_tokenizer
from .vae_checkpoint import write_vae_checkpoint
from .vae_decoder import BSQVAEDecoder, VAEDecoderConfig


def custom_preset() -> InfinityPreset:
    return InfinityPreset(
        name="custom",
        transformer=InfinityConfig(depth=4, embed_dim=128, num_heads=2, block_chunks=2, text_channels=256,
                                   text_maxlen=16, code_dim=32, patchify=False),
        vae=VAEDecoderConfig(code_dim=32, base_channels=32, channel_mult=(1, 2, 2), num_res_blocks=1),
        text=TextEncoderConfig(d_model=256, num_layers=1, num_heads=4, d_kv=32, d_ff=256,
                               vocab_size=build_tiny_tokenizer().get_vocab_size()),
        default_cfg=3.0, default_tau=0.5,
    )


def legacy_buffers(config: InfinityConfig) -> dict[str, torch.Tensor]:
    """Stand-ins for the runtime buffers released files carry (their content is never used)."""
    return {name: torch.zeros(1, 7) for name in LEGACY_BUFFERS}


def transformer_state(model, legacy: bool = False, drop_zero_k: bool = False) -> dict[str, torch.Tensor]:
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if drop_zero_k:
        state = {k: v for k, v in state.items() if not k.endswith(".zero_k_bias")}
    if legacy:
        state.update(legacy_buffers(model.config))
    return state


def write_official_checkpoints(folder: Path, preset: InfinityPreset, seed: int = 0, legacy: bool = True,
                               drop_zero_k: bool = True) -> dict[str, Path]:
    """transformer .pth (official quirks by default), VAE {"vae": ...} .pth, T5 folder; returns paths."""
    folder.mkdir(parents=True, exist_ok=True)
    model = random_transformer(preset.transformer, seed)
    torch.save(transformer_state(model, legacy, drop_zero_k), folder / "transformer.pth")
    with torch.random.fork_rng():
        torch.manual_seed(seed + 1)
        vae = BSQVAEDecoder(preset.vae).eval()
    write_vae_checkpoint(vae, folder / "vae.pth")
    write_text_encoder(build_random_text_encoder(preset.text, seed + 2), build_tiny_tokenizer(), folder / "t5")
    return {"weights": folder / "transformer.pth", "vae": folder / "vae.pth", "text_encoder": folder / "t5"}
