"""Rank tables in exports (runtime/manifest_rank_table.py): round trip, refusals, plans."""

import json

import pytest

from stagevar.runtime.errors import StagevarError
from stagevar.runtime.manifest import load_manifest, write_manifest
from stagevar.runtime.manifest_rank_table import (
    TABLE_FILE,
    calibrated_entry,
    load_rank_table,
    none_entry,
    released_entry,
)
from stagevar.runtime.rank_table import CALIBRATED, TABLE_FORMAT, rank_ratios
from stagevar.runtime.schedules import get_schedule
from stagevar.runtime.stage_plan import make_plan, runnable_plans

SQ = get_schedule("1:1", "1M")
RATIOS = {"0.96": [[0.01, 0.25], [0.02, 0.5], [0.03, 0.125]], "0.98": [[0.05, 0.3], [0.06, 0.6], [0.07, 0.2]]}


def table_json(ratios=RATIOS):
    return {"format": TABLE_FORMAT, "source": CALIBRATED, "ratios": ratios,
            "provenance": {"date": "2026-12-03T10:00:00Z", "num_prompts": 2, "prompts_sha256": "ab" * 32}}


def export_with(root, entry, table=None):
    root.mkdir(exist_ok=True)
    if table is not None:
        (root / TABLE_FILE).write_text(json.dumps(table))
    write_manifest(root, {"family": "infinity", "rank_table": entry})
    return load_manifest(root)


def test_calibrated_table_round_trips_and_drives_the_ranks(tmp_path):
    # Guards: the runtime ignoring the calibrated table (released ranks), scale rows or chunks
    # swapped, alpha lookup by position instead of value.
    obj = table_json()
    table = load_rank_table(export_with(tmp_path / "e", calibrated_entry(obj), obj), num_chunks=2)
    assert table.source == "calibrated" and table.alphas == ("0.96", "0.98")
    full = make_plan("stagevar-full", SQ, num_chunks=2, alpha=0.98, table=table)
    assert full.ranks[10:] == ((int(0.05 * 1600) + 1, int(0.3 * 1600) + 1), (int(0.06 * 2304) + 1, int(0.6 * 2304) + 1),
                               (int(0.07 * 4096) + 1, int(0.2 * 4096) + 1))
    assert full.rank_table.startswith("calibrated 2026-12-03")
    assert make_plan("stagevar", SQ, num_chunks=2, table=table).ranks[10] == (17, 401)
    assert runnable_plans(SQ, 2, table) == ("exact", "stagevar", "stagevar-full", "cfg-off")


def test_hand_edited_table_is_refused_at_load(tmp_path):
    # Guards: trusting the table file without the manifest's digest (quick verification only checks sizes).
    obj = table_json()
    m = export_with(tmp_path / "e", calibrated_entry(obj), obj)
    edited = json.loads((m.root / TABLE_FILE).read_text())
    edited["ratios"]["0.96"][0][0] = 0.09  # same byte length: a size check cannot see it
    (m.root / TABLE_FILE).write_text(json.dumps(edited))
    assert (m.root / TABLE_FILE).stat().st_size == m.files[TABLE_FILE]["bytes"]
    with pytest.raises(StagevarError, match="does not match the digest"):
        load_rank_table(load_manifest(m.root, verify="quick"), num_chunks=2)


def test_corrupted_table_is_refused(tmp_path):
    obj = table_json()
    m = export_with(tmp_path / "e", calibrated_entry(obj), obj)
    (m.root / TABLE_FILE).write_text("{ not json")
    with pytest.raises(StagevarError, match="could not be read"):
        load_rank_table(m, num_chunks=2)


@pytest.mark.parametrize("ratios, why", [
    ({"0.96": [[0.01, 1.5], [0.02, 0.5], [0.03, 0.1]]}, "between 0 and 1"),
    ({"0.96": [[0.01], [0.02], [0.03]]}, "2 ratios per scale"),
    ({"0.96": [[0.01, 0.2], [0.02, 0.5]]}, "3 scale rows"),
    ({"1.5": [[0.01, 0.2], [0.02, 0.5], [0.03, 0.1]]}, "between 0 and 1"),
])
def test_impossible_tables_are_refused_even_with_a_matching_digest(tmp_path, ratios, why):
    # Guards: a table edited together with its digest (or written by a buggy tool) reaching plans.
    obj = table_json(ratios)
    with pytest.raises(StagevarError, match=why):
        load_rank_table(export_with(tmp_path / "e", calibrated_entry(obj), obj), num_chunks=2)


def test_released_entry_must_equal_the_packaged_table(tmp_path):
    entry = released_entry("0.96")
    assert load_rank_table(export_with(tmp_path / "a", entry), 8).source == "released"
    entry["ratios"][0][3] += 0.01
    with pytest.raises(StagevarError, match="differs from the packaged"):
        load_rank_table(export_with(tmp_path / "b", entry), 8)
    # Exports written before the "source" key (alpha + ratios only) still load as released.
    legacy = {"alpha": "0.96", "ratios": [list(r) for r in rank_ratios("0.96")]}
    assert load_rank_table(export_with(tmp_path / "c", legacy), 8).source == "released"


def test_no_table_refuses_lowrank_plans_in_one_sentence(tmp_path):
    # Guards: a 2-chunk model silently using the 8-chunk released ratios (or crashing on them).
    table = load_rank_table(export_with(tmp_path / "e", none_entry(2)), 2)
    assert runnable_plans(SQ, 2, table) == ("exact", "cfg-off")
    for plan in ("stagevar", "stagevar-full"):
        with pytest.raises(StagevarError, match="stagevar-export calibrate") as err:
            make_plan(plan, SQ, num_chunks=2, table=table)
        assert str(err.value).count(". ") == 0  # one sentence
    assert make_plan("cfg-off", SQ, num_chunks=2, table=table).rank_table is None


def test_released_table_does_not_fit_other_chunk_counts():
    with pytest.raises(StagevarError, match="needs 2 ratios per scale"):
        make_plan("stagevar", SQ, num_chunks=2)


def test_bench_reports_which_table_each_plan_used(tmp_path):
    # Guards item 5: bench plans resolved without the export's table (released ranks reported
    # for a calibrated export) and the table line missing from the printed report.
    from stagevar.runtime.bench import format_table, resolve_plans

    obj = table_json()
    table = load_rank_table(export_with(tmp_path / "e", calibrated_entry(obj), obj), num_chunks=2)
    plans = resolve_plans(["exact", "stagevar"], SQ, 2, "0.96", table)
    assert [p.rank_table for p in plans] == [None, table.describe()]
    entry = {"cold": {"total": 1.0}, "p50": {"total": 1.0}, "p90": {"total": 1.0}, "tokens": 1}
    report = {"plans": {"exact": {**entry, "rank_table": None}, "stagevar": {**entry, "rank_table": plans[1].rank_table}}}
    assert "rank table: stagevar: calibrated 2026-12-03T10:00:00Z" in format_table(report)
