"""`stagevar-generate`: writes PNGs and a timing line; bad input is one sentence and writes nothing."""

import json
import shutil

import pytest
from PIL import Image

from stagevar.runtime.cli_generate import entry


def test_generate_writes_one_png_per_image_and_prints_timings(tiny_artifacts, tmp_path, capsys):
    out = tmp_path / "img.png"
    code = entry([str(tiny_artifacts), "a red apple", "a boat", "--seed", "3", "--resolution", "0.06M", "--out", str(out)])
    assert code == 0
    paths = [tmp_path / "img_0.png", tmp_path / "img_1.png"]
    for p in paths:
        assert Image.open(p).size == (64, 64)  # 0.06M: 16x16 latents, x4 tiny VAE
    text = capsys.readouterr().out
    assert "plan stagevar" in text and "vae" in text and "total" in text


@pytest.mark.parametrize(
    "extra,needle",
    [
        (["--plan", "fastest"], "fastest"),
        (["--aspect", "9:1"], "9:1"),
        (["--resolution", "4M"], "4M"),
        (["--out", "image.jpg"], ".png"),
        (["--num-images", "0"], "--num-images"),
        (["--cfg", "1e30"], "cfg (the guidance scale) must be a number from 0 to 20"),
        (["--tau", "1e-300"], "tau (the logit temperature) must be a number from 0.05 to 10"),
    ],
)
def test_bad_options_fail_with_one_sentence_and_write_nothing(tiny_artifacts, tmp_path, capsys, monkeypatch, extra, needle):
    monkeypatch.chdir(tmp_path)
    code = entry([str(tiny_artifacts), "a red apple", "--resolution", "0.06M", *extra])
    err = capsys.readouterr().err.strip()
    assert code == 2 and needle in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert not list(tmp_path.glob("*.png"))


def test_corrupted_artifact_and_newer_schema_are_refused(tiny_artifacts, tmp_path, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_artifacts, copy)
    with open(copy / "onnx" / "step.onnx", "r+b") as f:
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 0xFF]))
    out = tmp_path / "x.png"
    assert entry([str(copy), "a red apple", "--verify", "full", "--out", str(out)]) == 2
    assert "step.onnx" in capsys.readouterr().err and not out.exists()

    newer = tmp_path / "newer"
    shutil.copytree(tiny_artifacts, newer)
    data = json.loads((newer / "manifest.json").read_text())
    data["schema_version"] = 99
    (newer / "manifest.json").write_text(json.dumps(data))
    assert entry([str(newer), "a red apple", "--out", str(out)]) == 2
    assert "newer" in capsys.readouterr().err and not out.exists()


def test_missing_directory_is_one_sentence(tmp_path, capsys):
    assert entry([str(tmp_path / "nope"), "a red apple"]) == 2
    err = capsys.readouterr().err.strip()
    assert "does not exist" in err and len(err.splitlines()) == 1
