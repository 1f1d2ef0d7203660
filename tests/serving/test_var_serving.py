"""Serving a class-conditional VAR export: Triton CLASS (int64, one label per row), Ray JSON
"class" (int or list), the pipeline's own pixels, and a prompt refused in one sentence.

The Infinity side (a class sent to an Infinity model) is in test_triton_model.py and
test_request.py beside the prompt tests it mirrors."""

import asyncio
import re
from pathlib import Path

import numpy as np
import pytest

from stagevar.runtime.errors import StagevarError
from stagevar.serve.batched_generation import generate_images
from stagevar.serve.http_request import HttpRefusal, read_generation_request
from stagevar.serve.request import (CLASS_FOR_INFINITY, PROMPT_FOR_VAR, RequestDefaults, parse_fields,
                                    parse_json_request, parse_request)
from stagevar.serve.triton_repo import TritonRepoConfig, write_triton_repo

from .helpers import initialize_args, load_model_py

VAR = RequestDefaults(plan="exact", family="var", num_classes=1000)


@pytest.fixture(scope="module")
def var_pipeline(var_tiny_artifacts):
    from stagevar.runtime.pipeline import Pipeline

    return Pipeline.from_dir(var_tiny_artifacts)


@pytest.fixture(scope="module")
def var_image(var_pipeline):
    """var_image(label, seed, **options) -> the uint8 image the pipeline makes alone (memoised)."""
    cache = {}

    def make(label, seed, **options):
        key = (label, seed, tuple(sorted(options.items())))
        if key not in cache:
            cache[key] = var_pipeline(class_labels=[label], seed=seed, output_type="np", **options).images[0]
        return cache[key]

    return make


# ---- requests ---------------------------------------------------------------------------------


def test_a_class_list_is_one_request_per_image_in_order_with_consecutive_seeds():
    """Bugs guarded against: the labels of a list swapped or all given the first label; every
    image of a list drawn with the same seed (identical noise) instead of seed + i as the Pipeline."""
    rows = parse_fields({"class": [207, 88, 207], "seed": 5, "cfg": 2.0}, VAR)
    assert [(r.class_label, r.seed, r.prompt, r.cfg) for r in rows] == [(207, 5, None, 2.0), (88, 6, None, 2.0),
                                                                        (207, 7, None, 2.0)]
    (one,) = parse_json_request(b'{"class": 360, "seed": 9, "plan": "cfg-off"}', VAR)
    assert (one.class_label, one.seed, one.plan, one.h_div_w, one.tau) == (360, 9, "cfg-off", 1.0, None)


@pytest.mark.parametrize("fields,needle", [
    ({"prompt": "a cat", "seed": 0}, PROMPT_FOR_VAR),
    ({"prompt": "a cat", "class": 207}, PROMPT_FOR_VAR),
    ({"seed": 0}, 'no "class"'),
    ({"class": 207.0}, "must be an integer"),  # a float id is refused, never truncated
    ({"class": 207.9}, "must be an integer"),
    ({"class": "207"}, "must be an integer"),
    ({"class": True}, "must be an integer"),
    ({"class": 1000}, "give 0 to 999"),  # 1000 is the null class: never a user's label
    ({"class": -1}, "give 0 to 999"),
    ({"class": []}, "1 to 16"),
    ({"class": list(range(17))}, "1 to 16"),
    ({"class": [207, "x"]}, "must be an integer"),
    ({"class": 207, "tau": 1.0}, "tau does not apply"),
    ({"class": 207, "aspect": "2:1"}, "square"),
    ({"class": 207, "plan": "fastest"}, "Plan 'fastest'"),
    ({"class": [1, 2], "seed": 2**63 - 1}, "smaller seed"),
])
def test_bad_var_requests_are_one_sentence(fields, needle):
    """Bugs guarded against: a prompt silently ignored by a VAR server (an image of some class
    instead of a refusal); float class ids truncated (207.9 -> 207); the null class 1000 accepted
    as a label; a list without bound."""
    with pytest.raises(StagevarError) as info:
        parse_fields(fields, VAR)
    message = str(info.value)
    assert needle in message and "\n" not in message and len(message) < 300


