"""The benchmark: report structure and invariants, the stagevar-bench command, one-sentence errors.

Timings are never asserted here (the machine may be shared); only what must hold on any machine.
Runs on the shared infinity-tiny export at 0.06M with one measured run, so it stays fast.
"""

import json
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import pytest

from stagevar.cli_bench import entry
from stagevar.runtime.bench import STAGES, benchmark_pipeline, format_table
from stagevar.runtime.errors import StagevarError
from stagevar.runtime.pipeline import Pipeline
from stagevar.runtime.schedules import get_schedule
from stagevar.runtime.stage_plan import PLAN_PRESETS, make_plan

RES = "0.06M"
FAST = ["--resolution", RES, "--runs", "1", "--warmup", "0"]


@pytest.fixture(scope="module")
def pipe(tiny_artifacts):
    return Pipeline.from_dir(tiny_artifacts)


@pytest.fixture(scope="module")
def report(pipe):
    return benchmark_pipeline(pipe, plans=PLAN_PRESETS, resolution=RES, runs=1, warmup=0)


def test_report_has_every_plan_stage_and_scale(report):
    schedule = get_schedule("1:1", RES)
    assert list(report["plans"]) == list(PLAN_PRESETS)
    for name, entry_ in report["plans"].items():
        for key in ("cold", "p50", "p90"):
            assert set(entry_[key]) == set(STAGES), (name, key)
        assert [s["scale"] for s in entry_["scales"]] == list(range(schedule.num_scales))
        assert [tuple(s["hw"]) for s in entry_["scales"]] == list(schedule.scales)
        assert len(entry_["totals"]) == 1
    for key in ("speedup", "speedup_baseline", "peak_rss_mb", "device", "backend", "artifacts", "machine"):
        assert key in report
    assert report["artifacts"]["preset"] == "infinity-tiny" and report["artifacts"]["precision"] == "fp32"
    assert report["backend"] == "ort" and report["device"] == "cpu"
    assert report["machine"]["cpu_count"] >= 1 and report["machine"]["onnxruntime"]
    assert report["peak_rss_mb"] > 0


def test_every_plan_has_its_own_peak_rss_within_the_run_peak(report):
    """Guards: the peak-RSS figure missing from a plan's JSON entry, or larger than the run's."""
    for name, entry_ in report["plans"].items():
        assert 0 < entry_["peak_rss_mb"] <= report["peak_rss_mb"] + 1, name
    assert report["peak_rss_method"] in ("vmhwm-reset", "process-peak")
    assert "peak RSS MB" in format_table(report)


def test_one_run_gives_equal_percentiles(report):
    for entry_ in report["plans"].values():
        for stage in STAGES:
            assert entry_["p50"][stage] == entry_["p90"][stage]  # one run: both are that run


class _ScriptedPipe:
    """Stands in for a Pipeline whose calls take scripted times: call i of a plan reports
    total `totals[i]` (and proportional stages), so percentiles have known values."""

    def __init__(self, real, totals):
        self.manifest, self.spec, self.backend = real.manifest, real.spec, real.backend
        self.totals, self.calls = list(totals), 0

    def __call__(self, prompt, *, plan, aspect, resolution, **kwargs):
        total = self.totals[self.calls % len(self.totals)]
        self.calls += 1
        schedule = get_schedule(aspect, resolution)
        scales = [{"scale": k, "hw": list(hw), "mode": m.value, "seconds": total / 10 * (k + 1)}
                  for k, (hw, m) in enumerate(zip(schedule.scales, plan.modes))]
        timings = {"text": total / 10, "vae": total / 5, "total": total, "session": total / 2,
                   "overhead": total / 2, "scales": scales}
        return SimpleNamespace(timings=timings)


