"""Which TensorRT engines of an export this machine may use (DESIGN.md section 6).

A TensorRT plan only runs on the TensorRT version and GPU architecture it was built for, so an
export keeps one engines folder per (TensorRT major.minor.patch, compute capability), named
``engines/trt<version>-sm<major><minor>``, and ``manifest.json`` records each build under
``trt_builds``. This module names those folders, computes the cache key that decides whether a
plan can be reused, and picks the build record for this machine, refusing with one sentence
when there is none. Standard library only: the runtime's TensorRT backend imports it.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable

from .errors import StagevarError

BUILDS_KEY = "trt_builds"
ENGINES_DIR = "engines"
# Bump when the build recipe changes in a way the flags do not show, so old plans are rebuilt.
KEY_SCHEMA = 1
_VERSION = re.compile(r"^\s*(\d+)\.(\d+)(?:\.(\d+))?")
_CC = re.compile(r"^\s*(?:sm_?)?(\d+)(?:\.(\d+))?\s*$", re.IGNORECASE)


def short_version(trt_version: str) -> str:
    """``major.minor.patch`` of a TensorRT version string: ``"10.9.0.34"`` -> ``"10.9.0"``.

    The build number is dropped: plans are compatible across builds of one patch release.
    """
    match = _VERSION.match(str(trt_version))
    if match is None:
        raise ValueError(f"not a TensorRT version: {trt_version!r}")
    major, minor, patch = match.groups()
    return f"{int(major)}.{int(minor)}.{int(patch or 0)}"


def normalize_cc(compute_capability) -> str:
    """Compute capability as ``"major.minor"`` from ``"9.0"``, ``(9, 0)``, ``"sm_90"`` or ``"90"``."""
    if isinstance(compute_capability, (tuple, list)) and len(compute_capability) == 2:
        return f"{int(compute_capability[0])}.{int(compute_capability[1])}"
    match = _CC.match(str(compute_capability))
    if match is None:
        raise ValueError(f"not a compute capability: {compute_capability!r}")
    major, minor = match.groups()
    if minor is None:  # "90" / "sm_90" / "sm_100": the last digit is the minor version
        if len(major) < 2:
            raise ValueError(f"not a compute capability: {compute_capability!r}")
        major, minor = major[:-1], major[-1]
    return f"{int(major)}.{int(minor)}"


def sm_name(compute_capability) -> str:
    """``"9.0"`` -> ``"sm_90"``, the name users know from nvcc and GPU spec sheets."""
    major, minor = normalize_cc(compute_capability).split(".")
    return f"sm_{major}{minor}"


def engine_dir_name(trt_version: str, compute_capability) -> str:
    """Folder of one build inside ``engines/``: ``"trt10.9.0-sm90"``."""
    major, minor = normalize_cc(compute_capability).split(".")
    return f"trt{short_version(trt_version)}-sm{major}{minor}"


def engine_key(onnx_sha256: str, trt_version: str, compute_capability, flags: dict,
               plugin_sha256: str | None, weights_sha256: str | None = None) -> str:
    """sha256 hex identifying one plan: same key, same plan (up to TensorRT's tactic timing).

    Covers the graph file, its external weights file, TensorRT major.minor.patch, the GPU's
    compute capability, the build flags (``flags`` must be JSON-serialisable; the builder puts
    the optimisation profiles in it) and the plugin library. Stable across runs and machines:
    the payload is canonical JSON.
    """
    payload = {
        "schema": KEY_SCHEMA,
        "onnx_sha256": onnx_sha256,
        "weights_sha256": weights_sha256,
        "tensorrt": short_version(trt_version),
        "compute_capability": normalize_cc(compute_capability),
        "flags": flags,
        "plugin_sha256": plugin_sha256,
    }
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def find_build(builds: Iterable, trt_version: str, compute_capability) -> dict | None:
    """The record in ``builds`` for this TensorRT major.minor.patch and compute capability."""
    want = (short_version(trt_version), normalize_cc(compute_capability))
    for record in builds:
        try:
            have = (short_version(record["tensorrt"]), normalize_cc(record["compute_capability"]))
        except (KeyError, TypeError, ValueError):
            continue  # a malformed record never matches; select_engine_build reports it
        if have == want:
            return record
    return None


def select_engine_build(manifest, trt_version: str, compute_capability,
                        graphs: Iterable[str] | None = None) -> dict:
    """The ``trt_builds`` record usable on this machine, or ``StagevarError`` (one sentence).

    ``manifest``: a loaded ``Manifest`` (its file digests verified by ``load_manifest``) or its
    JSON dict. Refuses when the export has no engines, when none was built for this TensorRT
    version (major.minor.patch) and GPU, when the matching build lacks one of ``graphs``
    (default: every graph it lists) and when a graph's ONNX or weights changed since the build.
    """
    data, where, cmd_dir = _unpack(manifest)
    version, cc = short_version(trt_version), normalize_cc(compute_capability)
    build_cmd = f"`stagevar-export build {cmd_dir}`"
    builds = data.get(BUILDS_KEY) or []
    if not isinstance(builds, list) or not builds:
        raise StagevarError(f"The export in {where} has no TensorRT engines; build them on this "
                            f"machine with {build_cmd}.")
    record = find_build(builds, version, cc)
    if record is None:
        built = _describe(builds)
        raise StagevarError(f"The TensorRT engines in {where} were built {built}, but this machine "
                            f"has TensorRT {version} and an {sm_name(cc)} GPU; rebuild them here "
                            f"with {build_cmd}.")
    _check_record(record, data, where, cmd_dir, graphs)
    return record


# --------------------------------------------------------------------------------------------
# internals


def _unpack(manifest) -> tuple[dict, str, str]:
    """(JSON dict, folder for sentences, folder for the suggested command)."""
    data = getattr(manifest, "data", manifest)
    root = getattr(manifest, "root", None)
    if not isinstance(data, dict):
        raise TypeError(f"expected a Manifest or its dict, got {type(manifest).__name__}")
    if root is None:
        return data, "this export", "DIR"
    return data, str(root), str(root)


def _describe(builds: list) -> str:
    parts = []
    for record in builds:
        try:
            parts.append(f"with TensorRT {short_version(record['tensorrt'])} for "
                         f"{sm_name(record['compute_capability'])}")
        except (KeyError, TypeError, ValueError):
            parts.append("by an unreadable build record")
    return " and ".join(dict.fromkeys(parts))  # de-duplicated, in manifest order


def _check_record(record: dict, data: dict, where: str, cmd_dir: str, graphs) -> None:
    rebuild = f"rebuild them with `stagevar-export build {cmd_dir}`"
    recorded = record.get("graphs")
    if not isinstance(recorded, dict) or not recorded:
        raise StagevarError(f"manifest.json in {where} has a malformed TensorRT build record "
                            f"({record.get('dir')!r}); rebuild the engines with "
                            f"`stagevar-export build {cmd_dir} --force`.")
    wanted = list(recorded) if graphs is None else list(graphs)
    missing = [g for g in wanted if g not in recorded]
    if missing:
        raise StagevarError(f"The TensorRT engines in {where} ({record.get('dir')}) have no "
                            f"{', '.join(missing)} engine; {rebuild}.")
    files = data.get("files") or {}
    exported = data.get("graphs") or {}
    stale = []
    for name in wanted:
        entry = recorded[name]
        plan = entry.get("plan") if isinstance(entry, dict) else None
        if not isinstance(plan, str) or plan not in files:
            raise StagevarError(f"The {name} engine of {where} is not listed in manifest.json "
                                f"(an interrupted build?); {rebuild}.")
        spec = exported.get(name) or {}
        if _digest(files, spec.get("path")) != entry.get("onnx_sha256"):
            stale.append(name)
        elif entry.get("weights_sha256") is not None and \
                _digest(files, spec.get("weights")) != entry["weights_sha256"]:
            stale.append(name)
    if stale:
        raise StagevarError(f"The TensorRT engines in {where} were built from other ONNX graphs "
                            f"than the export now holds ({', '.join(stale)} changed); {rebuild}.")


def _digest(files: dict, rel) -> str | None:
    entry = files.get(rel) if isinstance(rel, str) else None
    return entry.get("sha256") if isinstance(entry, dict) else None
