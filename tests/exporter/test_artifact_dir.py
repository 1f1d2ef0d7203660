"""Requirements for exporter/artifact_dir.py (DESIGN.md section 6: writes are atomic; an
interrupted export leaves no directory that looks complete)."""

import os
import signal
import subprocess
import sys
import time

import pytest

from stagevar.exporter import artifact_dir
from stagevar.exporter.artifact_dir import remove_stale_siblings, staged_output
from stagevar.runtime.errors import StagevarError

posix_only = pytest.mark.skipif(os.name != "posix", reason="needs POSIX signals and pids")

CHILD = """
import sys, time
from stagevar.exporter.artifact_dir import staged_output
with staged_output(sys.argv[1]) as tmp:
    (tmp / "onnx").mkdir()
    (tmp / "onnx" / "step.onnx").write_bytes(b"half written")
    (tmp / "manifest.json").write_text("{}")
    print(tmp, flush=True)
    time.sleep(60)
"""

LATER_EXPORT = """
import sys
from stagevar.exporter.artifact_dir import staged_output
with staged_output(sys.argv[1]) as tmp:
    (tmp / "manifest.json").write_text("{}")
"""


def _siblings(parent):
    return sorted(p.name for p in parent.iterdir())


def _dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _make_stale(parent, name, pid, age_s=3600.0, kind="partial"):
    stale = parent / f".{name}.{kind}-{pid}-deadbeef"
    (stale / "onnx").mkdir(parents=True)
    (stale / "onnx" / "step.onnx").write_bytes(b"x")
    past = time.time() - age_s
    for p in (stale / "onnx" / "step.onnx", stale / "onnx", stale):
        os.utime(p, (past, past))
    return stale


def test_success_moves_the_content_into_place_and_leaves_no_temp_dir(tmp_path):
    out = tmp_path / "out"
    with staged_output(out) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(f".out.partial-{os.getpid()}-")
        assert not out.exists()
        (tmp / "onnx").mkdir()
        (tmp / "onnx" / "step.onnx").write_bytes(b"graph")
    assert (out / "onnx" / "step.onnx").read_bytes() == b"graph"
    assert _siblings(tmp_path) == ["out"]


def test_an_exception_inside_leaves_no_output_and_no_temp_dir(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="boom"):
        with staged_output(out) as tmp:
            (tmp / "manifest.json").write_text("{}")
            raise RuntimeError("boom")
    assert _siblings(tmp_path) == []


def test_keyboard_interrupt_removes_the_temp_dir_and_propagates(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with staged_output(tmp_path / "out") as tmp:
            (tmp / "file").write_text("x")
            raise KeyboardInterrupt
    assert _siblings(tmp_path) == []


def test_existing_output_is_refused_without_force(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("old")
    with pytest.raises(StagevarError) as exc:
        with staged_output(out):
            pytest.fail("must not be entered")
    assert "already exists; pass --force to overwrite it or choose another --out" in str(exc.value)
    assert "\n" not in str(exc.value)
    assert (out / "keep.txt").read_text() == "old"
    assert _siblings(tmp_path) == ["out"]


def test_existing_output_is_replaced_with_force(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    with staged_output(out, force=True) as tmp:
        assert (out / "stale.txt").exists()  # the old export stays usable until the end
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in out.iterdir()) == ["new.txt"]
    assert _siblings(tmp_path) == ["out"]


def test_a_failed_forced_export_keeps_the_previous_output(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("old")
    with pytest.raises(ValueError):
        with staged_output(out, force=True) as tmp:
            (tmp / "new.txt").write_text("new")
            raise ValueError
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    assert _siblings(tmp_path) == ["out"]


def test_output_created_by_someone_else_meanwhile_is_not_overwritten_without_force(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(StagevarError, match="already exists"):
        with staged_output(out) as tmp:
            (tmp / "new.txt").write_text("new")
            out.mkdir()
            (out / "theirs.txt").write_text("theirs")
    assert sorted(p.name for p in out.iterdir()) == ["theirs.txt"]
    assert _siblings(tmp_path) == ["out"]


def test_output_path_that_is_a_file_is_refused_even_with_force(tmp_path):
    out = tmp_path / "out"
    out.write_text("not a folder")
    for force in (False, True):
        with pytest.raises(StagevarError, match="is a file"):
            with staged_output(out, force=force):
                pytest.fail("must not be entered")
    assert out.read_text() == "not a folder"


def test_missing_parent_folders_are_created(tmp_path):
    out = tmp_path / "a" / "b" / "out"
    with staged_output(out) as tmp:
        (tmp / "x").write_text("x")
    assert (out / "x").read_text() == "x"


def test_parent_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(StagevarError, match="parent folder") as exc:
        with staged_output(tmp_path / "file" / "out"):
            pytest.fail("must not be entered")
    assert "\n" not in str(exc.value)


def test_unwritable_parent_is_refused(tmp_path, monkeypatch):
    # chmod cannot stop root, so the permission probe itself is made to say no.
    monkeypatch.setattr(artifact_dir.os, "access", lambda path, mode: False)
    with pytest.raises(StagevarError, match="not writable") as exc:
        with staged_output(tmp_path / "out"):
            pytest.fail("must not be entered")
    assert "\n" not in str(exc.value)
    assert _siblings(tmp_path) == []


def test_relative_output_path_resolves_against_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with staged_output("out/") as tmp:
        assert tmp.parent == tmp_path
        (tmp / "x").write_text("x")
    assert (tmp_path / "out" / "x").exists()


@posix_only
def test_sigkill_inside_leaves_no_output_and_a_later_export_cleans_the_partial(tmp_path):
    out = tmp_path / "out"
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(out)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        partial = child.stdout.readline().strip()
        assert partial, child.stderr.read()
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
    assert not out.exists() and not (out / "manifest.json").exists()
    assert _siblings(tmp_path) == [os.path.basename(partial)]  # hidden, not the output name

    # The next export of the same name is a new process started after the kill.
    later = subprocess.run([sys.executable, "-c", LATER_EXPORT, str(out)], capture_output=True,
                           text=True, timeout=60)
    assert later.returncode == 0, later.stderr
    assert _siblings(tmp_path) == ["out"]
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json"]


@posix_only
def test_stale_partial_of_a_dead_process_is_removed(tmp_path):
    stale = _make_stale(tmp_path, "out", _dead_pid())
    old = _make_stale(tmp_path, "out", _dead_pid(), kind="old")  # killed while replacing
    other = _make_stale(tmp_path, "other", _dead_pid())
    with staged_output(tmp_path / "out") as tmp:
        (tmp / "x").write_text("x")
    assert not stale.exists()
    assert other.exists()  # another export's leftovers are not ours to judge
    assert not old.exists()
    assert _siblings(tmp_path) == [other.name, "out"]


@posix_only
def test_partials_of_live_processes_or_touched_after_start_are_kept(tmp_path):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        live = _make_stale(tmp_path, "out", sleeper.pid)
        recent = _make_stale(tmp_path, "out", _dead_pid(), age_s=-60.0)  # modified after start
        assert remove_stale_siblings(tmp_path, "out") == []
        assert live.exists() and recent.exists()
    finally:
        sleeper.kill()
        sleeper.wait()


@posix_only
def test_remove_stale_siblings_reports_what_it_removed(tmp_path):
    stale = _make_stale(tmp_path, "out", _dead_pid())
    (tmp_path / ".out.partial-notapid-00").mkdir()
    assert remove_stale_siblings(tmp_path, "out") == [stale]
    assert _siblings(tmp_path) == [".out.partial-notapid-00"]
