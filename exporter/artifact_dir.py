"""Atomic export directories: an interrupted export leaves no directory that looks complete.

An export is written into a hidden sibling ``<parent>/.<name>.partial-<pid>-<random>`` and
renamed to ``<parent>/<name>`` only when everything (manifest last) has been written. Ctrl-C or
an exception removes the partial directory; a SIGKILL or power loss leaves it behind under its
hidden name, and the next export of the same name removes it once its process is gone.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from stagevar.runtime.errors import StagevarError
from stagevar.runtime.manifest import fsync_dir

_PARTIAL = "partial"
_OLD = "old"


@contextmanager
def staged_output(out_dir: str | os.PathLike, force: bool = False) -> Iterator[Path]:
    """Yield a fresh temporary folder and move it to ``out_dir`` when the block succeeds.

    Refuses (``StagevarError``) an existing ``out_dir`` unless ``force``, an ``out_dir`` that is
    a file, and a parent folder that cannot be created or written. Parent folders are created.
    On success, an existing ``out_dir`` (``force``) is renamed aside, the new folder renamed in,
    then the old one deleted, so ``out_dir`` is never half-written. On any exception, including
    ``KeyboardInterrupt``, the temporary folder is removed and the exception re-raised.
    """
    out = Path(os.path.abspath(out_dir))  # normalises "." and ".." so the name is real
    if not out.name:
        raise StagevarError(f"Output path {out_dir} has no folder name; choose another --out.")
    _check_target(out, force)
    parent = out.parent
    _prepare_parent(parent)
    remove_stale_siblings(parent, out.name)
    tmp = _sibling(out, _PARTIAL)
    try:
        tmp.mkdir()
    except OSError as exc:
        raise StagevarError(f"Cannot create a folder in {parent} ({exc.strerror}); choose "
                            f"another --out or fix the folder's permissions.") from exc
    try:
        yield tmp
        _commit(tmp, out, force)
    except BaseException:
        _remove(tmp)
        raise


def remove_stale_siblings(parent: str | os.PathLike, name: str) -> list[Path]:
    """Best effort: delete ``.<name>.partial-*`` / ``.<name>.old-*`` left by dead processes.

    Only folders whose process is no longer alive and which were last modified before this
    process started are removed (the time check guards against a recycled or foreign pid).
    Returns the folders removed.
    """
    parent = Path(parent)
    pattern = re.compile(rf"\.{re.escape(name)}\.(?:{_PARTIAL}|{_OLD})-(\d+)-[0-9a-f]+")
    started = process_start_time()
    removed = []
    try:
        entries = list(parent.iterdir())
    except OSError:
        return removed
    for path in entries:
        match = pattern.fullmatch(path.name)
        if match is None or path.is_symlink() or not path.is_dir():
            continue
        pid = int(match.group(1))
        if pid == os.getpid() or _pid_alive(pid) or _newest_mtime(path) >= started:
            continue
        _remove(path)
        if not path.exists():
            removed.append(path)
    return removed


def process_start_time() -> float:
    """When this process started stagevar.exporter.artifact_dir (epoch seconds)."""
    return _START_TIME


# --------------------------------------------------------------------------------------------
# internals


def _check_target(out: Path, force: bool) -> None:
    if out.is_symlink() or out.exists():
        if not out.is_dir():
            raise StagevarError(f"Output path {out} is a file, not a folder; choose another "
                                f"--out.")
        if not force:
            raise StagevarError(f"Output folder {out} already exists; pass --force to overwrite "
                                f"it or choose another --out.")


def _prepare_parent(parent: Path) -> None:
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StagevarError(f"Cannot create the parent folder {parent} of --out "
                            f"({exc.strerror or exc}); choose another --out.") from exc
    if not os.access(parent, os.W_OK | os.X_OK):
        raise StagevarError(f"Parent folder {parent} of --out is not writable; choose another "
                            f"--out or fix its permissions.")


def _sibling(out: Path, kind: str) -> Path:
    return out.parent / f".{out.name}.{kind}-{os.getpid()}-{secrets.token_hex(4)}"


def _commit(tmp: Path, out: Path, force: bool) -> None:
    old = None
    if out.is_symlink() or out.exists():
        # Another process may have created it while we were exporting.
        _check_target(out, force)
        old = _sibling(out, _OLD)
        os.rename(out, old)
    try:
        os.rename(tmp, out)
    except BaseException:
        if old is not None:
            os.rename(old, out)  # put the previous export back rather than lose both
        raise
    fsync_dir(out.parent)
    if old is not None:
        _remove(old)


def _remove(path: Path) -> None:
    if path.is_symlink():
        path.unlink(missing_ok=True)
    else:
        shutil.rmtree(path, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    if os.name != "posix":
        return True  # os.kill(pid, 0) would terminate the process on Windows; keep the folder
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    except OSError:
        return True
    return True


def _newest_mtime(folder: Path) -> float:
    # A live export writes into subfolders, which does not touch the top folder's mtime.
    newest = 0.0
    for dirpath, _dirs, files in os.walk(folder):
        for p in [dirpath, *(os.path.join(dirpath, f) for f in files)]:
            try:
                newest = max(newest, os.lstat(p).st_mtime)
            except OSError:
                pass
    return newest


# When this module was imported: a close upper bound on the process start, read from the same
# clock that stamps file mtimes (the /proc start time is only whole-second precise).
_START_TIME = time.time()
