"""exporter/bench_token_restore.py: both graphs it times compute token restoration correctly,
and its report covers the fidelity stage's three scales.

Bug guarded against: a benchmark whose two graphs agree with each other but not with token
restoration (its own allclose check could not see that), or one that times other scales than
it names. Token restoration is written out here in numpy: area-upsample the previous scale's
grid (A_h P A_w^T per channel), then put the r computed rows at their indices.
"""

import numpy as np
import onnxruntime as ort

from stagevar.exporter.bench_token_restore import dense_model, main, separable_model
from stagevar.runtime.resize import area_matrix
from stagevar.runtime.schedules import get_schedule


def _restore_numpy(prev, rows, indices, area_h, area_w):
    b, _, c = prev.shape
    (gh, gw), (h, w) = (area_h.shape[1], area_w.shape[1]), (area_h.shape[0], area_w.shape[0])
    grid = prev.reshape(b, gh, gw, c)
    up = np.einsum("Hh,bhwc,Ww->bHWc", area_h.astype(np.float64), grid.astype(np.float64), area_w.astype(np.float64))
    out = up.reshape(b, h * w, c)
    for i in range(b):
        out[i, indices[i]] = rows[i]
    return out


def test_separable_and_dense_graphs_equal_token_restoration_in_numpy():
    rng = np.random.default_rng(3)
    (gh, gw), (h, w), c, r = (3, 5), (5, 8), 4, 7
    prev = rng.standard_normal((2, gh * gw, c), dtype=np.float32)
    rows = rng.standard_normal((2, r, c), dtype=np.float32)
    indices = np.stack([np.sort(rng.permutation(h * w)[:r]) for _ in range(2)]).astype(np.int64)
    ah, aw = area_matrix(gh, h).astype(np.float32), area_matrix(gw, w).astype(np.float32)
    expected = _restore_numpy(prev, rows, indices, ah, aw)
    sep = ort.InferenceSession(separable_model(), providers=["CPUExecutionProvider"])
    dense = ort.InferenceSession(dense_model(), providers=["CPUExecutionProvider"])
    x = np.zeros((2, h * w, c), np.float32)
    got_sep = sep.run(None, {"x": x, "prev": prev, "rows": rows, "indices": indices, "area_h": ah, "area_w": aw})[0]
    got_dense = dense.run(None, {"prev": prev, "rows": rows, "indices": indices, "area": np.kron(ah, aw)})[0]
    # float32 graphs against a float64 reference: summation order differs, values are O(1).
    np.testing.assert_allclose(got_sep, expected, atol=1e-5)
    np.testing.assert_allclose(got_dense, expected, atol=1e-5)


def test_report_covers_the_three_fidelity_scales_of_1m(capsys):
    report = main(["--width", "4", "--runs", "1", "--rank-ratio", "0.05"])
    scales = get_schedule("1:1", "1M").scales
    assert [(tuple(row["from"]), tuple(row["to"])) for row in report["rows"]] == list(zip(scales[-4:-1], scales[-3:]))
    for row in report["rows"]:
        m = row["to"][0] * row["to"][1]
        assert row["C"] == 4 and row["r"] == int(0.05 * m)
        assert row["separable_ms"] > 0 and row["dense_kron_ms"] > 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 3  # one JSON line per scale
