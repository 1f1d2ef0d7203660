"""The off-the-shelf rank table of StageVAR for Infinity (packaged TSV, sen-mao/FasterVAR).

Rows are keyed by the energy threshold alpha (strings as released, e.g. "0.96") and the scale
side of the released 1:1 1M schedule (40, 48, 64). We apply them by position instead: the rows
for 40/48/64 are the ratios of the 1st/2nd/3rd fidelity scale of any template.
"""

from __future__ import annotations

import functools
from importlib import resources

from .errors import StagevarError

_TABLE_FILE = "infinity_rank_ratios.tsv"
#: Scale sides of the table rows, in fidelity-scale order.
TABLE_SIDES = (40, 48, 64)
#: Ratios per row: one per block chunk.
TABLE_CHUNKS = 8


@functools.lru_cache(maxsize=1)
def _load() -> dict[str, dict[int, tuple[float, ...]]]:
    text = resources.files("stagevar.runtime.data").joinpath(_TABLE_FILE).read_text(encoding="utf-8")
    table: dict[str, dict[int, tuple[float, ...]]] = {}
    header_seen = False
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        fields = line.rstrip("\n").split("\t")
        if not header_seen:
            # The first non-comment line names the columns.
            header_seen = True
            continue
        alpha, side, ratios = fields[0], int(fields[1]), tuple(float(v) for v in fields[2:])
        if len(ratios) != TABLE_CHUNKS:
            raise RuntimeError(f"{_TABLE_FILE}: row {alpha}/{side} has {len(ratios)} ratios, expected {TABLE_CHUNKS}")
        table.setdefault(alpha, {})[side] = ratios
    for alpha, rows in table.items():
        if set(rows) != set(TABLE_SIDES):
            raise RuntimeError(f"{_TABLE_FILE}: alpha {alpha} has sides {sorted(rows)}, expected {TABLE_SIDES}")
    return table


def available_alphas() -> tuple[str, ...]:
    """The alphas of the table, as written in the file (descending, e.g. "0.999" ... "0.70")."""
    return tuple(_load())


def canonical_alpha(alpha: str | float) -> str:
    """The table's spelling of `alpha` ("0.9" and 0.9 -> "0.90"); unknown values are refused."""
    table = _load()
    if isinstance(alpha, str) and alpha.strip() in table:
        return alpha.strip()
    try:
        value = float(alpha)
        for key in table:
            if float(key) == value:
                return key
    except (TypeError, ValueError):
        pass
    raise StagevarError(
        f"Rank-table alpha {alpha!r} is not available; choose one of {', '.join(table)}."
    )


def rank_ratios(alpha: str | float) -> tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...]]:
    """Per-chunk rank ratios of the 1st, 2nd and 3rd fidelity scale for one alpha."""
    rows = _load()[canonical_alpha(alpha)]
    return tuple(rows[side] for side in TABLE_SIDES)  # type: ignore[return-value]
