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
    # Each name says which prompt and seed made it (guards against index-only names _0, _1).
    paths = [tmp_path / "img_p0_s3.png", tmp_path / "img_p1_s4.png"]
    for p in paths:
        assert Image.open(p).size == (64, 64)  # 0.06M: 16x16 latents, x4 tiny VAE
    text = capsys.readouterr().out
    assert "plan stagevar" in text and "vae" in text and "total" in text
    assert f"wrote {paths[0]}, {paths[1]}" in text


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


def test_output_names_follow_prompt_then_seed():
    from pathlib import Path

    from stagevar.runtime.cli_generate import output_paths

    names = [p.name for p in output_paths(Path("out/x.png"), 2, 3, 10)]
    assert names == ["x_p0_s10.png", "x_p0_s11.png", "x_p0_s12.png", "x_p1_s13.png", "x_p1_s14.png", "x_p1_s15.png"]
    assert output_paths(Path("x.png"), 1, 1, 7) == [Path("x.png")]


def _read_only_folder(tmp_path):
    """A folder this process cannot write: chmod 555 for a normal user; for root (who ignores
    permissions) a read-only mount such as /sys, if the machine has one."""
    import os
    import tempfile

    if os.geteuid() != 0:
        folder = tmp_path / "ro"
        folder.mkdir()
        folder.chmod(0o555)
        return folder
    for candidate in ("/sys", "/proc/sys"):
        try:
            tempfile.NamedTemporaryFile(dir=candidate).close()
        except OSError:
            return candidate
    pytest.skip("running as root with no read-only folder to write into")


