"""The VAR runtime pipeline over a var-tiny export against the eager torch reference sampler.

ORT CPU fp32 vs torch: the logits agree to ~1e-5 (different summation orders), so the ids drawn
with the same injected uniforms are equal at every scale (a flip would need a uniform within
~1e-6 of a CDF boundary), and images agree within one uint8 level (truncation of values that
differ by rounding). Every test names the bug it guards against.
"""

import numpy as np
import pytest

from stagevar.exporter.var.sampler import VarReferenceSampler
from stagevar.runtime.errors import StagevarError
from stagevar.runtime.pipeline import Pipeline
from stagevar.runtime.var_plans import make_var_plan
from stagevar.runtime.var_sampling import draw_uniforms

LABELS = [207, 360]


@pytest.fixture(scope="module")
def pipe(var_tiny_artifacts):
    return Pipeline.from_dir(var_tiny_artifacts)


@pytest.mark.parametrize("plan", ["exact", "cfg-off"])
def test_pipeline_equals_reference_sampler(pipe, var_tiny_bundle, plan):
    """Equal ids at every scale and the same image, for the two-label batch. Guards: the CFG ramp
    (constant cfg, si/S), the [cond; null] row order, filters applied before CFG, the glue (phi
    index, bicubic vs bilinear, residual vs accumulated f_hat), the compaction to null rows."""
    cfg = var_tiny_bundle.preset.var
    uniforms = draw_uniforms([11, 12], cfg.patch_nums)
    got = pipe(class_labels=LABELS, plan=plan, uniforms=uniforms, output_type="np", return_intermediates=True)
    modes = make_var_plan(plan, cfg.patch_nums, cfg.block_chunks).modes
    want = VarReferenceSampler(var_tiny_bundle.var, var_tiny_bundle.vae).generate(LABELS, uniforms, modes=modes)
    assert [t.mode for t in got.intermediates] == list(modes)
    for g, w in zip(got.intermediates, want.scales):
        np.testing.assert_allclose(g.logits, w.logits, atol=2e-3, rtol=1e-4)
        assert (g.ids == w.ids).all(), f"scale {g.index}: {np.sum(g.ids != w.ids)} ids differ"
    # The tokens are really drawn (not argmax) and differ between the two classes.
    last = got.intermediates[-1].ids
    assert len(np.unique(last)) > 20 and (last[0] != last[1]).any()
    np.testing.assert_allclose(got.f_hat, want.f_hat, atol=1e-4)
    assert np.abs(got.images.astype(int) - want.images.astype(int)).max() <= 1


def test_batch_of_two_equals_two_single_calls(pipe):
    """Guards: one noise generator for the batch, rows interleaved instead of [cond; null]
    (image 1 would read image 0's rows), a K/V cache shared across images."""
    both = pipe(class_labels=LABELS, seed=5, output_type="np", return_intermediates=True)
    for i, label in enumerate(LABELS):
        one = pipe(class_labels=[label], seed=5 + i, output_type="np", return_intermediates=True)
        for a, b in zip(both.intermediates, one.intermediates):
            assert (a.ids[i] == b.ids[0]).all()
        assert np.abs(both.images[i].astype(int) - one.images[0].astype(int)).max() <= 1


def test_cfg_off_changes_only_the_last_three_scales(pipe):
    """cfg-off runs the last three scales on the null rows: the first seven scales' ids equal exact's.
    Guards: compaction at the wrong scale, a plan keyed on side length instead of index."""
    exact = pipe(class_labels=LABELS, seed=1, plan="exact", output_type="np", return_intermediates=True)
    off = pipe(class_labels=LABELS, seed=1, plan="cfg-off", output_type="np", return_intermediates=True)
    for k in range(7):
        assert (exact.intermediates[k].ids == off.intermediates[k].ids).all()
    assert any((exact.intermediates[k].ids != off.intermediates[k].ids).any() for k in (7, 8, 9))
    assert [t.mode.value for t in off.intermediates[7:]] == ["uncond"] * 3


@pytest.mark.parametrize("kwargs,match", [
    ({"prompt": "a cat", "class_labels": [1]}, "class-conditional VAR model"),
    ({"class_labels": [1000]}, "between 0 and 999"),
    ({"class_labels": []}, "between 0 and 999"),
    ({"class_labels": None}, "class_labels"),
    ({"class_labels": [1], "plan": "stagevar"}, "calibrated rank table"),
    ({"class_labels": [1], "plan": "stagevar-full"}, "calibrated rank table"),
    ({"class_labels": [1], "top_k": 5000}, "top_k"),
    ({"class_labels": [1], "top_p": -0.1}, "top_p"),
])
def test_bad_requests_refused_in_one_sentence(pipe, kwargs, match):
    prompt = kwargs.pop("prompt", None)
    with pytest.raises(StagevarError, match=match) as exc:
        pipe(prompt, **kwargs)
    assert "\n" not in str(exc.value)


def test_infinity_pipeline_refuses_class_labels():
    """Guards: an Infinity pipeline silently ignoring class_labels."""
    from types import SimpleNamespace

    infinity = Pipeline.__new__(Pipeline)
    infinity.manifest = SimpleNamespace(root="x")
    with pytest.raises(StagevarError, match="Infinity text-to-image model: give a prompt"):
        infinity(class_labels=[207])


def test_generate_cli_classes(var_tiny_artifacts, tmp_path, capsys):
    """`stagevar-generate DIR --class 207 --class 88` writes one PNG per class; a prompt, an
    Infinity-only option and an unknown plan are refused with exit 2 and one line."""
    from PIL import Image

    from stagevar.runtime.cli_generate import entry

    out = tmp_path / "img.png"
    assert entry([str(var_tiny_artifacts), "--class", "207", "--class", "88", "--seed", "0", "--out", str(out)]) == 0
    imgs = [Image.open(tmp_path / f"img_p{i}_s{i}.png") for i in range(2)]  # one per class, seeds 0 and 1
    assert all(im.size == (256, 256) and im.mode == "RGB" for im in imgs)
    for argv, match in (([str(var_tiny_artifacts), "a cat"], "give --class N"),
                        ([str(var_tiny_artifacts), "--class", "3", "--tau", "1"], "do not apply to VAR"),
                        ([str(var_tiny_artifacts), "--class", "3", "--plan", "stagevar"], "calibrated rank table")):
        assert entry(argv + ["--out", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert match in err and len(err.splitlines()) == 1


def test_check_passes_and_reports(var_tiny_artifacts, var_tiny_bundle, tmp_path):
    """`--check` on a copy of the export: ok, every scale of both plans with equal ids."""
    import shutil

    from stagevar.exporter.var.check import check_var_artifacts

    copy = tmp_path / "copy"
    shutil.copytree(var_tiny_artifacts, copy)
    report = check_var_artifacts(copy, var_tiny_bundle)
    assert report["ok"] and (copy / "reports" / "check.json").is_file()
    steps = [r for r in report["rows"] if r["graph"] == "var_step"]
    assert len(steps) == 20 and all(r["ids_mismatched"] == 0 for r in steps)
