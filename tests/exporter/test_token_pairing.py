"""`--token-pairing`: raster (default) vs the release's sampling order of restored tokens."""

import json

import numpy as np
import pytest
import torch

from stagevar.exporter.infinity.lowrank import representative_indices
from stagevar.exporter.token_pairing import token_pairing
from stagevar.runtime.errors import StagevarError
from stagevar.runtime.lowrank import representative_indices as np_indices


def _inputs(seed=0, b=2, m=40, c=8):
    """Tokens of equal norm and noise spaced 0.5 apart: every score differs from every other by
    about 0.5, far above float32 rounding, so numpy and torch (any CPU) must agree on the order
    exactly; random scores could sit within an ulp of each other and flip between libraries."""
    g = np.random.default_rng(seed)
    x = np.where(g.random((b, m, c)) < 0.5, -1.0, 1.0).astype(np.float32)
    gumbel = np.stack([g.permutation(m) * 0.5 for _ in range(b)]).astype(np.float32)
    return x, gumbel


def test_sample_pairing_orders_by_descending_score_and_keeps_the_selected_set():
    # Guards against `sample` returning raster order (the flag silently ignored) or the reverse
    # (ascending score): sample order is that of sequential draws, highest perturbed score first.
    x, g = _inputs()
    raster = representative_indices(torch.from_numpy(x), torch.from_numpy(g), 9)
    with token_pairing("sample"):
        sample = representative_indices(torch.from_numpy(x), torch.from_numpy(g), 9)
    assert torch.equal(raster, raster.sort(-1).values)
    assert torch.equal(sample.sort(-1).values, raster)
    score = np.log((x * x).sum(-1)) + g
    picked = np.take_along_axis(score, sample.numpy(), -1)
    assert (np.diff(picked, axis=-1) < 0).all()
    assert not torch.equal(sample, raster)


def test_numpy_reference_follows_the_same_pairing():
    # Guards against the numpy reference (plugin test data) and the graph disagreeing on order.
    x, g = _inputs(1)
    with token_pairing("sample"):
        t = representative_indices(torch.from_numpy(x), torch.from_numpy(g), 7).numpy()
    assert np.array_equal(np_indices(x, g, 7, pairing="sample"), t)
    assert np.array_equal(np_indices(x, g, 7), np.sort(t, -1))


def test_unknown_pairing_is_one_sentence():
    with pytest.raises(StagevarError, match="raster or sample"):
        with token_pairing("random"):
            pass


@pytest.mark.slow
def test_sample_pairing_export_is_recorded_checked_and_used_by_the_graph(tmp_path):
    # Guards against the pairing not reaching the traced fidelity graph (e.g. lost in the
    # background export process) or the check's eager reference using another pairing than the
    # graph (the check would fail on the restored tokens).
    from stagevar.exporter.cli_export import main as export_main
    from stagevar.runtime.pipeline import Pipeline

    out = tmp_path / "sample"
    assert export_main(["--model", "infinity-tiny", "--random-init", "--resolution", "0.06M", "--out", str(out),
                        "--token-pairing", "sample", "--check"]) == 0
    assert json.loads((out / "manifest.json").read_text())["token_pairing"] == "sample"
    pipe = Pipeline.from_dir(out)
    result = pipe("a red circle", seed=0, plan="stagevar-full", output_type="np", return_intermediates=True)
    idx = [i for trace in result.intermediates for i in trace.indices]
    assert idx and any((np.diff(i, axis=-1) < 0).any() for i in idx)
