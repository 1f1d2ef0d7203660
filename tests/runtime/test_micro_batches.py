"""Micro-batching in the Pipeline: same images as one batch, refusals before any work."""

import numpy as np
import pytest

from stagevar.runtime.errors import StagevarError
from stagevar.runtime.pipeline import Pipeline

PROMPTS = ["a red apple", "a lighthouse at night"]


@pytest.fixture(scope="module")
def pipe(tiny_artifacts):
    return Pipeline.from_dir(tiny_artifacts)


def test_micro_batches_give_the_images_of_one_batch(pipe):
    # Guards against micro-batches that restart seeds or noise per batch, drop or reorder images.
    args = dict(seed=5, num_images_per_prompt=3, resolution="0.06M", output_type="np")
    whole = pipe(PROMPTS, **args)
    seen = []
    split = pipe(PROMPTS, max_batch=4, progress=lambda b, nb, k, ns: seen.append((b, nb, k, ns)), **args)
    np.testing.assert_array_equal(split.images, whole.images)  # same code and inputs: bit for bit
    assert split.seeds == whole.seeds == list(range(5, 11))
    assert split.timings["micro_batches"] == 2 and "micro_batches" not in whole.timings
    assert len(split.timings["scales"]) == len(whole.timings["scales"])
    scales = len(whole.timings["scales"])
    assert seen == [(b, 2, k, scales) for b in range(2) for k in range(scales)]


def test_batches_yields_consecutive_images(pipe):
    parts = list(pipe.batches(PROMPTS, seed=0, resolution="0.06M", output_type="np", max_batch=1))
    assert [p.seeds for p in parts] == [[0], [1]]


def test_memory_budget_sets_the_micro_batch_size(pipe, monkeypatch):
    # Guards against ignoring the budget (one batch whatever the memory).
    from stagevar.runtime import request_memory

    calls = []
    real = request_memory.micro_batch_size
    monkeypatch.setattr(request_memory, "micro_batch_size", lambda *a: calls.append((a, real(*a))) or calls[-1][1])
    try:
        pipe.memory_budget = None
        pipe(PROMPTS * 2, resolution="0.06M", output_type="np")
        per = calls[0][0][0]  # the estimate for one image of this request
        pipe.memory_budget = 2 * per + per // 2  # fits two images
        out = pipe(PROMPTS * 2, resolution="0.06M", output_type="np")
    finally:
        pipe.memory_budget = "auto"
    assert [size for _, size in calls] == [4, 2] and out.timings["micro_batches"] == 2


def test_oversized_request_is_refused_before_any_graph_runs(pipe, monkeypatch):
    monkeypatch.setattr(pipe.backend, "run_plain", lambda *a, **k: pytest.fail("a graph ran"))
    pipe.memory_budget = 1000
    try:
        with pytest.raises(StagevarError, match=r"One image of this request \(plan stagevar, 64x64, infinity-tiny\)"):
            pipe(PROMPTS, resolution="0.06M")
    finally:
        pipe.memory_budget = "auto"


def test_requests_with_noise_or_intermediates_are_not_split(pipe):
    with pytest.raises(StagevarError, match="not split"):
        pipe(PROMPTS, resolution="0.06M", max_batch=1, return_intermediates=True)
