"""Requirements for runtime/manifest.py (DESIGN.md section 6: the runtime refuses, with one plain
sentence, a manifest whose hashes do not match its files or a schema it does not know)."""

import hashlib
import json

import pytest

from stagevar.runtime.errors import StagevarError
from stagevar.runtime.manifest import (
    MANIFEST_NAME,
    SCHEMA_VERSION,
    Manifest,
    file_digests,
    load_manifest,
    verify_files,
    write_manifest,
)

CONTENT = {
    "model": {"preset": "infinity_tiny", "config_sha256": "ab" * 32},
    "precision": "fp32",
    "graphs": {"step": {"path": "onnx/step.onnx", "inputs": {"codes": {}}, "outputs": {}}},
    "schedules": {"1:1": [[1, 1], [2, 2]]},
}
FILES = {
    "onnx/step.onnx": b"graph bytes " * 100,
    "onnx/weights.bin": bytes(range(256)) * 64,
    "tokenizer/tokenizer.json": b'{"version": "1.0"}',
}


@pytest.fixture
def export(tmp_path):
    root = tmp_path / "export"
    for rel, data in FILES.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    write_manifest(root, CONTENT)
    return root


def _single_sentence(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message and message.endswith(".")
    return message


def _rewrite_manifest(root, **changes):
    data = json.loads((root / MANIFEST_NAME).read_text())
    data.update(changes)
    (root / MANIFEST_NAME).write_text(json.dumps(data))


def test_round_trip_keeps_content_and_lists_every_file_with_size_and_sha256(export):
    m = load_manifest(export)
    assert isinstance(m, Manifest) and m.root == export
    assert m.schema_version == SCHEMA_VERSION == 1
    assert m.model == CONTENT["model"] and m.precision == "fp32"
    assert m.graphs == CONTENT["graphs"] and m.schedules == CONTENT["schedules"]
    assert m.engines == []
    assert m.graph_path("step") == export / "onnx" / "step.onnx"
    assert list(m.data["files"]) == sorted(FILES)
    for rel, data in FILES.items():
        assert m.data["files"][rel] == {"sha256": hashlib.sha256(data).hexdigest(),
                                        "bytes": len(data)}


def test_manifest_is_pretty_printed_with_sorted_keys_and_leaves_no_temp_file(export):
    text = (export / MANIFEST_NAME).read_text()
    data = json.loads(text)
    assert text == json.dumps(data, indent=2, sort_keys=True) + "\n"
    assert sorted(p.name for p in export.iterdir()) == [MANIFEST_NAME, "onnx", "tokenizer"]


def test_write_manifest_does_not_modify_the_callers_dict(tmp_path):
    content = {"model": "m"}
    write_manifest(tmp_path, content)
    assert content == {"model": "m"}


def test_file_digests_skip_the_manifest_and_use_posix_paths_sorted(export):
    digests = file_digests(export)
    assert list(digests) == sorted(FILES)
    assert MANIFEST_NAME not in digests


def test_digests_stream_files_larger_than_one_chunk(tmp_path):
    data = bytes(range(251)) * 10_000  # ~2.5 MiB: crosses several 1 MiB chunks
    (tmp_path / "big.bin").write_bytes(data)
    assert file_digests(tmp_path)["big.bin"]["sha256"] == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("rel", sorted(FILES))
def test_tampering_one_byte_fails_full_verification_naming_the_file(export, rel):
    path = export / rel
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))  # same size: only the hash can tell
    load_manifest(export, verify="quick")
    with pytest.raises(StagevarError, match="does not match manifest.json") as exc:
        load_manifest(export)
    message = _single_sentence(exc)
    assert message == (f"File {rel} in {export} does not match manifest.json "
                       f"(corrupted or modified); export again.")


@pytest.mark.parametrize("mode", ["quick", "full"])
@pytest.mark.parametrize("change", ["truncated", "grown"])
def test_a_size_change_either_way_fails_verification(export, change, mode):
    """Bug guarded against: a size check of `size < bytes` (or `>`) instead of `!=`, which lets
    a file with bytes appended (or cut off) through quick verification, the default at start-up.
    Explicit modes, so the test holds whichever mode is the default."""
    path = export / "onnx" / "weights.bin"
    data = path.read_bytes()
    path.write_bytes(data[:-1] if change == "truncated" else data + b"\0")
    with pytest.raises(StagevarError, match="onnx/weights.bin") as exc:
        load_manifest(export, verify=mode)
    message = _single_sentence(exc)
    size = len(data) - 1 if change == "truncated" else len(data) + 1
    assert f"{size} bytes instead of {len(data)}" in message


def test_deleting_a_listed_file_fails_verification(export):
    (export / "tokenizer" / "tokenizer.json").unlink()
    for mode in ("quick", "full", True):
        with pytest.raises(StagevarError, match="tokenizer/tokenizer.json.*missing") as exc:
            load_manifest(export, verify=mode)
        _single_sentence(exc)


def test_verify_false_skips_file_checks(export):
    (export / "onnx" / "step.onnx").unlink()
    assert load_manifest(export, verify=False).precision == "fp32"


def test_verify_files_quick_checks_sizes_only_and_full_checks_hashes(export):
    m = load_manifest(export, verify=False)
    path = export / "onnx" / "step.onnx"
    path.write_bytes(b"X" * len(FILES["onnx/step.onnx"]))
    verify_files(m, quick=True)
    with pytest.raises(StagevarError, match="onnx/step.onnx"):
        verify_files(m)