def test_a_class_sent_to_an_infinity_server_is_refused():
    """Bug guarded against: "class" ignored by an Infinity server (or refused as an unknown field
    with no word on why), so a client aimed at the wrong export gets a text-to-image answer."""
    for call in (lambda: parse_fields({"prompt": "a cat", "class": 207}),
                 lambda: parse_request("a cat", 0, class_label=207)):
        with pytest.raises(StagevarError, match=re.escape(CLASS_FOR_INFINITY)):
            call()


def test_the_http_route_answers_400_with_the_sentence():
    class Post:
        method, headers = "POST", {}

        def __init__(self, body):
            self.body = body

        async def stream(self):
            yield self.body

    rows = asyncio.run(read_generation_request(Post(b'{"class": [1, 2]}'), VAR))
    assert [r.class_label for r in rows] == [1, 2]
    with pytest.raises(HttpRefusal) as info:
        asyncio.run(read_generation_request(Post(b'{"prompt": "a cat"}'), VAR))
    assert (info.value.status, info.value.message) == (400, PROMPT_FOR_VAR)


def test_server_defaults_for_a_var_export_refuse_tau_and_resolution():
    with pytest.raises(StagevarError, match="tau does not apply"):
        RequestDefaults(family="var", tau=1.0).check()
    with pytest.raises(StagevarError, match="resolution does not apply"):
        RequestDefaults(family="var", resolution="1M").check()
    assert RequestDefaults().for_export({"family": "var", "model": {"config": {"num_classes": 10}}}).num_classes == 10


# ---- batched generation on the real VAR pipeline -------------------------------------------------


def test_batched_var_requests_equal_single_calls(var_pipeline, var_image):
    """Bugs guarded against: labels of two rows swapped in the batched call; the null class used
    for the cond rows (every class would give the same image); seeds of a batch mixed up."""
    rows = parse_fields({"class": [207, 88], "seed": 3}, VAR) + parse_fields({"class": 207, "seed": 9}, VAR)
    images = generate_images(var_pipeline, rows)
    np.testing.assert_array_equal(images[0], var_image(207, 3, plan="exact"))
    np.testing.assert_array_equal(images[1], var_image(88, 4, plan="exact"))
    np.testing.assert_array_equal(images[2], var_image(207, 9, plan="exact"))
    assert not np.array_equal(var_image(207, 3, plan="exact"), var_image(88, 3, plan="exact"))


# ---- Triton: config.pbtxt and model.py -----------------------------------------------------------


def _inputs(config_text: str) -> dict:
    found = re.findall(r'\{ name: "(\w+)" data_type: (\w+) dims: \[ 1 \]( optional: true)? \}', config_text)
    return {name: (dtype, bool(optional)) for name, dtype, optional in found}


@pytest.fixture(scope="module")
def var_model(var_tiny_artifacts, tmp_path_factory, fake_pb_utils):
    cfg = TritonRepoConfig(Path(var_tiny_artifacts), warmup=True, defaults=RequestDefaults(plan="exact"))
    model_dir = write_triton_repo(cfg, tmp_path_factory.mktemp("var-repo"))
    instance = load_model_py(model_dir).TritonPythonModel()
    instance.initialize(initialize_args(model_dir))  # the warm-up generation is a class, not a prompt
    yield model_dir, instance
    instance.finalize()


def test_a_var_repository_takes_class_int64_and_keeps_prompt_for_its_refusal(var_model):
    """Bugs guarded against: CLASS declared as FP32 (ids converted by the client) or optional
    (a request without it reaches the pipeline); PROMPT undeclared, so Triton refuses it with its
    own "unexpected input" instead of our sentence."""
    model_dir, _ = var_model
    text = (model_dir / "config.pbtxt").read_text()
    inputs = _inputs(text)
    assert inputs["CLASS"] == ("TYPE_INT64", False) and inputs["SEED"] == ("TYPE_INT64", False)
    assert inputs["PROMPT"] == ("TYPE_STRING", True)
    assert 'key: "family" value: { string_value: "var" }' in text
    assert 'key: "plan" value: { string_value: "exact" }' in text


