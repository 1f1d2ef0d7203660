"""Graphs translated from torch.export's training IR without the decomposition re-trace
(exporter/training_ir.py): the same numbers as eager, and the re-trace kept where it matters."""

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn
from torch.export import ExportedProgram

from stagevar.exporter.onnx_export import export_program


# Exact comparisons below (atol 0) are between ONNX Runtime and torch on small integers, where
# every add and multiply is exact in fp32 on any CPU; the linspace test uses a tolerance.
def _run(module, x):
    program = export_program(module, (x,), ["x"], ["y"], {"x": {0: "n"}})
    session = ort.InferenceSession(program.model_proto.SerializeToString(), providers=["CPUExecutionProvider"])
    (y,) = session.run(None, {"x": x.numpy()})
    return y


class MutatesThroughAView(nn.Module):
    def forward(self, x):
        y = x * 1.0
        y[:, :2].add_(1.0)  # changes y itself, through the slice
        return y * 2.0


class MutatesAFreshTensor(nn.Module):
    """The shape of HF T5's position bias: an in-place add on a tensor nothing else reads."""

    def forward(self, x):
        t = x + 1.0
        t.add_(x * 3.0)
        return t * 2.0


def test_an_in_place_op_on_a_view_keeps_its_effect_on_the_base():
    """Guards against translating every in-place op as its functional form: the slice's add
    would then be lost from y (the graph reads y's pre-mutation node)."""
    x = torch.arange(12.0).reshape(3, 4)
    want = MutatesThroughAView()(x).numpy()
    np.testing.assert_allclose(_run(MutatesThroughAView(), x), want, rtol=0, atol=0)


def test_an_unobservable_in_place_op_translates_without_the_re_trace(monkeypatch):
    """The fast path (the reason this module exists: half of the export time) is taken for the
    in-place op T5 has, and the numbers are eager's."""

    def no_retrace(self, *args, **kwargs):
        raise AssertionError("run_decompositions re-traced a graph whose ops all translate")

    x = torch.arange(12.0).reshape(3, 4)
    want = MutatesAFreshTensor()(x).numpy()
    monkeypatch.setattr(ExportedProgram, "run_decompositions", no_retrace)
    np.testing.assert_allclose(_run(MutatesAFreshTensor(), x), want, rtol=0, atol=0)


def test_the_default_models_text_encoder_and_block_skip_the_re_trace(tiny_bundle, tmp_path, monkeypatch):
    """Guards against the fast path silently no longer applying (an op without a translation
    after a torch update, a new in-place op): the export would still work but take twice as long."""
    from stagevar.exporter.infinity.block_stitch import trace_block
    from stagevar.exporter.infinity.graph_text_encoder import export_text_encoder

    def no_retrace(self, *args, **kwargs):
        raise AssertionError("run_decompositions re-traced a graph")

    monkeypatch.setattr(ExportedProgram, "run_decompositions", no_retrace)
    export_text_encoder(tiny_bundle, tmp_path)
    model = tiny_bundle.transformer
    trace_block(model.block_chunks[0].module[0], model.config, torch.float32)


@pytest.mark.parametrize("module", [MutatesThroughAView(), MutatesAFreshTensor()])
def test_both_paths_agree_with_eager_on_other_shapes(module):
    """The dynamic row count still works after either path (no shape baked in)."""
    x = torch.linspace(-1, 1, 20).reshape(5, 4)
    np.testing.assert_allclose(_run(module, x), module(x).numpy(), rtol=0, atol=1e-6)  # ORT vs torch kernels
