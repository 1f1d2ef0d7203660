"""The BSQ-VAE of the Infinity family, for training: an encoder, the multi-scale binary
spherical quantizer, and the project's own decoder (exported as any Infinity VAE decoder).

Quantizer (Infinity's multi-scale BSQ, reference/infinity.md section 5): the encoder output z is
l2-normalised per latent pixel; for every scale of the schedule the residual z - sum is
area-downsampled to the scale's grid, its signs become bits (bit 1 = positive code), the codes
+-1/sqrt(d) are bilinearly upsampled to the final grid and added to the running sum. This is
exactly the accumulation the runtime performs when sampling (runtime/codes.py), so the labels
the transformer learns are the bits it later samples.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..infinity.vae_decoder import BSQVAEDecoder, ResnetBlock, VAEDecoderConfig, _swish


class Encoder(nn.Module):
    """Mirror of the decoder: conv_in, per level ResnetBlocks then a stride-2 conv, conv_out."""

    def __init__(self, cfg: VAEDecoderConfig) -> None:
        super().__init__()
        chans = [cfg.base_channels * m for m in cfg.channel_mult]
        self.conv_in = nn.Conv2d(3, chans[0], 3, padding=1)
        layers: list[nn.Module] = []
        cin = chans[0]
        for i, cout in enumerate(chans):
            layers.append(ResnetBlock(cin, cout, cfg))
            if i != len(chans) - 1:
                layers.append(nn.Conv2d(cout, cout, 3, stride=2, padding=1))
            cin = cout
        self.body = nn.Sequential(*layers)
        self.norm_out = nn.GroupNorm(cfg.norm_groups, cin, eps=cfg.eps)
        self.conv_out = nn.Conv2d(cin, cfg.code_dim, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_out(_swish(self.norm_out(self.body(self.conv_in(x)))))


def multiscale_quantize(z: torch.Tensor, scales: tuple[tuple[int, int], ...]) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """(summed codes on the final grid, bits (B, h*w, d) int64 per scale, inputs per scale).

    inputs[k] (k >= 1) is what the transformer sees at scale k: the running sum of scales < k,
    bilinearly downsampled to scale k's grid, as (B, h*w, d) channels-last tokens.
    """
    d = z.shape[1]
    final = tuple(z.shape[2:])
    z = F.normalize(z, dim=1)
    mag = 1.0 / d**0.5
    acc = torch.zeros_like(z)
    bits, inputs = [], []
    for k, hw in enumerate(scales):
        if k:
            x = F.interpolate(acc, size=hw, mode="bilinear", align_corners=False)
            inputs.append(x.flatten(2).transpose(1, 2))
        r = F.interpolate(z - acc, size=hw, mode="area")
        b = (r > 0).long()
        code = (2.0 * b - 1.0) * mag
        acc = acc + (code if hw == final else F.interpolate(code, size=final, mode="bilinear", align_corners=False))
        bits.append(b.flatten(2).transpose(1, 2))
    return acc, bits, inputs


class BSQVAE(nn.Module):
    """Encoder + multi-scale quantizer + decoder; `decoder` is the exported BSQVAEDecoder."""

    def __init__(self, cfg: VAEDecoderConfig) -> None:
        super().__init__()
        self.encoder = Encoder(cfg)
        self.decoder = BSQVAEDecoder(cfg)

    def forward(self, images: torch.Tensor, scales) -> tuple[torch.Tensor, torch.Tensor]:
        """(reconstruction in [-1, 1], commitment loss); straight-through gradient to the encoder."""
        z = self.encoder(images)
        acc, _, _ = multiscale_quantize(z, scales)
        zn = F.normalize(z, dim=1)
        commit = F.mse_loss(zn, acc.detach())
        zq = zn + (acc - zn).detach()
        return self.decoder.decoder(zq).clamp(-1.5, 1.5), commit


def images_to_tensor(images_uint8) -> torch.Tensor:
    """(N, H, W, 3) uint8 numpy -> (N, 3, H, W) float in [-1, 1]."""
    x = torch.from_numpy(images_uint8).float().permute(0, 3, 1, 2)
    return x / 127.5 - 1.0
