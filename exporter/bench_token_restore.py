"""Token restore in ONNX Runtime: the exported node's separable function body against the
earlier dense form (one kron(A_h, A_w) [M, h*w] matrix product), per LOWRANK scale of a 1M
schedule at a given width. Both run in one process, alternating, so their ratio is meaningful
on a noisy machine.

    python -m stagevar.exporter.bench_token_restore [--width 2048] [--runs 5]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper

from stagevar.runtime.resize import area_matrix
from stagevar.runtime.schedules import get_schedule

from .onnx_local_functions import DOMAIN, TOKEN_RESTORE, TOKEN_RESTORE_INPUTS, attach_local_functions, register_schemas

_F, _I64 = onnx.TensorProto.FLOAT, onnx.TensorProto.INT64


def _vi(name, elem, dims):
    return helper.make_tensor_value_info(name, elem, dims)


def separable_model() -> bytes:
    register_schemas()
    ins = [_vi("x", _F, ["B", "M", "C"]), _vi("prev", _F, ["B", "m", "C"]), _vi("rows", _F, ["B", "r", "C"]),
           _vi("indices", _I64, ["B", "r"]), _vi("area_h", _F, ["H", "h"]), _vi("area_w", _F, ["W", "w"])]
    node = helper.make_node(TOKEN_RESTORE, list(TOKEN_RESTORE_INPUTS), ["y"], domain=DOMAIN)
    model = helper.make_model(helper.make_graph([node], "separable", ins, [_vi("y", _F, ["B", "M", "C"])]),
                              opset_imports=[helper.make_opsetid("", 20)])
    attach_local_functions(model)
    return model.SerializeToString()


def dense_model() -> bytes:
    nodes = [helper.make_node("MatMul", ["area", "prev"], ["base"]),
             helper.make_node("Unsqueeze", ["indices", "axis"], ["idx1"]),
             helper.make_node("Shape", ["rows"], ["rows_shape"]),
             helper.make_node("Expand", ["idx1", "rows_shape"], ["idx"]),
             helper.make_node("ScatterElements", ["base", "idx", "rows"], ["y"], axis=1)]
    ins = [_vi("prev", _F, ["B", "m", "C"]), _vi("rows", _F, ["B", "r", "C"]), _vi("indices", _I64, ["B", "r"]),
           _vi("area", _F, ["M", "m"])]
    axis = helper.make_tensor("axis", _I64, [1], [-1])
    graph = helper.make_graph(nodes, "dense", ins, [_vi("y", _F, ["B", "M", "C"])], initializer=[axis])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)]).SerializeToString()


def _time(session, feeds, runs) -> float:
    session.run(None, feeds)  # warm-up
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        session.run(None, feeds)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--width", type=int, default=2048, help="channels C (2048 = Infinity-2B)")
    p.add_argument("--rank-ratio", type=float, default=0.08, help="r / M (the rank table gives 0.03-0.1)")
    p.add_argument("--runs", type=int, default=5)
    args = p.parse_args(argv)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 0
    sep = ort.InferenceSession(separable_model(), options, providers=["CPUExecutionProvider"])
    dense = ort.InferenceSession(dense_model(), options, providers=["CPUExecutionProvider"])
    scales = get_schedule("1:1", "1M").scales
    rng = np.random.default_rng(0)
    rows_out = []
    for prev_hw, cur_hw in zip(scales[-4:-1], scales[-3:]):  # the fidelity stage's three scales
        M, m, C = cur_hw[0] * cur_hw[1], prev_hw[0] * prev_hw[1], args.width
        r = max(1, int(args.rank_ratio * M))
        prev = rng.standard_normal((1, m, C), dtype=np.float32)
        rows = rng.standard_normal((1, r, C), dtype=np.float32)
        idx = np.sort(rng.permutation(M)[:r])[None].astype(np.int64)
        ah = area_matrix(prev_hw[0], cur_hw[0]).astype(np.float32)
        aw = area_matrix(prev_hw[1], cur_hw[1]).astype(np.float32)
        x = np.empty((1, M, C), np.float32)
        feeds_sep = dict(zip(TOKEN_RESTORE_INPUTS, (x, prev, rows, idx, ah, aw)))
        feeds_dense = {"prev": prev, "rows": rows, "indices": idx, "area": np.kron(ah, aw)}
        np.testing.assert_allclose(sep.run(None, feeds_sep)[0], dense.run(None, feeds_dense)[0], atol=1e-5)
        t_sep, t_dense = _time(sep, feeds_sep, args.runs), _time(dense, feeds_dense, args.runs)
        rows_out.append({"from": list(prev_hw), "to": list(cur_hw), "C": C, "r": r,
                         "separable_ms": round(t_sep * 1e3, 2), "dense_kron_ms": round(t_dense * 1e3, 2),
                         "speedup": round(t_dense / t_sep, 1), "kron_input_mb": round(M * m * 4 / 2**20, 1)})
        print(json.dumps(rows_out[-1]))
    return {"rows": rows_out}


if __name__ == "__main__":
    main()
