"""The local verification record: verify every file of an export by sha256 and stay fast on restart.

Default verification (``verify="record"``) hashes the graphs, tokenizer and configs at every load
(they are small), and hashes each weights file (``graphs[*].weights`` in the manifest, many GB for
Infinity-2B) only when this machine has no record of having verified it already. The record
stores, per export folder, each verified weights file's sha256 with its size, mtime, ctime, inode
and device as they were while it was hashed; any change of those (an in-place edit, a copy, a
replacement, a restore from backup) makes the file hashed again. The record also holds the sha256
the manifest expected, so a re-export into the same folder is never trusted on an old record.

Where: ``$STAGEVAR_CACHE_DIR``, else ``$XDG_CACHE_HOME/stagevar``, else ``~/.cache/stagevar``,
in ``verified/<sha256 of the export's resolved path>.json``. A record that cannot be read is
ignored and one that cannot be written is skipped: both only cost a re-hash, never a wrong trust.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from .errors import StagevarError

RECORD_VERSION = 1
CACHE_ENV = "STAGEVAR_CACHE_DIR"
_STAT_KEYS = ("bytes", "mtime_ns", "ctime_ns", "inode", "device")


def cache_dir() -> Path:
    """The user's stagevar cache folder (not created here)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "stagevar"


def record_path(root: Path) -> Path:
    key = hashlib.sha256(str(Path(root).resolve()).encode("utf-8", "surrogatepass")).hexdigest()[:32]
    return cache_dir() / "verified" / f"{key}.json"


def weights_files(manifest) -> set[str]:
    """Relative paths of the large weights files: the ``weights`` entry of every graph."""
    out = set()
    for entry in manifest.data.get("graphs", {}).values():
        if isinstance(entry, dict) and isinstance(entry.get("weights"), str) and entry["weights"] in manifest.files:
            out.add(entry["weights"])
    return out


def file_identity(path: Path) -> dict:
    """What must stay the same for a recorded digest to still describe the file."""
    st = os.stat(path)
    return {"bytes": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns,
            "inode": st.st_ino, "device": st.st_dev}


@dataclass
class VerificationReport:
    """Which files one verification hashed and which it trusted from the record."""

    hashed: list[str] = field(default_factory=list)
    trusted: list[str] = field(default_factory=list)
    hashed_bytes: int = 0


def verify_with_record(manifest) -> VerificationReport:
    """Check every listed file (present, size, sha256), trusting weights files the record vouches for.

    Raises ``StagevarError`` naming the first file that does not match, in one sentence.
    """
    from .manifest import MANIFEST_NAME, sha256_file  # manifest.py imports this module lazily

    root = manifest.root
    files = manifest.files
    big = weights_files(manifest)
    # Sizes first: a truncated weights file is refused before any hashing.
    for rel, entry in sorted(files.items()):
        path = root / rel
        if not path.is_file():
            raise StagevarError(f"File {rel} listed in {root / MANIFEST_NAME} is missing; export again.")
        size = path.stat().st_size
        if size != entry["bytes"]:
            raise StagevarError(f"File {rel} in {root} does not match manifest.json ({size} bytes instead of "
                                f"{entry['bytes']}: truncated or modified); export again.")
    record_file = record_path(root)
    known = _read_record(record_file)
    report = VerificationReport()
    updated: dict[str, dict] = {}
    for rel, entry in sorted(files.items()):
        path = root / rel
        before = file_identity(path)
        if rel in big:
            seen = known.get(rel)
            if seen and seen.get("sha256") == entry["sha256"] and all(seen.get(k) == before[k] for k in _STAT_KEYS):
                report.trusted.append(rel)
                updated[rel] = seen
                continue
        digest = sha256_file(path)
        report.hashed.append(rel)
        report.hashed_bytes += before["bytes"]
        if digest != entry["sha256"]:
            raise StagevarError(f"File {rel} in {root} does not match manifest.json (corrupted or modified); "
                                f"export again.")
        # Only record a digest that describes one unchanged file from start to end of hashing.
        if rel in big and file_identity(path) == before:
            updated[rel] = {"sha256": digest, **before}
    if big and updated != {k: v for k, v in known.items() if k in big}:
        _write_record(record_file, root, updated)
    return report


def forget(root) -> None:
    """Delete the record of export ``root`` (its weights are hashed again at the next load)."""
    try:
        record_path(Path(root)).unlink()
    except FileNotFoundError:
        pass


def _read_record(path: Path) -> dict[str, dict]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("version") != RECORD_VERSION or not isinstance(data.get("files"), dict):
        return {}
    return {k: v for k, v in data["files"].items() if isinstance(v, dict)}


def _write_record(path: Path, root: Path, files: dict[str, dict]) -> None:
    text = json.dumps({"version": RECORD_VERSION, "root": str(Path(root).resolve()), "files": files},
                      indent=1, sort_keys=True)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".record.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
            os.replace(tmp, path)  # concurrent loads each write a whole record; the last one wins
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise
    except OSError:
        pass  # a read-only home costs a re-hash at the next load, nothing else
