"""The generated model.py, run in-process against a fake `triton_python_backend_utils`:
one response per request, the pipeline's own pixels, and errors confined to their request."""

import re
from pathlib import Path

import numpy as np
import pytest

from stagevar.serve.request import RequestDefaults
from stagevar.serve.triton_repo import TritonRepoConfig, write_triton_repo

from .helpers import RESOLUTION, initialize_args, load_model_py, request_inputs


def write_repo(artifacts, repo, **defaults):
    cfg = TritonRepoConfig(Path(artifacts), warmup=False, defaults=RequestDefaults(resolution=RESOLUTION, **defaults))
    return write_triton_repo(cfg, repo)


@pytest.fixture(scope="module")
def model(tiny_artifacts, tmp_path_factory, fake_pb_utils):
    """One initialized instance for the module, as Triton keeps one for many executions."""
    model_dir = write_repo(tiny_artifacts, tmp_path_factory.mktemp("repo"))
    instance = load_model_py(model_dir).TritonPythonModel()
    instance.initialize(initialize_args(model_dir))
    yield instance
    instance.finalize()


def make_request(pb, prompts, seeds, **optional):
    return pb.InferenceRequest([pb.Tensor(k, v) for k, v in request_inputs(prompts, seeds, **optional).items()])


def image_of(pb, response):
    assert not response.has_error(), response.error().message()
    image = pb.get_output_tensor_by_name(response, "IMAGE").as_numpy()
    assert image.dtype == np.uint8 and image.ndim == 4 and image.shape[-1] == 3
    return image


def test_one_response_per_request_with_the_pipelines_pixels(model, fake_pb_utils, reference_image):
    pb = fake_pb_utils
    requests = [
        make_request(pb, ["a red apple"], [3]),
        make_request(pb, ["a lighthouse"], [4], ASPECT=["2:1"], CFG=[2.0]),
        make_request(pb, ["a red apple"], [3], PLAN=["exact"], TAU=[0.8]),
        make_request(pb, ["a boat"], [5]),
    ]
    responses = model.execute(requests)
    assert len(responses) == len(requests)
    images = [image_of(pb, r) for r in responses]
    assert images[0].shape == (1, 64, 64, 3) and images[1].shape == (1, 44, 88, 3)
    np.testing.assert_array_equal(images[0][0], reference_image("a red apple", 3))
    np.testing.assert_array_equal(images[1][0], reference_image("a lighthouse", 4, aspect="2:1", cfg=2.0))
    np.testing.assert_array_equal(images[2][0], reference_image("a red apple", 3, plan="exact", tau=0.8))
    np.testing.assert_array_equal(images[3][0], reference_image("a boat", 5))
    assert not np.array_equal(images[0], images[2])  # the per-request PLAN/TAU were applied
    # Same seed, same image, in a later execute with other company.
    again = model.execute([make_request(pb, ["x"], [9]), make_request(pb, ["a red apple"], [3])])
    np.testing.assert_array_equal(image_of(pb, again[1]), images[0])


def test_a_request_with_several_rows_gets_one_image_per_row(model, fake_pb_utils, reference_image):
    pb = fake_pb_utils
    (response,) = model.execute([make_request(pb, ["a red apple", "a boat"], [3, 5], PLAN=["stagevar", "stagevar"])])
    images = image_of(pb, response)
    assert images.shape == (2, 64, 64, 3)
    np.testing.assert_array_equal(images[0], reference_image("a red apple", 3))
    np.testing.assert_array_equal(images[1], reference_image("a boat", 5))


