"""Ray Serve deployment of the stagevar pipeline: HTTP POST JSON -> PNG, and a Python handle.

Each replica owns one `Pipeline` (and so one K/V cache on its GPU: give it `num_gpus=1`).
`@serve.batch` collects concurrent requests; compatible ones run as one batched pipeline call
(see batched_generation.py). Ray is imported only inside the functions that need it, so this
module imports without ray installed.

    from stagevar.serve.ray_app import RayServeConfig, run_ray
    handle = run_ray(RayServeConfig("stagevar-artifacts/infinity-2b", num_gpus=1), blocking=False)
    image = handle.generate.remote(prompt="a red apple", seed=0).result()   # uint8 (H, W, 3)

HTTP: POST {"prompt": "...", "seed": 0, "plan"?, "aspect"?, "cfg"?, "tau"?} to the route
(default /generate) -> 200 image/png; a bad request -> 400 {"error": "<one sentence>"}.
A VAR export takes {"class": 207, "seed": 0, "plan"?, "cfg"?} instead; "class": [207, 88] makes
one image per class (image i with seed + i), answered as one PNG with the images side by side
(left to right, in the order given; header X-Stagevar-Images: N). The Python handle takes
`class_label=` (or **{"class": ...}) and returns (H, W, 3), or (N, H, W, 3) for a list.
"""

from __future__ import annotations

import asyncio
import functools
import io
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from stagevar.runtime.errors import StagevarError
from stagevar.runtime.manifest import load_manifest

from .batched_generation import GenerationFailure, generate_images
from .http_request import DEFAULT_MAX_BODY_BYTES, HttpRefusal, read_generation_request
from .request import RequestDefaults, parse_fields

APP_NAME = "stagevar"


@dataclass(frozen=True)
class RayServeConfig:
    """A deployment of one export. `device` defaults to "cuda" when replicas get GPUs."""

    artifacts: Path
    replicas: int = 1
    num_gpus: float = 0
    num_cpus: float = 1
    max_batch: int = 4
    batch_wait_s: float = 0.02
    # Requests a replica accepts at once (queued in its batcher); more wait in the proxy.
    max_ongoing_requests: int = 8
    # Requests waiting for a replica, per caller (proxy or handle); beyond it a request is
    # refused at once (HTTP 503) instead of queueing without bound while replicas are busy.
    max_queued_requests: int = 64
    # Largest HTTP body a replica reads; a longer one is refused with 413 unread.
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    backend: str = "ort"
    device: str | None = None
    verify: str = "record"
    defaults: RequestDefaults = field(default_factory=RequestDefaults)

    @property
    def pipeline_device(self) -> str:
        return self.device or ("cuda" if self.num_gpus > 0 else "cpu")

    def check(self) -> "RayServeConfig":
        """Refuse bad options before anything starts, one sentence each."""
        if self.replicas < 1:
            raise StagevarError(f"--replicas must be at least 1, not {self.replicas}.")
        if self.num_gpus < 0 or self.num_cpus < 0:
            raise StagevarError("--num-gpus and --num-cpus must not be negative.")
        if self.max_batch < 1 or self.max_ongoing_requests < 1:
            raise StagevarError("--max-batch and --max-ongoing-requests must be at least 1.")
        if self.max_queued_requests < 1:
            raise StagevarError(f"--max-queued-requests must be at least 1, not {self.max_queued_requests}.")
        if self.max_body_bytes < 1024:
            raise StagevarError(f"--max-body-kb must allow at least 1 KiB, not {self.max_body_bytes} bytes.")
        if self.batch_wait_s < 0:
            raise StagevarError("--batch-wait-ms must not be negative.")
        if self.pipeline_device not in ("cpu", "cuda"):
            raise StagevarError(f"--device {self.pipeline_device!r} is not known; use cpu or cuda.")
        if self.pipeline_device == "cuda" and self.num_gpus <= 0:
            raise StagevarError("--device cuda needs --num-gpus > 0, so that Ray gives each replica a GPU.")
        manifest = load_manifest(self.artifacts, verify="quick")  # a wrong path fails here, not in a replica
        self.defaults.for_export(manifest.data).check()
        return self


