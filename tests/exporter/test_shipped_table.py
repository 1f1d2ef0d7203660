"""A trained preset's shipped calibrated rank table is installed into its exports (and only then)."""

import json
import shutil
from types import SimpleNamespace

import pytest

from stagevar.exporter.infinity.shipped_table import SHIPPED_TABLE, install_shipped_table
from stagevar.runtime.manifest import load_manifest
from stagevar.runtime.pipeline import Pipeline

SHA = {"transformer": "a" * 64, "vae": "b" * 64, "text_encoder": "c" * 64}


def _bundle(folder, sha=SHA):
    return SimpleNamespace(provenance={"trained": {"sha256": dict(sha)}, "folder": str(folder)})


def _table(made_for=SHA, ratio=0.25):
    rows = [[ratio] * 8 for _ in range(3)]
    return {"format": 1, "source": "calibrated", "ratios": {"0.96": rows},
            "provenance": {"date": "2026-12-03T00:00:00Z", "num_prompts": 8,
                           "model": {"weights": {"trained": {"sha256": dict(made_for)}}}}}


@pytest.fixture()
def export_copy(tiny_artifacts, tmp_path):
    out = tmp_path / "export"
    shutil.copytree(tiny_artifacts, out)
    return out


def _write(folder, table):
    folder.mkdir(exist_ok=True)
    from stagevar.runtime.rank_table import TABLE_FORMAT

    table["format"] = TABLE_FORMAT
    (folder / SHIPPED_TABLE).write_text(json.dumps(table))


def test_table_of_these_weights_is_installed_and_used(export_copy, tmp_path):
    # Guards against the shipped table being ignored (stagevar would silently keep the released
    # ranks measured on Infinity-2B) and against a table installed without its manifest digest.
    _write(tmp_path / "w", _table(ratio=0.25))
    assert install_shipped_table(export_copy, _bundle(tmp_path / "w"), say=lambda m: None)
    manifest = load_manifest(export_copy, verify="full")
    assert manifest.data["rank_table"]["source"] == "calibrated"
    pipe = Pipeline.from_dir(export_copy)
    assert pipe.rank_table.source == "calibrated" and pipe.rank_table.ratios("0.96")[0][0] == 0.25


def test_table_of_other_weights_is_not_installed(export_copy, tmp_path):
    # Guards against a stale table (left from an earlier training run) being installed for new
    # weights: its ranks were measured on another model.
    other = dict(SHA, transformer="d" * 64)
    _write(tmp_path / "w", _table(made_for=other))
    notes = []
    assert not install_shipped_table(export_copy, _bundle(tmp_path / "w"), say=notes.append)
    assert "other weights" in notes[0]
    assert load_manifest(export_copy).data["rank_table"]["source"] == "released"


def test_no_table_or_untrained_bundle_changes_nothing(export_copy, tmp_path):
    assert not install_shipped_table(export_copy, _bundle(tmp_path / "none"))
    assert not install_shipped_table(export_copy, SimpleNamespace(provenance={"random_init": {"seed": 0}}))
    assert load_manifest(export_copy).data["rank_table"]["source"] == "released"


def test_corrupted_shipped_table_is_a_note_not_a_traceback(export_copy, tmp_path):
    # Guards against a truncated rank_table.json in the package crashing every export of the model.
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / SHIPPED_TABLE).write_text('{"format": 1, "ratios": {"0.9')
    notes = []
    assert not install_shipped_table(export_copy, _bundle(tmp_path / "w"), say=notes.append)
    assert "not readable JSON" in notes[0]
    assert load_manifest(export_copy).data["rank_table"]["source"] == "released"


def test_check_passes_on_the_default_export_with_its_shipped_table(shapes_artifacts, tmp_path):
    """`stagevar-export --check` on the README's default export. Guards against the eager
    reference running `stagevar` with the released table (by plan name) while the export runs
    its shipped calibrated one: every bit at the fidelity scales differed and the check failed."""
    from stagevar.exporter.infinity.check import check_artifacts
    from stagevar.exporter.infinity.model_bundle import InfinityBundle
    from stagevar.exporter.infinity.presets import infinity_shapes

    out = tmp_path / "export"
    shutil.copytree(shapes_artifacts, out)  # the check writes reports/ into the export
    assert load_manifest(out).data["rank_table"]["source"] == "calibrated"
    report = check_artifacts(out, InfinityBundle.shipped(infinity_shapes()))
    assert [r for r in report["rows"] if not r["ok"]] == []
    assert {r["plan"] for r in report["rows"] if r["graph"] == "end_to_end"} == {"exact", "stagevar"}
