"""Default verification: every file by sha256, weights trusted from the local record while unchanged.

A small hand-made export (no torch): two graphs sharing one weights file, a tokenizer, a config.
"""

import os

import pytest

from stagevar.runtime import verification_record as vr
from stagevar.runtime.errors import StagevarError
from stagevar.runtime.manifest import load_manifest, write_manifest


@pytest.fixture
def export(tmp_path, monkeypatch):
    monkeypatch.setenv("STAGEVAR_CACHE_DIR", str(tmp_path / "cache"))
    root = tmp_path / "export"
    (root / "onnx").mkdir(parents=True)
    (root / "tokenizer").mkdir()
    (root / "onnx" / "step.onnx").write_bytes(b"graph-step" * 10)
    (root / "onnx" / "fidelity.onnx").write_bytes(b"graph-fid" * 10)
    (root / "onnx" / "transformer.weights").write_bytes(os.urandom(1 << 16))
    (root / "tokenizer" / "tokenizer.json").write_text('{"tokens": 1}')
    graphs = {"step": {"path": "onnx/step.onnx", "weights": "onnx/transformer.weights"},
              "fidelity": {"path": "onnx/fidelity.onnx", "weights": "onnx/transformer.weights"}}
    write_manifest(root, {"graphs": graphs})
    return root


def _flip_byte_keep_mtime(path, offset=1000):
    """A same-size corruption that even restores the mtime (what a size/mtime check would miss)."""
    st = os.stat(path)
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0x01]))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_weights_are_hashed_once_then_trusted_and_small_files_every_time(export):
    # Guards against a record that is never used (every restart re-hashes 4.5 GB) and against
    # trusting small files from it (they are cheap to hash, so they are always checked).
    manifest = load_manifest(export, verify=False)
    assert vr.weights_files(manifest) == {"onnx/transformer.weights"}
    first = vr.verify_with_record(manifest)
    assert "onnx/transformer.weights" in first.hashed and not first.trusted
    second = vr.verify_with_record(manifest)
    assert second.trusted == ["onnx/transformer.weights"]
    assert sorted(second.hashed) == ["onnx/fidelity.onnx", "onnx/step.onnx", "tokenizer/tokenizer.json"]


def test_same_size_corruption_of_weights_is_refused_by_default_even_after_a_trusted_load(export):
    # Guards against the old default ("quick", sizes only) and against a record keyed on size
    # and mtime alone: the flipped byte keeps both, only ctime tells.
    load_manifest(export, verify="record")  # hashes and records
    _flip_byte_keep_mtime(export / "onnx" / "transformer.weights")
    with pytest.raises(StagevarError, match=r"onnx/transformer.weights .*corrupted or modified"):
        load_manifest(export, verify="record")


def test_corrupted_weights_are_refused_on_first_load(export):
    _flip_byte_keep_mtime(export / "onnx" / "transformer.weights")
    with pytest.raises(StagevarError, match="transformer.weights"):
        load_manifest(export, verify="record")


def test_small_files_are_hashed_at_every_load(export):
    # A tokenizer changed after a trusted load is refused (the first test shows it is re-hashed).
    load_manifest(export, verify="record")
    _flip_byte_keep_mtime(export / "tokenizer" / "tokenizer.json", offset=3)
    with pytest.raises(StagevarError, match="tokenizer/tokenizer.json"):
        load_manifest(export, verify="record")


def test_replaced_weights_file_is_hashed_again(export):
    # Guards against trusting by path: a new file (new inode) with other bytes must be re-hashed.
    load_manifest(export, verify="record")
    w = export / "onnx" / "transformer.weights"
    data = bytearray(w.read_bytes())
    data[5] ^= 0xFF
    tmp = export / "onnx" / "new.tmp"
    tmp.write_bytes(bytes(data))
    st = os.stat(w)
    os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(tmp, w)
    with pytest.raises(StagevarError, match="transformer.weights"):
        load_manifest(export, verify="record")


def test_a_record_for_another_manifest_digest_is_not_trusted(export):
    # Guards against a re-export into the same folder being trusted on the old record: the
    # record keeps the expected sha256, and a changed manifest entry invalidates it.
    manifest = load_manifest(export, verify=False)
    vr.verify_with_record(manifest)
    manifest.files["onnx/transformer.weights"]["sha256"] = "0" * 64
    with pytest.raises(StagevarError, match="transformer.weights"):
        vr.verify_with_record(manifest)


def test_unwritable_cache_costs_a_rehash_not_an_error(export, monkeypatch, tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    monkeypatch.setenv("STAGEVAR_CACHE_DIR", str(blocker))
    manifest = load_manifest(export, verify=False)
    assert "onnx/transformer.weights" in vr.verify_with_record(manifest).hashed
    assert "onnx/transformer.weights" in vr.verify_with_record(manifest).hashed


def test_garbage_record_is_ignored(export):
    manifest = load_manifest(export, verify=False)
    path = vr.record_path(export)
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    assert "onnx/transformer.weights" in vr.verify_with_record(manifest).hashed
    assert vr.verify_with_record(manifest).trusted == ["onnx/transformer.weights"]


def test_truncated_weights_are_refused_before_hashing(export, monkeypatch):
    w = export / "onnx" / "transformer.weights"
    w.write_bytes(w.read_bytes()[:-10])
    monkeypatch.setattr("stagevar.runtime.manifest.sha256_file", lambda p: pytest.fail("hashed"))
    with pytest.raises(StagevarError, match=r"transformer.weights .*bytes instead of"):
        load_manifest(export, verify="record")
