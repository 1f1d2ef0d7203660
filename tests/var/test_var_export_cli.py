"""`stagevar-export --model var-...` refusals: one sentence, exit 2, nothing written.
Guards: a VAR model falling through to the Infinity preset lookup, options that cannot apply
(text encoder, aspect, TensorRT plugins) silently ignored."""

import pytest

from stagevar.exporter.cli_export import entry


@pytest.mark.parametrize("argv,match", [
    (["--model", "var-d16"], "needs --weights and --vae"),
    (["--model", "var-d17"], "not known"),
    (["--model", "var-tiny", "--text-encoder", "x"], "no text encoder"),
    (["--model", "var-tiny", "--aspect", "16:9"], "fixed square schedule"),
    (["--model", "var-tiny", "--plugins", "lib.so"], "add --engine trt"),
    (["--model", "var-tiny", "--weights", "w.pth"], "no released checkpoint"),
    (["--model", "var-d16", "--weights", "nope.pth", "--vae", "nope2.pth"], "does not exist"),
])
def test_refusals(tmp_path, capsys, argv, match):
    out = tmp_path / "out"
    assert entry(argv + ["--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert match in err and len(err.splitlines()) == 1
    assert not out.exists()