def test_unlisted_files_are_ignored(export):
    (export / "README.md").write_text("my notes")
    (export / "onnx" / "extra.txt").write_text("x")
    load_manifest(export)


def test_newer_schema_is_refused_with_upgrade_advice(export):
    _rewrite_manifest(export, schema_version=SCHEMA_VERSION + 1)
    with pytest.raises(StagevarError) as exc:
        load_manifest(export)
    message = _single_sentence(exc)
    assert f"newer stagevar (schema {SCHEMA_VERSION + 1}); upgrade stagevar" in message


@pytest.mark.parametrize("version", [0, -1, "1", None, True, 1.5])
def test_older_or_unknown_schema_is_refused(export, version):
    _rewrite_manifest(export, schema_version=version)
    with pytest.raises(StagevarError, match="schema") as exc:
        load_manifest(export, verify=False)
    _single_sentence(exc)


def test_missing_schema_version_is_refused(export):
    data = json.loads((export / MANIFEST_NAME).read_text())
    del data["schema_version"]
    (export / MANIFEST_NAME).write_text(json.dumps(data))
    with pytest.raises(StagevarError, match="schema"):
        load_manifest(export, verify=False)


@pytest.mark.parametrize("text", ["{not json", "", "[1, 2]", '"text"'])
def test_garbage_json_is_refused(export, text):
    (export / MANIFEST_NAME).write_text(text)
    with pytest.raises(StagevarError, match="manifest.json") as exc:
        load_manifest(export, verify=False)
    _single_sentence(exc)


def test_non_utf8_manifest_is_refused(export):
    (export / MANIFEST_NAME).write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(StagevarError, match="JSON") as exc:
        load_manifest(export)
    _single_sentence(exc)


def test_folder_without_manifest_is_not_an_export(tmp_path):
    (tmp_path / "onnx").mkdir()
    with pytest.raises(StagevarError) as exc:
        load_manifest(tmp_path)
    message = _single_sentence(exc)
    assert "is not a stagevar export (no manifest.json); run stagevar-export" in message
    assert "interrupted" in message


def test_missing_folder_is_refused(tmp_path):
    with pytest.raises(StagevarError, match="does not exist") as exc:
        load_manifest(tmp_path / "nope")
    _single_sentence(exc)


def test_file_instead_of_folder_is_refused(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(StagevarError, match="not a folder") as exc:
        load_manifest(tmp_path / "file")
    _single_sentence(exc)


@pytest.mark.parametrize("rel", ["../outside.bin", "/etc/passwd", "a/../../b", ""])
def test_listed_paths_outside_the_export_are_refused(export, rel):
    _rewrite_manifest(export, files={rel: {"sha256": "0" * 64, "bytes": 1}})
    with pytest.raises(StagevarError, match="malformed entry") as exc:
        load_manifest(export, verify=False)
    _single_sentence(exc)


def test_malformed_file_entries_are_refused(export):
    _rewrite_manifest(export, files={"onnx/step.onnx": {"sha256": "0" * 64}})
    with pytest.raises(StagevarError, match="malformed entry"):
        load_manifest(export)
    _rewrite_manifest(export, files=["onnx/step.onnx"])
    with pytest.raises(StagevarError, match="no file list"):
        load_manifest(export)


def test_unknown_graph_and_missing_entries_raise_user_errors(export):
    m = load_manifest(export)
    with pytest.raises(StagevarError, match="no 'fidelity' graph.*step") as exc:
        m.graph_path("fidelity")
    _single_sentence(exc)
    bare = Manifest(root=export, data={"schema_version": 1, "files": {}})
    with pytest.raises(StagevarError, match="no 'precision' entry"):
        bare.precision
    assert bare.engines == []


def test_invalid_verify_mode_is_a_programming_error(export):
    with pytest.raises(ValueError):
        load_manifest(export, verify="fast")


def test_manifest_is_frozen(export):
    m = load_manifest(export)
    with pytest.raises(AttributeError):
        m.root = export.parent


def test_reports_are_not_listed_so_rewriting_them_keeps_the_export_valid(export):
    reports = export / "reports"
    reports.mkdir()
    (reports / "check.json").write_text('{"ok": true}')
    write_manifest(export, {"model": "x"})
    assert not [rel for rel in load_manifest(export).files if rel.startswith("reports/")]
    (reports / "check.json").write_text('{"ok": false, "rows": []}')
    load_manifest(export, verify="full")


@pytest.mark.parametrize("rel", ["../outside.json", "/etc/passwd", "a/../../b", "", None, 7, "a\\..\\b", "./x"])
def test_paths_the_manifest_names_must_stay_inside_the_export(export, rel):
    """Bug guarded against: a path read from manifest.json (tokenizer, engine plan, plugin
    library) used without the safe-relative-path check, so a tampered manifest could load a
    file or a shared library from anywhere."""
    m = load_manifest(export)
    with pytest.raises(StagevarError, match="the tokenizer") as exc:
        m.file_path(rel, "the tokenizer")
    assert "not a relative path inside the export" in _single_sentence(exc)


def test_a_safe_path_resolves_inside_the_export(export):
    m = load_manifest(export)
    assert m.file_path("tokenizer/tokenizer.json", "the tokenizer") == export / "tokenizer" / "tokenizer.json"
