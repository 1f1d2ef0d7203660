"""Which restored position each low-rank chunk output is written to (`--token-pairing`).

A LOWRANK chunk runs on r pseudo-tokens (random projections of all M tokens) and writes its r
outputs at r sampled positions. Output j goes to:
- `raster` (the default): the j-th selected position in ascending (raster) order. It depends only
  on the selected set, so a near-tie in the sampling scores cannot reorder the outputs between
  backends (runtime/lowrank.py explains the deviation);
- `sample`: the j-th position in sampling order (highest perturbed score first), as the released
  FasterVAR code pairs them (reference/stagevar.md section 4). Kept so `stagevar-eval` can measure
  the difference on a trained model.

The pairing is in effect while an export traces and while its check runs the eager reference
(`token_pairing`); the manifest records it (`token_pairing`).
"""

from __future__ import annotations

import contextlib
import contextvars

from stagevar.runtime.errors import StagevarError

RASTER, SAMPLE = "raster", "sample"
TOKEN_PAIRINGS = (RASTER, SAMPLE)
DEFAULT_PAIRING = RASTER

_current: contextvars.ContextVar[str] = contextvars.ContextVar("stagevar_token_pairing", default=DEFAULT_PAIRING)


def check_pairing(pairing: str) -> str:
    if pairing not in TOKEN_PAIRINGS:
        raise StagevarError(f"--token-pairing {pairing!r} is not known; choose raster or sample.")
    return pairing


@contextlib.contextmanager
def token_pairing(pairing: str):
    """Trace (or run the eager reference) with this pairing in effect."""
    token = _current.set(check_pairing(pairing))
    try:
        yield pairing
    finally:
        _current.reset(token)


def current_pairing() -> str:
    return _current.get()
