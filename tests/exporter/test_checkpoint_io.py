"""Requirements for the family-independent checkpoint reader/matcher/writer."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from torch import nn

from stagevar.exporter.checkpoint_io import (
    load_strict,
    match_state_dict,
    read_state_dict,
    sha256_file,
    sha256_tree,
    write_sharded,
    write_state_dict,
)
from stagevar.runtime.errors import StagevarError


def _sd(n: int = 4) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {f"layer.{i}.weight": torch.randn(8, 3 + i, generator=g) for i in range(n)}


def _assert_same(a: dict, b: dict) -> None:
    assert set(a) == set(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("name", ["w.pth", "w.pt", "w.safetensors"])
def test_write_then_read_state_dict_round_trips(tmp_path, name):
    sd = _sd()
    write_state_dict(sd, tmp_path / name)
    _assert_same(read_state_dict(tmp_path / name), sd)


def test_read_bin_file_written_by_torch_save(tmp_path):
    sd = _sd()
    torch.save(sd, tmp_path / "pytorch_model.bin")
    _assert_same(read_state_dict(tmp_path / "pytorch_model.bin"), sd)


def test_read_picks_wrapper_key_and_tuple_of_candidates(tmp_path):
    sd = _sd()
    write_state_dict(sd, tmp_path / "w.pth", wrapper_key="vae")
    _assert_same(read_state_dict(tmp_path / "w.pth", wrapper_key="vae"), sd)
    _assert_same(read_state_dict(tmp_path / "w.pth", wrapper_key=("model", "vae")), sd)
    # A candidate tuple falls back to the dict itself when no candidate is present.
    write_state_dict(sd, tmp_path / "plain.pth")
    _assert_same(read_state_dict(tmp_path / "plain.pth", wrapper_key=("vae",)), sd)


def test_wrapped_file_without_wrapper_key_fails_suggesting_it(tmp_path):
    torch.save({"vae": _sd(), "epoch": torch.tensor(3)}, tmp_path / "w.pth")
    with pytest.raises(StagevarError, match="wrapper_key='vae'"):
        read_state_dict(tmp_path / "w.pth")


def test_absent_wrapper_key_fails_naming_it(tmp_path):
    write_state_dict(_sd(), tmp_path / "w.pth")
    with pytest.raises(StagevarError, match="no 'ema' entry"):
        read_state_dict(tmp_path / "w.pth", wrapper_key="ema")


def test_missing_path_fails_naming_it(tmp_path):
    with pytest.raises(StagevarError, match="nope.pth does not exist"):
        read_state_dict(tmp_path / "nope.pth")


@pytest.mark.parametrize("name", ["bad.pth", "bad.safetensors", "bad.bin"])
def test_corrupt_file_fails_with_one_sentence(tmp_path, name):
    (tmp_path / name).write_bytes(b"\x00garbage, not a checkpoint" * 10)
    with pytest.raises(StagevarError, match=name.replace(".", r"\.")) as err:
        read_state_dict(tmp_path / name)
    assert "\n" not in str(err.value)


def test_unknown_extension_fails(tmp_path):
    (tmp_path / "w.ckpt.gz").write_bytes(b"x")
    with pytest.raises(StagevarError, match="unknown extension"):
        read_state_dict(tmp_path / "w.ckpt.gz")


def test_non_dict_torch_file_fails(tmp_path):
    torch.save([torch.zeros(2)], tmp_path / "list.pth")
    with pytest.raises(StagevarError, match="not a dict of tensors"):
        read_state_dict(tmp_path / "list.pth")


def test_sharded_folder_round_trips_in_hf_layout(tmp_path):
    sd = _sd(6)
    index = write_sharded(sd, tmp_path / "ckpt", max_shard_bytes=8 * 6 * 4 * 2)
    assert index.name == "model.safetensors.index.json"
    meta = json.loads(index.read_text())
    shards = sorted(set(meta["weight_map"].values()))
    assert len(shards) > 1
    assert shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    assert meta["metadata"]["total_size"] == sum(t.numel() * 4 for t in sd.values())
    assert set(meta["weight_map"]) == set(sd)
    _assert_same(read_state_dict(tmp_path / "ckpt"), sd)


def test_sharded_folder_of_bin_shards_is_read(tmp_path):
    sd = _sd(4)
    keys = list(sd)
    torch.save({k: sd[k] for k in keys[:2]}, tmp_path / "pytorch_model-00001-of-00002.bin")
    torch.save({k: sd[k] for k in keys[2:]}, tmp_path / "pytorch_model-00002-of-00002.bin")
    weight_map = {k: f"pytorch_model-0000{1 + i // 2}-of-00002.bin" for i, k in enumerate(keys)}
    (tmp_path / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": weight_map}))
    _assert_same(read_state_dict(tmp_path), sd)


def test_sharded_folder_with_missing_shard_fails_naming_it(tmp_path):
    write_sharded(_sd(6), tmp_path, max_shard_bytes=200)
    (tmp_path / "model-00002-of-00006.safetensors").unlink()
    with pytest.raises(StagevarError, match="model-00002-of-00006.safetensors"):
        read_state_dict(tmp_path)


def test_index_listing_keys_its_shards_lack_fails(tmp_path):
    index = write_sharded(_sd(2), tmp_path, max_shard_bytes=1 << 20)
    meta = json.loads(index.read_text())
    meta["weight_map"]["ghost.weight"] = next(iter(meta["weight_map"].values()))
    index.write_text(json.dumps(meta))
    with pytest.raises(StagevarError, match="ghost.weight"):
        read_state_dict(tmp_path)


def test_folder_with_one_weights_file_is_read(tmp_path):
    sd = _sd()
    write_state_dict(sd, tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text("{}")
    _assert_same(read_state_dict(tmp_path), sd)


def test_folder_without_weights_or_with_ambiguous_files_fails(tmp_path):
    with pytest.raises(StagevarError, match="no weights file"):
        read_state_dict(tmp_path)
    write_state_dict(_sd(), tmp_path / "a.pth")
    write_state_dict(_sd(), tmp_path / "b.pth")
    with pytest.raises(StagevarError, match="several weights files"):
        read_state_dict(tmp_path)


def test_match_names_missing_unexpected_and_wrong_shapes():
    module = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    found = {k: v.clone() for k, v in module.state_dict().items()}
    del found["0.bias"]
    found["foo.bar"] = torch.zeros(1)
    found["1.weight"] = torch.zeros(2, 5)
    with pytest.raises(StagevarError) as err:
        match_state_dict(module, found, "Infinity-2B")
    msg = str(err.value)
    assert msg.startswith("The Infinity-2B checkpoint does not match: missing 0.bias; ")
    assert "unexpected foo.bar" in msg
    assert "1.weight is (2, 5) but the model expects (2, 4)" in msg


def test_match_lists_first_few_keys_and_the_count():
    expected = {f"k{i:02d}": (1,) for i in range(12)}
    with pytest.raises(StagevarError, match=r"missing k00, k01, k02, k03, k04 \(and 7 more, 12"):
        match_state_dict(expected, {}, "X")


def test_match_accepts_shapes_and_ignores_only_the_named_extras():
    expected = {"a": (2, 3)}
    found = {"a": torch.zeros(2, 3), "encoder.x": torch.zeros(1), "mask": torch.zeros(4)}
    match_state_dict(expected, found, "X", ignore_prefixes=("encoder.",), ignore_keys=("mask",))
    match_state_dict(expected, {"a": (2, 3)}, "X")
    with pytest.raises(StagevarError, match="unexpected mask"):
        match_state_dict(expected, found, "X", ignore_prefixes=("encoder.",))


def test_load_strict_copies_values_and_drops_ignored_extras():
    module = nn.Linear(3, 2)
    src = nn.Linear(3, 2)
    sd = dict(src.state_dict(), **{"extra.mask": torch.ones(3)})
    load_strict(module, sd, "X", ignore_keys=("extra.mask",))
    assert torch.equal(module.weight, src.weight)
    with pytest.raises(StagevarError, match="unexpected extra.mask"):
        load_strict(nn.Linear(3, 2), sd, "X")


def test_write_refuses_unknown_suffix_and_handles_shared_storage(tmp_path):
    with pytest.raises(StagevarError, match=r"\.pth, \.pt or \.safetensors"):
        write_state_dict(_sd(), tmp_path / "w.npz")
    base = torch.arange(12.0)
    tied = {"a": base, "b": base, "view": base[2:6]}
    write_state_dict(tied, tmp_path / "tied.safetensors")
    _assert_same(read_state_dict(tmp_path / "tied.safetensors"), tied)
    assert not list(tmp_path.glob(".*.tmp"))


def test_sha256_file_and_tree(tmp_path):
    (tmp_path / "a.bin").write_bytes(b"hello")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.txt").write_bytes(b"world")
    assert sha256_file(tmp_path / "a.bin") == hashlib.sha256(b"hello").hexdigest()
    before = sha256_tree(tmp_path)
    assert before == sha256_tree(tmp_path)
    (tmp_path / "sub" / "b.txt").rename(tmp_path / "sub" / "c.txt")
    renamed = sha256_tree(tmp_path)
    assert renamed != before
    (tmp_path / "sub" / "c.txt").write_bytes(b"World")
    assert sha256_tree(tmp_path) != renamed


class _NotATensor:
    """A pickled class: loading it needs weights_only=False, which runs the pickle's code."""


