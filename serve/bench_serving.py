"""Serving overhead: N concurrent clients against Triton, Ray Serve, or the Pipeline called directly.

    python -m stagevar.serve.bench_serving DIR --target direct|triton|ray [--clients 8]
        [--requests-per-client 4] [--resolution 1M] [--max-batch 4] [--paired] [--json OUT]

Every client sends its requests one after another (distinct prompts and seeds), all clients at
once; a request's latency is from send to image received, queueing included. `direct` is one
Pipeline shared by the client threads in this process (its lock serialises the calls): the
baseline the servers' numbers compare with. Servers bind 127.0.0.1 only and are stopped at the end.
Prints one JSON line: requests/s and p50/p90 latency. `--paired` (triton, ray) instead alternates
one client's requests between the server and a Pipeline in this process: the median difference
is the serving overhead per request, robust to a shared machine's changing load.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from stagevar.runtime.cli_common import run_cli

from .request import RequestDefaults

WARMUP_REQUESTS = 2


def _run_clients(send, clients: int, per_client: int) -> tuple[list[float], float]:
    """send(client, i, j) per request from `clients` threads; returns latencies and wall time."""
    latencies: list[float] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    barrier = threading.Barrier(clients + 1)

    def worker(i):
        client = send.open() if hasattr(send, "open") else None
        try:
            barrier.wait()
            for j in range(per_client):
                t0 = time.perf_counter()
                send(client, i, j)
                with lock:
                    latencies.append(time.perf_counter() - t0)
        except BaseException as exc:  # reported after the run
            errors.append(exc)
        finally:
            if client is not None and hasattr(send, "close"):
                send.close(client)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    if errors:
        raise errors[0]
    return latencies, wall


def _prompt(i: int, j: int) -> tuple[str, int]:
    return f"benchmark prompt from client {i}", 1000 * i + j


class _Direct:
    def __init__(self, artifacts, resolution):
        from stagevar.runtime.pipeline import Pipeline

        self.pipe, self.resolution = Pipeline.from_dir(artifacts), resolution

    def __call__(self, client, i, j):
        prompt, seed = _prompt(i, j)
        return self.pipe(prompt, seed=seed, resolution=self.resolution, output_type="np").images[0]


class _Triton:
    def __init__(self, server):
        import tritonclient.http as http

        self.http, self.server = http, server

    def open(self):
        return self.http.InferenceServerClient(self.server.http_url, network_timeout=600, connection_timeout=600)

    def close(self, client):
        client.close()

    def __call__(self, client, i, j):
        prompt, seed = _prompt(i, j)
        p = self.http.InferInput("PROMPT", [1, 1], "BYTES")
        p.set_data_from_numpy(np.array([[prompt.encode()]], dtype=object))
        s = self.http.InferInput("SEED", [1, 1], "INT64")
        s.set_data_from_numpy(np.array([[seed]], dtype=np.int64))
        return client.infer("stagevar_pipeline", [p, s]).as_numpy("IMAGE")[0]


class _Http:
    def __init__(self, port, route):
        self.port, self.route = port, route

    def open(self):
        import http.client

        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=600)

    def close(self, client):
        client.close()

    def __call__(self, client, i, j):
        prompt, seed = _prompt(i, j)
        client.request("POST", self.route, body=json.dumps({"prompt": prompt, "seed": seed}),
                       headers={"Content-Type": "application/json"})
        resp = client.getresponse()
        body = resp.read()
        if resp.status != 200:
            raise RuntimeError(f"HTTP {resp.status}: {body[:200]!r}")
        return body


def bench(args) -> dict:
    artifacts = Path(args.artifacts).resolve()
    defaults = RequestDefaults(resolution=args.resolution)
    cleanup = []
    try:
        if args.target == "direct":
            send = _Direct(artifacts, args.resolution)
        elif args.target == "triton":
            from .local_triton import LocalTritonServer
            from .triton_repo import TritonRepoConfig, write_triton_repo

            repo = Path(tempfile.mkdtemp(prefix="stagevar-bench-repo-"))
            cleanup.append(lambda: shutil.rmtree(repo, ignore_errors=True))
            write_triton_repo(TritonRepoConfig(artifacts, max_batch=args.max_batch, defaults=defaults), repo)
            server = LocalTritonServer(repo)
            cleanup.append(server.stop)
            server.start()
            send = _Triton(server)
        else:
            import ray
            from ray import serve

            from .local_triton import free_port
            from .ray_app import RayServeConfig, run_ray

            os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
            ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
            cleanup.append(ray.shutdown)
            cleanup.append(serve.shutdown)
            port = free_port()
            run_ray(RayServeConfig(artifacts, num_cpus=1, max_batch=args.max_batch, defaults=defaults),
                    port=port, blocking=False)
            send = _Http(port, "/generate")
        _run_clients(send, 1, WARMUP_REQUESTS)
        if args.paired:
            return _paired(args, send, _Direct(artifacts, args.resolution))
        latencies, wall = _run_clients(send, args.clients, args.requests_per_client)
    finally:
        for step in reversed(cleanup):
            step()
    ms = np.array(latencies) * 1000
    return {
        "target": args.target, "clients": args.clients, "requests": len(latencies),
        "resolution": args.resolution or "export default", "max_batch": args.max_batch if args.target != "direct" else 1,
        "requests_per_s": round(len(latencies) / wall, 3), "p50_ms": round(float(np.percentile(ms, 50)), 1),
        "p90_ms": round(float(np.percentile(ms, 90)), 1), "mean_ms": round(float(ms.mean()), 1),
        "wall_s": round(wall, 2), "cpus": os.cpu_count(), "machine": platform.processor() or platform.machine(),
        "loadavg_1m_after": round(os.getloadavg()[0], 2),
    }


def _paired(args, send, direct: _Direct) -> dict:
    """One client alternating the same request between the Pipeline in this process and the
    server (which holds its own Pipeline): the per-request difference is the serving overhead,
    and pairing cancels the slow load changes of a shared machine."""
    client = send.open() if hasattr(send, "open") else None
    direct(None, 0, 0)
    served, local = [], []
    try:
        for j in range(args.requests_per_client):
            for fn, out in ((direct, local), (send, served)) if j % 2 == 0 else ((send, served), (direct, local)):
                t0 = time.perf_counter()
                fn(client if fn is send else None, 0, j)
                out.append(time.perf_counter() - t0)
    finally:
        if client is not None and hasattr(send, "close"):
            send.close(client)
    served_ms, local_ms = np.array(served) * 1000, np.array(local) * 1000
    return {
        "target": args.target, "mode": "paired, 1 client", "requests": len(served),
        "resolution": args.resolution or "export default",
        "direct_p50_ms": round(float(np.median(local_ms)), 1), "served_p50_ms": round(float(np.median(served_ms)), 1),
        "overhead_p50_ms": round(float(np.median(served_ms - local_ms)), 1),
        "overhead_p10_p90_ms": [round(float(np.percentile(served_ms - local_ms, q)), 1) for q in (10, 90)],
        "cpus": os.cpu_count(), "loadavg_1m_after": round(os.getloadavg()[0], 2),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m stagevar.serve.bench_serving", description=__doc__.splitlines()[0])
    p.add_argument("artifacts", help="export directory")
    p.add_argument("--target", required=True, choices=("direct", "triton", "ray"))
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--requests-per-client", type=int, default=4)
    p.add_argument("--resolution", default=None, help="0.06M, 0.25M, 0.60M or 1M (default: the export's)")
    p.add_argument("--max-batch", type=int, default=4, help="server batch size (Triton max_batch_size, serve.batch)")
    p.add_argument("--paired", action="store_true",
                   help="one client alternating direct and served requests: the per-request serving overhead")
    p.add_argument("--json", default=None, help="also append the result line to this file")
    args = p.parse_args(argv)
    result = bench(args)
    line = json.dumps(result)
    print(line)
    if args.json:
        with open(args.json, "a") as f:
            f.write(line + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
