"""Requirements for the exported `text_encoder` graph (and the I/O spec reader it reports with)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from stagevar.exporter.graph_spec import graph_io_spec
from stagevar.exporter.infinity.graph_text_encoder import export_text_encoder
from stagevar.exporter.infinity.model_bundle import InfinityBundle
from stagevar.exporter.infinity.presets import infinity_tiny
from stagevar.runtime.graph_io import TEXT_ENCODER_INPUTS, TEXT_ENCODER_OUTPUTS


@pytest.fixture(scope="module")
def bundle() -> InfinityBundle:
    return InfinityBundle.random(infinity_tiny(), seed=0)


@pytest.fixture(scope="module")
def exported(bundle, tmp_path_factory):
    folder = tmp_path_factory.mktemp("text_encoder")
    return folder, export_text_encoder(bundle, folder)


@pytest.fixture(scope="module")
def session(exported):
    folder, record = exported
    return ort.InferenceSession(str(folder / record["file"]), providers=["CPUExecutionProvider"])


def _prompts_batch(n: int, t: int, vocab: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random ids with ragged lengths (first row full, others padded), like a tokenizer batch."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(2, vocab, (n, t)).astype(np.int64)
    lengths = [t] + list(rng.integers(1, t + 1, n - 1))
    mask = (np.arange(t)[None, :] < np.array(lengths)[:, None]).astype(np.int64)
    return ids * mask, mask  # pad id 0 past each length, as the tokenizer does


# Sizes unlike the traced example (n=2, t=5), including a single prompt and a single token.
@pytest.mark.parametrize("n,t", [(3, 9), (1, 4), (2, 1), (4, 17)])
def test_text_encoder_graph_matches_torch_on_other_sizes(bundle, session, n, t):
    ids, mask = _prompts_batch(n, t, bundle.text_encoder.config.vocab_size, seed=n * 100 + t)
    (got,) = session.run(None, {"input_ids": ids, "attention_mask": mask})
    with torch.no_grad():
        want = bundle.text_encoder(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()
    assert got.dtype == np.float32 and got.shape == (n, t, 128)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


def test_text_encoder_graph_follows_the_contract(exported):
    _, record = exported
    assert record["graph"] == "text_encoder" and record["precision"] == "fp32"
    assert [i["name"] for i in record["inputs"]] == list(TEXT_ENCODER_INPUTS)
    assert [o["name"] for o in record["outputs"]] == list(TEXT_ENCODER_OUTPUTS)
    assert all(i["dtype"] == "int64" and i["shape"] == ["n", "t"] for i in record["inputs"])
    assert record["outputs"] == [{"name": "text_features", "dtype": "float32", "shape": ["n", "t", 128]}]


def _external_locations(path) -> list[tuple[str, int, int]]:
    model = onnx.load(str(path), load_external_data=False)
    found = []
    for init in model.graph.initializer:
        if init.data_location == onnx.TensorProto.EXTERNAL:
            info = {e.key: e.value for e in init.external_data}
            found.append((info["location"], int(info.get("offset", 0)), int(info["length"])))
    return found


def test_text_encoder_graph_is_valid_onnx_with_its_own_weights_file(exported):
    folder, record = exported
    assert record["file"] == "text_encoder.onnx" and record["weights"] == "text_encoder.weights"
    onnx.checker.check_model(str(folder / record["file"]))  # path form: external data is checked
    weights = folder / record["weights"]
    assert weights.is_file()
    locations = _external_locations(folder / record["file"])
    assert locations, "the weights must live in the weights file, not inline"
    assert {loc for loc, _, _ in locations} == {"text_encoder.weights"}
    assert max(offset + length for _, offset, length in locations) <= weights.stat().st_size


def test_fp16_request_keeps_the_text_encoder_fp32_and_says_so(bundle, tmp_path):
    record = export_text_encoder(bundle, tmp_path, precision="fp16")
    assert record["requested_precision"] == "fp16" and record["precision"] == "fp32"
    assert "fp32" in record["note"]
    assert record["outputs"][0]["dtype"] == "float32"
    model = onnx.load(str(tmp_path / record["file"]), load_external_data=False)
    assert {init.data_type for init in model.graph.initializer
            if init.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)} == {onnx.TensorProto.FLOAT}


def test_unknown_precision_is_refused(bundle, tmp_path):
    with pytest.raises(ValueError, match="precision"):
        export_text_encoder(bundle, tmp_path, precision="int8")
    assert not (tmp_path / "text_encoder.onnx").exists()


def test_graph_io_spec_reads_dtypes_and_symbolic_shapes_without_initializer_inputs(tmp_path):
    # An old-style model that also lists its initializer as a graph input.
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT16, ["n", 4])
    w = onnx.helper.make_tensor_value_info("w", onnx.TensorProto.FLOAT16, [4])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.UINT8, ["n", None])
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Add", ["x", "w"], ["s"]),
         onnx.helper.make_node("Cast", ["s"], ["y"], to=onnx.TensorProto.UINT8)],
        "g", [x, w], [y],
        initializer=[onnx.numpy_helper.from_array(np.zeros(4, np.float16), "w")])
    path = tmp_path / "g.onnx"
    onnx.save_model(onnx.helper.make_model(graph), str(path))
    assert graph_io_spec(path) == {
        "inputs": [{"name": "x", "dtype": "float16", "shape": ["n", 4]}],
        "outputs": [{"name": "y", "dtype": "uint8", "shape": ["n", "?"]}],
    }
