"""The artifact manifest: ``manifest.json`` at the root of an export directory.

It records what was exported (model, precision, schedules, graphs and their I/O, engines) and
the size and sha256 of every other file in the directory. The exporter writes it last, so an
export directory without it is incomplete by definition; the runtime reads it first and refuses,
with one plain sentence, a schema it does not know or files that do not match their digests.
Files present but not listed are ignored, so a user may drop a README into an export.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from stagevar.runtime.errors import StagevarError, shown

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
# Artifacts can be many GB: hash them in bounded chunks instead of reading them whole.
_CHUNK_BYTES = 1 << 20
_VERIFY_MODES = ("record", "full", "quick")
# Check and bench reports are results about an export, rewritten whenever they run: listing
# them would make every later report break verification.
REPORTS_DIR = "reports"


# --------------------------------------------------------------------------------------------
# digests


def sha256_file(path: str | os.PathLike) -> str:
    """Return the hex sha256 of a file, streamed in 1 MiB chunks."""
    digest = hashlib.sha256()
    buf = bytearray(_CHUNK_BYTES)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            digest.update(view[:n])
    return digest.hexdigest()


def file_digests(root: str | os.PathLike) -> dict[str, dict]:
    """Digest every file under ``root`` except the root's ``manifest.json`` and ``reports/``.

    Returns ``{relative POSIX path: {"sha256": hex, "bytes": size}}`` sorted by path.
    """
    root = Path(root)
    found: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in filenames:
            path = Path(dirpath) / name
            rel = path.relative_to(root).as_posix()
            if rel != MANIFEST_NAME and not rel.startswith(f"{REPORTS_DIR}/"):
                found.append((rel, path))
    return {rel: {"sha256": sha256_file(path), "bytes": path.stat().st_size}
            for rel, path in sorted(found)}


# --------------------------------------------------------------------------------------------
# writing


def write_manifest(root: str | os.PathLike, content: dict) -> Path:
    """Write ``manifest.json`` into ``root`` atomically and return its path.

    Adds ``schema_version`` and ``files`` (the digests of everything else under ``root``) to a
    copy of ``content``. Must be the last file written in an export: files written after it
    are not listed, and files rewritten after it fail verification.
    """
    root = Path(root)
    data = dict(content)
    data["schema_version"] = SCHEMA_VERSION
    data["files"] = file_digests(root)
    text = json.dumps(data, indent=2, sort_keys=True) + "\n"
    target = root / MANIFEST_NAME
    # Temp file in the same folder so os.replace is a same-filesystem atomic rename: readers see
    # either no manifest or a complete one, never a torn one.
    fd, tmp = tempfile.mkstemp(dir=root, prefix=f".{MANIFEST_NAME}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; the manifest is as readable as the graphs
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    fsync_dir(root)
    return target


def fsync_dir(path: Path) -> None:
    # Makes the rename itself durable; not possible on every platform, hence best effort.
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# --------------------------------------------------------------------------------------------
# reading


@dataclass(frozen=True)
class Manifest:
    """A loaded manifest: the export directory and the parsed JSON."""

    root: Path
    data: dict

    @property
    def path(self) -> Path:
        return self.root / MANIFEST_NAME

    @property
    def schema_version(self) -> int:
        return self.data["schema_version"]

    @property
    def files(self) -> dict[str, dict]:
        return self.data["files"]

    @property
    def model(self):
        return self._require("model")

    @property
    def precision(self):
        return self._require("precision")

    @property
    def graphs(self) -> dict[str, dict]:
        return self._require("graphs")

    @property
    def schedules(self):
        return self._require("schedules")

    @property
    def engines(self) -> list:
        return self.data.get("engines", [])

    def graph_path(self, name: str) -> Path:
        """Absolute path of graph ``name`` (e.g. ``"step"``) inside the export."""
        graphs = self.graphs
        if name not in graphs:
            raise StagevarError(f"Export {self.root} has no '{name}' graph (it has "
                                f"{', '.join(sorted(graphs)) or 'none'}); export again with a "
                                f"stagevar that produces it.")
        entry = graphs[name]
        if not isinstance(entry, dict) or not _is_safe_relpath(entry.get("path")):
            raise StagevarError(f"manifest.json in {self.root} has a malformed entry for graph "
                                f"'{name}'; export again.")
        return self.root / entry["path"]

    def file_path(self, rel: object, what: str) -> Path:
        """Absolute path of `what` (e.g. "the tokenizer") at `rel`, a path the manifest names.

        Every path read from manifest.json goes through here or `graph_path`: a relative POSIX
        path inside the export, without "..". A tampered manifest must not make the runtime open
        a file, or load a library, from anywhere else.
        """
        if not _is_safe_relpath(rel):
            raise StagevarError(f"manifest.json in {self.root} names {what} at {shown(rel, 80)}, which is "
                                f"not a relative path inside the export; export again.")
        return self.root / rel

    def _require(self, key: str):
        if key not in self.data:
            raise StagevarError(f"manifest.json in {self.root} has no '{key}' entry; "
                                f"export again.")
        return self.data[key]


def load_manifest(root: str | os.PathLike, verify: bool | str = "full") -> Manifest:
    """Read and check the manifest of the export directory ``root``.

    ``verify``: ``"full"`` (or ``True``) checks the size and sha256 of every listed file,
    ``"record"`` does too but trusts a weights file this machine already hashed and that has not
    changed since (size, mtime, ctime, inode: see verification_record.py; what the runtime uses
    by default), ``"quick"`` checks sizes only (misses a same-size corruption), ``False``
    checks nothing beyond the manifest itself. Raises ``StagevarError`` for a missing folder,
    a folder that is not an export, unreadable JSON, an unknown schema or mismatching files.
    """
    mode = _verify_mode(verify)
    root = Path(root)
    if not root.exists():
        raise StagevarError(f"Export directory {root} does not exist; pass the --out folder of "
                            f"a finished stagevar-export.")
    if not root.is_dir():
        raise StagevarError(f"Export path {root} is a file, not a folder; pass the folder that "
                            f"stagevar-export wrote.")
    path = root / MANIFEST_NAME
    if not path.is_file():
        raise StagevarError(f"{root} is not a stagevar export (no manifest.json); run "
                            f"stagevar-export first, or run it again if it was interrupted "
                            f"(an interrupted export leaves no manifest).")
    data = _read_json(path, root)
    _check_schema(data, root)
    _check_file_list(data, root)
    manifest = Manifest(root=root, data=data)
    if mode == "record":
        from .verification_record import verify_with_record  # it uses sha256_file from here

        verify_with_record(manifest)
    elif mode is not None:
        verify_files(manifest, quick=(mode == "quick"))
    return manifest


def verify_files(manifest: Manifest, quick: bool = False) -> None:
    """Check every file listed in the manifest: present, same size and (unless quick) same sha256.

    Raises ``StagevarError`` naming the first file that does not match.
    """
    root = manifest.root
    for rel, entry in sorted(manifest.files.items()):
        path = root / rel
        if not path.is_file():
            raise StagevarError(f"File {rel} listed in {root / MANIFEST_NAME} is missing; "
                                f"export again.")
        size = path.stat().st_size
        if size != entry["bytes"]:
            raise StagevarError(f"File {rel} in {root} does not match manifest.json ({size} "
                                f"bytes instead of {entry['bytes']}: truncated or modified); "
                                f"export again.")
        if not quick and sha256_file(path) != entry["sha256"]:
            raise StagevarError(f"File {rel} in {root} does not match manifest.json "
                                f"(corrupted or modified); export again.")


def _verify_mode(verify: bool | str) -> str | None:
    if verify is True:
        return "full"
    if verify is False or verify is None:
        return None
    if verify in _VERIFY_MODES:
        return verify
    raise ValueError(f"verify must be True, False, 'record', 'full' or 'quick', not {verify!r}")


def _read_json(path: Path, root: Path) -> dict:
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise StagevarError(f"manifest.json in {root} could not be read as JSON ({reason}); "
                            f"export again.") from exc
    if not isinstance(data, dict):
        raise StagevarError(f"manifest.json in {root} holds a JSON {type(data).__name__}, not "
                            f"an object; export again.")
    return data


def _check_schema(data: dict, root: Path) -> None:
    version = data.get("schema_version")
    # bool is an int subclass; true/false in JSON is not a version.
    if isinstance(version, int) and not isinstance(version, bool):
        if version > SCHEMA_VERSION:
            raise StagevarError(f"Export {root} was written by a newer stagevar (schema "
                                f"{version}); upgrade stagevar to load it.")
        if version == SCHEMA_VERSION:
            return
    raise StagevarError(f"Export {root} has a manifest schema this stagevar does not know "
                        f"({version!r}, expected {SCHEMA_VERSION}); export it again.")


def _check_file_list(data: dict, root: Path) -> None:
    files = data.get("files")
    if not isinstance(files, dict):
        raise StagevarError(f"manifest.json in {root} has no file list; export again.")
    for rel, entry in files.items():
        # A listed path must stay inside the export: never hash or open files elsewhere.
        ok = (_is_safe_relpath(rel) and isinstance(entry, dict)
              and isinstance(entry.get("sha256"), str)
              and isinstance(entry.get("bytes"), int) and not isinstance(entry["bytes"], bool))
        if not ok:
            raise StagevarError(f"manifest.json in {root} has a malformed entry for file "
                                f"{rel!r}; export again.")


def _is_safe_relpath(rel: object) -> bool:
    if not isinstance(rel, str) or not rel or "\\" in rel:
        return False
    p = PurePosixPath(rel)
    return not p.is_absolute() and ".." not in p.parts and rel == p.as_posix()
