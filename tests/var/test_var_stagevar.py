"""StageVAR on VAR: calibrate a var-tiny export, then the stagevar / stagevar-full plans in the
pipeline against the eager reference sampler fed the same uniforms, Gumbel noise and projections.

ORT vs torch fp32 (tolerances as in test_var_pipeline.py): equal ids at every executed scale,
equal representative-token indices per chunk, images within one level. Each test names the bug
it guards against.
"""

import json
import shutil

import numpy as np
import pytest

from stagevar.exporter.var.calibrate import calibrate_var_export
from stagevar.exporter.var.sampler import VarReferenceSampler
from stagevar.runtime.errors import StagevarError
from stagevar.runtime.pipeline import Pipeline
from stagevar.runtime.stage_plan import Mode
from stagevar.runtime.var_sampling import draw_lowrank_noise, draw_uniforms

LABELS = [207, 360]


@pytest.fixture(scope="module")
def calibrated(var_tiny_artifacts, tmp_path_factory):
    out = tmp_path_factory.mktemp("cal") / "var-tiny"
    shutil.copytree(var_tiny_artifacts, out)
    table = calibrate_var_export(out, classes="1,207,360,88", say=lambda m: None)
    return out, table


def test_calibrate_records_a_table(calibrated, var_tiny_artifacts):
    """Ratios in (0, 1] per fidelity scale and chunk, recorded in the manifest with its digest;
    the stagevar plans become runnable. Guards: a table with the Infinity chunk count, the
    released table silently used for VAR."""
    out, table = calibrated
    rows = table["ratios"]["0.96"]
    assert len(rows) == 3 and all(len(r) == 2 and all(0 < x <= 1 for x in r) for r in rows)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["rank_table"]["source"] == "calibrated"
    assert manifest["plans"] == ["exact", "stagevar", "stagevar-full", "cfg-off"]
    assert any(e["graph"] == "var_fidelity" for e in manifest["engines"])
    with pytest.raises(StagevarError, match="calibrated rank table"):
        Pipeline.from_dir(var_tiny_artifacts)(class_labels=[1], plan="stagevar")


@pytest.mark.parametrize("plan", ["stagevar", "stagevar-full"])
def test_stagevar_plans_equal_reference(calibrated, var_tiny_bundle, plan):
    """Guards: pseudo-tokens not attending to the cached null rows, a LOWRANK scale appending K/V,
    the RTR cache taken from the cond rows or from the wrong scale, the area upsample matrix
    transposed, skipped scales still added to f_hat."""
    out, _ = calibrated
    pipe = Pipeline.from_dir(out)
    cfg = var_tiny_bundle.preset.var
    uniforms = draw_uniforms([21, 22], cfg.patch_nums)
    got = pipe(class_labels=LABELS, plan=plan, seed=21, output_type="np", return_intermediates=True)
    stage_plan_modes = [t.mode for t in got.intermediates]
    assert stage_plan_modes[7] is Mode.LOWRANK
    from stagevar.runtime.var_plans import make_var_plan

    stage_plan = make_var_plan(plan, cfg.patch_nums, cfg.block_chunks, pipe.rank_table)
    noise = draw_lowrank_noise([21, 22], stage_plan, cfg.patch_nums)
    want = VarReferenceSampler(var_tiny_bundle.var, var_tiny_bundle.vae).generate(
        LABELS, uniforms, modes=stage_plan.modes, lowrank_noise=noise)
    executed = [t for t in got.intermediates if t.ids is not None]
    assert len(executed) == len(want.scales) == (8 if plan == "stagevar" else 10)
    for g, w in zip(executed, want.scales):
        np.testing.assert_allclose(g.logits, w.logits, atol=2e-3, rtol=1e-4)
        assert (g.ids == w.ids).all(), f"scale {g.index}"
    ranks = stage_plan.ranks[7]
    assert [ix.shape for ix in executed[7].indices] == [(2, r) for r in ranks]
    assert np.abs(got.images.astype(int) - want.images.astype(int)).max() <= 1


def test_bench_var_export(calibrated, tmp_path, capsys):
    """`stagevar-bench DIR --class 207` times every requested plan of a VAR export; a prompt is refused."""
    from stagevar.cli_bench import entry

    out, _ = calibrated
    report = tmp_path / "bench.json"
    assert entry([str(out), "--plans", "exact,stagevar", "--runs", "1", "--warmup", "0", "--json", str(report)]) == 0
    data = json.loads(report.read_text())
    assert list(data["plans"]) == ["exact", "stagevar"] and data["artifacts"]["family"] == "var"
    assert data["plans"]["stagevar"]["modes"][7:] == ["lowrank", "skip", "skip"]
    assert entry([str(out), "--prompt", "a cat", "--json", str(report)]) == 2
    assert "give --class N" in capsys.readouterr().err


def test_var_runtime_imports_without_torch():
    """The VAR runtime modules are numpy-only (production apps embed them without torch)."""
    import subprocess
    import sys

    code = ("import sys; sys.modules['torch'] = None\n"
            "import stagevar.runtime.var_pipeline, stagevar.runtime.var_bench, stagevar.runtime.var_cli\n"
            "from stagevar.runtime.var_sampling import draw_uniforms; draw_uniforms([0], (1, 2))\n"
            "assert not any(m == 'torch' or m.startswith('torch.') for m, v in sys.modules.items() if v is not None)\n"
            "print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
