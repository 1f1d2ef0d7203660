"""The ONNX Runtime backend's device memory (issue 15, defects 4 and 8): K/V compaction and text
row selection stay on the device (the one-node Slice graphs shipped in runtime/data), a new
request's K/V cache is allocated after the previous one is freed, and fp32 GEMMs follow one TF32
policy. CPU OrtValues stand in for CUDA ones: the same IO binding code runs for both.
"""

from __future__ import annotations

import gc
import types
import weakref
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from stagevar.runtime import ort_backend
from stagevar.runtime.ort_backend import DeviceArray, OrtBackend, execution_providers

DATA = Path(ort_backend.__file__).with_name("data")


def _backend() -> OrtBackend:
    manifest = types.SimpleNamespace(model={"config": {"block_chunks": 2}}, root=Path("."), data={})
    be = OrtBackend(manifest, graphs=())
    be.use_ortvalues = True  # OrtValues, as on CUDA
    return be


def _no_host_round_trip(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a device tensor went through host memory")

    monkeypatch.setattr(DeviceArray, "numpy", refuse)
    monkeypatch.setattr(ort.OrtValue, "ortvalue_from_numpy", refuse)


def test_shipped_slice_graphs_are_the_generated_ones(tmp_path):
    pytest.importorskip("onnx")
    from stagevar.exporter.slice_graphs import write_slice_graphs

    for path in write_slice_graphs(tmp_path):
        assert (DATA / path.name).read_bytes() == path.read_bytes(), path.name


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_kv_compaction_copies_on_the_device(monkeypatch, dtype):
    """Defect 4. Guards against `compact` downloading the whole device buffer and uploading it
    again (about 15 GiB of PCIe traffic per 2B request at 1M)."""
    be = _backend()
    cache = be.new_kv_cache(7, depth=2, rows=4, heads=2, head_dim=3, dtype=dtype)
    kv = np.random.default_rng(0).standard_normal((5, 2, 2, 4, 2, 3)).astype(dtype)
    cache.buffer = be.upload(np.concatenate([kv, np.zeros((2, *kv.shape[1:]), dtype)]))
    for _ in range(5):
        cache.commit(1)
    with monkeypatch.context() as patch:
        _no_host_round_trip(patch)
        cache.compact(2, 4)
    assert cache.rows == 2 and cache.buffer.shape == (7, 2, 2, 2, 2, 3) and be.device_copies == 1
    np.testing.assert_array_equal(cache.prefix().numpy(), kv[:, :, :, 2:4])


def test_text_rows_are_selected_on_the_device(monkeypatch):
    be = _backend()
    text_kv = np.random.default_rng(1).standard_normal((2, 2, 4, 2, 5, 3)).astype(np.float32)
    bias = np.arange(4 * 5, dtype=np.float32).reshape(4, 5)
    dev_kv, dev_bias = be.upload(text_kv), be.upload(bias)
    with monkeypatch.context() as patch:
        _no_host_round_trip(patch)
        kv_rows = be.select(dev_kv, (slice(None), slice(None), slice(2, 4)))
        bias_rows = be.select(dev_bias, (slice(2, 4),))
    np.testing.assert_array_equal(kv_rows.numpy(), text_kv[:, :, 2:4])
    np.testing.assert_array_equal(bias_rows.numpy(), bias[2:4])


def test_a_new_kv_cache_is_allocated_after_the_previous_one_is_freed(monkeypatch):
    """Defect 4. Guards against holding the previous request's cache (`last_kv_cache`) while
    allocating the next one: device memory doubled at every request start."""
    be = _backend()
    first = be.new_kv_cache(8, depth=2, rows=4, heads=2, head_dim=3, dtype=np.float32)
    previous = weakref.ref(first.buffer.owner)
    del first
    alive_at_alloc = []
    alloc = be.alloc

    def recording_alloc(*args, **kwargs):
        gc.collect()
        alive_at_alloc.append(previous() is not None)
        return alloc(*args, **kwargs)

    monkeypatch.setattr(be, "alloc", recording_alloc)
    be.new_kv_cache(8, depth=2, rows=4, heads=2, head_dim=3, dtype=np.float32)
    assert alive_at_alloc == [False]


def test_one_tf32_policy_for_the_cuda_provider():
    """Defect 8. Guards against ORT CUDA running fp32 GEMMs in TF32 (its default) while the
    TensorRT build and the --check reference do not."""
    (cuda, options), cpu = execution_providers("cuda")
    assert cuda == "CUDAExecutionProvider" and options == {"use_tf32": "0"} and cpu == "CPUExecutionProvider"
    assert execution_providers("cpu") == ["CPUExecutionProvider"]
