"""serve/batched_generation.py: which requests share one pipeline call, and what each gets back.

A recording stand-in for the Pipeline makes every image encode the settings it was generated
with, so a request answered with another request's settings shows.
"""

from types import SimpleNamespace

import numpy as np
import pytest

from stagevar.runtime.errors import StagevarError
from stagevar.serve.batched_generation import GenerationFailure, generate_images
from stagevar.serve.request import RequestDefaults, parse_request


class RecordingPipeline:
    """Answers like Pipeline(..., output_type="np"): one 2x2 image per prompt whose pixels are
    (seed, cfg * 10, tau * 10) of the call that made it. `calls` keeps each call's settings."""

    def __init__(self, fail_on: str | None = None):
        self.calls: list[dict] = []
        self.fail_on = fail_on

    def __call__(self, prompts, *, seed, plan, cfg, tau, aspect, resolution, output_type):
        self.calls.append(dict(prompts=list(prompts), seeds=list(seed), plan=plan, cfg=cfg, tau=tau,
                               aspect=aspect, resolution=resolution))
        if self.fail_on in prompts:
            raise StagevarError(f"prompt {self.fail_on!r} refused")
        images = np.zeros((len(prompts), 2, 2, 3), np.uint8)
        for i, s in enumerate(seed):
            images[i] = (s, round(10 * (cfg or 0)), round(10 * (tau or 0)))
        return SimpleNamespace(images=images)


def expected_pixel(req):
    return [req.seed, round(10 * (req.cfg or 0)), round(10 * (req.tau or 0))]


@pytest.mark.parametrize("field", ["cfg", "tau"])
def test_requests_differing_only_in_cfg_or_tau_get_their_own_setting(field):
    """Bug guarded against: a batch key without tau (or cfg), which runs such requests as one
    batch with the first request's value, so the others silently get the wrong image."""
    values = {"cfg": (3.0, 1.5, 3.0), "tau": (0.5, 1.0, 0.5)}[field]
    requests = [parse_request("a red apple", seed=i, **{field: v}) for i, v in enumerate(values)]
    pipe = RecordingPipeline()
    results = generate_images(pipe, requests)
    for req, image in zip(requests, results):
        assert image[0, 0].tolist() == expected_pixel(req)
    # The two requests with the same value still share one call: batching is kept.
    assert sorted(len(c["prompts"]) for c in pipe.calls) == [1, 2]
    assert {c[field] for c in pipe.calls} == set(values)


def test_compatible_requests_are_one_call_and_keep_their_order():
    defaults = RequestDefaults(cfg=2.0, tau=0.5)
    requests = [parse_request(f"p{i}", seed=10 + i, defaults=defaults) for i in range(4)]
    pipe = RecordingPipeline()
    results = generate_images(pipe, requests)
    assert len(pipe.calls) == 1 and pipe.calls[0]["seeds"] == [10, 11, 12, 13]
    assert [r[0, 0, 0] for r in results] == [10, 11, 12, 13]


def test_a_failing_batch_is_retried_one_by_one_so_only_the_culprit_fails():
    requests = [parse_request(p, seed=i) for i, p in enumerate(["ok", "bad", "fine"])]
    pipe = RecordingPipeline(fail_on="bad")
    results = generate_images(pipe, requests)
    assert isinstance(results[1], StagevarError) and "'bad'" in str(results[1])
    assert results[0][0, 0, 0] == 0 and results[2][0, 0, 0] == 2


def test_an_unexpected_error_becomes_a_one_line_generation_failure():
    def broken(prompts, **kwargs):
        raise RuntimeError("device lost\nmore detail")

    (result,) = generate_images(broken, [parse_request("x", seed=0)])
    assert isinstance(result, GenerationFailure)
    assert "RuntimeError: device lost" in str(result) and "\n" not in str(result)