def _refusal(path):
    with pytest.raises(StagevarError) as err:
        read_state_dict(path)
    text = str(err.value)
    # Guards against forwarding torch's raw text: colour codes, several lines, and the advice to
    # load with weights_only=False (the unsafe path).
    assert "\x1b" not in text and "\n" not in text and "weights_only" not in text
    return text


def test_file_that_is_not_a_checkpoint_is_named_so(tmp_path):
    (tmp_path / "notes.pth").write_text("hello, these are my notes")
    assert "is not a torch checkpoint" in _refusal(tmp_path / "notes.pth")


@pytest.mark.parametrize("zipped", [True, False])
def test_truncated_checkpoint_is_named_so(tmp_path, zipped):
    full = tmp_path / "full.pth"
    torch.save({"w": torch.zeros(4000)}, full, _use_new_zipfile_serialization=zipped)
    data = full.read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    assert "is truncated" in _refusal(tmp_path / "cut.pth")


def test_checkpoint_with_pickled_objects_is_refused_as_unsafe(tmp_path):
    torch.save({"w": torch.zeros(2), "extra": _NotATensor()}, tmp_path / "unsafe.pth")
    text = _refusal(tmp_path / "unsafe.pth")
    assert "not a safe checkpoint" in text and "_NotATensor" in text and "state_dict" in text
