"""runtime/engine_cache.py: engine folder names, cache keys and the one-sentence refusals."""

from __future__ import annotations

import pytest

from stagevar.runtime.engine_cache import (engine_dir_name, engine_key, normalize_cc, select_engine_build,
                                           short_version, sm_name)
from stagevar.runtime.errors import StagevarError

ONNX = "a" * 64
WEIGHTS = "b" * 64
FLAGS = {"optimization_level": 3, "workspace_bytes": None, "strongly_typed": True,
         "profiles": [{"entry": 0, "aspect": "1:1", "shapes": {"codes": [[1, 1, 32]] * 3}}]}


def _one_sentence(info) -> str:
    text = str(info.value)
    assert "\n" not in text and text.endswith(".") and text.count(". ") == 0, text
    return text


def test_versions_and_compute_capabilities_are_normalised():
    assert short_version("10.9.0.34") == "10.9.0"
    assert short_version("10.9") == "10.9.0"
    assert short_version("11.0.1.post2") == "11.0.1"
    assert normalize_cc("9.0") == normalize_cc((9, 0)) == normalize_cc("sm_90") == normalize_cc("90") == "9.0"
    assert normalize_cc("sm_100") == "10.0" and normalize_cc("8.9") == "8.9"
    assert sm_name("8.9") == "sm_89"
    with pytest.raises(ValueError):
        short_version("ten")
    with pytest.raises(ValueError):
        normalize_cc("9")


def test_engine_dir_name_uses_major_minor_patch_and_sm():
    assert engine_dir_name("10.9.0.34", "9.0") == "trt10.9.0-sm90"
    assert engine_dir_name("10.3.0", (8, 9)) == "trt10.3.0-sm89"
    assert engine_dir_name("10.9.0.34", "9.0") == engine_dir_name("10.9.0.40", "sm_90")


def test_engine_key_is_stable_and_changes_with_every_input():
    base = dict(onnx_sha256=ONNX, trt_version="10.9.0.34", compute_capability="9.0", flags=FLAGS,
                plugin_sha256=None, weights_sha256=WEIGHTS)
    key = engine_key(**base)
    assert len(key) == 64 and int(key, 16) >= 0
    assert engine_key(**base) == key
    # Dict order and the build number do not matter.
    assert engine_key(**{**base, "flags": dict(reversed(list(FLAGS.items())))}) == key
    assert engine_key(**{**base, "trt_version": "10.9.0.99"}) == key
    assert engine_key(**{**base, "compute_capability": (9, 0)}) == key
    changed = [
        {"onnx_sha256": "c" * 64},
        {"weights_sha256": "d" * 64},
        {"weights_sha256": None},
        {"trt_version": "10.9.1.1"},
        {"trt_version": "10.10.0"},
        {"compute_capability": "8.9"},
        {"plugin_sha256": "e" * 64},
        {"flags": {**FLAGS, "optimization_level": 5}},
        {"flags": {**FLAGS, "workspace_bytes": 1 << 30}},
        {"flags": {**FLAGS, "strongly_typed": False}},
        {"flags": {**FLAGS, "profiles": [{"entry": 0, "aspect": "1:1", "shapes": {"codes": [[1, 4, 32]] * 3}}]}},
    ]
    keys = {engine_key(**{**base, **change}) for change in changed}
    assert key not in keys and len(keys) == len(changed)


# ---- select_engine_build on fabricated manifests ----------------------------------------------


def _manifest(builds, onnx_sha=ONNX, weights_sha=WEIGHTS) -> dict:
    files = {"onnx/step.onnx": {"sha256": onnx_sha, "bytes": 1},
             "onnx/transformer.weights": {"sha256": weights_sha, "bytes": 1}}
    for b in builds:
        for g in (b.get("graphs") or {}).values():
            files[g["plan"]] = {"sha256": "f" * 64, "bytes": 1}
    return {"graphs": {"step": {"path": "onnx/step.onnx", "weights": "onnx/transformer.weights"}},
            "files": files, "trt_builds": builds}


