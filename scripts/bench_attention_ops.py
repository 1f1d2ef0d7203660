"""ONNX Attention (opset 23) vs com.microsoft.MultiHeadAttention on ONNX Runtime CPU: one node, same math.

    python scripts/bench_attention_ops.py attention|mha QUERIES KEYS   (2 rows x 8 heads x 64, infinity-mid)

Run each kind in its own process (the peak RSS is the process peak). docs/benchmarks.md has the figures.
"""
import sys, time, resource, numpy as np, onnx, onnxruntime as ort
from onnx import helper, TensorProto as T
B, H, L, S, d = 2, 8, int(sys.argv[2]), int(sys.argv[3]), 64
kind = sys.argv[1]
if kind == "attention":
    inputs = [helper.make_tensor_value_info(n, T.FLOAT, [B, H, l, d]) for n, l in (("q", L), ("k", S), ("v", S))]
    node = helper.make_node("Attention", ["q", "k", "v"], ["y"], scale=1.0)
    out = helper.make_tensor_value_info("y", T.FLOAT, [B, H, L, d]); opsets = [helper.make_opsetid("", 23)]
    feeds = {"q": np.random.randn(B, H, L, d).astype(np.float32), "k": np.random.randn(B, H, S, d).astype(np.float32), "v": np.random.randn(B, H, S, d).astype(np.float32)}
else:
    inputs = [helper.make_tensor_value_info(n, T.FLOAT, [B, l, H * d]) for n, l in (("q", L), ("k", S), ("v", S))]
    node = helper.make_node("MultiHeadAttention", ["q", "k", "v"], ["y"], domain="com.microsoft", num_heads=H, scale=1.0)
    out = helper.make_tensor_value_info("y", T.FLOAT, [B, L, H * d]); opsets = [helper.make_opsetid("", 23), helper.make_opsetid("com.microsoft", 1)]
    feeds = {"q": np.random.randn(B, L, H * d).astype(np.float32), "k": np.random.randn(B, S, H * d).astype(np.float32), "v": np.random.randn(B, S, H * d).astype(np.float32)}
m = helper.make_model(helper.make_graph([node], "g", inputs, [out]), opset_imports=opsets)
s = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
s.run(None, feeds)
ts = []
for _ in range(3):
    t = time.perf_counter(); s.run(None, feeds); ts.append(time.perf_counter() - t)
print(f"{kind} L={L} S={S}: median {1000*np.median(ts):.0f} ms, peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss/1024:.0f} MB")
