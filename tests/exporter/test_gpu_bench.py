"""The GPU benchmark's CPU-side logic: arguments, refusal without a GPU, per-scale workloads, JSON schema.

The GPU steps themselves run only where a CUDA GPU is lent (scripts/gpu_bench.sh); here the
ONNX Runtime timing loop runs on the CPU (`--allow-cpu`) over the shared infinity-tiny export.
"""

from __future__ import annotations

import copy
import json

import pytest

from stagevar import gpu_bench
from stagevar.runtime.schedules import get_schedule
from stagevar.runtime.stage_plan import make_plan


def _one_sentence(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


def test_without_a_gpu_it_refuses_in_one_sentence_and_writes_nothing(monkeypatch, tmp_path, capsys):
    """Guards: the benchmark starting a 2B export (minutes, GBs) on a machine that has no GPU."""
    monkeypatch.setattr(gpu_bench, "gpu_info", lambda: None)
    called = []
    monkeypatch.setattr(gpu_bench, "export_2b", lambda *a: called.append(a))
    out = tmp_path / "r.json"
    assert gpu_bench.entry(["--out", str(out), "--workdir", str(tmp_path / "w")]) == 2
    assert "No CUDA GPU" in _one_sentence(capsys)
    assert not out.exists() and not called and not (tmp_path / "w").exists()


@pytest.mark.parametrize("argv, words", [
    (["--runs", "0"], "--runs"),
    (["--plans", "exact,fast"], "--plans"),
    (["--skip", "export"], "--skip"),
    (["--budget-s", "-1"], "--budget-s"),
    (["--allow-cpu"], "--allow-cpu needs --artifacts"),
    (["--artifacts", "/nonexistent"], "no manifest.json"),
    (["--out", "/nonexistent/dir/r.json"], "does not exist"),
])
def test_bad_arguments_are_refused_before_the_gpu_check(argv, words, monkeypatch, capsys):
    """Guards: a typo found only after minutes of export on a lent GPU."""
    monkeypatch.setattr(gpu_bench, "gpu_info", lambda: pytest.fail("the GPU was probed before the arguments"))
    assert gpu_bench.entry(argv) == 2
    assert words in _one_sentence(capsys)


def test_workloads_follow_the_plan_modes_and_past_tokens(tiny_artifacts):
    """Guards: a scale timed with the wrong graph or K/V length (e.g. past tokens counting LOWRANK
    scales, which append nothing), or skipped scales being timed."""
    data = json.loads((tiny_artifacts / "manifest.json").read_text())
    schedule = get_schedule("1:1", data["resolution"])
    for name in ("exact", "stagevar"):
        plan = make_plan(name, schedule, num_chunks=8, alpha=data["alpha"])
        work = gpu_bench.scale_workloads(data, name)
        assert [w["mode"] for w in work] == [m.value for m in plan.modes]
        past = 0
        for w, tokens in zip(work, schedule.token_counts):
            if w["mode"] == "skip":
                assert w["graph"] is None
                continue
            entry = data["engines"][w["profile"].entry]
            assert (entry["graph"], entry["scale"], entry["past_tokens"]) == (
                "fidelity" if w["mode"] == "lowrank" else "step", w["scale"], past)
            past += 0 if w["mode"] == "lowrank" else tokens


@pytest.fixture(scope="module")
def cpu_report(tiny_artifacts, tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_bench") / "report.json"
    code = gpu_bench.main(["--out", str(out), "--artifacts", str(tiny_artifacts), "--allow-cpu",
                           "--plans", "stagevar", "--runs", "1"])
    assert code == 0
    return json.loads(out.read_text())


def test_cpu_test_mode_writes_a_valid_report_with_every_scale(cpu_report):
    """Guards: the JSON layout the GPU session will read (per-scale p50, totals, skipped steps)."""
    gpu_bench.validate_report(cpu_report)
    entry = cpu_report["latency"]["ort"]["stagevar"]
    assert [s["scale"] for s in entry["scales"]] == list(range(13))
    assert [s["mode"] for s in entry["scales"]][-3:] == ["lowrank", "skip", "skip"]
    assert all(s["p50_ms"] > 0 for s in entry["scales"] if s["mode"] != "skip")
    assert cpu_report["latency"]["torch"] == {} and any("torch" in s for s in cpu_report["skipped"])
    assert cpu_report["export"]["attention"]["form"] == "fused"


@pytest.mark.parametrize("breakage", ["schema", "total", "skip_time", "missing_time", "engine"])
def test_schema_check_rejects_broken_reports(cpu_report, breakage):
    """Guards: validate_report accepting a report the GPU session would misread."""
    bad = copy.deepcopy(cpu_report)
    entry = bad["latency"]["ort"]["stagevar"]
    if breakage == "schema":
        bad["schema"] = "something/0"
    elif breakage == "total":
        entry["total_ms"] += 5.0
    elif breakage == "skip_time":
        entry["scales"][-1]["p50_ms"] = 1.0
    elif breakage == "missing_time":
        entry["scales"][0]["p50_ms"] = None
    else:
        bad["latency"]["tensorrt"] = {}
    with pytest.raises(ValueError):
        gpu_bench.validate_report(bad)


def test_the_shell_script_refuses_without_a_gpu(tmp_path):
    """Guards: the wrapper failing before the Python refusal (a broken package tree or wheel
    step), or exporting anyway. Needs a machine without a CUDA GPU."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    if gpu_bench.gpu_info() is not None:
        pytest.skip("this machine has a GPU; the script would run")
    repo = Path(gpu_bench.__file__).resolve().parents[1]
    env = dict(os.environ, PYTHON=sys.executable, STAGEVAR_SCRATCH=str(tmp_path / "scratch"))
    done = subprocess.run([str(repo / "scripts" / "gpu_bench.sh"), str(tmp_path / "r.json")], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("error: No CUDA GPU")
    assert not (tmp_path / "r.json").exists() and not (tmp_path / "scratch" / "work").exists()