def test_read_only_out_is_refused_before_any_work(tiny_artifacts, tmp_path, capsys, monkeypatch):
    # Guards against checking --out only when saving, after the whole generation (a traceback).
    import time

    from stagevar.runtime import pipeline

    monkeypatch.setattr(pipeline.Pipeline, "from_dir", classmethod(lambda *a, **k: pytest.fail("loaded the export")))
    folder = _read_only_folder(tmp_path)
    t0 = time.perf_counter()
    code = entry([str(tiny_artifacts), "a red apple", "--out", f"{folder}/img.png"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "not writable" in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert time.perf_counter() - t0 < 5


def test_same_size_corruption_of_the_weights_is_refused_by_default(tiny_artifacts, tmp_path, capsys):
    # Guards against the old default verification (sizes only): one flipped byte in
    # transformer.weights made a different image with exit 0.
    copy = tmp_path / "copy"
    shutil.copytree(tiny_artifacts, copy)
    with open(copy / "onnx" / "transformer.weights", "r+b") as f:
        f.seek(4096)
        byte = f.read(1)
        f.seek(4096)
        f.write(bytes([byte[0] ^ 0x01]))
    out = tmp_path / "x.png"
    assert entry([str(copy), "a red apple", "--resolution", "0.06M", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "onnx/transformer.weights" in err and len(err.splitlines()) == 1 and not out.exists()


def test_num_images_beyond_memory_is_split_into_micro_batches_with_the_same_images(tiny_artifacts, tmp_path, capsys, monkeypatch):
    # Guards against running every image in one batch whatever the memory (a MemoryError
    # traceback) and against micro-batches that change pixels (e.g. restarting seeds per batch).
    from stagevar.runtime import request_memory

    whole = tmp_path / "whole"
    split = tmp_path / "split"
    whole.mkdir()
    split.mkdir()
    args = [str(tiny_artifacts), "a red apple", "a boat", "--num-images", "3", "--resolution", "0.06M", "--quiet"]
    assert entry([*args, "--out", str(whole / "a.png")]) == 0
    capsys.readouterr()
    per_image = []
    real_size = request_memory.micro_batch_size

    def spy(per, images, budget, max_batch, what):
        per_image.append(per)
        return real_size(per, images, int(2.5 * per), max_batch, what)  # room for two images

    monkeypatch.setattr(request_memory, "micro_batch_size", spy)
    assert entry([*args, "--out", str(split / "a.png")]) == 0
    assert "in 3 micro-batches" in capsys.readouterr().out
    names = sorted(p.name for p in whole.iterdir())
    assert names == sorted(p.name for p in split.iterdir()) and len(names) == 6
    for name in names:
        assert (whole / name).read_bytes() == (split / name).read_bytes(), name
    monkeypatch.setattr(request_memory, "micro_batch_size", real_size)
    assert entry([*args, "--max-batch", "4", "--out", str(split / "b.png")]) == 0
    assert "in 2 micro-batches" in capsys.readouterr().out


def test_a_request_that_cannot_fit_even_one_image_is_refused_in_one_sentence(tiny_artifacts, tmp_path, capsys, monkeypatch):
    from stagevar.runtime import pipeline, request_memory

    monkeypatch.setattr(request_memory, "available_memory", lambda device="cpu": 1 << 20)
    monkeypatch.setattr(pipeline.Pipeline, "_run", lambda *a, **k: pytest.fail("generation started"))
    monkeypatch.chdir(tmp_path)
    code = entry([str(tiny_artifacts), "a red apple", "--num-images", "10000", "--plan", "exact"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "needs about" in err and "GiB" in err and len(err.splitlines()) == 1
    assert not list(tmp_path.glob("*.png"))


def test_non_utf8_prompt_is_one_sentence(tiny_artifacts, tmp_path, capsys, monkeypatch):
    # A shell passes undecodable bytes as lone surrogates ("caf\udce9" for Latin-1 "café");
    # guards against the tokenizer's TypeError traceback.
    monkeypatch.chdir(tmp_path)
    code = entry([str(tiny_artifacts), "caf\udce9 au lait"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "not valid UTF-8" in err and "0xe9" in err and len(err.splitlines()) == 1


def test_long_prompt_truncation_is_one_clean_line(tiny_artifacts, tmp_path, capsys):
    # Guards against Python's raw warning format (internal file path and line, source echo), and
    # against one warning per image or per micro-batch with batch-local prompt numbers.
    out = tmp_path / "x.png"
    code = entry([str(tiny_artifacts), "a short one", "word " * 2000, "--num-images", "2", "--max-batch", "1",
                  "--resolution", "0.06M", "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 0 and (tmp_path / "x_p1_s3.png").exists()
    assert len(err) == 1 and err[0].startswith("warning: Prompt 1 is longer than") and ".py" not in err[0]


def test_progress_shows_on_a_terminal_only(tiny_artifacts, tmp_path, capsys, monkeypatch):
    # Guards against silence on a terminal and against \r-redrawn lines polluting logs/pipes.
    import io

    class Tty(io.StringIO):
        def isatty(self):
            return True

    args = [str(tiny_artifacts), "a red apple", "--resolution", "0.06M", "--out", str(tmp_path / "x.png")]
    assert entry(args) == 0
    assert "\r" not in capsys.readouterr().err  # capsys is not a terminal
    for quiet, shown in (([], True), (["--quiet"], False)):
        tty = Tty()
        monkeypatch.setattr("sys.stderr", tty)
        assert entry([*args, *quiet]) == 0
        monkeypatch.undo()
        text = tty.getvalue()
        assert ("scale 1/" in text and "\r" in text) is shown
        if shown:
            assert text.endswith("\r")  # the line is erased before the summary prints


@pytest.mark.parametrize("module", ["stagevar.runtime.cli_generate", "stagevar.exporter.cli_export",
                                    "stagevar.exporter.cli_reference", "stagevar.cli_bench", "stagevar.serve.cli",
                                    "stagevar.exporter.trt.cli_build"])
def test_every_command_has_version(module, capsys):
    import importlib

    from stagevar import __version__

    parser = importlib.import_module(module).build_parser()
    with pytest.raises(SystemExit) as exc:
        parser.parse_args(["--version"])
    assert exc.value.code == 0 and __version__ in capsys.readouterr().out


def test_model_help_lists_every_preset():
    from stagevar.exporter.cli_export import build_parser
    from stagevar.exporter.infinity.presets import PRESETS

    text = build_parser().format_help()
    assert all(name in text for name in PRESETS)