def _build(version="10.3.0.26", cc="9.0", onnx_sha=ONNX, weights_sha=WEIGHTS) -> dict:
    d = f"engines/{engine_dir_name(version, cc)}"
    return {"dir": d, "tensorrt": version, "compute_capability": cc, "device_name": "GPU",
            "graphs": {"step": {"plan": f"{d}/step.plan", "onnx_sha256": onnx_sha, "weights_sha256": weights_sha,
                                "key": "0" * 64, "profiles": []}}}


class _Loaded:  # what load_manifest returns, minus the disk
    def __init__(self, data, root="/exports/tiny"):
        self.data, self.root = data, root


def test_the_matching_build_is_selected_ignoring_the_build_number():
    older, newer = _build("10.3.0.26", "9.0"), _build("10.9.0.34", "8.9")
    data = _manifest([older, newer])
    assert select_engine_build(data, "10.3.0.99", "9.0") is older
    assert select_engine_build(_Loaded(data), "10.9.0.34", "sm_89") is newer


def test_no_engines_at_all_says_how_to_build_them():
    with pytest.raises(StagevarError) as info:
        select_engine_build(_Loaded(_manifest([])), "10.9.0.34", "9.0")
    text = _one_sentence(info)
    assert "no TensorRT engines" in text and "`stagevar-export build /exports/tiny`" in text


def test_another_tensorrt_version_is_refused_naming_both():
    with pytest.raises(StagevarError) as info:
        select_engine_build(_Loaded(_manifest([_build("10.3.0.26", "9.0")])), "10.9.0.34", "9.0")
    text = _one_sentence(info)
    assert text == ("The TensorRT engines in /exports/tiny were built with TensorRT 10.3.0 for sm_90, but this "
                    "machine has TensorRT 10.9.0 and an sm_90 GPU; rebuild them here with "
                    "`stagevar-export build /exports/tiny`.")


def test_another_gpu_is_refused_naming_both():
    with pytest.raises(StagevarError) as info:
        select_engine_build(_Loaded(_manifest([_build("10.9.0.34", "9.0"), _build("10.9.0.34", "8.0")])),
                            "10.9.0.34", "8.9")
    text = _one_sentence(info)
    assert "TensorRT 10.9.0 for sm_90 and with TensorRT 10.9.0 for sm_80" in text and "an sm_89 GPU" in text


def test_engines_of_changed_onnx_are_refused():
    data = _manifest([_build("10.9.0.34", "9.0", onnx_sha="0" * 64)])
    with pytest.raises(StagevarError) as info:
        select_engine_build(_Loaded(data), "10.9.0.34", "9.0")
    text = _one_sentence(info)
    assert "other ONNX graphs" in text and "step changed" in text and "stagevar-export build" in text
    data = _manifest([_build("10.9.0.34", "9.0", weights_sha="1" * 64)])
    with pytest.raises(StagevarError) as info:
        select_engine_build(_Loaded(data), "10.9.0.34", "9.0")
    assert "step changed" in _one_sentence(info)


def test_a_missing_graph_or_unlisted_plan_is_refused():
    data = _manifest([_build("10.9.0.34", "9.0")])
    with pytest.raises(StagevarError) as info:
        select_engine_build(_Loaded(data), "10.9.0.34", "9.0", graphs=("step", "fidelity"))
    assert "no fidelity engine" in _one_sentence(info)
    del data["files"]["engines/trt10.9.0-sm90/step.plan"]
    with pytest.raises(StagevarError) as info:
        select_engine_build(_Loaded(data), "10.9.0.34", "9.0")
    assert "not listed in manifest.json" in _one_sentence(info)


def test_a_malformed_record_is_refused():
    data = _manifest([{"dir": "engines/x", "tensorrt": "10.9.0", "compute_capability": "9.0", "graphs": None}])
    with pytest.raises(StagevarError) as info:
        select_engine_build(_Loaded(data), "10.9.0.34", "9.0")
    assert "malformed" in _one_sentence(info)
    with pytest.raises(StagevarError) as info:
        select_engine_build(_Loaded(_manifest([{"dir": "engines/x"}])), "10.9.0.34", "9.0")
    assert "unreadable build record" in _one_sentence(info)
