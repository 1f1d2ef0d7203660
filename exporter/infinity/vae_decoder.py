"""BSQ-VAE decoder of Infinity (decoder only; infinity.md section 5).

The module tree reproduces the official module form key for key (``decoder.conv_in.conv.weight``,
``decoder.mid.block_1.norm1.norm.weight``, ``decoder.up.{i}.block.{j}...``,
``decoder.up.{i}.upsample.conv.conv.weight``, ``decoder.norm_out.norm.weight``,
``decoder.conv_out.conv.weight``): every conv and norm sits one level down in a ``conv``/``norm``
wrapper, as in the official ``Conv``/``Normalize`` classes. The official configuration has no
attention blocks (``cnn_attention='no'``), so there are none here.

Everything is written without in-place tensor ops so the module exports to ONNX unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class VAEDecoderConfig:
    """Shape of a flux-style BSQ-VAE decoder.

    ``code_dim`` is the number of latent channels (bits per latent pixel); level ``i`` of the
    decoder outputs ``base_channels * channel_mult[i]`` channels and every level but 0 doubles
    the resolution.
    """

    code_dim: int
    base_channels: int = 128
    channel_mult: tuple[int, ...] = (1, 2, 4, 4, 4)
    num_res_blocks: int = 2
    out_channels: int = 3
    norm_groups: int = 32
    eps: float = 1e-6

    def __post_init__(self) -> None:
        object.__setattr__(self, "channel_mult", tuple(int(m) for m in self.channel_mult))
        if self.code_dim <= 0 or not self.channel_mult or self.num_res_blocks < 1:
            raise ValueError(f"invalid VAE decoder config: {self}")
        for m in self.channel_mult:
            # GroupNorm needs every channel count divisible by the group count (infinity.md 11).
            if (self.base_channels * m) % self.norm_groups:
                raise ValueError(f"VAE decoder channels {self.base_channels * m} are not a "
                                 f"multiple of norm_groups={self.norm_groups}")

    @property
    def upsample_factor(self) -> int:
        """Pixels per latent pixel along each side (the VAE patch size)."""
        return 2 ** (len(self.channel_mult) - 1)


def vae_d32_config() -> VAEDecoderConfig:
    """Infinity-2B VAE (``infinity_vae_d32reg.pth``): 32 bits, x16 upsampling."""
    return VAEDecoderConfig(code_dim=32, channel_mult=(1, 2, 4, 4, 4))


def vae_d14_patchify_config() -> VAEDecoderConfig:
    """Infinity-8B VAE (``infinity_vae_d56_f8_14_patchify.pth``): 14 bits, x8 upsampling."""
    return VAEDecoderConfig(code_dim=14, channel_mult=(1, 2, 4, 4))


def vae_tiny_config() -> VAEDecoderConfig:
    """Small random-weight decoder for tests and demos: 32 bits, x4 upsampling, narrow."""
    return VAEDecoderConfig(code_dim=32, base_channels=32, channel_mult=(1, 2, 2),
                            num_res_blocks=1)


def _swish(x: torch.Tensor) -> torch.Tensor:
    # Written as the official x * sigmoid(x) (not F.silu) to keep the same float rounding.
    return x * torch.sigmoid(x)


class _Conv(nn.Module):
    """A 'same'-padded 2-D convolution inside the official ``Conv`` wrapper level (``.conv``)."""

    def __init__(self, cin: int, cout: int, kernel: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=1, padding=kernel // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class _Norm(nn.Module):
    """Affine GroupNorm inside the official ``Normalize`` wrapper level (``.norm``)."""

    def __init__(self, channels: int, cfg: VAEDecoderConfig) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(cfg.norm_groups, channels, eps=cfg.eps, affine=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x)


class ResnetBlock(nn.Module):
    """GN -> swish -> conv3x3 -> GN -> swish -> conv3x3, plus a 1x1 shortcut if channels change."""

    def __init__(self, cin: int, cout: int, cfg: VAEDecoderConfig) -> None:
        super().__init__()
        self.norm1 = _Norm(cin, cfg)
        self.conv1 = _Conv(cin, cout, 3)
        self.norm2 = _Norm(cout, cfg)
        self.conv2 = _Conv(cout, cout, 3)
        self.nin_shortcut = _Conv(cin, cout, 1) if cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(_swish(self.norm1(x)))
        h = self.conv2(_swish(self.norm2(h)))
        skip = x if self.nin_shortcut is None else self.nin_shortcut(x)
        return skip + h


class Upsample(nn.Module):
    """Nearest-neighbour x2 then conv3x3 (official ``use_pxsf=False`` path)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = _Conv(channels, channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _Mid(nn.Module):
    def __init__(self, channels: int, cfg: VAEDecoderConfig) -> None:
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, cfg)
        self.block_2 = ResnetBlock(channels, channels, cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.block_1(x))