def _request(pb, **columns):
    tensors = []
    for name, (values, dtype) in columns.items():
        tensors.append(pb.Tensor(name, np.array([[v.encode() if isinstance(v, str) else v] for v in values], dtype)))
    return pb.InferenceRequest(tensors)


def _error(response) -> str:
    assert response.has_error()
    return response.error().message()


def test_triton_var_rows_get_the_pipelines_images_and_bad_rows_fail_alone(var_model, fake_pb_utils, var_image):
    """Bugs guarded against: labels of two rows swapped; a row's label paired with another row's
    seed; a prompt, a float32 CLASS or a missing CLASS failing the whole batch (or reaching the
    pipeline) instead of its own request with one sentence."""
    pb = fake_pb_utils
    _, model = var_model
    good = _request(pb, CLASS=([207, 88], np.int64), SEED=([3, 4], np.int64))
    cfg_off = _request(pb, CLASS=([88], np.int64), SEED=([4], np.int64), PLAN=(["cfg-off"], object))
    prompt = _request(pb, PROMPT=(["a cat"], object), CLASS=([1], np.int64), SEED=([0], np.int64))
    floats = _request(pb, CLASS=([207.0], np.float32), SEED=([0], np.int64))
    missing = _request(pb, SEED=([0], np.int64))
    tau = _request(pb, CLASS=([1], np.int64), SEED=([0], np.int64), TAU=([0.5], np.float32))
    responses = model.execute([good, prompt, floats, cfg_off, missing, tau])
    assert len(responses) == 6
    images = pb.get_output_tensor_by_name(responses[0], "IMAGE").as_numpy()
    assert images.shape == (2, 256, 256, 3) and images.dtype == np.uint8
    np.testing.assert_array_equal(images[0], var_image(207, 3, plan="exact"))
    np.testing.assert_array_equal(images[1], var_image(88, 4, plan="exact"))
    off = pb.get_output_tensor_by_name(responses[3], "IMAGE").as_numpy()
    np.testing.assert_array_equal(off[0], var_image(88, 4, plan="cfg-off"))
    assert _error(responses[1]) == PROMPT_FOR_VAR
    assert "must be an integer" in _error(responses[2])
    assert _error(responses[4]) == "Input CLASS is missing; every request needs CLASS and SEED."
    assert "tau does not apply" in _error(responses[5])
    for r in responses[1:3] + responses[4:]:
        assert r.error().code() == pb.TritonError.INVALID_ARG and "\n" not in r.error().message()


def test_an_infinity_repository_takes_prompt_and_keeps_class_for_its_refusal(tiny_artifacts, tmp_path):
    """Bug guarded against: CLASS undeclared for Infinity models, so a class sent there gets
    Triton's "unexpected inference input" instead of our sentence (or CLASS made required)."""
    model_dir = write_triton_repo(TritonRepoConfig(Path(tiny_artifacts)), tmp_path / "repo")
    inputs = _inputs((model_dir / "config.pbtxt").read_text())
    assert inputs["PROMPT"] == ("TYPE_STRING", False) and inputs["CLASS"] == ("TYPE_INT64", True)


def test_stagevar_serve_triton_writes_a_var_repository_with_plan_exact(var_tiny_artifacts, tmp_path, capsys):
    """Bugs guarded against: the CLI still refusing VAR exports; its default plan "stagevar",
    which an uncalibrated VAR export cannot run (every request would fail)."""
    from stagevar.serve.cli import entry

    assert entry(["triton", str(var_tiny_artifacts), "--repo", str(tmp_path / "repo"), "--no-warmup"]) == 0
    text = (tmp_path / "repo" / "stagevar_pipeline" / "config.pbtxt").read_text()
    assert 'key: "plan" value: { string_value: "exact" }' in text and _inputs(text)["CLASS"] == ("TYPE_INT64", False)
    capsys.readouterr()
    assert entry(["triton", str(var_tiny_artifacts), "--repo", str(tmp_path / "r2"), "--tau", "1.0"]) == 2
    err = capsys.readouterr().err.strip()
    assert "tau does not apply" in err and len(err.splitlines()) == 1 and not (tmp_path / "r2").exists()
