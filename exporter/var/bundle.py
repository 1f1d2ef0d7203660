"""A VAR model with its VQVAE: random weights or the official checkpoints."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..checkpoint_io import sha256_file
from .checkpoint import load_var, load_vqvae, random_var, random_vqvae
from .config import VarPreset
from .model import VAR
from .vqvae import VQVAE


@dataclass
class VarBundle:
    preset: VarPreset
    var: VAR
    vae: VQVAE
    provenance: dict = field(default_factory=dict)
    paths: dict = field(default_factory=dict)  # checkpoint files (absolute), for calibrate

    @classmethod
    def random(cls, preset: VarPreset, seed: int = 0) -> "VarBundle":
        return cls(preset, random_var(preset.var, seed), random_vqvae(preset.vae, preset.var.num_scales, seed + 1),
                   {"random_init": seed})

    @classmethod
    def from_checkpoints(cls, preset: VarPreset, weights: str | Path, vae: str | Path) -> "VarBundle":
        var = load_var(weights, preset.var, name=preset.name)
        vqvae = load_vqvae(vae, preset.vae, preset.var.num_scales)
        return cls(preset, var, vqvae, {"weights": sha256_file(weights), "vae": sha256_file(vae)},
                   {"weights": str(Path(weights).resolve()), "vae": str(Path(vae).resolve())})