@functools.lru_cache(maxsize=None)
def server_class():
    """The deployment's class, defined on first use so that ray is imported only then."""
    from ray import serve

    class StagevarServer:
        """One replica: one Pipeline, batched generation, HTTP and Python entry points."""

        def __init__(self, config: RayServeConfig):
            from stagevar.runtime.pipeline import Pipeline

            self.max_body_bytes = config.max_body_bytes
            self.pipeline = Pipeline.from_dir(config.artifacts, backend=config.backend,
                                              device=config.pipeline_device, verify=config.verify)
            # The family (prompt or class requests) is the export's, whatever the caller set.
            self.defaults = config.defaults.for_export(self.pipeline.manifest.data).check()
            self._batched.set_max_batch_size(config.max_batch)
            self._batched.set_batch_wait_timeout_s(config.batch_wait_s)
            self.batch_sizes: list[int] = []  # observed, for tests and tuning

        async def __call__(self, request):
            from starlette.responses import JSONResponse, Response

            try:
                parsed = await read_generation_request(request, self.defaults, self.max_body_bytes)
            except HttpRefusal as exc:
                return JSONResponse({"error": exc.message}, status_code=exc.status)
            # Each image is its own batch item, so a class list batches with other requests.
            results = await asyncio.gather(*(self._batched(one) for one in parsed))
            failed = [r for r in results if isinstance(r, Exception)]
            if failed:
                status = 500 if any(isinstance(r, GenerationFailure) for r in failed) else 400
                return JSONResponse({"error": str(failed[0])}, status_code=status)
            headers = {"X-Stagevar-Images": str(len(results))}
            return Response(_png(np.concatenate(results, axis=1)), media_type="image/png", headers=headers)

        async def generate(self, **fields):
            """Python entry point: the image as uint8 (H, W, 3), or (N, H, W, 3) for a class list;
            bad fields raise StagevarError. `class_label=` stands for the JSON field "class"."""
            if "class_label" in fields:
                fields = {("class" if k == "class_label" else k): v for k, v in fields.items()}
            parsed = parse_fields(fields, self.defaults)
            results = await asyncio.gather(*(self._batched(one) for one in parsed))
            for result in results:
                if isinstance(result, Exception):
                    raise result
            return np.stack(results) if isinstance(fields.get("class"), list) else results[0]

        def observed_batch_sizes(self) -> list[int]:
            return list(self.batch_sizes)

        @serve.batch(max_batch_size=4, batch_wait_timeout_s=0.02)  # replaced per config in __init__
        async def _batched(self, requests):
            self.batch_sizes.append(len(requests))
            # The pipeline blocks for seconds: run it off the event loop, so that the replica
            # keeps answering health checks and keeps queueing the next batch meanwhile.
            return await asyncio.to_thread(generate_images, self.pipeline, requests)

    return StagevarServer


def build_app(config: RayServeConfig):
    """The Serve application (`serve.run(build_app(cfg))`), with the replicas' resources."""
    from ray import serve

    config.check()
    deployment = serve.deployment(server_class(), **deployment_options(config))
    return deployment.bind(config)


def deployment_options(config: RayServeConfig) -> dict:
    """The options of `serve.deployment`: replicas, their resources and both queue bounds."""
    return {
        "name": "StagevarServer", "num_replicas": config.replicas,
        "max_ongoing_requests": config.max_ongoing_requests,
        "max_queued_requests": config.max_queued_requests,
        "ray_actor_options": {"num_gpus": config.num_gpus, "num_cpus": config.num_cpus},
    }


def run_ray(config: RayServeConfig, host: str = "127.0.0.1", port: int = 8000, route_prefix: str = "/generate",
            address: str | None = None, blocking: bool = True):
    """Start (or join, with `address`) Ray, start Serve's HTTP proxy on host:port and deploy.

    Returns the application's handle; with `blocking`, serves until Ctrl-C, then shuts down.
    """
    import ray
    from ray import serve

    config.check()
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False)
    if blocking:
        # docker stop / systemd send SIGTERM: shut Serve down as gracefully as for Ctrl-C.
        signal.signal(signal.SIGTERM, _interrupt)
    try:
        needed = config.num_gpus * config.replicas
        have = ray.cluster_resources().get("GPU", 0)
        if needed > have:
            raise StagevarError(f"{config.replicas} replica(s) with {config.num_gpus} GPU(s) each need {needed} "
                                f"GPU(s), but Ray sees {have:g}; lower --replicas or --num-gpus, or join a cluster "
                                f"with GPUs.")
        serve.start(http_options={"host": host, "port": port})
        try:
            handle = serve.run(build_app(config), name=APP_NAME, route_prefix=route_prefix)
        except StagevarError:
            raise
        except Exception as exc:  # Ray reports a replica that failed to start with its whole traceback
            raise StagevarError(f"The Ray Serve deployment did not start: {_reason(exc)}") from None
        if not blocking:
            return handle
        print(f"stagevar: serving {config.artifacts} at http://{host}:{port}{route_prefix} (Ctrl-C stops)", flush=True)
        while True:
            time.sleep(3600)
    finally:
        if blocking:
            serve.shutdown()
            ray.shutdown()


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def _reason(exc: Exception) -> str:
    """Our own sentence when a replica's constructor raised a StagevarError, else the first line."""
    lines = str(exc).strip().splitlines() or [type(exc).__name__]
    ours = [line.split("StagevarError: ", 1)[1] for line in lines if "StagevarError: " in line]
    return ours[-1] if ours else lines[0][:300]


def _png(image) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()
