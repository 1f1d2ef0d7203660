"""`stagevar-reference`: the eager reference sampler as a command (exporter/cli_reference.py).

Runs the built-in infinity-tiny (random weights, seed 0: the same model as the `tiny_bundle`
fixture) at 0.06M, so a call takes about a second.
"""

import numpy as np
import pytest
from PIL import Image

from stagevar.exporter.cli_reference import entry
from stagevar.exporter.infinity.sampler import ReferenceSampler

RES = ["--model", "infinity-tiny", "--resolution", "0.06M"]


def test_writes_the_reference_samplers_images_in_prompt_major_order(tiny_bundle, tmp_path, capsys):
    """Bug guarded against: the command passing other settings than it was given (plan, cfg,
    tau, aspect, seed) or saving the images under the wrong names. Its PNGs must equal the
    sampler's own images for the same arguments (one process, one code path: bit for bit)."""
    out = tmp_path / "ref.png"
    code = entry(["a red apple", "a boat", "--num-images", "2", "--seed", "5", "--plan", "exact", "--cfg", "2.5",
                  "--tau", "0.8", "--aspect", "2:1", *RES, "--out", str(out)])
    assert code == 0
    expected = ReferenceSampler(tiny_bundle).generate(["a red apple", "a boat"], plan="exact", cfg=2.5, tau=0.8,
                                                      aspect="2:1", resolution="0.06M", seed=5,
                                                      num_images_per_prompt=2).images
    paths = [tmp_path / f"ref_{i}.png" for i in range(4)]
    assert sorted(tmp_path.iterdir()) == paths
    for path, image in zip(paths, expected):
        np.testing.assert_array_equal(np.asarray(Image.open(path).convert("RGB")), image)
    text = capsys.readouterr().out
    assert "infinity-tiny (random weights), plan exact" in text and "wrote" in text


def test_one_image_keeps_the_given_name_and_defaults_to_the_stagevar_plan(tiny_bundle, tmp_path, capsys):
    out = tmp_path / "one.png"
    assert entry(["a lamp", *RES, "--out", str(out)]) == 0
    expected = ReferenceSampler(tiny_bundle).generate("a lamp", plan="stagevar", cfg=tiny_bundle.preset.default_cfg,
                                                      tau=tiny_bundle.preset.default_tau, resolution="0.06M").images
    np.testing.assert_array_equal(np.asarray(Image.open(out).convert("RGB")), expected[0])
    assert "plan stagevar" in capsys.readouterr().out


@pytest.mark.parametrize("extra,needle", [
    (["--out", "image.jpg"], ".png"),
    (["--out", "missing/dir/x.png"], "does not exist"),
    (["--num-images", "0"], "--num-images"),
    (["--cfg", "1e30"], "cfg (the guidance scale)"),
    (["--tau", "0"], "tau (the logit temperature)"),
    (["--model", "infinity99b"], "Unknown model"),
    (["--alpha", "0.5"], "0.96"),
])
def test_bad_options_are_one_sentence_and_write_nothing(tmp_path, capsys, monkeypatch, extra, needle):
    monkeypatch.chdir(tmp_path)
    code = entry(["a cat", *RES, *extra])
    err = capsys.readouterr().err.strip()
    assert code == 2 and needle in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert not list(tmp_path.rglob("*.png"))
