"""serve/http_request.py and the Ray deployment's limits, without Ray: what an HTTP request to
the Ray Serve route becomes (a GenerationRequest or a status with one sentence)."""

import asyncio
import json
from pathlib import Path

import pytest

from stagevar.runtime.errors import StagevarError
from stagevar.serve.http_request import DEFAULT_MAX_BODY_BYTES, HttpRefusal, read_generation_request
from stagevar.serve.ray_app import RayServeConfig, deployment_options
from stagevar.serve.request import RequestDefaults


class FakeRequest:
    """The part of starlette's Request the route uses: method, headers and a chunked stream.
    `consumed` counts the body bytes the server read."""

    def __init__(self, body: bytes, method="POST", declare_length=True, chunk=8192):
        self.method, self.body, self.chunk, self.consumed = method, body, chunk, 0
        self.headers = {"content-length": str(len(body))} if declare_length else {}

    async def stream(self):
        for i in range(0, len(self.body), self.chunk):
            part = self.body[i:i + self.chunk]
            self.consumed += len(part)
            yield part


def read(request, limit=DEFAULT_MAX_BODY_BYTES):
    (one,) = asyncio.run(read_generation_request(request, RequestDefaults(), limit))
    return one


def refusal(request, limit=DEFAULT_MAX_BODY_BYTES) -> HttpRefusal:
    with pytest.raises(HttpRefusal) as info:
        read(request, limit)
    assert "\n" not in info.value.message and len(info.value.message) < 300
    return info.value


def test_a_valid_body_becomes_a_request():
    req = read(FakeRequest(json.dumps({"prompt": "a boat", "seed": 4, "tau": 0.5}).encode(), chunk=3))
    assert (req.prompt, req.seed, req.tau) == ("a boat", 4, 0.5)


@pytest.mark.parametrize("declare_length", [True, False], ids=["content-length", "chunked"])
def test_a_body_over_the_cap_is_413_and_never_read_whole(declare_length):
    """Bug guarded against: no cap on the body, so one client can make a replica buffer and
    parse any number of megabytes (the old route awaited request.body())."""
    body = json.dumps({"prompt": "x" * 10_000_000}).encode()
    request = FakeRequest(body, declare_length=declare_length)
    error = refusal(request)
    assert error.status == 413 and str(DEFAULT_MAX_BODY_BYTES) in error.message
    assert request.consumed <= DEFAULT_MAX_BODY_BYTES + request.chunk


def test_the_cap_is_configurable():
    body = json.dumps({"prompt": "y" * 3000}).encode()
    assert read(FakeRequest(body)).prompt == "y" * 3000
    assert refusal(FakeRequest(body), limit=2048).status == 413


def test_the_largest_valid_prompt_fits_under_the_default_cap():
    body = json.dumps({"prompt": "\u4e00" * 4096, "seed": 2**63 - 1, "plan": "stagevar-full",
                       "aspect": "16:9", "cfg": 3.0, "tau": 0.5}).encode()  # ensure_ascii: \uXXXX
    assert len(body) < DEFAULT_MAX_BODY_BYTES
    assert read(FakeRequest(body)).prompt == "\u4e00" * 4096


@pytest.mark.parametrize("body,needle", [
    (b'{"prompt": "x", "cfg": 1' + b"0" * 400 + b"}", "cfg"),
    (b"[" * 20_000 + b"]" * 20_000, "nests too deeply"),
    (b'{"prompt": "\\ud800"}', "lone surrogate"),
    (b'{"prompt": "x", "plan": "' + b"p" * 60_000 + b'"}', "plan"),
    (b'{"prompt": "x", "tau": 1e-300}', "tau"),
])
def test_hostile_bodies_are_400_with_one_short_sentence(body, needle):
    """Bug guarded against: OverflowError, RecursionError or a surrogate escaping validation as
    a 500, and refusals echoing the whole value."""
    error = refusal(FakeRequest(body))
    assert error.status == 400 and needle in error.message


def test_other_methods_are_405():
    assert refusal(FakeRequest(b"", method="GET")).status == 405


def test_the_deployment_bounds_its_queue_and_passes_the_limits():
    """Bug guarded against: a deployment without max_queued_requests (Ray's default -1 queues
    without bound)."""
    config = RayServeConfig(Path("unused"), replicas=2, num_gpus=1, max_ongoing_requests=4,
                            max_queued_requests=16)
    options = deployment_options(config)
    assert options["max_queued_requests"] == 16 and options["max_ongoing_requests"] == 4
    assert options["num_replicas"] == 2 and options["ray_actor_options"]["num_gpus"] == 1
    assert deployment_options(RayServeConfig(Path("unused")))["max_queued_requests"] == 64


@pytest.mark.parametrize("options,needle", [
    (dict(max_queued_requests=0), "--max-queued-requests"),
    (dict(max_body_bytes=10), "--max-body-kb"),
])
def test_bad_limits_are_refused_before_anything_starts(tmp_path, options, needle):
    with pytest.raises(StagevarError, match=needle):
        RayServeConfig(tmp_path / "missing", **options).check()