class _UpLevel(nn.Module):
    def __init__(self, cin: int, cout: int, with_upsample: bool, cfg: VAEDecoderConfig) -> None:
        super().__init__()
        chans = [cin] + [cout] * (cfg.num_res_blocks + 1)
        self.block = nn.ModuleList(ResnetBlock(a, b, cfg) for a, b in zip(chans[:-1], chans[1:]))
        self.upsample = Upsample(cout) if with_upsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.block:
            x = block(x)
        return x if self.upsample is None else self.upsample(x)


class Decoder(nn.Module):
    """conv_in -> mid -> up levels (highest index first) -> GN -> swish -> conv_out."""

    def __init__(self, cfg: VAEDecoderConfig) -> None:
        super().__init__()
        top = cfg.base_channels * cfg.channel_mult[-1]
        self.conv_in = _Conv(cfg.code_dim, top, 3)
        self.mid = _Mid(top, cfg)
        # Stored low-resolution-last (up.0 is full resolution) like the official ModuleList, so
        # the channel flow is computed from the top level down and the list filled in reverse.
        levels: list[_UpLevel] = []
        cin = top
        for i in reversed(range(len(cfg.channel_mult))):
            cout = cfg.base_channels * cfg.channel_mult[i]
            levels.append(_UpLevel(cin, cout, with_upsample=i != 0, cfg=cfg))
            cin = cout
        self.up = nn.ModuleList(reversed(levels))
        self.norm_out = _Norm(cin, cfg)
        self.conv_out = _Conv(cin, cfg.out_channels, 3)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))
        for i in reversed(range(len(self.up))):
            h = self.up[i](h)
        return self.conv_out(_swish(self.norm_out(h)))


class BSQVAEDecoder(nn.Module):
    """Summed BSQ codes (B, code_dim, h, w) float32 -> image (B, 3, h*f, w*f) in [-1, 1]."""

    def __init__(self, config: VAEDecoderConfig) -> None:
        super().__init__()
        self.config = config
        self.decoder = Decoder(config)

    def forward(self, codes_BCHW: torch.Tensor) -> torch.Tensor:
        """Decode and clamp to [-1, 1] as the official ``decode`` does."""
        return torch.clamp(self.decoder(codes_BCHW), -1.0, 1.0)

    @staticmethod
    def to_uint8_rgb(img: torch.Tensor) -> torch.Tensor:
        """See :func:`to_uint8_rgb`."""
        return to_uint8_rgb(img)


def to_uint8_rgb(img: torch.Tensor) -> torch.Tensor:
    """Image (B, 3, H, W) in [-1, 1] -> (B, H, W, 3) uint8 RGB, as the official script converts.

    ``(img + 1) / 2 * 255`` truncated toward zero (not rounded), matching the official
    ``.to(torch.uint8)``. The channels stay RGB: the official script flips them to BGR only
    because it writes the file with cv2; we hand RGB to callers and image writers.
    """
    img = torch.clamp(img, -1.0, 1.0)
    return ((img + 1.0) / 2.0 * 255.0).permute(0, 2, 3, 1).to(torch.uint8)
