"""`stagevar-serve`: serve an export on Triton Inference Server or Ray Serve.

    stagevar-serve triton DIR --repo REPO [--instances N] [--kind cpu|gpu] [--max-batch N]
    stagevar-serve ray DIR [--replicas N] [--num-gpus G] [--port P]

`triton` writes a model repository for a Triton server you run (`tritonserver --model-repository
REPO`); `ray` starts Ray Serve in this process and serves until Ctrl-C. Infinity exports take
prompts (Triton PROMPT, Ray JSON "prompt"); VAR exports take ImageNet class indices (Triton CLASS
int64, Ray JSON "class").
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

from stagevar.runtime.cli_common import add_version, run_cli
from stagevar.runtime.errors import StagevarError
from stagevar.runtime.guidance import range_text
from stagevar.runtime.stage_plan import DEFAULT_PLAN, PLAN_PRESETS
from stagevar.runtime.var_plans import DEFAULT_VAR_PLAN

from .request import RequestDefaults


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="stagevar-serve", description=__doc__.splitlines()[0])
    add_version(p)
    sub = p.add_subparsers(dest="engine", required=True, metavar="{triton,ray}")

    t = sub.add_parser("triton", help="write a Triton model repository (Python backend) for an export")
    t.add_argument("artifacts", help="export directory (the one holding manifest.json)")
    t.add_argument("--repo", required=True, help="model repository folder to write into")
    t.add_argument("--model-name", default="stagevar_pipeline", help="model name (default stagevar_pipeline)")
    t.add_argument("--instances", type=int, default=1, help="instances per device; each holds a whole pipeline (default 1)")
    t.add_argument("--kind", default="cpu", choices=("cpu", "gpu"), help="instance kind: KIND_CPU or KIND_GPU (default cpu)")
    t.add_argument("--max-batch", type=int, default=4, help="Triton max_batch_size: rows per execution (default 4)")
    t.add_argument("--max-queue-delay-ms", type=float, default=20.0,
                   help="how long the dynamic batcher waits to fill a batch (default 20)")
    t.add_argument("--max-queue-size", type=int, default=64,
                   help="requests Triton queues for the model; more are refused as UNAVAILABLE (default 64)")
    t.add_argument("--server-artifacts", default=None,
                   help="the export's path as the server sees it (e.g. a container mount; default: DIR)")
    t.add_argument("--no-warmup", action="store_true", help="skip the warm-up image at model load")
    t.add_argument("--force", action="store_true", help="replace an existing model directory")
    _pipeline_options(t, device_help="pipeline device (default: cuda with --kind gpu, else cpu)")

    r = sub.add_parser("ray", help="serve an export with Ray Serve (HTTP POST JSON -> PNG)")
    r.add_argument("artifacts", help="export directory (the one holding manifest.json)")
    r.add_argument("--replicas", type=int, default=1, help="replicas; each holds a whole pipeline (default 1)")
    r.add_argument("--num-gpus", type=float, default=0, help="GPUs per replica (default 0: CPU)")
    r.add_argument("--num-cpus", type=float, default=1, help="CPUs per replica (default 1)")
    r.add_argument("--host", default="127.0.0.1", help="HTTP address (default 127.0.0.1; 0.0.0.0 to expose)")
    r.add_argument("--port", type=int, default=8000, help="HTTP port (default 8000)")
    r.add_argument("--route", default="/generate", help="HTTP route (default /generate)")
    r.add_argument("--address", default=None, help="join this Ray cluster instead of starting one")
    r.add_argument("--max-batch", type=int, default=4, help="requests per batched pipeline call (default 4)")
    r.add_argument("--batch-wait-ms", type=float, default=20.0, help="how long a batch waits to fill (default 20)")
    r.add_argument("--max-ongoing-requests", type=int, default=8,
                   help="requests one replica holds at once (default 8)")
    r.add_argument("--max-queued-requests", type=int, default=64,
                   help="requests waiting for a replica; more are refused with HTTP 503 (default 64)")
    r.add_argument("--max-body-kb", type=float, default=64,
                   help="largest request body read; larger ones get HTTP 413 (default 64)")
    _pipeline_options(r, device_help="pipeline device (default: cuda with --num-gpus > 0, else cpu)")
    return p


def _pipeline_options(p: argparse.ArgumentParser, device_help: str) -> None:
    p.add_argument("--backend", default="ort", choices=("ort", "trt"), help="execution backend (default ort)")
    p.add_argument("--device", default=None, choices=("cpu", "cuda"), help=device_help)
    p.add_argument("--verify", default="record", choices=("record", "full", "quick"),
                   help="artifact check at load: sha256 of every file, weights trusted while unchanged since "
                        "this machine hashed them (record, default), sha256 always (full) or sizes only (quick)")
    g = p.add_argument_group("request defaults (a request may override plan, aspect, cfg and tau)")
    g.add_argument("--plan", default=None, help=f"{', '.join(PLAN_PRESETS)} (default {DEFAULT_PLAN}; "
                                                 f"{DEFAULT_VAR_PLAN} for VAR exports)")
    g.add_argument("--aspect", default="1:1", help="width:height (default 1:1)")
    g.add_argument("--cfg", type=float, default=None, help=f"guidance scale, {range_text('cfg')} (default: the model's)")
    g.add_argument("--tau", type=float, default=None, help=f"logit temperature, {range_text('tau')} (default: the model's)")
    g.add_argument("--resolution", default=None, help="0.06M, 0.25M, 0.60M or 1M (default: the export's)")


def _defaults(args) -> RequestDefaults:
    """The request defaults of the options, for the export's family: a VAR export without a
    calibrated rank table runs only exact and cfg-off, so its default plan is exact."""
    from stagevar.runtime.manifest import load_manifest

    data = load_manifest(Path(args.artifacts), verify="quick").data
    plan = args.plan or (DEFAULT_VAR_PLAN if data.get("family") == "var" else DEFAULT_PLAN)
    return RequestDefaults(plan=plan, aspect=args.aspect, cfg=args.cfg, tau=args.tau,
                           resolution=args.resolution).for_export(data).check()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.engine == "triton":
        return _triton(args)
    return _ray(args)


def _triton(args) -> int:
    from .triton_repo import TritonRepoConfig, write_triton_repo

    cfg = TritonRepoConfig(
        artifacts=Path(args.artifacts), model_name=args.model_name, instances=args.instances, kind=args.kind,
        max_batch=args.max_batch, max_queue_delay_us=int(round(args.max_queue_delay_ms * 1000)),
        max_queue_size=args.max_queue_size,
        backend=args.backend, device=args.device, verify=args.verify, warmup=not args.no_warmup,
        server_artifacts=args.server_artifacts, defaults=_defaults(args),
    )
    target = write_triton_repo(cfg, args.repo, force=args.force)
    print(f"wrote {target / 'config.pbtxt'} and {target / '1' / 'model.py'} "
          f"({args.instances} x {cfg.pipeline_device} instance(s), max batch {args.max_batch})")
    print(f"serve it with: tritonserver --model-repository {Path(args.repo).resolve()}")
    return 0


def _ray(args) -> int:
    from .ray_app import RayServeConfig, run_ray

    if importlib.util.find_spec("ray") is None:
        raise StagevarError("Ray Serve is not installed; pip install 'stagevar[serve-ray]'.")
    if not 0 < args.port < 65536:
        raise StagevarError(f"--port {args.port} is not a TCP port; use 1 to 65535.")
    cfg = RayServeConfig(
        artifacts=Path(args.artifacts), replicas=args.replicas, num_gpus=args.num_gpus, num_cpus=args.num_cpus,
        max_batch=args.max_batch, batch_wait_s=args.batch_wait_ms / 1000, backend=args.backend,
        max_ongoing_requests=args.max_ongoing_requests, max_queued_requests=args.max_queued_requests,
        max_body_bytes=int(args.max_body_kb * 1024),
        device=args.device, verify=args.verify, defaults=_defaults(args),
    )
    run_ray(cfg, host=args.host, port=args.port, route_prefix=args.route, address=args.address, blocking=True)
    return 0


def entry(argv: list[str] | None = None) -> int:
    return run_cli(main, argv)


if __name__ == "__main__":
    sys.exit(entry())
