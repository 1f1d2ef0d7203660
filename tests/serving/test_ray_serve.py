"""The Ray Serve deployment on a local Ray (CPU, one logical GPU so that the production
`num_gpus: 1` replica schedules), over loopback HTTP and through its Python handle."""

import json
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from stagevar.runtime.errors import StagevarError
from stagevar.serve.local_triton import free_port
from stagevar.serve.request import RequestDefaults

from .helpers import RESOLUTION, concurrent_images, import_or_skip, png_to_array, sigterm_raises_interrupt

pytestmark = pytest.mark.serving
ray = import_or_skip("ray", "ray")
serve = import_or_skip("ray.serve", "ray")

from stagevar.serve.ray_app import RayServeConfig, run_ray  # noqa: E402

TIMEOUT_S = 60.0


def post(url, body):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json", "Connection": "close"})
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT_S) as resp:
            return resp.status, resp.headers["Content-Type"], resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read()


def image(url, **fields):
    status, kind, data = post(url, fields)
    assert (status, kind) == (200, "image/png"), data[:300]
    return png_to_array(data)


def test_ray_serve_answers_with_the_pipelines_images(tiny_artifacts, reference_image, monkeypatch):
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    config = RayServeConfig(Path(tiny_artifacts), num_gpus=1, num_cpus=0.5, device="cpu", max_batch=4,
                            defaults=RequestDefaults(resolution=RESOLUTION))
    with sigterm_raises_interrupt():
        ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, object_store_memory=200 * 2**20,
                 log_to_driver=False)
        try:
            # The GPU check: two 1-GPU replicas cannot schedule on one GPU; refused, not pending.
            with pytest.raises(StagevarError, match="Ray sees 1"):
                run_ray(RayServeConfig(Path(tiny_artifacts), replicas=2, num_gpus=1, device="cpu"), blocking=False)
            port = free_port()
            handle = run_ray(config, port=port, blocking=False)
            _exercise(f"http://127.0.0.1:{port}/generate", handle, reference_image)
        finally:
            serve.shutdown()
            ray.shutdown()
    assert not ray.is_initialized()


def _exercise(url, handle, reference_image):
    # 3 sequential requests.
    first = image(url, prompt="a red apple", seed=1)
    wide = image(url, prompt="a lighthouse", seed=2, aspect="2:1", cfg=2.0)
    again = image(url, prompt="a red apple", seed=1)
    np.testing.assert_array_equal(first, reference_image("a red apple", 1))
    np.testing.assert_array_equal(wide, reference_image("a lighthouse", 2, aspect="2:1", cfg=2.0))
    np.testing.assert_array_equal(again, first)

    # 1 bad request: 400 with a JSON sentence; bad JSON too.
    status, kind, data = post(url, {"prompt": "", "seed": 3})
    assert (status, kind) == (400, "application/json")
    assert json.loads(data) == {"error": "The prompt is empty; describe the image to generate."}
    status, _, data = post(url, b"{not json")
    assert status == 400 and "not JSON" in json.loads(data)["error"]
    # Hostile bodies through the real proxy: one sentence each, never a 500 (issue 16).
    for body, code, needle in [
        (b'{"prompt": "' + b"x" * 200_000 + b'"}', 413, "over 65536 bytes"),
        (b"[" * 20_000 + b"]" * 20_000, 400, "nests too deeply"),
        (b'{"prompt": "x", "cfg": 1' + b"0" * 400 + b"}", 400, "cfg"),
        (b'{"prompt": "a \\ud800 cat"}', 400, "lone surrogate"),
        (b'{"prompt": "x", "tau": 1e-300}', 400, "tau"),
    ]:
        status, kind, data = post(url, body)
        error = json.loads(data)["error"]
        assert (status, kind) == (code, "application/json") and needle in error and len(error) < 300

    # 8 concurrent requests.
    results = concurrent_images(lambda i: image(url, prompt=f"prompt number {i}", seed=100 + i), 8, TIMEOUT_S)
    for i, result in enumerate(results):
        np.testing.assert_array_equal(result, reference_image(f"prompt number {i}", 100 + i))

    # The Python handle: same image; a bad field raises our error.
    by_handle = handle.generate.remote(prompt="a red apple", seed=1).result(timeout_s=TIMEOUT_S)
    np.testing.assert_array_equal(by_handle, first)
    with pytest.raises(StagevarError, match="Plan 'fastest'"):
        handle.generate.remote(prompt="x", seed=1, plan="fastest").result(timeout_s=TIMEOUT_S)

    sizes = handle.observed_batch_sizes.remote().result(timeout_s=TIMEOUT_S)
    assert sum(sizes) == 3 + 8 + 1 and max(sizes) <= 4 and max(sizes) > 1


def test_ray_serve_answers_var_classes(var_tiny_artifacts, monkeypatch):
    """A VAR export over HTTP: "class" int -> one PNG, a list -> the images side by side in order;
    a prompt -> 400 with the one sentence. Bugs guarded against: a list's images in the wrong order
    or with one seed; a prompt reaching the VAR pipeline (500 or an image)."""
    from stagevar.runtime.pipeline import Pipeline
    from stagevar.serve.request import PROMPT_FOR_VAR

    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    pipe = Pipeline.from_dir(var_tiny_artifacts)
    want = pipe(class_labels=[207, 88], seed=[3, 4], plan="exact", output_type="np").images
    config = RayServeConfig(Path(var_tiny_artifacts), num_cpus=0.5, defaults=RequestDefaults(plan="exact"))
    with sigterm_raises_interrupt():
        ray.init(num_cpus=2, include_dashboard=False, object_store_memory=200 * 2**20, log_to_driver=False)
        try:
            port = free_port()
            handle = run_ray(config, port=port, blocking=False)
            url = f"http://127.0.0.1:{port}/generate"
            np.testing.assert_array_equal(image(url, **{"class": 207, "seed": 3}), want[0])
            np.testing.assert_array_equal(image(url, **{"class": [207, 88], "seed": 3}),
                                          np.concatenate([want[0], want[1]], axis=1))
            status, kind, data = post(url, {"prompt": "a cat", "seed": 0})
            assert (status, kind) == (400, "application/json") and json.loads(data) == {"error": PROMPT_FOR_VAR}
            both = handle.generate.remote(class_label=[207, 88], seed=3).result(timeout_s=TIMEOUT_S)
            np.testing.assert_array_equal(both, want)
        finally:
            serve.shutdown()
            ray.shutdown()