@pytest.mark.parametrize("bad,needle", [
    (dict(prompts=[""], seeds=[1]), "prompt is empty"),
    (dict(prompts=["x"], seeds=[1], PLAN=["fastest"]), "Plan 'fastest'"),
    (dict(prompts=["x"], seeds=[-5]), "Seed -5"),
    (dict(prompts=["x"], seeds=[1], ASPECT=["9:1"]), "9:1"),
    (dict(prompts=["x"], seeds=[1], TAU=[0.0]), "tau"),
    (dict(prompts=["x", "y"], seeds=[1, 2], ASPECT=["1:1", "2:1"]), "aspect"),
])
def test_a_bad_request_fails_alone_with_invalid_arg(model, fake_pb_utils, reference_image, bad, needle):
    pb = fake_pb_utils
    good = make_request(pb, ["a red apple"], [3])
    bad_request = make_request(pb, bad.pop("prompts"), bad.pop("seeds"), **bad)
    responses = model.execute([good, bad_request, make_request(pb, ["a boat"], [5])])
    assert len(responses) == 3
    assert responses[1].has_error() and not responses[0].has_error() and not responses[2].has_error()
    error = responses[1].error()
    assert needle in error.message() and "\n" not in error.message()
    assert error.code() == pb.TritonError.INVALID_ARG
    np.testing.assert_array_equal(image_of(pb, responses[0])[0], reference_image("a red apple", 3))
    np.testing.assert_array_equal(image_of(pb, responses[2])[0], reference_image("a boat", 5))


def test_a_class_sent_to_the_infinity_model_is_refused_alone(model, fake_pb_utils, reference_image):
    """Bug guarded against: CLASS ignored by an Infinity model (a text-to-image answer to a client
    aimed at a VAR export) or undeclared in config.pbtxt (Triton's own error, not our sentence)."""
    from stagevar.serve.request import CLASS_FOR_INFINITY

    pb = fake_pb_utils
    with_class = make_request(pb, ["a red apple"], [3])
    with_class.inputs().append(pb.Tensor("CLASS", np.array([[207]], dtype=np.int64)))
    responses = model.execute([with_class, make_request(pb, ["a red apple"], [3])])
    assert responses[0].error().message() == CLASS_FOR_INFINITY
    np.testing.assert_array_equal(image_of(pb, responses[1])[0], reference_image("a red apple", 3))


def test_missing_or_misshapen_inputs_are_error_responses(model, fake_pb_utils):
    pb = fake_pb_utils
    no_seed = pb.InferenceRequest([pb.Tensor("PROMPT", np.array([[b"x"]], dtype=object))])
    rows = make_request(pb, ["x", "y"], [1])
    flat = pb.InferenceRequest([pb.Tensor("PROMPT", np.array([[b"x", b"y"]], dtype=object)),
                                pb.Tensor("SEED", np.array([[1]], dtype=np.int64))])
    responses = model.execute([no_seed, rows, flat])
    messages = [r.error().message() for r in responses]
    assert "SEED is missing" in messages[0] and "1 rows but PROMPT has 2" in messages[1] and "shape" in messages[2]


def test_an_internal_failure_is_an_error_response_for_its_request_only(model, fake_pb_utils, reference_image):
    pb = fake_pb_utils
    real = model.pipeline

    def flaky(prompts, **kwargs):
        if "boom" in prompts:
            raise RuntimeError("device lost\nsecond line")
        return real(prompts, **kwargs)

    model.pipeline = flaky
    try:
        responses = model.execute([make_request(pb, ["a red apple"], [3]), make_request(pb, ["boom"], [1])])
    finally:
        model.pipeline = real
    np.testing.assert_array_equal(image_of(pb, responses[0])[0], reference_image("a red apple", 3))
    error = responses[1].error()
    assert error.code() == pb.TritonError.INTERNAL
    assert "RuntimeError: device lost" in error.message() and "\n" not in error.message()


def test_initialize_with_warmup_and_defaults_from_the_config(tiny_artifacts, tmp_path, fake_pb_utils, reference_image):
    cfg = TritonRepoConfig(Path(tiny_artifacts), defaults=RequestDefaults(plan="exact", aspect="2:1", cfg=2.5,
                                                                           resolution=RESOLUTION))
    model_dir = write_triton_repo(cfg, tmp_path / "repo")  # warm-up on: one image at initialize
    model = load_model_py(model_dir).TritonPythonModel()
    model.initialize(initialize_args(model_dir))
    (response,) = model.execute([make_request(fake_pb_utils, ["a red apple"], [3])])
    expected = reference_image("a red apple", 3, plan="exact", aspect="2:1", cfg=2.5)
    np.testing.assert_array_equal(image_of(fake_pb_utils, response)[0], expected)


