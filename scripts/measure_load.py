"""Session-by-session load of an export (plain onnxruntime or the stagevar OrtBackend), then optionally one generation.

usage: scripts/measure_load.py EXPORT MODE [GRAPHS] [--gen RES]
MODE: plain (each graph opened from its file by onnxruntime, the pre-issue-17 loader) | fixed (OrtBackend)
"""
import json, sys, time

def mem():
    d = {}
    for line in open("/proc/self/status"):
        k = line.split(":")[0]
        if k in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            d[k] = int(line.split()[1]) / 1024
    for line in open("/proc/self/smaps_rollup"):
        p = line.split()
        if p[0] == "Pss:":
            d["Pss"] = int(p[1]) / 1024
    return d

def fmt(d):
    return " ".join(f"{k} {v:8.0f}" for k, v in d.items())

args = sys.argv[1:]
gen = None
if "--gen" in args:
    i = args.index("--gen"); gen = args[i + 1]; del args[i:i + 2]
root, mode = args[0], args[1]
graphs = tuple(args[2].split(",")) if len(args) > 2 else ("text_encoder", "text_cond", "step", "fidelity", "vae_decoder")
import numpy as np, onnxruntime as ort, onnx  # noqa
from stagevar.runtime.manifest import load_manifest
from stagevar.runtime import ort_backend as ob
manifest = load_manifest(root, verify="quick")
base = mem()
print("base         ", fmt(base), flush=True)
rows = []
def record(name, t0, m0):
    m1 = mem()
    row = {"graph": name, "seconds": round(time.perf_counter() - t0, 2), "anon_mb": round(m1["RssAnon"] - m0["RssAnon"]),
           "file_mb": round(m1["RssFile"] - m0["RssFile"]), "peak_rss_mb": round(m1["VmHWM"]), "rss_mb": round(m1["VmRSS"])}
    rows.append(row)
    print(json.dumps(row), flush=True)

if mode == "plain":
    keep = []
    for name in graphs:
        m0, t0 = mem(), time.perf_counter()
        keep.append(ort.InferenceSession(str(manifest.graph_path(name)), ob._session_options(), providers=["CPUExecutionProvider"]))
        record(name, t0, m0)
else:
    orig = ob.OrtBackend._open
    def _open(self, name, providers):
        m0, t0 = mem(), time.perf_counter()
        s = orig(self, name, providers)
        record(name, t0, m0)
        return s
    ob.OrtBackend._open = _open
    t0 = time.perf_counter()
    backend = ob.OrtBackend(manifest, "cpu", graphs)
    print("estimate", json.dumps({k: (round(v / 1e9, 2) if isinstance(v, int) else v) for k, v in backend.load_estimate.as_dict().items()}), flush=True)
    print(f"total load {time.perf_counter() - t0:.1f}s", fmt(mem()), flush=True)
    if gen:
        from stagevar.runtime.pipeline import Pipeline
        from stagevar.runtime.tokenize import load_tokenizer_json
        from pathlib import Path
        pipe = Pipeline(manifest, backend, load_tokenizer_json(Path(root) / manifest.data["tokenizer"]["path"]))
        for i in range(2):
            t0 = time.perf_counter()
            out = pipe("a red apple on a table", seed=0, resolution=gen, output_type="np")
            print(f"generation {i} {gen}: {time.perf_counter() - t0:.1f}s (text {out.timings['text']:.1f}s, vae {out.timings['vae']:.1f}s)", fmt(mem()), flush=True)
end = mem()
print("end          ", fmt(end), " delta anon %.0f MB" % (end["RssAnon"] - base["RssAnon"]), flush=True)