def test_percentiles_are_computed_over_the_measured_runs_only(pipe):
    """Bug guarded against: p50/p90 taken from one run, from the cold or warm-up calls, or with
    the percentiles swapped. Cold 9 s, warm-up 8 s, then 3 runs of 3, 1, 2 s: p50 2, p90 2.8
    (linear interpolation between the 2nd and 3rd sorted run)."""
    scripted = _ScriptedPipe(pipe, [9.0, 8.0, 3.0, 1.0, 2.0])
    r = benchmark_pipeline(scripted, plans=["stagevar"], resolution=RES, runs=3, warmup=1)
    e = r["plans"]["stagevar"]
    assert scripted.calls == 5 and e["totals"] == [3.0, 1.0, 2.0] and e["cold"]["total"] == 9.0
    assert e["p50"]["total"] == pytest.approx(2.0) and e["p90"]["total"] == pytest.approx(2.8)
    assert e["p50"]["vae"] == pytest.approx(0.4) and e["p90"]["text"] == pytest.approx(0.28)
    assert e["scales"][2]["p50"] == pytest.approx(0.6) and e["scales"][2]["p90"] == pytest.approx(0.84)
    assert e["overhead_share"] == pytest.approx(0.5)


# Token passes per image at 1:1 0.06M (scales 1, 2, 4, 6, 8, 12, 16: 1, 4, 16, 36, 64, 144, 256
# tokens), worked out by hand: CFG scales count twice (cond + null rows), a LOWRANK scale counts
# its mean rank over the 8 chunks (alpha 0.96: int(ratio * M) + 1), a SKIP scale nothing.
#   exact: 2 * 521 = 1042; cfg-off: 2 * (1 + 4 + 16 + 36) + 64 + 144 + 256 = 578
#   stagevar: 114 + mean(2, 9, 14, 17, 17, 13, 11, 13) = 114 + 12 = 126
#   stagevar-full: 126 + mean(2, 17, 28, 32, 34, 27, 20, 24) + mean(3, 14, 22, 18, 15, 8, 10, 15)
#                  = 126 + 23 + 13.125 = 162.125
TOKENS_006M = {"exact": 1042.0, "stagevar": 126.0, "stagevar-full": 162.125, "cfg-off": 578.0}


def test_token_counts_equal_hand_counted_token_passes(report):
    """Bug guarded against: a token count that is wrong the same way as plan.token_passes()
    (comparing the two could not see it), e.g. CFG rows counted once or LOWRANK counted at M."""
    assert {name: e["tokens"] for name, e in report["plans"].items()} == TOKENS_006M
    schedule = get_schedule("1:1", RES)
    for name, e in report["plans"].items():
        assert [s["mode"] for s in e["scales"]] == [m.value for m in make_plan(name, schedule).modes]


def test_speedup_is_relative_to_exact_and_covers_stagevar(report):
    assert report["speedup_baseline"] == "exact"
    assert report["speedup"]["exact"] == 1.0
    assert report["speedup"]["stagevar"] > 0
    exact, stagevar = report["plans"]["exact"]["p50"]["total"], report["plans"]["stagevar"]["p50"]["total"]
    assert report["speedup"]["stagevar"] == pytest.approx(exact / stagevar)


def test_speedup_is_relative_to_the_first_plan_without_exact(pipe):
    r = benchmark_pipeline(pipe, plans=["cfg-off", "stagevar"], resolution=RES, runs=1, warmup=0)
    assert r["speedup_baseline"] == "cfg-off"
    assert r["speedup"]["cfg-off"] == 1.0 and "stagevar" in r["speedup"]


def test_overhead_share_is_a_fraction_of_the_total(report):
    for entry_ in report["plans"].values():
        assert 0.0 <= entry_["overhead_share"] <= 1.0
        assert entry_["p50"]["overhead"] <= entry_["p50"]["total"]


def test_skipped_scales_run_no_graph(pipe, monkeypatch):
    """Bug guarded against: a SKIP scale that still runs its step (its time would be hidden,
    as the pipeline reports 0.0 s for skipped scales by construction). Counts the graph runs of
    one benchmarked call per plan: one per executed scale, none for the skipped ones."""
    runs = []
    real = pipe.backend.run_bound
    monkeypatch.setattr(pipe.backend, "run_bound", lambda graph, *a, **k: (runs.append(graph), real(graph, *a, **k))[1])
    schedule = get_schedule("1:1", RES)
    for name in ("stagevar", "exact"):
        runs.clear()
        benchmark_pipeline(pipe, plans=[name], resolution=RES, runs=1, warmup=0)  # cold + 1 run
        modes = make_plan(name, schedule).modes
        per_call = {"step": sum(m.value in ("cfg", "uncond") for m in modes),
                    "fidelity": sum(m.value == "lowrank" for m in modes)}
        assert runs.count("step") == 2 * per_call["step"] and runs.count("fidelity") == 2 * per_call["fidelity"]
    assert per_call["step"] == schedule.num_scales  # exact runs every scale; stagevar skipped two


