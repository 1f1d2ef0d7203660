"""The VQVAE of VAR (`vae_ch160v4096z32.pth`) in the official key layout (reference var.md §2, §4).

`VQVAE` holds every key of the official file: the encoder (structure only: generation never
runs it, but strict loading and the random checkpoints need its keys), `quant_conv`, the
decoder, `post_quant_conv` and `quantize` (codebook, the four phi convs, the hit statistics).
`decode` is what generation uses: post_quant_conv -> decoder -> clamp -> [0, 1].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import VqvaeConfig


def _norm(c: int) -> nn.GroupNorm:
    return nn.GroupNorm(32, c, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.norm1, self.conv1 = _norm(cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2, self.conv2 = _norm(cout), nn.Conv2d(cout, cout, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.nin_shortcut(x) + h


class AttnBlock(nn.Module):
    """Single-head attention over the H*W positions; qkv channel blocks [q; k; v]."""

    def __init__(self, c: int):
        super().__init__()
        self.norm = _norm(c)
        self.qkv = nn.Conv2d(c, 3 * c, 1)
        self.proj_out = nn.Conv2d(c, c, 1)

    def forward(self, x):
        B, C, H, W = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(B, 3, C, H * W).unbind(1)
        w = torch.softmax(torch.bmm(q.transpose(1, 2), k) * C**-0.5, dim=2)  # (B, HWq, HWk)
        h = torch.bmm(v, w.transpose(1, 2)).reshape(B, C, H, W)
        return x + self.proj_out(h)


class Upsample(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Downsample(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, stride=2, padding=0)


class _Mid(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.block_1, self.attn_1, self.block_2 = ResnetBlock(c, c), AttnBlock(c), ResnetBlock(c, c)

    def forward(self, x):
        return self.block_2(self.attn_1(self.block_1(x)))


class Decoder(nn.Module):
    """up.{i} is listed by level; the forward runs the deepest level (up.{last}) first."""

    def __init__(self, cfg: VqvaeConfig):
        super().__init__()
        mult, levels = cfg.ch_mult, len(cfg.ch_mult)
        block_in = cfg.block_in
        self.conv_in = nn.Conv2d(cfg.z_channels, block_in, 3, padding=1)
        self.mid = _Mid(block_in)
        ups: list[nn.Module] = []
        for i in reversed(range(levels)):
            level = nn.Module()
            out = cfg.ch * mult[i]
            blocks, attns = [], []
            for _ in range(cfg.num_res_blocks + 1):
                blocks.append(ResnetBlock(block_in, out))
                block_in = out
                if i == levels - 1:
                    attns.append(AttnBlock(block_in))
            level.block, level.attn = nn.ModuleList(blocks), nn.ModuleList(attns)
            if i != 0:
                level.upsample = Upsample(block_in)
            ups.insert(0, level)
        self.up = nn.ModuleList(ups)
        self.norm_out = _norm(block_in)
        self.conv_out = nn.Conv2d(block_in, 3, 3, padding=1)

    def forward(self, z):
        h = self.mid(self.conv_in(z))
        for i in reversed(range(len(self.up))):
            level = self.up[i]
            for j, block in enumerate(level.block):
                h = block(h)
                if len(level.attn):
                    h = level.attn[j](h)
            if i != 0:
                h = level.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Encoder(nn.Module):
    """Key structure of the official encoder (never run here: generation only decodes)."""

    def __init__(self, cfg: VqvaeConfig):
        super().__init__()
        mult, levels = cfg.ch_mult, len(cfg.ch_mult)
        self.conv_in = nn.Conv2d(3, cfg.ch, 3, padding=1)
        in_mult = (1,) + tuple(mult)
        downs = []
        block_in = cfg.ch
        for i in range(levels):
            level = nn.Module()
            block_in, out = cfg.ch * in_mult[i], cfg.ch * mult[i]
            blocks, attns = [], []
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResnetBlock(block_in, out))
                block_in = out
                if i == levels - 1:
                    attns.append(AttnBlock(block_in))
            level.block, level.attn = nn.ModuleList(blocks), nn.ModuleList(attns)
            if i != levels - 1:
                level.downsample = Downsample(block_in)
            downs.append(level)
        self.down = nn.ModuleList(downs)
        self.mid = _Mid(block_in)
        self.norm_out = _norm(block_in)
        self.conv_out = nn.Conv2d(block_in, cfg.z_channels, 3, padding=1)


class QuantResi(nn.Module):
    """The phi convs: qresi_ls.{k} = Conv2d(z, z, 3, padding 1); phi_k(h) = 0.5 h + 0.5 conv_k(h)."""

    def __init__(self, cfg: VqvaeConfig):
        super().__init__()
        z = cfg.z_channels
        self.qresi_ls = nn.ModuleList(nn.Conv2d(z, z, 3, padding=1) for _ in range(cfg.share_quant_resi))

    def phi(self, k: int, h: torch.Tensor) -> torch.Tensor:
        return h * (1 - 0.5) + self.qresi_ls[k](h) * 0.5


class Quantizer(nn.Module):
    def __init__(self, cfg: VqvaeConfig, num_scales: int):
        super().__init__()
        self.embedding = nn.Embedding(cfg.vocab_size, cfg.z_channels)
        self.quant_resi = QuantResi(cfg)
        # Training statistics (one row per scale); the official loader replaces it freely.
        self.register_buffer("ema_vocab_hit_SV", torch.zeros(num_scales, cfg.vocab_size))


class VQVAE(nn.Module):
    def __init__(self, cfg: VqvaeConfig, num_scales: int = 10):
        super().__init__()
        self.config = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.quantize = Quantizer(cfg, num_scales)
        self.quant_conv = nn.Conv2d(cfg.z_channels, cfg.z_channels, 3, padding=1)
        self.post_quant_conv = nn.Conv2d(cfg.z_channels, cfg.z_channels, 3, padding=1)

    def decode(self, f_hat: torch.Tensor) -> torch.Tensor:
        """f_hat (B, z, h, w) -> image in [0, 1] (B, 3, 16h, 16w)."""
        return (self.decoder(self.post_quant_conv(f_hat)).clamp(-1, 1) + 1) * 0.5


def to_uint8_rgb(img_01: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) in [0, 1] -> (B, H, W, 3) uint8 by truncation (the official demo's conversion)."""
    return (img_01.permute(0, 2, 3, 1) * 255).to(torch.uint8)
