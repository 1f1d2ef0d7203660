"""Opening an infinity-mid export costs one resident copy of its weights (fp32 and fp16).

Slow (two exports of infinity-mid, 4-7 minutes each on 2 cores): run with -m slow. Memory is read
in a child process (/proc/self/status) before `Pipeline.from_dir`, after it, and after one
0.06M generation, which touches every weight of text_cond, step and fidelity.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.slow

_PROBE = textwrap.dedent("""
    import json, sys
    import onnx, onnxruntime  # noqa: F401  (runtime imports: before the baseline)
    from stagevar.runtime.pipeline import Pipeline

    def mem():
        out = {}
        for line in open("/proc/self/status"):
            key = line.split(":")[0]
            if key in ("VmRSS", "RssAnon"):
                out[key] = int(line.split()[1]) * 1024
        return out

    base = mem()
    pipe = Pipeline.from_dir(sys.argv[1])
    loaded = mem()
    pipe("a red apple", seed=0, resolution="0.06M", output_type="np")
    print(json.dumps({"base": base, "loaded": loaded, "ran": mem(),
                      "estimate": pipe.backend.load_estimate.as_dict()}))
""")


def probe_pipeline(export_dir) -> dict:
    out = subprocess.run([sys.executable, "-c", _PROBE, str(export_dir)], capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def check_one_resident_copy(report: dict, weights_bytes: int, precision: str) -> None:
    """fp16: the load adds one fp32 copy of the transformer weights (2x the file) as anonymous
    memory; fp32: it adds almost nothing, and after a generation the file-backed RSS grew by one
    copy of the file, not one per session. 1.3x tolerance for onnxruntime's own buffers, the
    other (small) weights files and library pages."""
    anon = report["loaded"]["RssAnon"] - report["base"]["RssAnon"]
    file_grown = (report["ran"]["VmRSS"] - report["ran"]["RssAnon"]) - (report["base"]["VmRSS"] - report["base"]["RssAnon"])
    if precision == "fp16":
        assert 0.8 * 2 * weights_bytes <= anon <= 1.3 * 2 * weights_bytes, report
        assert file_grown <= 0.5 * weights_bytes, report  # the fp16 tensors are read once, not kept mapped
    else:
        assert anon <= 0.3 * weights_bytes, report
        assert 0.8 * weights_bytes <= file_grown <= 1.3 * weights_bytes, report


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_mid_export_opens_with_one_resident_copy_of_its_weights(precision, tmp_path):
    """Guards against per-session weight copies (onnxruntime folding Transpose(W) or Cast(W) into
    new initializers in every session, or mapping the shared file once per session)."""
    from stagevar.exporter.infinity.export_artifacts import export_artifacts
    from stagevar.exporter.infinity.model_bundle import InfinityBundle
    from stagevar.exporter.infinity.presets import infinity_mid

    out = export_artifacts(InfinityBundle.random(infinity_mid(), seed=0), tmp_path / "mid", aspects=("1:1",),
                           precision=precision)
    check_one_resident_copy(probe_pipeline(out), (out / "onnx" / "transformer.weights").stat().st_size, precision)
