"""Architecture configuration of an Infinity transformer (reference/infinity.md §1.1)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class InfinityConfig:
    """Hyper-parameters of one Infinity transformer.

    Only the inference configuration of the released checkpoints is modelled: shared AdaLN,
    head AdaLN, cosine self-attention, LayerNorm (no RMSNorm), 2-D RoPE normalised by the
    template's final grid, level embedding added before the first block only.
    """

    depth: int
    embed_dim: int  # C (= D, the condition width)
    num_heads: int
    block_chunks: int
    text_channels: int  # Ct5: width of the T5 features
    text_maxlen: int  # rows of the learned null text `cfg_uncond`
    code_dim: int  # channels of the VAE code map (32 for 2B, 14 for 8B)
    patchify: bool  # 8B: 2x2 pixel-unshuffle of the code map into each token
    mlp_ratio: float = 4.0
    norm_eps: float = 1e-6
    num_levels: int = 15  # rows of lvl_embed

    def __post_init__(self) -> None:
        if self.embed_dim % self.num_heads:
            raise ValueError("embed_dim must be a multiple of num_heads")
        if self.depth % self.block_chunks:
            raise ValueError("depth must be a multiple of block_chunks")
        if self.text_channels % 128:
            # Text pooling uses text_channels // 128 heads (reference/infinity.md §11).
            raise ValueError("text_channels must be a multiple of 128")

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @property
    def blocks_per_chunk(self) -> int:
        return self.depth // self.block_chunks

    @property
    def bits_per_token(self) -> int:
        """d: bits predicted per transformer token (code_dim, times 4 with patchify)."""
        return self.code_dim * (4 if self.patchify else 1)

    @property
    def vocab_out(self) -> int:
        """V: head outputs per token, two logits (bit 0, bit 1) per bit."""
        return 2 * self.bits_per_token

    @property
    def ffn_hidden(self) -> int:
        return round(self.embed_dim * self.mlp_ratio / 256) * 256

    @property
    def pool_heads(self) -> int:
        return self.text_channels // 128

    def config_hash(self) -> str:
        """Stable short hash of the architecture, recorded in manifests."""
        blob = json.dumps(asdict(self), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]
