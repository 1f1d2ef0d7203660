"""fp16 VAR exports: the blocks' GEMM weights stored in fp16, `--check` (graph by graph, fp16
tolerance, exporter/var/check_fp16.py) passes, and the runtime generates from it."""

import numpy as np
import pytest


@pytest.mark.slow  # one var-tiny export and its check (~2 min on 2 cores)
def test_fp16_export_checks_and_generates(var_tiny_bundle, var_tiny_artifacts, tmp_path):
    """Bugs guarded against: --precision fp16 silently exporting fp32 weights; the fp16 model
    changing the fp32 bundle in place (the session's other tests would run fp16); a check that
    compares nothing (no rows) or not every graph; an fp16 graph the CPU runtime cannot run."""
    import onnx

    from stagevar.exporter.var.check import check_var_artifacts
    from stagevar.exporter.var.export import export_var_artifacts
    from stagevar.runtime.pipeline import Pipeline

    out = export_var_artifacts(var_tiny_bundle, tmp_path / "fp16", precision="fp16")
    assert var_tiny_bundle.var.blocks[0].ffn.fc1.weight.dtype.is_floating_point
    assert str(var_tiny_bundle.var.blocks[0].ffn.fc1.weight.dtype) == "torch.float32"
    step = onnx.load(str(out / "onnx" / "var_step.onnx"), load_external_data=False)
    f16 = [t.name for t in step.graph.initializer if t.data_type == onnx.TensorProto.FLOAT16]
    assert len(f16) >= 4 * var_tiny_bundle.preset.var.depth  # qkv, proj, fc1, fc2 per block at least
    fp32_size = (var_tiny_artifacts / "onnx" / "var.weights").stat().st_size
    assert (out / "onnx" / "var.weights").stat().st_size < fp32_size

    report = check_var_artifacts(out, var_tiny_bundle)
    assert report["ok"] and report["precision"] == "fp16"
    assert {r["graph"] for r in report["rows"]} == {"class_cond", "var_step", "vqvae_decoder"}
    assert {r["plan"] for r in report["rows"]} == {"exact", "cfg-off"}

    images = Pipeline.from_dir(out)(class_labels=[207], seed=0, plan="exact", output_type="np").images
    assert images.shape == (1, 256, 256, 3) and images.dtype == np.uint8
