"""Write a Triton model repository that serves an export: `config.pbtxt` + `1/model.py`.

The repository holds one Python-backend model (see `triton_model.py` for why one). Its inputs
follow the export's family: PROMPT (Infinity) or CLASS int64 (VAR), SEED, optional overrides. The export
itself stays where it is: its absolute path (or the path the server will see it under, for a
container) and the sha256 of its manifest.json are recorded in the config's parameters, and the
model checks both when Triton loads it.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

from stagevar.runtime.errors import StagevarError
from stagevar.runtime.manifest import MANIFEST_NAME, load_manifest

from .request import FAMILIES, RequestDefaults

KINDS = {"cpu": "KIND_CPU", "gpu": "KIND_GPU"}
MODEL_SOURCE = Path(__file__).with_name("triton_model.py")
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class TritonRepoConfig:
    """What `stagevar-serve triton` writes into config.pbtxt.

    `server_artifacts`: the export's path as the Triton server sees it (default: `artifacts`
    resolved), e.g. the mount point inside a Triton container. `device` defaults by `kind`:
    "cuda" for gpu instances, "cpu" for cpu ones.
    """

    artifacts: Path
    model_name: str = "stagevar_pipeline"
    instances: int = 1
    kind: str = "cpu"
    max_batch: int = 4
    max_queue_delay_us: int = 20_000
    # Requests waiting in the dynamic batcher; beyond it Triton refuses new ones at once
    # (UNAVAILABLE) instead of queueing without bound while every instance is busy.
    max_queue_size: int = 64
    backend: str = "ort"
    device: str | None = None
    verify: str = "record"
    warmup: bool = True
    server_artifacts: str | None = None
    defaults: RequestDefaults = field(default_factory=RequestDefaults)

    @property
    def pipeline_device(self) -> str:
        return self.device or ("cuda" if self.kind == "gpu" else "cpu")

    def check(self) -> "TritonRepoConfig":
        """Refuse options Triton or the pipeline would refuse later, in one sentence each."""
        if not _NAME.match(self.model_name):
            raise StagevarError(f"Model name {self.model_name!r} is not valid; use letters, digits and _ . -.")
        if self.kind not in KINDS:
            raise StagevarError(f"--kind {self.kind!r} is not known; use cpu or gpu.")
        if self.instances < 1:
            raise StagevarError(f"--instances must be at least 1, not {self.instances}.")
        if self.max_batch < 1:
            raise StagevarError(f"--max-batch must be at least 1, not {self.max_batch}.")
        if self.max_queue_delay_us < 0:
            raise StagevarError("--max-queue-delay-ms must not be negative.")
        if self.max_queue_size < 1:
            raise StagevarError(f"--max-queue-size must be at least 1, not {self.max_queue_size}.")
        if self.backend not in ("ort", "trt"):
            raise StagevarError(f"--backend {self.backend!r} is not known; use ort or trt.")
        if self.backend == "trt" and self.kind != "gpu":
            raise StagevarError("--backend trt runs TensorRT engines on a GPU; add --kind gpu.")
        if self.pipeline_device not in ("cpu", "cuda"):
            raise StagevarError(f"--device {self.pipeline_device!r} is not known; use cpu or cuda.")
        if self.kind == "cpu" and self.pipeline_device == "cuda":
            raise StagevarError("--device cuda needs --kind gpu, so that Triton places the instance on a GPU.")
        if self.verify not in ("record", "full", "quick"):
            raise StagevarError(f"--verify {self.verify!r} is not known; use record, full or quick.")
        self.defaults.check()
        return self


def config_pbtxt(cfg: TritonRepoConfig, manifest_sha256: str) -> str:
    """The model's config.pbtxt (Triton's protobuf text format)."""
    d = cfg.defaults
    params = {
        "artifacts": cfg.server_artifacts or str(Path(cfg.artifacts).resolve()),
        "manifest_sha256": manifest_sha256,
        "backend": cfg.backend,
        "device": cfg.pipeline_device,
        "verify": cfg.verify,
        "warmup": "true" if cfg.warmup else "false",
        "plan": d.plan,
        "aspect": d.aspect,
        "cfg": "" if d.cfg is None else repr(float(d.cfg)),
        "tau": "" if d.tau is None else repr(float(d.tau)),
        "resolution": d.resolution or "",
        "family": d.family,
    }
    var = d.family == "var"
    # Both families declare PROMPT and CLASS (the other family's one optional), so that a prompt
    # sent to a VAR model, or a class to an Infinity one, reaches model.py and gets our sentence
    # instead of Triton's "unexpected inference input". CLASS is int64: a float32 id would be
    # converted by the client (207.9 -> 207) or lose integers past 2**24.
    inputs = [("PROMPT", "TYPE_STRING", var), ("CLASS", "TYPE_INT64", not var), ("SEED", "TYPE_INT64", False),
              ("PLAN", "TYPE_STRING", True), ("ASPECT", "TYPE_STRING", True), ("CFG", "TYPE_FP32", True),
              ("TAU", "TYPE_FP32", True)]
    lines = [
        "# Written by stagevar-serve triton; edit instance_group, max_batch_size and parameters freely.",
        f'name: "{cfg.model_name}"',
        'backend: "python"',
        # > 0: every input gets a leading batch dimension and Triton's dynamic batcher may hand
        # one execute() up to this many rows; the pipeline runs compatible rows as one batch.
        f"max_batch_size: {cfg.max_batch}",
        "input [",
        ",\n".join(f'  {{ name: "{name}" data_type: {dtype} dims: [ 1 ]{" optional: true" if opt else ""} }}'
                   for name, dtype, opt in inputs),
        "]",
        "output [",
        # Height and width follow the aspect template of each request.
        '  { name: "IMAGE" data_type: TYPE_UINT8 dims: [ -1, -1, 3 ] }',
        "]",
        f"dynamic_batching {{ max_queue_delay_microseconds: {cfg.max_queue_delay_us} "
        f"default_queue_policy {{ max_queue_size: {cfg.max_queue_size} }} }}",
        # One instance holds the whole pipeline, K/V cache included: on a GPU, one per GPU.
        f"instance_group [ {{ count: {cfg.instances} kind: {KINDS[cfg.kind]} }} ]",
        "parameters [",
        ",\n".join(f'  {{ key: "{key}" value: {{ string_value: "{_escape(value)}" }} }}'
                   for key, value in params.items()),
        "]",
    ]
    return "\n".join(lines) + "\n"


def write_triton_repo(cfg: TritonRepoConfig, repo: str | os.PathLike, force: bool = False) -> Path:
    """Write `<repo>/<model_name>/{config.pbtxt, 1/model.py}` and return the model directory.

    The export is checked first (manifest, file sizes). An existing model directory is replaced
    only with `force`; the new one is built beside it and renamed into place, so an interrupted
    write leaves the old one or none.
    """
    manifest = load_manifest(cfg.artifacts, verify="quick")
    if manifest.data.get("family") not in FAMILIES:
        raise StagevarError(f"Export {cfg.artifacts} is of model family {manifest.data.get('family')!r}, "
                            f"which stagevar-serve does not serve; export an Infinity or VAR model.")
    # The inputs (PROMPT or CLASS) and the request rules follow the export's family.
    cfg = replace(cfg, defaults=cfg.defaults.for_export(manifest.data))
    cfg.check()
    digest = hashlib.sha256((Path(cfg.artifacts) / MANIFEST_NAME).read_bytes()).hexdigest()
    repo = Path(repo)
    if repo.exists() and not repo.is_dir():
        raise StagevarError(f"--repo {repo} is a file; give a folder for the model repository.")
    target = repo / cfg.model_name
    if target.exists() and not force:
        raise StagevarError(f"{target} already exists; pass --force to replace it.")
    repo.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{cfg.model_name}.", dir=repo))
    try:
        staging.chmod(0o755)  # mkdtemp makes it private; a containerised server may run as another user
        (staging / "1").mkdir()
        (staging / "config.pbtxt").write_text(config_pbtxt(cfg, digest))
        shutil.copyfile(MODEL_SOURCE, staging / "1" / "model.py")
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')
