"""StageVAR rank tables: the released one (packaged TSV, sen-mao/FasterVAR) and calibrated ones.

Rows are keyed by the energy threshold alpha (strings as released, e.g. "0.96") and the scale
side of the released 1:1 1M schedule (40, 48, 64). We apply them by position instead: the rows
for 40/48/64 are the ratios of the 1st/2nd/3rd fidelity scale of any template.

`RankTable` is what plans use: the released table (8 chunks), a table measured for one export
by `stagevar-export calibrate` (any chunk count, stored in the export as rank_table.json), or
no table at all (a model whose chunk count the released table does not fit, before calibration).
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from dataclasses import dataclass, field
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


RELEASED = "released"
CALIBRATED = "calibrated"
NONE = "none"
#: Format tag of rank_table.json (a calibrated table inside an export).
TABLE_FORMAT = "stagevar-rank-table/1"


@dataclass(frozen=True, eq=False)
class RankTable:
    """Per-alpha rank ratios: `rows[alpha][p][c]` for fidelity scale position p and block chunk c.

    `source` is "released", "calibrated" or "none" (no table: low-rank plans are refused);
    `provenance` says how a calibrated table was measured (prompts hash, seeds, alphas, model
    hash, date, method). The rank of chunk c at a scale of M tokens is min(M, int(ratio*M)+1).
    """

    source: str
    rows: dict = field(default_factory=dict)  # alpha string -> tuple of per-scale tuples
    provenance: dict = field(default_factory=dict)

    @property
    def alphas(self) -> tuple[str, ...]:
        return tuple(self.rows)

    @property
    def num_chunks(self) -> int:
        """Ratios per scale row (0 for no table)."""
        for per_scale in self.rows.values():
            return len(per_scale[0])
        return 0

    @property
    def num_scales(self) -> int:
        """Fidelity scales the table covers (3)."""
        for per_scale in self.rows.values():
            return len(per_scale)
        return 0

    def canonical_alpha(self, alpha: str | float) -> str:
        """This table's spelling of `alpha`; an alpha it does not hold is refused in one sentence."""
        if self.source == RELEASED:
            return canonical_alpha(alpha)
        if isinstance(alpha, str) and alpha.strip() in self.rows:
            return alpha.strip()
        try:
            value = float(alpha)
            for key in self.rows:
                if float(key) == value:
                    return key
        except (TypeError, ValueError):
            pass
        held = ", ".join(self.rows) or "none"
        raise StagevarError(f"Rank-table alpha {alpha!r} is not in this export's {self.source} table (it holds "
                            f"{held}); pick one of those or run `stagevar-export calibrate DIR --alpha {alpha}`.")

    def ratios(self, alpha: str | float) -> tuple[tuple[float, ...], ...]:
        """Per-chunk ratios of each fidelity scale for one alpha."""
        return self.rows[self.canonical_alpha(alpha)]

    def describe(self) -> str:
        """One line for reports: "released (FasterVAR, Infinity-2B)" or "calibrated 2026-12-03 ..."."""
        if self.source == RELEASED:
            return "released (FasterVAR, measured on Infinity-2B)"
        if self.source == CALIBRATED:
            p = self.provenance
            return (f"calibrated {p.get('date', '?')} ({p.get('num_prompts', '?')} prompts, "
                    f"sha256 {str(p.get('prompts_sha256', '?'))[:12]})")
        return self.source


def released_table() -> RankTable:
    """The released FasterVAR table (8 chunks, every alpha of the TSV)."""
    rows = {alpha: tuple(per_side[side] for side in TABLE_SIDES) for alpha, per_side in _load().items()}
    return RankTable(RELEASED, rows, {"source": "sen-mao/FasterVAR @0653b99 Infinity/infinity/utils/rank_ratio.py"})


NO_TABLE = RankTable(NONE)


def table_for_chunks(num_chunks: int) -> RankTable:
    """The table an export starts with: the released one if it fits the chunk count, else none."""
    return released_table() if num_chunks == TABLE_CHUNKS else NO_TABLE


# ---- calibrated tables as JSON (rank_table.json) ----------------------------------------------


def table_to_json(table: RankTable) -> dict:
    """The JSON object stored in rank_table.json (ratios as lists, alphas as strings)."""
    return {"format": TABLE_FORMAT, "source": table.source,
            "ratios": {a: [list(r) for r in rows] for a, rows in table.rows.items()},
            "provenance": table.provenance}


def table_digest(obj: dict) -> str:
    """sha256 of the canonical JSON of a table object: the manifest records it, loads check it."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def table_from_json(obj: object, num_chunks: int, where: str) -> RankTable:
    """Parse and check a calibrated table; any malformed or impossible value is refused."""

    def bad(why: str) -> StagevarError:
        return StagevarError(f"The rank table in {where} is not valid ({why}); run `stagevar-export calibrate` again.")

    if not isinstance(obj, dict) or obj.get("format") != TABLE_FORMAT:
        raise bad(f"format is not {TABLE_FORMAT}")
    ratios = obj.get("ratios")
    if not isinstance(ratios, dict) or not ratios:
        raise bad("no ratios")
    rows: dict[str, tuple[tuple[float, ...], ...]] = {}
    for alpha, per_scale in ratios.items():
        try:
            value = float(alpha)
        except ValueError:
            raise bad(f"alpha {alpha!r} is not a number") from None
        if not 0.0 < value < 1.0:
            raise bad(f"alpha {alpha} is not between 0 and 1")
        if not isinstance(per_scale, list) or len(per_scale) != NUM_TABLE_SCALES:
            raise bad(f"alpha {alpha} needs {NUM_TABLE_SCALES} scale rows")
        checked = []
        for row in per_scale:
            if not isinstance(row, list) or len(row) != num_chunks:
                raise bad(f"alpha {alpha} needs {num_chunks} ratios per scale, one per block chunk")
            for v in row:
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not 0.0 <= v <= 1.0:
                    raise bad(f"ratio {v!r} is not a number between 0 and 1")
            checked.append(tuple(float(v) for v in row))
        rows[alpha] = tuple(checked)
    provenance = obj.get("provenance")
    if not isinstance(provenance, dict):
        raise bad("no provenance")
    return RankTable(CALIBRATED, rows, provenance)


#: Scale rows of every table: the fidelity stage's three scales.
NUM_TABLE_SCALES = len(TABLE_SIDES)
