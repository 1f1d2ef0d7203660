"""The generated repository on a real tritonserver (2.51, bundled by nvidia-pytriton), over
loopback HTTP: sequential, bad and concurrent requests, then a clean shutdown.

Runs in the serving CI job's own virtualenv (`.ci/serving`: PyTriton pins numpy<2).
"""

import re
from pathlib import Path

import numpy as np
import pytest

from stagevar.runtime.errors import StagevarError
from stagevar.serve.request import RequestDefaults
from stagevar.serve.triton_repo import TritonRepoConfig, write_triton_repo

from .helpers import (
    RESOLUTION, concurrent_images, glibc_version, import_or_skip, required_engines, sigterm_raises_interrupt,
)

pytestmark = pytest.mark.serving
httpclient = import_or_skip("tritonclient.http", "triton")
import_or_skip("pytriton", "triton")
if glibc_version() < (2, 35):
    message = "the tritonserver bundled by nvidia-pytriton needs glibc >= 2.35 (Ubuntu 22.04+, Debian 12+)"
    if "triton" in required_engines():
        raise RuntimeError(message)
    pytest.skip(message, allow_module_level=True)

from stagevar.serve.local_triton import LocalTritonServer  # noqa: E402

MODEL = "stagevar_pipeline"
TIMEOUT_S = 60.0  # per request: a 64x64 image takes ~0.2 s; anything near this is a hang


def client(server):
    return httpclient.InferenceServerClient(server.http_url, connection_timeout=TIMEOUT_S, network_timeout=TIMEOUT_S)


def infer(c, prompt, seed, **optional):
    def tensor(name, value):
        if isinstance(value, str):
            t = httpclient.InferInput(name, [1, 1], "BYTES")
            t.set_data_from_numpy(np.array([[value.encode()]], dtype=object))
        else:
            dtype, triton_type = (np.int64, "INT64") if name == "SEED" else (np.float32, "FP32")
            t = httpclient.InferInput(name, [1, 1], triton_type)
            t.set_data_from_numpy(np.array([[value]], dtype=dtype))
        return t

    inputs = [tensor("PROMPT", prompt), tensor("SEED", seed), *(tensor(k, v) for k, v in optional.items())]
    result = c.infer(MODEL, inputs, outputs=[httpclient.InferRequestedOutput("IMAGE", binary_data=True)])
    image = result.as_numpy("IMAGE")
    assert image.dtype == np.uint8 and image.ndim == 4 and image.shape[0] == 1 and image.shape[-1] == 3
    return image[0]


def test_triton_serves_the_pipelines_images_and_shuts_down_clean(tiny_artifacts, tmp_path, reference_image):
    repo = tmp_path / "repo"
    write_triton_repo(TritonRepoConfig(Path(tiny_artifacts), max_batch=4,
                                       defaults=RequestDefaults(resolution=RESOLUTION)), repo)
    server = LocalTritonServer(repo, models=(MODEL,), startup_timeout_s=120)
    with sigterm_raises_interrupt():
        try:
            server.start()
            _exercise(server, reference_image)
        finally:
            exit_code = server.stop()
    assert exit_code == 0, server.log_tail()
    assert server.leftovers() == []


