"""The calibrated rank table that ships with a trained preset's weights.

`stagevar-export calibrate` measures a table for one export; a trained preset (infinity-shapes)
ships the table measured on its own weights (exporter/weights/<preset>/rank_table.json), so the
default export runs `stagevar` with its calibrated ranks out of the box instead of the released
table measured on Infinity-2B. The table is installed only if its provenance names the very
weights being exported (their sha256s): a table left over from an earlier training run is
ignored with one note, and the export keeps the released table.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from stagevar.runtime.manifest import load_manifest
from stagevar.runtime.rank_table import table_from_json

from .model_bundle import InfinityBundle

SHIPPED_TABLE = "rank_table.json"


def _weights_sha256(weights_provenance: dict | None) -> dict | None:
    return ((weights_provenance or {}).get("trained") or {}).get("sha256")


def shipped_table_path(bundle: InfinityBundle) -> Path | None:
    """The shipped table next to a trained bundle's weights, or None."""
    folder = (bundle.provenance or {}).get("folder")
    if folder is None or _weights_sha256(bundle.provenance) is None:
        return None
    path = Path(folder) / SHIPPED_TABLE
    return path if path.is_file() else None


def install_shipped_table(out_dir: str | Path, bundle: InfinityBundle, say: Callable[[str], None] = print) -> bool:
    """Install the bundle's shipped table into a finished export; True if installed."""
    path = shipped_table_path(bundle)
    if path is None:
        return False
    try:
        table_json = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        say(f"note: {path} is not readable JSON; the export keeps the released rank table "
            f"(reinstall stagevar, or run `stagevar-export calibrate {out_dir}`).")
        return False
    if not isinstance(table_json, dict):
        table_json = {}
    made_for = _weights_sha256(table_json.get("provenance", {}).get("model", {}).get("weights"))
    if made_for != _weights_sha256(bundle.provenance):
        say(f"note: {path} was calibrated on other weights than these; the export keeps the released rank "
            f"table (run `stagevar-export calibrate {out_dir}` to measure one).")
        return False
    from .calibrate import record_table

    manifest = load_manifest(out_dir, verify="quick")
    table = table_from_json(table_json, int(manifest.data["model"]["config"]["block_chunks"]), str(path))
    record_table(manifest, table, table_json, say)
    return True
