"""A checkpoint of no preset architecture, end to end from the command line (issue: real checkpoints).

Official-layout files (legacy buffers present, zero_k_bias absent) of a depth-4, 128-wide, 2-head,
2-chunk model with 256 text channels and a 16-token null prompt: export with --check, generate
with exact and cfg-off, stagevar refused until `stagevar-export calibrate`, then it works.
"""

import json
from dataclasses import asdict

import pytest

from stagevar.exporter.cli_export import main as export_main
from stagevar.exporter.infinity.official_layout import custom_preset, write_official_checkpoints
from stagevar.runtime.cli_generate import main as generate_main
from stagevar.runtime.errors import StagevarError

pytestmark = pytest.mark.slow  # two exports' worth of tracing (~2-5 min on 2 cores)

RES = ["--resolution", "0.25M"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return write_official_checkpoints(tmp_path_factory.mktemp("ckpt"), custom_preset())


def _args(ckpt):
    return ["--weights", str(ckpt["weights"]), "--vae", str(ckpt["vae"]), "--text-encoder", str(ckpt["text_encoder"])]


@pytest.fixture(scope="module")
def export(ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("exp") / "custom"
    assert export_main(_args(ckpt) + ["--out", str(out), "--check"] + RES) == 0
    return out


def test_lowrank_plan_is_refused_before_any_tracing(ckpt, tmp_path):
    # Guards the old behaviour: a 2-chunk model failing after every graph was traced.
    out = tmp_path / "never"
    with pytest.raises(StagevarError, match="calibrate") as err:
        export_main(_args(ckpt) + ["--out", str(out), "--plans", "exact,stagevar"] + RES)
    assert "2 block chunks" in str(err.value) and not out.exists()
    assert not list(tmp_path.iterdir())  # not even a staging folder


def test_export_records_the_inferred_architecture_and_runnable_plans(export):
    m = json.loads((export / "manifest.json").read_text())
    assert m["model"]["config"] == asdict(custom_preset().transformer)
    assert m["model"]["architecture_source"] == "checkpoint"
    assert m["plans"] == ["exact", "cfg-off"] and m["rank_table"]["source"] == "none"
    assert json.loads((export / "reports" / "check.json").read_text())["ok"] is True


def test_generate_then_calibrate_then_stagevar(export, tmp_path, capsys):
    for plan in ("exact", "cfg-off"):
        assert generate_main([str(export), "a lighthouse", "--plan", plan, "--out", str(tmp_path / f"{plan}.png")]) == 0
        assert (tmp_path / f"{plan}.png").stat().st_size > 0
    with pytest.raises(StagevarError, match="stagevar-export calibrate"):
        generate_main([str(export), "a lighthouse", "--plan", "stagevar", "--out", str(tmp_path / "s.png")])

    assert export_main(["calibrate", str(export), "--num-prompts", "2", "--alpha", "0.96,0.98", "--seed", "3"]) == 0
    m = json.loads((export / "manifest.json").read_text())
    table = json.loads((export / "rank_table.json").read_text())
    assert m["rank_table"]["source"] == "calibrated" and m["plans"] == ["exact", "stagevar", "stagevar-full", "cfg-off"]
    prov = table["provenance"]
    assert prov["num_prompts"] == 2 and prov["seeds"] == [3, 4] and prov["alphas"] == ["0.96", "0.98"]
    assert prov["model"]["config_hash"] == m["model"]["config_hash"] and len(prov["prompts_sha256"]) == 64
    # The engine entries carry the calibrated ranks (0.25M: fidelity scales 20x20, 24x24, 32x32).
    lowrank = [e for e in m["engines"] if e["graph"] == "fidelity" and e["hw"] == [20, 20]]
    assert lowrank[0]["ranks"] == [min(400, int(r * 400) + 1) for r in table["ratios"]["0.96"][0]]

    capsys.readouterr()
    for plan in ("stagevar", "stagevar-full"):
        assert generate_main([str(export), "a lighthouse", "--plan", plan, "--out", str(tmp_path / f"{plan}.png")]) == 0
    assert "rank table: calibrated " + prov["date"] in capsys.readouterr().out


def test_failed_calibration_loses_nothing(export):
    before = (export / "manifest.json").read_bytes()
    with pytest.raises(StagevarError, match="random weights|not the checkpoint|sha256"):
        export_main(["calibrate", str(export), "--weights", str(export / "manifest.json"), "--num-prompts", "1"])
    assert (export / "manifest.json").read_bytes() == before
