"""The `vae_decoder` graph: summed BSQ codes -> uint8 RGB image, the host conversion in-graph.

Contract (runtime/graph_io.py): codes float32 [n, code_dim, fh, fw] -> image uint8
[n, fh*f, fw*f, 3] (RGB, NHWC), dynamic n, fh, fw. Doing the uint8 conversion in the graph
means the runtime downloads 1 byte per channel instead of 4 and needs no post-processing.

Precision: in an fp16 export the convolutions run in fp16 while every GroupNorm is computed in
fp32 (cast in, cast out): the norms' variance reduction over a whole group is the part that
loses precision in fp16, the convs are where the time goes. The codes input and the image
conversion stay fp32/uint8, so the contract is the same for both precisions.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from stagevar.runtime.graph_io import VAE_DECODER, VAE_INPUTS, VAE_OUTPUTS

from ..graph_spec import graph_io_spec
from ..onnx_export import export_program
from ..onnx_io import SharedWeightsWriter, save_graph
from .vae_decoder import BSQVAEDecoder

PRECISIONS = ("fp32", "fp16")

# Example sizes for tracing: >= 2 on every dynamic axis and pairwise different, so that
# torch.export keeps n, fh and fw as three independent symbols.
_EXAMPLE_SHAPE = (2, 3, 4)  # n, fh, fw


class _Fp32Norm(nn.Module):
    """Runs a (fp32) GroupNorm on an fp16 activation: cast up, normalise, cast back."""

    def __init__(self, norm: nn.Module) -> None:
        super().__init__()
        self.inner = norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x.to(torch.float32)).to(x.dtype)


def _fp16_decoder(vae: BSQVAEDecoder) -> nn.Module:
    """A copy of `vae.decoder` with fp16 convolutions and fp32 GroupNorms (the input is untouched)."""
    decoder = copy.deepcopy(vae.decoder)
    # Collect first, then replace: swapping children while iterating named_modules is unsafe.
    norms = [(name, mod) for name, mod in decoder.named_modules() if isinstance(mod, nn.GroupNorm)]
    for name, norm in norms:
        parent_name, _, child = name.rpartition(".")
        parent = decoder.get_submodule(parent_name) if parent_name else decoder
        setattr(parent, child, _Fp32Norm(norm))
    for module in decoder.modules():
        if isinstance(module, nn.Conv2d):
            module.half()
    return decoder


class VAEDecoderGraph(nn.Module):
    """codes float32 [n, code_dim, fh, fw] -> image uint8 [n, H, W, 3] RGB.

    Equal to ``to_uint8_rgb(vae(codes))``: clamp to [-1, 1], ``(x + 1) / 2 * 255``, truncated
    toward zero. The values are >= 0, so truncation is Floor; an explicit Floor before the cast
    makes the result exact on every backend (a float->uint8 Cast alone may round or saturate
    differently).
    """

    def __init__(self, vae: BSQVAEDecoder, precision: str = "fp32") -> None:
        super().__init__()
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, not {precision!r}")
        self.precision = precision
        self.decoder = _fp16_decoder(vae) if precision == "fp16" else vae.decoder

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        """Decode, then convert to uint8 NHWC exactly as the host conversion does."""
        compute = torch.float16 if self.precision == "fp16" else torch.float32
        img = self.decoder(codes.to(compute)).to(torch.float32)
        # The clamp is the one BSQVAEDecoder.forward applies; to_uint8_rgb's second one is a no-op.
        img = torch.clamp(img, -1.0, 1.0)
        pixels = torch.floor((img + 1.0) / 2.0 * 255.0)
        return pixels.to(torch.uint8).permute(0, 2, 3, 1)


def _example_codes(code_dim: int) -> torch.Tensor:
    n, fh, fw = _EXAMPLE_SHAPE
    gen = torch.Generator().manual_seed(0)
    return torch.randn(n, code_dim, fh, fw, generator=gen)


def export_vae_decoder(bundle, folder: Path, precision: str = "fp32") -> dict:
    """Export `bundle.vae` to `folder/vae_decoder.onnx` + `folder/vae_decoder.weights`.

    Returns a record for the manifest: graph name, files, the precision requested and built
    (fp16 = fp16 convolutions, fp32 GroupNorms and I/O), and the I/O spec read from the file.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, not {precision!r}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    graph = VAEDecoderGraph(bundle.vae, precision).eval()
    (codes_name,) = VAE_INPUTS
    dynamic = {codes_name: {0: "n", 2: "fh", 3: "fw"}}
    program = export_program(graph, (_example_codes(bundle.vae.config.code_dim),),
                             VAE_INPUTS, VAE_OUTPUTS, dynamic)
    path = folder / f"{VAE_DECODER}.onnx"
    writer = SharedWeightsWriter(folder / f"{VAE_DECODER}.weights")
    try:
        save_graph(program, path, writer)
    finally:
        writer.close()
    record = {
        "graph": VAE_DECODER,
        "file": path.name,
        "weights": writer.path.name,
        "requested_precision": precision,
        "precision": precision,
        **graph_io_spec(path),
    }
    if precision == "fp16":
        record["note"] = "fp16 convolutions; GroupNorm, codes input and pixel conversion in fp32"
    return record
