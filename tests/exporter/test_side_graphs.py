"""Two-process export (exporter/infinity/side_graphs.py, side_worker.py): the same files as one
process, and a second process that fails, hangs or is not needed never loses what was written
nor outlives the export."""

import os
import sys

import pytest

from stagevar.exporter.infinity import side_graphs, side_worker
from stagevar.exporter.infinity.export_artifacts import export_artifacts
from stagevar.exporter.infinity.side_graphs import SideGraphs, check_workers, default_workers
from stagevar.runtime.errors import StagevarError


def _files(folder):
    return {p.name: p.read_bytes() for p in sorted((folder / "onnx").iterdir())}


def test_two_processes_write_the_same_bytes_as_one(tiny_artifacts, tiny_bundle, tmp_path):
    """Guards against the second process tracing without the export's attention form or token
    pairing (context variables do not cross processes), a lost or stale block hand-over, and the
    shared weights file written in another order: any of them changes a file."""
    out = export_artifacts(tiny_bundle, tmp_path / "two", aspects=("1:1", "2:1"), workers=2)
    one, two = _files(tiny_artifacts), _files(out)
    assert sorted(two) == sorted(one)
    assert [name for name in one if one[name] != two[name]] == []


def test_a_stagevar_error_in_the_second_process_is_raised_as_its_sentence(tmp_path):
    script = ("import pickle, sys; pickle.dump({'stagevar_error': 'text encoder weights are missing; pass --text-encoder.'}, "
              "open(sys.argv[2], 'wb'))")
    with SideGraphs(command=[sys.executable, "-c", script]) as side:
        side.launch()
        with pytest.raises(StagevarError, match="^text encoder weights are missing; pass --text-encoder.$"):
            side.result()


def test_a_second_process_that_dies_is_reported_with_its_last_output():
    """Guards against waiting forever, or a bare 'no such file', when the second process is
    killed (out of memory) before it writes its result."""
    script = "import sys; print('tracing text_encoder'); print('Killed: out of memory'); sys.exit(137)"
    with SideGraphs(command=[sys.executable, "-c", script]) as side:
        side.launch()
        with pytest.raises(RuntimeError, match="exited with code 137") as err:
            side.result()
    assert "Killed: out of memory" in str(err.value)


def test_closing_kills_a_second_process_still_running():
    """An export that fails, is interrupted or runs in one process after all (the CLI launches
    the second process before it knows) must not leave it behind."""
    with SideGraphs(command=[sys.executable, "-c", "import time; time.sleep(120)"]) as side:
        side.launch()
        proc = side._proc
        assert proc.poll() is None
    assert proc.poll() is not None
    assert not side.folder.exists()


def test_the_worker_gives_up_when_the_exporting_process_is_gone(tmp_path):
    with pytest.raises(SystemExit, match="ended before it sent the job"):
        side_worker.wait_for(tmp_path / "job.pt", parent=os.getppid() + 1_000_000, what="job")


def test_default_workers_only_for_small_in_memory_models_with_two_cpus(tiny_bundle, monkeypatch):
    monkeypatch.setattr(side_graphs, "usable_cpus", lambda: 2)
    assert default_workers(tiny_bundle) == 2
    monkeypatch.setattr(side_graphs, "usable_cpus", lambda: 1)
    assert default_workers(tiny_bundle) == 1
    monkeypatch.setattr(side_graphs, "usable_cpus", lambda: 2)
    monkeypatch.setattr(side_graphs, "MAX_SIDE_BYTES", 1000)
    assert default_workers(tiny_bundle) == 1


def test_jobs_refusals_are_one_sentence(tiny_bundle, monkeypatch):
    with pytest.raises(StagevarError, match="--jobs 3 is not supported; use 1") as err:
        check_workers(3, tiny_bundle)
    assert "\n" not in str(err.value)
    monkeypatch.setattr(type(tiny_bundle), "is_lazy", property(lambda self: True))
    with pytest.raises(StagevarError, match="initialised lazily .* export it with --jobs 1"):
        check_workers(2, tiny_bundle)


def test_a_crashed_second_process_costs_time_not_the_export(tiny_artifacts, tiny_bundle, tmp_path, capfd):
    """The second process is an optimisation: killed or broken, its graphs are traced in the
    exporting process, with one note, and the files are the same. Guards against a crash there
    failing the whole export (or leaving text_encoder or fidelity missing)."""
    crash = SideGraphs(command=[sys.executable, "-c", "import sys; print('Killed'); sys.exit(137)"])
    out = export_artifacts(tiny_bundle, tmp_path / "fallback", aspects=("1:1", "2:1"), workers=2, side=crash)
    one, fallback = _files(tiny_artifacts), _files(out)
    assert [name for name in one if one[name] != fallback.get(name)] == []
    err = capfd.readouterr().err
    assert "second process failed" in err and "tracing text_encoder and fidelity in this one instead" in err


@pytest.mark.slow
def test_two_processes_follow_precision_attention_and_pairing(tiny_bundle, tmp_path):
    """fp16, the decomposed form and the sample pairing reach the second process (they change
    text_encoder's opset, fidelity's token restore and the blocks' dtypes): same bytes as one."""
    options = dict(aspects=("1:1",), precision="fp16", attention="decomposed", pairing="sample")
    one = export_artifacts(tiny_bundle, tmp_path / "one", workers=1, **options)
    two = export_artifacts(tiny_bundle, tmp_path / "two", workers=2, **options)
    a, b = _files(one), _files(two)
    assert sorted(a) == sorted(b) and [name for name in a if a[name] != b[name]] == []
