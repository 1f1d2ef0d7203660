"""Translating torch.export's program to ONNX without re-tracing it for decompositions.

torch.onnx.export traces the module once with torch.export (training IR) and then a second
time in `ExportedProgram.run_decompositions`, to replace every op that has no ONNX translation.
The second trace is the larger half of an export's time (33 of 74 s on the default model,
scripts/export_phases.py): every op goes through fake tensors and symbolic shapes again. Yet
nearly all ops of our graphs already have translations; the few that do not are spelled here
with the translations their decompositions would have got. An in-place op (HF T5's position
bias does one `add_`) is translated as its functional form only where nothing else can see the
difference: its input is a fresh tensor (not a view) that nothing else reads. A graph whose ops
all translate skips the second trace; any other graph (an op we do not know, another in-place
op) is decomposed as before.
"""

from __future__ import annotations

import contextlib

import torch

# Ops that the exporter removes after decomposition (torch.onnx _fx_passes.remove_assertion_nodes).
_ASSERTIONS = {
    "aten.sym_constrain_range_for_size.default", "aten._assert_async.default", "aten._assert_async.msg",
    "aten._assert_scalar.default", "aten._assert_tensor_metadata.default",
}


def training_ir_translations() -> dict:
    """custom_translation_table entries for the training-IR ops that have none in torchlib."""
    from onnxscript.function_libs.torch_lib.ops import core

    def to_dtype(self, dtype, non_blocking=False, copy=False, memory_format=None):
        return core.aten__to_copy(self, dtype=dtype)

    def to_device(self, device, dtype, non_blocking=False, copy=False, memory_format=None):
        return core.aten__to_copy(self, dtype=dtype)

    def to_dtype_layout(self, dtype=None, layout=None, device=None, pin_memory=None, non_blocking=False, copy=False,
                        memory_format=None):
        return core.aten__to_copy(self, dtype=-1 if dtype is None else dtype)

    aten = torch.ops.aten
    return {
        aten.to.dtype: to_dtype,
        aten.to.device: to_device,
        aten.to.dtype_layout: to_dtype_layout,
        aten.item.default: core.aten__local_scalar_dense,
        aten.__and__.Tensor: core.aten_bitwise_and,
        aten.min.other: core.aten_minimum,
        aten.add_.Tensor: core.aten_add,  # only where _unobservable_mutation holds
    }


def _translatable(program: torch.export.ExportedProgram, registry) -> bool:
    from torch.onnx._internal.exporter import _decomp

    known = set(_decomp.get_onnx_implemented_overloads(registry))
    for node in program.graph.nodes:
        if node.op != "call_function" or not isinstance(node.target, torch._ops.OpOverload):
            continue
        if node.target not in known and str(node.target) not in _ASSERTIONS:
            return False
        if node.target._schema.is_mutable and not _unobservable_mutation(node):
            return False  # needs functionalisation: the second trace does it
    return True


def _unobservable_mutation(node) -> bool:
    """An in-place op whose functional form gives the same graph: it mutates a fresh tensor (the
    output of an op that returns no alias of its inputs) that no other node reads."""
    target = node.args[0] if node.args else None
    if getattr(target, "op", None) != "call_function" or list(target.users) != [node]:
        return False
    producer = target.target
    return isinstance(producer, torch._ops.OpOverload) and not producer._schema.is_mutable and not any(
        ret.alias_info is not None for ret in producer._schema.returns)


@contextlib.contextmanager
def skip_redundant_decomposition():
    """Within: torch.onnx.export decomposes only programs that have an op it cannot translate."""
    from torch.onnx._internal.exporter import _fx_passes

    original = _fx_passes.decompose_with_registry

    def decompose(program, registry):
        return program if _translatable(program, registry) else original(program, registry)

    _fx_passes.decompose_with_registry = decompose
    try:
        yield
    finally:
        _fx_passes.decompose_with_registry = original
