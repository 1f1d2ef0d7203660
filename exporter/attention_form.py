"""How the exported graphs carry attention: one fused ONNX `Attention` node, or MatMul/Softmax/MatMul.

`fused` (the default) exports at opset 23, where `scaled_dot_product_attention` becomes one ONNX
`Attention` node: ONNX Runtime runs it with its fused kernels (CPU and CUDA) and TensorRT >= 10.14
parses it. `decomposed` exports at opset 20, where the exporter spells attention out as
MatMul/Softmax/MatMul: for TensorRT older than 10.14 (which fuses that pattern itself).

Only the self-attention (over the K/V cache, no mask) is fused. The text cross-attention and the
text pooling carry a key mask that broadcasts over the queries, which ONNX Runtime's CPU `Attention`
refuses (its mask must be shaped like the scores); their scores are (queries x text tokens), small
next to (queries x all past tokens), so they stay decomposed in both forms.

ONNX Runtime's CPU `Attention` still materialises the whole (rows x heads x queries x keys) score
tensor of one node. On the largest scales that is GBs, so the fused self-attention splits the queries
into `query_chunks` sequential nodes (chosen per export from its largest scale, `query_chunks_for`).

The form is in effect while an export traces (`attention_export`); eager torch (the reference
sampler, the check's torch side) is unaffected.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from dataclasses import asdict, dataclass

from stagevar.runtime.errors import StagevarError

FUSED, DECOMPOSED = "fused", "decomposed"
ATTENTION_FORMS = (FUSED, DECOMPOSED)
DEFAULT_ATTENTION = FUSED
# ONNX `Attention` exists from opset 23; the decomposed form keeps the opset it always had.
OPSETS = {FUSED: 23, DECOMPOSED: 20}
FUSED_OP = "Attention"
# TensorRT's ONNX parser imports `Attention` from this version on.
TRT_MIN_FOR_FUSED = (10, 14)
# Largest score tensor one fused node may materialise on ONNX Runtime's CPU provider.
SCORE_BUDGET_BYTES = 512 * 1024 * 1024
MAX_QUERY_CHUNKS = 16


@dataclass(frozen=True)
class AttentionSpec:
    form: str = DEFAULT_ATTENTION
    query_chunks: int = 1

    @property
    def opset(self) -> int:
        return OPSETS[self.form]

    def manifest_entry(self) -> dict:
        """What the manifest records (`attention`)."""
        op = FUSED_OP if self.form == FUSED else "MatMul/Softmax/MatMul"
        return {**asdict(self), "opset": self.opset, "self_attention_op": op}


def check_form(form: str) -> str:
    if form not in ATTENTION_FORMS:
        raise StagevarError(f"--attention {form!r} is not known; choose fused or decomposed.")
    return form


def query_chunks_for(rows: int, heads: int, queries: int, keys: int, budget: int = SCORE_BUDGET_BYTES) -> int:
    """Sequential query chunks that keep one node's fp32 scores (rows x heads x q x k) within `budget`."""
    scores = rows * heads * queries * keys * 4
    return max(1, min(MAX_QUERY_CHUNKS, math.ceil(scores / budget), queries))


_current: contextvars.ContextVar[AttentionSpec | None] = contextvars.ContextVar("stagevar_attention", default=None)


@contextlib.contextmanager
def attention_export(spec: AttentionSpec):
    """Trace with this attention form (and opset) in effect."""
    check_form(spec.form)
    token = _current.set(spec)
    try:
        yield spec
    finally:
        _current.reset(token)


def current_spec() -> AttentionSpec | None:
    """The spec of the export being traced; None in eager torch."""
    return _current.get()


def current_opset() -> int:
    spec = _current.get()
    return (spec or AttentionSpec(DECOMPOSED)).opset
