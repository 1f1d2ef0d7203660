"""An Infinity model with everything around it: transformer, VAE decoder, text encoder, tokenizer."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..checkpoint_io import sha256_file, sha256_tree
from .checkpoint import load_transformer
from .presets import InfinityPreset
from .lazy_text_encoder import lazy_random_text_encoder
from .random_init import lazy_random_transformer, random_transformer
from .text_encoder import T5TextEncoder, build_random_text_encoder, load_text_encoder
from .tokenizer import build_tiny_tokenizer, encode_prompts
from .vae_checkpoint import load_vae_decoder
from .vae_decoder import BSQVAEDecoder, to_uint8_rgb


@dataclass
class InfinityBundle:
    preset: InfinityPreset
    transformer: torch.nn.Module
    vae: BSQVAEDecoder
    text_encoder: T5TextEncoder
    tokenizer: object  # tokenizers.Tokenizer
    # Where the weights came from: checkpoint sha256s, or {"random_init": seed}.
    provenance: dict = field(default_factory=dict)
    # Large random-init models live on the meta device; these produce their weights at save time.
    sources: dict = field(default_factory=dict)
    # Absolute checkpoint paths (from_checkpoints), recorded so `calibrate` can reload the model.
    paths: dict = field(default_factory=dict)

    @property
    def is_lazy(self) -> bool:
        """True when the torch modules have no weights in memory (export only, no eager run)."""
        return bool(self.sources)

    @property
    def max_text_tokens(self) -> int:
        """Prompts are cut to this many tokens (tokenizer limit and null-text rows)."""
        return min(self.preset.text.max_length, self.preset.transformer.text_maxlen)

    @classmethod
    def random(cls, preset: InfinityPreset, seed: int = 0, lazy: bool | None = None) -> "InfinityBundle":
        """Deterministic random weights for every part (tests, demos, export dry-runs).

        `lazy` (default: for models over 1 B parameters) keeps the transformer and the text
        encoder on the meta device and generates their weights tensor by tensor while the
        graphs are written, so exporting Infinity-2B/8B fits in a 24 GB machine.
        """
        if lazy is None:
            lazy = preset.transformer.depth * 28 * preset.transformer.embed_dim**2 > 1e9
        if lazy:
            transformer, t_source = lazy_random_transformer(preset.transformer, seed)
            text, e_source = lazy_random_text_encoder(preset.text, seed + 2)
            with torch.random.fork_rng():
                torch.manual_seed(seed + 1)
                vae = BSQVAEDecoder(preset.vae).eval()
            return cls(preset, transformer, vae, text, build_tiny_tokenizer(), {"random_init": seed},
                       {"transformer": t_source, "text_encoder": e_source})
        transformer = random_transformer(preset.transformer, seed)
        with torch.random.fork_rng():
            torch.manual_seed(seed + 1)
            vae = BSQVAEDecoder(preset.vae).eval()
        text = build_random_text_encoder(preset.text, seed + 2)
        return cls(preset, transformer, vae, text, build_tiny_tokenizer(), {"random_init": seed})

    @classmethod
    def from_checkpoints(
        cls, preset: InfinityPreset, weights: str | Path, vae: str | Path, text_encoder: str | Path
    ) -> "InfinityBundle":
        """Load the official files: transformer `.pth`/sharded folder, VAE `.pth`, T5 folder."""
        transformer = load_transformer(weights, preset.transformer, what=f"{preset.name} transformer")
        decoder = load_vae_decoder(vae, preset.vae)
        encoder, tokenizer = load_text_encoder(text_encoder)
        provenance = {
            "weights": _digest(weights),
            "vae": _digest(vae),
            "text_encoder": _digest(text_encoder),
        }
        paths = {"weights": str(Path(weights).resolve()), "vae": str(Path(vae).resolve()),
                 "text_encoder": str(Path(text_encoder).resolve())}
        return cls(preset, transformer, decoder, encoder, tokenizer, provenance, paths=paths)

    @classmethod
    def shipped(cls, preset: InfinityPreset, folder: str | Path | None = None) -> "InfinityBundle":
        """A trained preset's weights: the package's shipped folder, or a stagevar-train `folder`.

        Every file is checked against the sha256 in its provenance.json, then loaded strictly.
        """
        from ..train.shipped import load_weights, weights_folder

        folder = Path(folder) if folder is not None else weights_folder(preset.shipped_weights)
        transformer, vae, text, prov = load_weights(preset, folder)
        provenance = {"trained": {k: prov[k] for k in ("command", "commit", "seed", "steps", "final_losses", "sha256") if k in prov},
                      "licence": prov.get("licence"), "folder": str(folder)}
        return cls(preset, transformer, vae, text, build_tiny_tokenizer(), provenance)

    def tokenize(self, prompts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Token ids and 0/1 mask (N, T) int64, padded to the longest prompt."""
        ids, mask, _ = encode_prompts(self.tokenizer, prompts, max_length=self.max_text_tokens)
        return ids, mask

    @torch.no_grad()
    def decode(self, codes: np.ndarray) -> np.ndarray:
        """Summed code map (N, code_dim, FH, FW) -> uint8 RGB images (N, H, W, 3)."""
        img = self.vae(torch.from_numpy(np.ascontiguousarray(codes, dtype=np.float32)))
        return to_uint8_rgb(img).numpy()


def _digest(path: str | Path) -> str:
    p = Path(path)
    return sha256_tree(p) if p.is_dir() else sha256_file(p)