def test_non_square_aspect_reports_its_own_grids(pipe):
    r = benchmark_pipeline(pipe, plans=["stagevar"], aspect="2:1", resolution=RES, runs=1, warmup=0)
    assert r["settings"]["aspect"] == "2:1"
    assert [tuple(s["hw"]) for s in r["plans"]["stagevar"]["scales"]] == list(get_schedule("2:1", RES).scales)


def test_report_is_json_serialisable_and_tabulates(report):
    json.loads(json.dumps(report))
    table = format_table(report)
    for name in PLAN_PRESETS:
        assert name in table
    assert "p50 per scale" in table


@pytest.mark.parametrize("kwargs", [{"runs": 0}, {"warmup": -1}, {"plans": ["fastest"]}, {"plans": []},
                                    {"plans": ["exact", "exact"]}])
def test_bad_settings_are_refused_before_any_timing(pipe, kwargs):
    with pytest.raises(StagevarError):
        benchmark_pipeline(pipe, **{"resolution": RES, **kwargs})


def test_cli_writes_json_with_speedup_and_torch_baseline_and_prints_tables(tiny_artifacts, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    before = sorted(tiny_artifacts.rglob("*"))
    assert entry([str(tiny_artifacts), *FAST]) == 0
    out = capsys.readouterr().out
    data = json.loads((tmp_path / "stagevar-bench.json").read_text())  # the default path
    assert "speedup" in data and set(data["speedup"]) == {"exact", "stagevar"}
    # The export is random-init, so the eager torch baseline ran on the same weights.
    assert set(data["torch"]["plans"]) == {"exact", "stagevar"} and set(data["ort_vs_torch"]) == {"exact", "stagevar"}
    for name, e in data["torch"]["plans"].items():
        assert e["tokens"] == data["plans"][name]["tokens"]
        assert {"text", "scales", "vae", "total"} <= set(e["p50"])
    assert "speedup" in out and "eager torch" in out and "stagevar-bench.json" in out
    assert sorted(tiny_artifacts.rglob("*")) == before  # nothing written into the export


def test_cli_without_torch_skips_the_baseline(tiny_artifacts, tmp_path):
    path = tmp_path / "r.json"
    # A fresh process, as a user runs it: inside the test process the RSS before the load depends on
    # what earlier tests left (the allocator may return memory during the load, so after < before).
    proc = subprocess.run([sys.executable, "-m", "stagevar.cli_bench", str(tiny_artifacts), *FAST, "--plans", "stagevar",
                           "--no-torch", "--json", str(path)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(path.read_text())
    assert "torch" not in data and data["speedup_baseline"] == "stagevar"
    # Load time and memory right after opening the export (issue 17): guards against the fields
    # going missing or being read before the load (then "after" would not exceed "before").
    load = data["load"]
    assert load["backend"] == "ort" and load["device"] == "cpu" and load["seconds"] > 0
    assert load["after"]["peak_rss_mb"] >= load["after"]["rss_mb"] > load["before"]["rss_mb"] > 0
    assert load["estimate"]["device"] == "cpu" and load["estimate"]["anonymous_bytes"] > 0
    assert "RSS after load" in proc.stdout


@pytest.mark.parametrize("args", [["{missing}"], ["{art}", "--plans", "exact,fastest"], ["{art}", "--runs", "0"],
                                  ["{art}", "--json", "{art}/bench.json"]])
def test_cli_errors_exit_2_with_one_sentence(tiny_artifacts, tmp_path, capsys, args):
    argv = [a.format(missing=tmp_path / "nope", art=tiny_artifacts) for a in args]
    assert entry(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1
    assert not (tiny_artifacts / "bench.json").exists()


def test_bench_command_and_module_import_without_torch():
    code = textwrap.dedent(
        """
        import sys
        sys.modules["torch"] = None  # any "import torch" now raises ImportError
        import stagevar.runtime.bench, stagevar.cli_bench
        assert not any(m == "torch" or m.startswith("torch.") for m, v in sys.modules.items() if v is not None)
        print("ok")
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
