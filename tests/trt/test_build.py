"""exporter/trt/build.py with a fake toolchain: manifest records, atomic updates, reuse, --force.

The fake writes plan bytes instead of running TensorRT, so everything around the build (keys,
staged folder, digests, failure safety, the CLI's refusal without TensorRT) is real.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from stagevar.exporter.cli_export import entry as export_entry
from stagevar.exporter.trt.build import BuildOptions, build_engines, record_check
from stagevar.exporter.trt.cli_build import run_build
from stagevar.exporter.trt.profiles import all_profiles
from stagevar.runtime import graph_io as gio
from stagevar.runtime.engine_cache import select_engine_build
from stagevar.runtime.errors import StagevarError
from stagevar.runtime.manifest import file_digests, load_manifest, sha256_file, write_manifest

DIR = "engines/trt10.14.1-sm90"  # the fake's default TensorRT (fused Attention needs >= 10.14)


def _snapshot(root: Path) -> dict:
    """Every file (manifest included) with its digest, and the folder listing."""
    return {"files": file_digests(root), "manifest": (root / "manifest.json").read_bytes(),
            "listing": sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))}


def _build(root, toolchain, **options):
    return build_engines(root, BuildOptions(**options), toolchain=toolchain, stream=sys.stderr)


def test_a_build_records_every_graph_with_digests_keys_and_profiles(export_copy, fake_toolchain):
    tool = fake_toolchain()
    result = _build(export_copy, tool)
    assert result.built == list(gio.GRAPHS) and result.changed
    manifest = load_manifest(export_copy, verify="full")  # every new file is listed and matches
    (record,) = manifest.data["trt_builds"]
    assert record["dir"] == DIR and record["tensorrt"] == "10.14.1.48" and record["compute_capability"] == "9.0"
    assert record["device_name"] == "Fake GPU" and record["plugins"] is None
    assert record["flags"] == {"optimization_level": 3, "workspace_bytes": None, "strongly_typed": True}
    assert record["timing_cache"] == f"{DIR}/timing.cache" and record["timing_cache"] in manifest.files
    profiles = all_profiles(manifest.data)
    for graph in gio.GRAPHS:
        g = record["graphs"][graph]
        assert g["plan"] == f"{DIR}/{graph}.plan"
        assert manifest.files[g["plan"]]["sha256"] == sha256_file(export_copy / g["plan"])
        assert g["onnx_sha256"] == manifest.files[manifest.graphs[graph]["path"]]["sha256"]
        assert g["weights_sha256"] == manifest.files[manifest.graphs[graph]["weights"]]["sha256"]
        assert g["profiles"] == [p.to_json() for p in profiles[graph]] and len(g["key"]) == 64
        assert graph in record["built_seconds"]
    assert select_engine_build(manifest, "10.14.1.1", "9.0") == record
    # Nothing else left behind: no hidden partial folder, no Polygraphy lock file.
    assert sorted(p.name for p in (export_copy / "engines").iterdir()) == ["trt10.14.1-sm90"]
    assert not list((export_copy / DIR).glob("*.lock"))
    # Progress lines per engine and phase.
    assert tool.phases[:3] == ["text_encoder: parse", "text_encoder: build", "text_encoder: serialize"]


def test_unchanged_keys_skip_the_build_and_leave_the_export_alone(export_copy, fake_toolchain):
    _build(export_copy, fake_toolchain())
    before = _snapshot(export_copy)
    again = fake_toolchain()
    result = _build(export_copy, again)
    assert again.built == [] and not result.changed and result.reused == list(gio.GRAPHS)
    assert _snapshot(export_copy) == before


def test_force_rebuilds_every_engine_and_updates_the_digests(export_copy, fake_toolchain):
    _build(export_copy, fake_toolchain())
    old = load_manifest(export_copy).data
    tool = fake_toolchain()
    _build(export_copy, tool, force=True)
    assert tool.built == list(gio.GRAPHS)
    new = load_manifest(export_copy, verify="full").data
    for graph in gio.GRAPHS:
        plan = f"{DIR}/{graph}.plan"
        assert new["files"][plan]["sha256"] != old["files"][plan]["sha256"]
        assert new["trt_builds"][0]["graphs"][graph]["key"] == old["trt_builds"][0]["graphs"][graph]["key"]
    # The timing cache grew across both builds (loaded from the previous folder, then updated).
    assert (export_copy / DIR / "timing.cache").read_bytes().count(b"+step") == 2


def test_a_changed_key_rebuilds_only_that_engine(export_copy, fake_toolchain):
    _build(export_copy, fake_toolchain())
    data = load_manifest(export_copy).data
    data["trt_builds"][0]["graphs"]["step"]["key"] = "0" * 64  # as if step's inputs had changed
    write_manifest(export_copy, {k: v for k, v in data.items() if k not in ("files", "schema_version")})
    kept = {g: sha256_file(export_copy / DIR / f"{g}.plan") for g in gio.GRAPHS}
    tool = fake_toolchain()
    result = _build(export_copy, tool)
    assert tool.built == ["step"] and sorted(result.reused) == sorted(set(gio.GRAPHS) - {"step"})
    manifest = load_manifest(export_copy, verify="full")
    for graph in gio.GRAPHS:
        same = sha256_file(export_copy / DIR / f"{graph}.plan") == kept[graph]
        assert same == (graph != "step")
    assert manifest.data["trt_builds"][0]["graphs"]["step"]["key"] != "0" * 64


def test_build_flags_and_plugins_are_part_of_the_key(export_copy, fake_toolchain, tmp_path):
    _build(export_copy, fake_toolchain())
    keys = {g: e["key"] for g, e in load_manifest(export_copy).data["trt_builds"][0]["graphs"].items()}
    tool = fake_toolchain()
    _build(export_copy, tool, optimization_level=5)
    assert tool.built == list(gio.GRAPHS)
    level5 = load_manifest(export_copy, verify="full").data["trt_builds"][0]
    assert level5["flags"]["optimization_level"] == 5
    assert all(level5["graphs"][g]["key"] != keys[g] for g in gio.GRAPHS)
    plugin = tmp_path / "libstagevar_trt_plugin.so"
    plugin.write_bytes(b"fake plugin library")
    tool = fake_toolchain()
    _build(export_copy, tool, optimization_level=5, plugins=plugin)
    assert tool.built == list(gio.GRAPHS) and tool.plugins == [plugin]
    manifest = load_manifest(export_copy, verify="full")
    record = manifest.data["trt_builds"][0]
    assert record["plugins"] == {"file": plugin.name, "sha256": sha256_file(plugin)}
    # The library travels with the engines (the runtime loads <dir>/<file> by default).
    assert manifest.files[f"{DIR}/{plugin.name}"]["sha256"] == sha256_file(plugin)
    # The fidelity graph's TokenRestore nodes are handed to the plugin: TensorRT parses a variant
    # that calls the plugin by name and has no function body to fall back to; it is removed after.
    fidelity = next(r for r in tool.requests if r.graph == gio.FIDELITY)
    chunks = load_manifest(export_copy).data["model"]["config"]["block_chunks"]
    assert fidelity.custom_nodes == chunks and record["graphs"]["fidelity"]["plugin_layers"] == chunks
    parsed = tool.parsed[gio.FIDELITY]
    assert parsed["stagevar_ops"] == ["StageVarTokenRestore"] * chunks and parsed["functions"] == []
    assert not parsed["path"].exists() and parsed["path"].parent == (export_copy / "onnx")
    assert tool.parsed[gio.STEP]["path"] == export_copy / "onnx" / "step.onnx"
    # Without --plugins the export's own graph is parsed (TensorRT inlines the function).
    plain = fake_toolchain()
    _build(export_copy, plain, optimization_level=4)
    assert plain.parsed[gio.FIDELITY]["stagevar_ops"] == ["TokenRestore"] * chunks
    assert plain.parsed[gio.FIDELITY]["functions"] == ["TokenRestore"]


def test_a_plugin_that_parses_to_no_plugin_layers_is_refused(export_copy, fake_toolchain, tmp_path):
    plugin = tmp_path / "libother.so"
    plugin.write_bytes(b"a library registering other plugins")
    before = _snapshot(export_copy)
    with pytest.raises(StagevarError) as info:
        _build(export_copy, fake_toolchain(plugin_layers=0), plugins=plugin)
    assert "custom nodes of the fidelity graph" in str(info.value)
    assert _snapshot(export_copy) == before


def test_another_tensorrt_version_adds_a_second_build(export_copy, fake_toolchain):
    _build(export_copy, fake_toolchain())
    _build(export_copy, fake_toolchain(trt_version="10.15.0.26", cc="8.9"))
    manifest = load_manifest(export_copy, verify="full")
    dirs = [b["dir"] for b in manifest.data["trt_builds"]]
    assert dirs == [DIR, "engines/trt10.15.0-sm89"]
    assert select_engine_build(manifest, "10.15.0.26", "8.9")["dir"] == "engines/trt10.15.0-sm89"
    with pytest.raises(StagevarError, match="sm_90 and with TensorRT 10.15.0 for sm_89"):
        select_engine_build(manifest, "10.14.1.34", "8.0")


@pytest.mark.parametrize("how", ["error", "interrupt"])
def test_a_failed_build_leaves_the_previous_engines_and_manifest(export_copy, fake_toolchain, how):
    _build(export_copy, fake_toolchain())
    before = _snapshot(export_copy)
    tool = fake_toolchain(**{"fail_on" if how == "error" else "interrupt_on": gio.FIDELITY})
    with pytest.raises(StagevarError if how == "error" else KeyboardInterrupt):
        _build(export_copy, tool, force=True)
    assert tool.built == [gio.TEXT_ENCODER, gio.TEXT_COND, gio.STEP]  # it got that far
    assert _snapshot(export_copy) == before
    load_manifest(export_copy, verify="full")


def test_a_first_failed_build_leaves_no_engines(export_copy, fake_toolchain):
    before = _snapshot(export_copy)
    with pytest.raises(StagevarError):
        _build(export_copy, fake_toolchain(fail_on=gio.STEP))
    after = _snapshot(export_copy)
    assert after == before and not (export_copy / "engines").exists()


def test_modified_onnx_is_refused_before_building(export_copy, fake_toolchain):
    with open(export_copy / "onnx" / "step.onnx", "ab") as f:
        f.write(b"\0")
    tool = fake_toolchain()
    with pytest.raises(StagevarError, match="onnx/step.onnx .* does not match manifest.json"):
        _build(export_copy, tool)
    assert tool.built == []


def test_an_interrupted_swap_is_repaired_by_building_again(export_copy, fake_toolchain):
    _build(export_copy, fake_toolchain())
    # The state a kill between the folder swap and the manifest rewrite leaves: plans that the
    # manifest does not describe. The runtime refuses them; building again repairs the export.
    (export_copy / DIR / "step.plan").write_bytes(b"a plan from an interrupted build")
    with pytest.raises(StagevarError):
        load_manifest(export_copy, verify="full")
    tool = fake_toolchain()
    _build(export_copy, tool)
    assert tool.built == ["step"]
    load_manifest(export_copy, verify="full")


def test_the_timing_cache_option_seeds_and_receives_the_cache(export_copy, fake_toolchain, tmp_path):
    shared = tmp_path / "shared" / "timing.cache"
    _build(export_copy, fake_toolchain(), timing_cache=shared)
    assert shared.read_bytes() == (export_copy / DIR / "timing.cache").read_bytes()
    shared.write_bytes(b"seeded")
    _build(export_copy, fake_toolchain(), timing_cache=shared, force=True)
    assert (export_copy / DIR / "timing.cache").read_bytes().startswith(b"seeded+")


def test_the_check_verdict_is_recorded_and_the_report_stays_unlisted(export_copy, fake_toolchain):
    result = _build(export_copy, fake_toolchain())
    report = export_copy / "reports" / "trt_check.json"
    report.parent.mkdir(exist_ok=True)
    report.write_text(json.dumps({"ok": False, "rows": []}))
    record_check(export_copy, result.record, False, "reports/trt_check.json")
    manifest = load_manifest(export_copy, verify="full")
    assert manifest.data["trt_builds"][0]["check"] == {"ok": False, "report": "reports/trt_check.json"}
    # Reports are results, not artifacts: a later check may rewrite them without breaking the export.
    assert "reports/trt_check.json" not in manifest.files
    report.write_text(json.dumps({"ok": True, "rows": []}))
    load_manifest(export_copy, verify="full")


def test_bad_options_are_refused_in_one_sentence(tmp_path):
    with pytest.raises(StagevarError, match="--opt-level"):
        BuildOptions(optimization_level=6)
    with pytest.raises(StagevarError, match="--workspace-gib"):
        BuildOptions(workspace_bytes=0)
    with pytest.raises(StagevarError, match="--plugins"):
        BuildOptions(plugins=tmp_path / "missing.so")


# ---- without TensorRT ----------------------------------------------------------------------------


@pytest.fixture
def no_tensorrt(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # `import tensorrt` raises ImportError


def test_build_without_tensorrt_prints_one_sentence_and_leaves_dir_untouched(export_copy, no_tensorrt, capsys):
    before = _snapshot(export_copy)
    code = export_entry(["build", str(export_copy), "--check"])
    err = capsys.readouterr().err
    assert code == 2
    assert err == (f"error: TensorRT is not installed: install stagevar[trt] on a machine with an NVIDIA GPU "
                   f"and TensorRT 10+, then run `stagevar-export build {export_copy}`.\n")
    assert _snapshot(export_copy) == before


def test_export_then_build_without_tensorrt_keeps_the_export(export_copy, no_tensorrt):
    # What `stagevar-export --engine trt` runs after its export.
    before = _snapshot(export_copy)
    with pytest.raises(StagevarError, match="TensorRT is not installed"):
        run_build(export_copy, check=True)
    assert _snapshot(export_copy) == before
    load_manifest(export_copy, verify="full")


def test_build_of_a_folder_that_is_no_export_says_so_first(tmp_path, no_tensorrt, capsys):
    assert export_entry(["build", str(tmp_path)]) == 2
    assert "is not a stagevar export" in capsys.readouterr().err


def test_engine_options_are_checked_before_exporting(tmp_path, capsys):
    out = tmp_path / "never"
    assert export_entry(["--out", str(out), "--plugins", str(tmp_path / "x.so")]) == 2
    assert "add --engine trt" in capsys.readouterr().err
    assert export_entry(["--out", str(out), "--engine", "trt", "--plugins", str(tmp_path / "x.so")]) == 2
    assert "is not a file" in capsys.readouterr().err
    assert not out.exists()


def test_fused_attention_on_a_tensorrt_before_10_14_is_refused_before_building(export_copy, fake_toolchain):
    """Guards: handing ONNX `Attention` nodes to a TensorRT whose parser lacks the op (a parse
    error deep in the build, after minutes), instead of one sentence saying how to re-export."""
    before = _snapshot(export_copy)
    toolchain = fake_toolchain(trt_version="10.9.0.34")
    with pytest.raises(StagevarError, match="--attention decomposed") as info:
        _build(export_copy, toolchain)
    assert "TensorRT 10.9.0.34" in str(info.value) and "\n" not in str(info.value)
    assert toolchain.built == [] and _snapshot(export_copy) == before


def test_attention_support_by_form_and_version():
    """Guards: the version comparison (10.14 vs 10.9 as strings), and old exports without a record."""
    from stagevar.exporter.trt.build import check_attention_support

    fused = {"attention": {"form": "fused"}}
    for ok in ("10.14.0.1", "10.15", "11.0.0"):
        check_attention_support(fused, ok, Path("x"))
    for old in ("10.9.0.34", "10.13.9", "8.6.1"):
        with pytest.raises(StagevarError):
            check_attention_support(fused, old, Path("x"))
    check_attention_support({"attention": {"form": "decomposed"}}, "10.3.0", Path("x"))
    check_attention_support({}, "10.3.0", Path("x"))  # exported before the attention forms existed
