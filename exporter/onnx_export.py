"""Tracing torch graph wrappers to ONNX with the dynamo exporter (the opset of the attention form in effect)."""

from __future__ import annotations

import contextlib
import inspect
import io
import logging
import warnings
from collections.abc import Sequence

import torch

from .attention_form import current_opset
from .onnx_registry import reused_registry
from .token_restore_op import onnx_translations
from .training_ir import skip_redundant_decomposition, training_ir_translations


@contextlib.contextmanager
def _quiet():
    """The exporter prints progress lines and warnings per graph; our CLI reports progress itself."""
    sink = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(sink):
        warnings.simplefilter("ignore")
        level = logging.getLogger("torch.onnx").level
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        try:
            yield
        finally:
            logging.getLogger("torch.onnx").setLevel(level)


def _dim(dims: dict, sym: str | tuple[str, int, int]) -> "torch.export.Dim":
    name, lo, hi = (sym, None, None) if isinstance(sym, str) else sym
    if name not in dims:
        dims[name] = torch.export.Dim(name) if lo is None else torch.export.Dim(name, min=lo, max=hi)
    return dims[name]


def _group_varargs(module: torch.nn.Module, shapes: list) -> list:
    """torch.export sees a `*args` parameter as one tuple argument: nest its shapes likewise."""
    params = list(inspect.signature(module.forward).parameters.values())
    if not params or params[-1].kind is not inspect.Parameter.VAR_POSITIONAL:
        return shapes
    named = len(params) - 1
    return shapes[:named] + [tuple(shapes[named:])]


def export_program(
    module: torch.nn.Module,
    example_args: Sequence[torch.Tensor],
    input_names: Sequence[str],
    output_names: Sequence[str],
    dynamic_axes: dict[str, dict[int, str | tuple[str, int, int]]],
    opset: int | None = None,
    optimize: bool = True,
    translations: dict | None = None,
    rewrite=None,
):
    """Trace `module` with torch.export and translate to ONNX; returns the ONNXProgram.

    `dynamic_axes` maps input names to {axis: symbolic name or (name, min, max)}; equal names
    share one dimension.
    Example inputs must have sizes >= 2 on every dynamic axis (torch.export specialises 0 and 1).
    `opset` defaults to that of the attention form being exported (exporter/attention_form.py).
    `translations` adds custom-op translations; `rewrite(model)` edits the ONNX IR model before
    the clean-up passes (block stitching, exporter/infinity/block_stitch.py).
    """
    opset = current_opset() if opset is None else opset
    dims: dict[str, torch.export.Dim] = {}
    # Positional (not keyed by argument name) so that *args wrappers work too.
    shapes = []
    for name in input_names:
        axes = dynamic_axes.get(name)
        shapes.append({axis: _dim(dims, sym) for axis, sym in axes.items()} if axes else None)
    shapes = _group_varargs(module, shapes)
    on_meta = any(p.device.type == "meta" for p in module.parameters())
    if on_meta:
        # Large-model export: weights have no storage, so trace with inputs on meta too.
        example_args = [a.to("meta") for a in example_args]
    with _quiet(), torch.no_grad(), skip_redundant_decomposition(), reused_registry():
        program = torch.onnx.export(
            module.eval(),
            tuple(example_args),
            dynamo=True,
            opset_version=opset,
            input_names=list(input_names),
            output_names=list(output_names),
            dynamic_shapes=tuple(shapes),
            custom_translation_table={**training_ir_translations(), **onnx_translations(), **(translations or {})},
            optimize=False,
            verbose=False,
        )
        if rewrite is not None:
            rewrite(program.model)
        if optimize:
            # Weights on the meta device (large-model export) have no values to fold with.
            _light_optimize(program.model, fold=not on_meta)
    return program


def _light_optimize(model, fold: bool = True) -> None:
    """Constant folding and clean-up passes of the onnxscript optimizer, without its pattern
    rewriter: the rewriter takes ~half of the export time on deep graphs, and ONNX Runtime and
    TensorRT apply their own fusions when they load the graph."""
    import onnx_ir.passes.common as common
    import onnxscript.optimizer as opt

    common.InlinePass()(model)
    if fold:
        opt.fold_constants_ir(model)
    passes = [common.RemoveUnusedNodesPass(), common.RemoveUnusedFunctionsPass(), common.RemoveUnusedOpsetsPass()]
    if fold:
        passes += [
            common.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0),
            common.DeduplicateInitializersPass(),
            common.CommonSubexpressionEliminationPass(),
        ]
    passes.append(common.NameFixPass())
    for cleanup in passes:
        cleanup(model)
