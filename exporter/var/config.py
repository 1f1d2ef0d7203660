"""Configs and presets of the VAR family: plain functions returning frozen dataclasses.

Hyper-parameters follow `build_vae_var` of the official code (../shared/reference/var.md §1):
heads = depth, width = 64 * depth, VQVAE ch 160 / z 32 / vocab 4096 / share_quant_resi 4.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass

from stagevar.runtime.errors import StagevarError
from stagevar.runtime.var_schedule import PATCH_NUMS_256, PATCH_NUMS_512

NUM_CLASSES = 1000


@dataclass(frozen=True)
class VarConfig:
    """The VAR transformer. `shared_aln`: one SharedAdaLin + per-block `ada_gss` (d36-s)."""

    depth: int
    embed_dim: int
    num_heads: int
    patch_nums: tuple[int, ...]
    shared_aln: bool = False
    num_classes: int = NUM_CLASSES
    vocab_size: int = 4096
    code_dim: int = 32
    mlp_ratio: float = 4.0
    norm_eps: float = 1e-6
    # Blocks grouped for the fidelity (LOWRANK) mechanism; VAR has no chunks of its own.
    block_chunks: int = 1

    @property
    def blocks_per_chunk(self) -> int:
        return self.depth // self.block_chunks

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @property
    def ffn_hidden(self) -> int:
        return round(self.embed_dim * self.mlp_ratio)

    @property
    def num_scales(self) -> int:
        return len(self.patch_nums)

    @property
    def total_tokens(self) -> int:
        return sum(p * p for p in self.patch_nums)

    def config_hash(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class VqvaeConfig:
    """The VQVAE (`vae_ch160v4096z32.pth`); the decoder's up levels have num_res_blocks + 1 blocks."""

    ch: int = 160
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    z_channels: int = 32
    vocab_size: int = 4096
    share_quant_resi: int = 4

    @property
    def block_in(self) -> int:
        return self.ch * self.ch_mult[-1]

    @property
    def upsample_factor(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)


@dataclass(frozen=True)
class VarPreset:
    name: str
    var: VarConfig
    vae: VqvaeConfig
    default_cfg: float = 1.5
    default_top_k: int = 900
    default_top_p: float = 0.96
    random_init_only: bool = False

    @property
    def image_size(self) -> int:
        return self.var.patch_nums[-1] * self.vae.upsample_factor


def default_chunks(depth: int) -> int:
    """Block chunks of the fidelity mechanism: the largest divisor of depth up to 8 (Infinity's
    chunk count): d16 8 x 2 blocks, d20 5 x 4, d24 8 x 3, d30 6 x 5, d36 6 x 6. Per chunk, not
    per block, as released for Infinity: one selection + projection serves several blocks."""
    return max(c for c in range(1, 9) if depth % c == 0)


def _official(depth: int, patch_nums=PATCH_NUMS_256, shared_aln: bool = False) -> VarConfig:
    return VarConfig(depth=depth, embed_dim=64 * depth, num_heads=depth, patch_nums=patch_nums,
                     shared_aln=shared_aln, block_chunks=default_chunks(depth))


def var_d16() -> VarPreset:
    """VAR-d16 (310 M, 256 px)."""
    return VarPreset("var-d16", _official(16), VqvaeConfig())


def var_d20() -> VarPreset:
    """VAR-d20 (601 M, 256 px)."""
    return VarPreset("var-d20", _official(20), VqvaeConfig())


def var_d24() -> VarPreset:
    """VAR-d24 (1.03 B, 256 px)."""
    return VarPreset("var-d24", _official(24), VqvaeConfig())


def var_d30() -> VarPreset:
    """VAR-d30 (2.01 B, 256 px)."""
    return VarPreset("var-d30", _official(30), VqvaeConfig())


def var_d36() -> VarPreset:
    """VAR-d36-s (2.35 B, 512 px, shared AdaLN)."""
    return VarPreset("var-d36", _official(36, PATCH_NUMS_512, shared_aln=True), VqvaeConfig())


def var_tiny() -> VarPreset:
    """Random-only VAR for CI: 2 blocks x 64, the 256 patch list, the real vocabulary and code
    width (so top-k 900 and the glue are exercised as released), a slim 32-channel decoder."""
    return VarPreset(
        "var-tiny",
        VarConfig(depth=2, embed_dim=64, num_heads=2, patch_nums=PATCH_NUMS_256, block_chunks=2),
        VqvaeConfig(ch=32, num_res_blocks=1),
        random_init_only=True,
    )


def var_tiny_saln() -> VarPreset:
    """var-tiny with shared AdaLN (the d36-s code path), for tests."""
    base = var_tiny()
    cfg = VarConfig(depth=2, embed_dim=64, num_heads=2, patch_nums=PATCH_NUMS_256, shared_aln=True, block_chunks=2)
    return VarPreset("var-tiny-saln", cfg, base.vae, random_init_only=True)


VAR_PRESETS: dict[str, Callable[[], VarPreset]] = {
    "var-tiny": var_tiny, "var-tiny-saln": var_tiny_saln, "var-d16": var_d16, "var-d20": var_d20,
    "var-d24": var_d24, "var-d30": var_d30, "var-d36": var_d36,
}


def is_var_model(name: str) -> bool:
    return isinstance(name, str) and name.strip().lower().startswith("var")


def get_var_preset(name: str) -> VarPreset:
    key = name.strip().lower()
    if key not in VAR_PRESETS:
        raise StagevarError(f"VAR model {name!r} is not known; choose one of {', '.join(VAR_PRESETS)}.")
    return VAR_PRESETS[key]()
