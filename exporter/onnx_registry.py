"""One torchlib registry per process, copied for each graph instead of rebuilt.

torch.onnx.export builds its registry of ONNX translations from torchlib on every call: ~1 s of
an export's graph (0.98 s warm on this CPU; five to six graphs per export), the same work each
time. Within `reused_registry()`, the first build is kept and each call gets a copy of it (its
own lists, so the custom translations an export adds stay in that export's registry).
"""

from __future__ import annotations

import contextlib

_BASES: dict = {}


@contextlib.contextmanager
def reused_registry():
    from torch.onnx._internal.exporter import _constants, _registration

    cls = _registration.ONNXRegistry
    original = cls.__dict__["from_torchlib"]

    def from_torchlib(klass, opset_version=_constants.TORCHLIB_OPSET):
        if opset_version not in _BASES:
            _BASES[opset_version] = original.__func__(klass, opset_version=opset_version)
        base = _BASES[opset_version]
        registry = klass()
        registry._opset_version = base._opset_version
        registry.functions = {target: list(metas) for target, metas in base.functions.items()}
        return registry

    cls.from_torchlib = classmethod(from_torchlib)
    try:
        yield
    finally:
        cls.from_torchlib = original
