"""Fixtures of the serving tests: the fake Triton utils module, generated repositories, and the
in-process Pipeline whose images every server's answers must equal."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from .helpers import RESOLUTION, import_file

HERE = Path(__file__).parent


@pytest.fixture(scope="session")
def tiny_pipeline(tiny_artifacts):
    from stagevar.runtime.pipeline import Pipeline

    return Pipeline.from_dir(tiny_artifacts)


@pytest.fixture(scope="session")
def reference_image(tiny_pipeline):
    """reference_image(prompt, seed, plan=..., aspect=..., cfg=..., tau=...) -> uint8 (H, W, 3),
    the image the pipeline makes in this process (memoised)."""
    cache: dict = {}

    def make(prompt, seed, **options):
        key = (prompt, seed, tuple(sorted(options.items())))
        if key not in cache:
            out = tiny_pipeline(prompt, seed=seed, resolution=RESOLUTION, output_type="np", **options)
            cache[key] = out.images[0]
        return cache[key]

    return make


@pytest.fixture(scope="module")
def fake_pb_utils():
    """Install tests/serving/fake_pb_utils.py as `triton_python_backend_utils`."""
    module = import_file("triton_python_backend_utils", HERE / "fake_pb_utils.py")
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(sys.modules, "triton_python_backend_utils", module)
        yield module