def _exercise(server, reference_image):
    c = client(server)
    try:
        config = c.get_model_config(MODEL)
        assert config["backend"] == "python" and config["max_batch_size"] == 4 and "dynamic_batching" in config
        assert config["instance_group"][0]["kind"] == "KIND_CPU"

        # 3 sequential requests: the pipeline's pixels, per-request options, repeatable.
        first = infer(c, "a red apple", 1)
        wide = infer(c, "a lighthouse", 2, ASPECT="2:1", CFG=2.0)
        again = infer(c, "a red apple", 1)
        np.testing.assert_array_equal(first, reference_image("a red apple", 1))
        np.testing.assert_array_equal(wide, reference_image("a lighthouse", 2, aspect="2:1", cfg=2.0))
        np.testing.assert_array_equal(again, first)

        # 1 bad request: refused alone, as HTTP 400 with our sentence.
        with pytest.raises(httpclient.InferenceServerException) as info:
            infer(c, "   ", 3)
        assert info.value.status() == "400" and "The prompt is empty" in info.value.message()
    finally:
        c.close()

    # 8 concurrent requests, one client each (tritonclient's HTTP client is not thread-safe).
    def fetch(i):
        wc = client(server)
        try:
            return infer(wc, f"prompt number {i}", 100 + i)
        finally:
            wc.close()

    results = concurrent_images(fetch, 8, TIMEOUT_S)
    for i, image in enumerate(results):
        np.testing.assert_array_equal(image, reference_image(f"prompt number {i}", 100 + i))

    c = client(server)
    try:
        (stats,) = c.get_inference_statistics(MODEL)["model_stats"]
        # 3 + 1 + 8 requests reached the model (Triton 2.51 counts a Python-backend error
        # response as a success, so the bad one is not in "fail").
        assert stats["inference_count"] == 12
        # The dynamic batcher merged concurrent requests into fewer, larger executions.
        assert stats["execution_count"] < stats["inference_count"]
        assert max(int(b["batch_size"]) for b in stats["batch_stats"]) > 1
        assert c.is_server_live() and c.is_model_ready(MODEL)
    finally:
        c.close()  # before shutdown: an open keep-alive connection holds the server's exit


def test_a_changed_export_fails_the_model_load_with_our_sentence(tiny_artifacts, tmp_path):
    model_dir = write_triton_repo(TritonRepoConfig(Path(tiny_artifacts), warmup=False), tmp_path / "repo")
    config = model_dir / "config.pbtxt"
    config.write_text(re.sub(r'(manifest_sha256" value: \{ string_value: ")[0-9a-f]+', r"\g<1>" + "0" * 64,
                             config.read_text()))
    server = LocalTritonServer(tmp_path / "repo", models=(MODEL,), startup_timeout_s=120)
    with sigterm_raises_interrupt(), pytest.raises(StagevarError) as info:
        server.start()  # stops the server itself when the start fails
    assert "changed after this model repository was written" in str(info.value)
    assert server.leftovers() == []


def test_triton_serves_a_var_export_by_class(var_tiny_artifacts, tmp_path):
    """A VAR repository on the real server: CLASS int64 rows get the pipeline's images; a PROMPT
    (declared optional for this refusal) gets our sentence as HTTP 400, not Triton's own error."""
    from stagevar.runtime.pipeline import Pipeline
    from stagevar.serve.request import PROMPT_FOR_VAR

    want = Pipeline.from_dir(var_tiny_artifacts)(class_labels=[207, 88], seed=[3, 4], plan="exact",
                                                  output_type="np").images
    repo = tmp_path / "repo"
    write_triton_repo(TritonRepoConfig(Path(var_tiny_artifacts), max_batch=4, defaults=RequestDefaults(plan="exact")),
                      repo)
    server = LocalTritonServer(repo, models=(MODEL,), startup_timeout_s=120)
    with sigterm_raises_interrupt():
        try:
            server.start()
            c = client(server)
            try:
                labels = httpclient.InferInput("CLASS", [2, 1], "INT64")
                labels.set_data_from_numpy(np.array([[207], [88]], dtype=np.int64))
                seeds = httpclient.InferInput("SEED", [2, 1], "INT64")
                seeds.set_data_from_numpy(np.array([[3], [4]], dtype=np.int64))
                result = c.infer(MODEL, [labels, seeds], outputs=[httpclient.InferRequestedOutput("IMAGE")])
                np.testing.assert_array_equal(result.as_numpy("IMAGE"), want)
                with pytest.raises(httpclient.InferenceServerException) as info:
                    infer(c, "a cat", 0)
                assert info.value.status() == "400" and PROMPT_FOR_VAR in info.value.message()
            finally:
                c.close()
        finally:
            exit_code = server.stop()
    assert exit_code == 0, server.log_tail()
