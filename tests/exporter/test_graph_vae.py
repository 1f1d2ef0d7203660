"""Requirements for the exported `vae_decoder` graph: codes in, uint8 RGB image out."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from stagevar.exporter.infinity.graph_vae import VAEDecoderGraph, export_vae_decoder
from stagevar.exporter.infinity.model_bundle import InfinityBundle
from stagevar.exporter.infinity.presets import infinity_tiny
from stagevar.exporter.infinity.vae_decoder import to_uint8_rgb

CODE_DIM = 32  # infinity-tiny's VAE
FACTOR = 4  # and its upsampling


@pytest.fixture(scope="module")
def bundle() -> InfinityBundle:
    return InfinityBundle.random(infinity_tiny(), seed=0)


def _export(bundle, tmp_path_factory, precision):
    folder = tmp_path_factory.mktemp(f"vae_{precision}")
    record = export_vae_decoder(bundle, folder, precision)
    session = ort.InferenceSession(str(folder / record["file"]), providers=["CPUExecutionProvider"])
    return folder, record, session


@pytest.fixture(scope="module")
def fp32(bundle, tmp_path_factory):
    return _export(bundle, tmp_path_factory, "fp32")


@pytest.fixture(scope="module")
def fp16(bundle, tmp_path_factory):
    return _export(bundle, tmp_path_factory, "fp16")


def _codes(n: int, fh: int, fw: int, seed: int) -> np.ndarray:
    """A running sum of a few scales of +-1/sqrt(d) codes, the kind of input the runtime decodes."""
    rng = np.random.default_rng(seed)
    bits = rng.integers(0, 2, (4, n, CODE_DIM, fh, fw)) * 2 - 1
    return (bits.sum(axis=0) / np.sqrt(CODE_DIM)).astype(np.float32)


def _torch_image(bundle, codes: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return to_uint8_rgb(bundle.vae(torch.from_numpy(codes))).numpy()


def _pixel_diff(got: np.ndarray, want: np.ndarray) -> np.ndarray:
    return np.abs(got.astype(np.int32) - want.astype(np.int32))


def test_graph_module_equals_the_host_conversion_in_torch(bundle):
    codes = _codes(2, 3, 5, seed=0)
    with torch.no_grad():
        got = VAEDecoderGraph(bundle.vae)(torch.from_numpy(codes))
    assert got.dtype == torch.uint8
    assert torch.equal(got, torch.from_numpy(_torch_image(bundle, codes)))


# Sizes unlike the traced example (n=2, fh=3, fw=4): batch 3 and 1, non-square and square grids.
@pytest.mark.parametrize("n,fh,fw", [(3, 5, 7), (1, 6, 2), (1, 16, 16)])
def test_vae_graph_matches_the_torch_uint8_image(bundle, fp32, n, fh, fw):
    _, _, session = fp32
    codes = _codes(n, fh, fw, seed=n * 1000 + fh * 10 + fw)
    (got,) = session.run(None, {"codes": codes})
    want = _torch_image(bundle, codes)
    assert got.dtype == np.uint8 and got.shape == (n, fh * FACTOR, fw * FACTOR, 3)
    assert 10 < want.std(), "the reference image must not be flat, or the comparison means nothing"
    diff = _pixel_diff(got, want)
    # Float rounding may move a value across an integer boundary of the truncation: off by one.
    assert diff.max() <= 1
    assert (diff > 0).mean() <= 1e-3


def test_vae_graph_follows_the_contract(fp32):
    _, record, _ = fp32
    assert record["graph"] == "vae_decoder" and record["precision"] == "fp32"
    assert record["inputs"] == [{"name": "codes", "dtype": "float32", "shape": ["n", CODE_DIM, "fh", "fw"]}]
    (image,) = record["outputs"]
    assert image["name"] == "image" and image["dtype"] == "uint8"
    n, height, width, channels = image["shape"]
    assert n == "n" and channels == 3
    assert isinstance(height, str) and "fh" in height and isinstance(width, str) and "fw" in width


def _external_locations(path) -> list[tuple[str, int, int]]:
    model = onnx.load(str(path), load_external_data=False)
    found = []
    for init in model.graph.initializer:
        if init.data_location == onnx.TensorProto.EXTERNAL:
            info = {e.key: e.value for e in init.external_data}
            found.append((info["location"], int(info.get("offset", 0)), int(info["length"])))
    return found


@pytest.mark.parametrize("which", ["fp32", "fp16"])
def test_vae_graph_is_valid_onnx_with_its_own_weights_file(which, request):
    folder, record, _ = request.getfixturevalue(which)
    assert record["file"] == "vae_decoder.onnx" and record["weights"] == "vae_decoder.weights"
    onnx.checker.check_model(str(folder / record["file"]))  # path form: external data is checked
    weights = folder / record["weights"]
    assert weights.is_file()
    locations = _external_locations(folder / record["file"])
    assert locations, "the weights must live in the weights file, not inline"
    assert {loc for loc, _, _ in locations} == {"vae_decoder.weights"}
    assert max(offset + length for _, offset, length in locations) <= weights.stat().st_size


def test_fp16_vae_graph_has_fp16_convs_fp32_norms_and_the_same_contract(fp16, fp32):
    folder, record, _ = fp16
    assert record["requested_precision"] == "fp16" and record["precision"] == "fp16"
    assert record["inputs"] == fp32[1]["inputs"] and record["outputs"] == fp32[1]["outputs"]
    model = onnx.shape_inference.infer_shapes(
        onnx.load(str(folder / record["file"]), load_external_data=False))
    dtypes = {init.name: init.data_type for init in model.graph.initializer}
    dtypes.update({v.name: v.type.tensor_type.elem_type for v in model.graph.value_info})
    convs = [node for node in model.graph.node if node.op_type == "Conv"]
    norms = [node for node in model.graph.node
             if node.op_type in ("InstanceNormalization", "GroupNormalization")]
    assert convs and norms
    assert {dtypes[node.input[1]] for node in convs} == {onnx.TensorProto.FLOAT16}
    assert {dtypes[node.input[0]] for node in norms} == {onnx.TensorProto.FLOAT}


def test_fp16_vae_graph_stays_close_to_the_fp32_image(bundle, fp16):
    _, _, session = fp16
    codes = _codes(2, 6, 5, seed=7)
    (got,) = session.run(None, {"codes": codes})
    diff = _pixel_diff(got, _torch_image(bundle, codes))
    assert got.dtype == np.uint8 and got.shape == (2, 24, 20, 3)
    assert diff.max() <= 2
    assert (diff > 0).mean() <= 0.1


def test_unknown_precision_is_refused(bundle, tmp_path):
    with pytest.raises(ValueError, match="precision"):
        export_vae_decoder(bundle, tmp_path, precision="bf16")
    assert not (tmp_path / "vae_decoder.onnx").exists()