def test_initialize_refuses_a_changed_or_missing_export_in_one_sentence(tiny_artifacts, fake_pb_utils, tmp_path):
    model_dir = write_repo(tiny_artifacts, tmp_path / "repo")
    config = model_dir / "config.pbtxt"
    text = config.read_text()
    config.write_text(re.sub(r'(manifest_sha256" value: \{ string_value: ")[0-9a-f]+', r"\g<1>" + "0" * 64, text))
    with pytest.raises(fake_pb_utils.TritonModelException, match="changed after this model repository was written"):
        load_model_py(model_dir).TritonPythonModel().initialize(initialize_args(model_dir))
    config.write_text(re.sub(r'(artifacts" value: \{ string_value: ")[^"]+', r"\g<1>" + str(tmp_path / "gone"), text))
    with pytest.raises(fake_pb_utils.TritonModelException) as info:
        load_model_py(model_dir).TritonPythonModel().initialize(initialize_args(model_dir))
    assert "does not exist" in str(info.value) and "\n" not in str(info.value)


def test_an_unexpected_exception_answers_every_request_of_the_batch(model, fake_pb_utils):
    pb = fake_pb_utils

    class BrokenTensor(pb.Tensor):
        def as_numpy(self):
            raise MemoryError("out of host memory")

    broken = pb.InferenceRequest([BrokenTensor("PROMPT", np.array([[b"x"]], dtype=object)),
                                  pb.Tensor("SEED", np.array([[1]], dtype=np.int64))])
    responses = model.execute([make_request(pb, ["a red apple"], [3]), broken])
    assert len(responses) == 2 and all(r.has_error() for r in responses)
    assert all(r.error().code() == pb.TritonError.INTERNAL and "MemoryError" in r.error().message() for r in responses)
    (after,) = model.execute([make_request(pb, ["a red apple"], [3])])  # the instance carries on
    assert not after.has_error()


def _zero_rows(pb):
    return pb.InferenceRequest([pb.Tensor("PROMPT", np.zeros((0, 1), dtype=object)),
                                pb.Tensor("SEED", np.zeros((0, 1), dtype=np.int64))])


def test_a_zero_row_request_is_refused_alone(model, fake_pb_utils, reference_image):
    """Bug guarded against: PROMPT/SEED of shape [0, 1] reaching np.stack([]), whose exception
    the catch-all answered with INTERNAL for every request of the batch."""
    pb = fake_pb_utils
    responses = model.execute([make_request(pb, ["a red apple"], [3]), _zero_rows(pb),
                               make_request(pb, ["a boat"], [5])])
    error = responses[1].error()
    assert error.code() == pb.TritonError.INVALID_ARG and "no rows" in error.message()
    np.testing.assert_array_equal(image_of(pb, responses[0])[0], reference_image("a red apple", 3))
    np.testing.assert_array_equal(image_of(pb, responses[2])[0], reference_image("a boat", 5))
    (alone,) = model.execute([_zero_rows(pb)])
    assert alone.error().code() == pb.TritonError.INVALID_ARG


def test_a_request_mixing_aspect_templates_is_refused_before_generation(model, fake_pb_utils, monkeypatch):
    """Bug guarded against: the rows of a mixed request generated in full (seconds of GPU time
    each) and refused only when their images would not stack."""
    pb = fake_pb_utils
    real, seen = model.pipeline, []

    def recording(prompts, **kwargs):
        seen.extend(prompts)
        return real(prompts, **kwargs)

    monkeypatch.setattr(model, "pipeline", recording)
    mixed = make_request(pb, ["wide one", "square one"], [1, 2], ASPECT=["2:1", "1:1"])
    responses = model.execute([mixed, make_request(pb, ["a red apple"], [3])])
    assert "different aspect ratios" in responses[0].error().message()
    assert responses[0].error().code() == pb.TritonError.INVALID_ARG
    assert not responses[1].has_error()
    assert seen == ["a red apple"]  # the mixed request's rows never reached the pipeline
