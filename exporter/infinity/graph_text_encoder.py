"""The `text_encoder` graph: T5 encoder, (input_ids, attention_mask) -> text_features.

Contract (runtime/graph_io.py): input_ids int64 [n, t], attention_mask int64 [n, t]
-> text_features float32 [n, t, Ct5], dynamic n and t.

Precision: the graph stays fp32 even in an fp16 export. T5 v1.1 / flan-T5 activations overflow
fp16 in the feed-forward output (`wo`), which is why HF keeps `wo` in fp32; the encoder runs
once per prompt batch, so fp16 would buy little and risk inf/NaN text features. The returned
record says what was requested and what was built.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from stagevar.runtime.graph_io import TEXT_ENCODER, TEXT_ENCODER_INPUTS, TEXT_ENCODER_OUTPUTS

from ..graph_spec import graph_io_spec
from ..onnx_export import export_program
from ..onnx_io import SharedWeightsWriter, save_graph
from .text_encoder import T5TextEncoder

PRECISIONS = ("fp32", "fp16")

# Example sizes for tracing: >= 2 on every dynamic axis (torch.export specialises 0 and 1),
# and n != t so the two symbols are not mistaken for one.
_EXAMPLE_N = 2
_EXAMPLE_T = 5

_FP16_NOTE = ("T5 overflows in fp16 (HF keeps the feed-forward 'wo' in fp32); "
              "the text encoder is kept fp32")


class TextEncoderGraph(nn.Module):
    """(input_ids int64 [n, t], attention_mask int64 [n, t]) -> text_features float32 [n, t, Ct5]."""

    def __init__(self, encoder: T5TextEncoder) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Encoder hidden states; rows past a prompt's length are padding (the mask hides them)."""
        return self.encoder(input_ids, attention_mask).to(torch.float32)


def _example_inputs(vocab_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(2, vocab_size, (_EXAMPLE_N, _EXAMPLE_T), generator=gen, dtype=torch.int64)
    mask = torch.ones(_EXAMPLE_N, _EXAMPLE_T, dtype=torch.int64)
    mask[1, 3:] = 0  # a padded row, so the masked path is what gets traced
    return ids, mask


def export_text_encoder(bundle, folder: Path, precision: str = "fp32", source=None) -> dict:
    """Export `bundle.text_encoder` to `folder/text_encoder.onnx` + `folder/text_encoder.weights`.

    Returns a record for the manifest: graph name, files, the precision requested and the one
    built (always fp32, see the module docstring), and the I/O spec read back from the file.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, not {precision!r}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    graph = TextEncoderGraph(bundle.text_encoder).eval()
    axes = {"n": 0, "t": 1}
    dynamic = {name: {axis: sym for sym, axis in axes.items()} for name in TEXT_ENCODER_INPUTS}
    program = export_program(graph, _example_inputs(bundle.text_encoder.config.vocab_size),
                             TEXT_ENCODER_INPUTS, TEXT_ENCODER_OUTPUTS, dynamic)
    path = folder / f"{TEXT_ENCODER}.onnx"
    writer = SharedWeightsWriter(folder / f"{TEXT_ENCODER}.weights")
    try:
        save_graph(program, path, writer, *(() if source is None else (source,)))
    finally:
        writer.close()
    record = {
        "graph": TEXT_ENCODER,
        "file": path.name,
        "weights": writer.path.name,
        "requested_precision": precision,
        "precision": "fp32",
        **graph_io_spec(path),
    }
    if precision != "fp32":
        record["note"] = _FP16_NOTE
    return record
