"""`stagevar-serve`: writes a repository; bad input is one sentence on stderr, exit 2, nothing written."""

import importlib.util

import pytest

from stagevar.serve.cli import entry


def test_triton_writes_a_repository_with_the_options_given(tiny_artifacts, tmp_path, capsys):
    repo = tmp_path / "repo"
    code = entry(["triton", str(tiny_artifacts), "--repo", str(repo), "--kind", "gpu", "--instances", "2",
                  "--max-batch", "1", "--plan", "exact", "--server-artifacts", "/models/tiny",
                  "--max-queue-size", "7"])
    assert code == 0
    config = (repo / "stagevar_pipeline" / "config.pbtxt").read_text()
    assert "kind: KIND_GPU" in config and "count: 2" in config and "max_batch_size: 1" in config
    assert 'string_value: "cuda"' in config and 'string_value: "/models/tiny"' in config
    assert 'string_value: "exact"' in config and "max_queue_size: 7" in config
    assert (repo / "stagevar_pipeline" / "1" / "model.py").is_file()
    assert "tritonserver --model-repository" in capsys.readouterr().out


@pytest.mark.parametrize("extra,needle", [
    (["--plan", "fastest"], "fastest"),
    (["--aspect", "9:1"], "9:1"),
    (["--resolution", "4M"], "4M"),
    (["--device", "cuda"], "--kind gpu"),
    (["--max-batch", "0"], "--max-batch"),
    (["--max-queue-size", "0"], "--max-queue-size"),
    (["--cfg", "1e30"], "cfg (the guidance scale)"),
    (["--model-name", "bad name"], "Model name"),
])
def test_triton_bad_options_are_one_sentence_and_write_nothing(tiny_artifacts, tmp_path, capsys, extra, needle):
    code = entry(["triton", str(tiny_artifacts), "--repo", str(tmp_path / "repo"), *extra])
    err = capsys.readouterr().err.strip()
    assert code == 2 and needle in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "repo").exists()


def test_triton_missing_export_and_existing_model_are_one_sentence(tiny_artifacts, tmp_path, capsys):
    assert entry(["triton", str(tmp_path / "nope"), "--repo", str(tmp_path / "repo")]) == 2
    err = capsys.readouterr().err.strip()
    assert "does not exist" in err and len(err.splitlines()) == 1
    assert entry(["triton", str(tiny_artifacts), "--repo", str(tmp_path / "repo")]) == 0
    capsys.readouterr()
    assert entry(["triton", str(tiny_artifacts), "--repo", str(tmp_path / "repo")]) == 2
    assert "--force" in capsys.readouterr().err


def test_ray_refuses_bad_input_before_starting_anything(tmp_path, capsys):
    code = entry(["ray", str(tmp_path / "nope"), "--port", "8123"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err
    if importlib.util.find_spec("ray") is None:
        assert "pip install 'stagevar[serve-ray]'" in err
    else:
        assert "does not exist" in err
