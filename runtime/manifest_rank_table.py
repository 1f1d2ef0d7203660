"""The rank table an export runs its low-rank plans with, as recorded in manifest.json.

manifest["rank_table"] is one of:
  {"source": "released", "alpha": "0.96", "ratios": [[...8...] x 3], ...}   the packaged table
  {"source": "none"}                                                      no table (chunk count
                                                                           the release lacks)
  {"source": "calibrated", "path": "rank_table.json", "sha256": ..., ...}  measured for this
                                                                           export by calibrate
A calibrated table lives in its own file, listed in the manifest's file digests like every
artifact, and the manifest also records the sha256 of its canonical JSON: a hand-edited or
corrupted table is refused at load even when the artifact check is quick (sizes only).
Exports written before the "source" key existed carry the released ratios and load as released.
"""

from __future__ import annotations

import json

from .errors import StagevarError
from .manifest import Manifest, _is_safe_relpath
from .rank_table import (
    CALIBRATED,
    NO_TABLE,
    NONE,
    RELEASED,
    RankTable,
    canonical_alpha,
    rank_ratios,
    released_table,
    table_digest,
    table_from_json,
)

TABLE_FILE = "rank_table.json"
RANK_RULE = "min(M, int(ratio * M) + 1)"


def released_entry(alpha: str) -> dict:
    """The manifest entry of an export that uses the released table at `alpha`."""
    return {"source": RELEASED, "alpha": alpha, "ratios": [list(r) for r in rank_ratios(alpha)], "rank": RANK_RULE}


def none_entry(num_chunks: int) -> dict:
    """The manifest entry of an export without a table (low-rank plans refused until calibrated)."""
    return {"source": NONE, "num_chunks": num_chunks,
            "hint": "run `stagevar-export calibrate DIR` to measure a table for this model"}


def calibrated_entry(table_json: dict, path: str = TABLE_FILE) -> dict:
    """The manifest entry pointing at a calibrated table file holding `table_json`."""
    prov = table_json.get("provenance", {})
    return {"source": CALIBRATED, "path": path, "sha256": table_digest(table_json),
            "alphas": list(table_json["ratios"]), "date": prov.get("date"), "rank": RANK_RULE}


def load_rank_table(manifest: Manifest, num_chunks: int) -> RankTable:
    """The RankTable of an export, checked against the model's chunk count and its digest."""
    root = manifest.root
    entry = manifest.data.get("rank_table")
    if entry is None:
        return NO_TABLE
    if not isinstance(entry, dict):
        raise StagevarError(f"manifest.json in {root} has a malformed rank_table entry; export again.")
    source = entry.get("source", RELEASED)  # exports before the "source" key used the released table
    if source == NONE:
        return NO_TABLE
    if source == RELEASED:
        return _check_released(entry, root)
    if source == CALIBRATED:
        return _load_calibrated(entry, manifest, num_chunks)
    raise StagevarError(f"manifest.json in {root} names an unknown rank table source {source!r}; export again.")


def _check_released(entry: dict, root) -> RankTable:
    # The released ratios are copied into the manifest for readers; if they no longer equal the
    # packaged table, somebody edited them, and the ranks would silently differ from the record.
    try:
        alpha = canonical_alpha(entry.get("alpha", "0.96"))
        same = [list(r) for r in rank_ratios(alpha)] == entry.get("ratios")
    except StagevarError:
        same = False
    if not same:
        raise StagevarError(f"The released rank table recorded in {root}/manifest.json differs from the packaged "
                            f"one (edited?); export again or run `stagevar-export calibrate {root}`.")
    return released_table()


def _load_calibrated(entry: dict, manifest: Manifest, num_chunks: int) -> RankTable:
    root = manifest.root
    rel = entry.get("path")
    if not _is_safe_relpath(rel) or rel not in manifest.files:
        raise StagevarError(f"manifest.json in {root} points at a rank table file that is not part of the "
                            f"export ({rel!r}); run `stagevar-export calibrate {root}` again.")
    where = f"{root}/{rel}"
    try:
        obj = json.loads((root / rel).read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise StagevarError(f"The rank table {where} is missing; run `stagevar-export calibrate {root}` again.") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StagevarError(f"The rank table {where} could not be read as JSON ({type(exc).__name__}); run "
                            f"`stagevar-export calibrate {root}` again.") from None
    if table_digest(obj) != entry.get("sha256"):
        raise StagevarError(f"The rank table {where} does not match the digest in manifest.json (corrupted or "
                            f"edited by hand); run `stagevar-export calibrate {root}` again.")
    return table_from_json(obj, num_chunks, where)
