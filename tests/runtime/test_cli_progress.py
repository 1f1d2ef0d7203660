"""stagevar-bench shows per-scale progress on a terminal, nothing on a pipe or with --quiet."""

import io

import pytest

from stagevar.cli_bench import entry


class _Tty(io.StringIO):
    def isatty(self):
        return True


@pytest.mark.parametrize("quiet", [False, True])
def test_bench_progress_on_a_terminal(tiny_artifacts, tmp_path, monkeypatch, quiet):
    # Guards against a bench that is silent while it works on a terminal, and against progress
    # (or plan messages) printed despite --quiet.
    tty = _Tty()
    monkeypatch.setattr("sys.stderr", tty)
    args = [str(tiny_artifacts), "--plans", "stagevar", "--runs", "1", "--warmup", "0", "--no-torch",
            "--resolution", "0.06M", "--json", str(tmp_path / "b.json")] + (["--quiet"] if quiet else [])
    assert entry(args) == 0
    text = tty.getvalue()
    if quiet:
        assert text == ""
    else:
        assert "run: scale 1/" in text and "\r" in text and "stagevar: p50" in text


def test_bench_progress_is_not_redrawn_on_a_pipe(tiny_artifacts, tmp_path, capsys):
    args = [str(tiny_artifacts), "--plans", "stagevar", "--runs", "1", "--warmup", "0", "--no-torch",
            "--resolution", "0.06M", "--json", str(tmp_path / "b.json")]
    assert entry(args) == 0
    err = capsys.readouterr().err
    assert "\r" not in err and "stagevar: p50" in err
