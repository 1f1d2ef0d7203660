"""text_encoder and fidelity traced in a second process while this one traces the block, step,
text_cond and vae_decoder.

Tracing is single-threaded Python (torch.export's fake tensors and symbolic shapes), so on a
machine with two cores the export takes less time when its graphs are split between two
processes (#12). The second process is started fresh (`python -m`, never forked: a forked tracer
deadlocked once) as soon as the CLI has parsed its options, so its imports overlap this
process's; it gets the model by pickle and the export's attention form and token pairing
explicitly (context variables do not cross processes). It writes text_encoder (its own weights
file) into the stage folder. fidelity needs the block that this process traces first
(block_stitch.py): it is handed over as a file as soon as it is traced, while the second process
is still busy with text_encoder. fidelity comes back unsaved: its weights go into the
transformer's shared weights file, which only this process writes, in the order of a
one-process export, so both give the same bytes. This split gives the two processes about equal
work on the default model (docs/benchmarks.md, "Export time").

Only models whose weights are in memory and small go to a second process (pickling them costs a
copy); large and lazily-initialised models export in one process as before.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

from stagevar.runtime.errors import StagevarError

# This module imports no torch: the CLI launches the second process before importing it.

# Models above this many bytes of weights export in one process: the pickled copy would cost
# more memory than the time it saves is worth (infinity-mid is ~0.24 GB, infinity2b 8 GB).
MAX_SIDE_BYTES = 1 << 30
WORKER_MODULE = "stagevar.exporter.infinity.side_worker"
BLOCK_FILE = "block.onnx"


@dataclass(frozen=True)
class SideJob:
    """Everything the second process needs; pickled into a file it reads."""

    bundle: object  # InfinityBundle without lazy sources
    model: object  # torch.nn.Module: the transformer as exported (fp16 blocks in an fp16 export)
    onnx_dir: str
    precision: str
    attention: object  # attention_form.AttentionSpec
    pairing: str


@dataclass(frozen=True)
class SideResult:
    timings: dict  # graph -> seconds
    graphs: dict  # fidelity -> (onnx.ModelProto without initializers, {name: np.ndarray})


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def default_workers(bundle) -> int:
    """2 (a second process) where it pays: at least two usable CPUs and a small in-memory model."""
    if bundle.is_lazy or usable_cpus() < 2:
        return 1
    modules = (bundle.transformer, bundle.text_encoder, bundle.vae)
    size = sum(p.numel() * p.element_size() for m in modules for p in m.parameters())
    return 2 if size <= MAX_SIDE_BYTES else 1


def check_workers(workers: int, bundle) -> int:
    if workers not in (1, 2):
        raise StagevarError(f"--jobs {workers} is not supported; use 1 (one process) or 2 (two processes "
                            "tracing the graphs side by side).")
    if workers == 2 and bundle.is_lazy:
        raise StagevarError("--jobs 2 needs the model's weights in memory; this model is initialised lazily "
                            "(too large to copy into a second process), so export it with --jobs 1.")
    return workers


class SideGraphs:
    """The second process: `launch()` starts it (it imports torch, onnxscript and transformers,
    ~9 s, while this process loads the model), `submit(job)` hands it the job, `result()` waits
    for its graphs. A context manager, so that an export that fails, is interrupted or ends up
    not needing it never leaves the second process running.
    """

    def __init__(self, command: list[str] | None = None) -> None:
        self._command = command or [sys.executable, "-m", WORKER_MODULE]
        self._tmp = tempfile.TemporaryDirectory(prefix="stagevar-side-")
        self._proc: subprocess.Popen | None = None
        self._log = None

    @property
    def folder(self) -> Path:
        return Path(self._tmp.name)

    @property
    def job_path(self) -> Path:
        return self.folder / "job.pt"

    def __enter__(self) -> "SideGraphs":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None
        self._tmp.cleanup()

    def launch(self) -> "SideGraphs":
        if self._proc is None:
            self._log = open(self.folder / "worker.log", "wb")
            # Tracing needs no intra-op threads; the import path is this process's (a script may
            # have extended sys.path to find stagevar).
            env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
            self._proc = subprocess.Popen([*self._command, str(self.job_path), str(self.folder / "result.pkl")],
                                          stdout=self._log, stderr=subprocess.STDOUT, env=env)
        return self

    def submit(self, job: SideJob) -> None:
        """Write the job (whole, then renamed: the waiting process never reads half a file)."""
        import torch

        self.launch()
        partial = self.job_path.with_suffix(".partial")
        # Sources (lazy weights) are not picklable and never come here (check_workers).
        torch.save(replace(job, bundle=replace(job.bundle, sources={})), partial)
        partial.rename(self.job_path)

    def hand_block(self, block_model) -> None:
        """The traced block (an onnx_ir Model) for the second process's fidelity; written whole,
        then renamed, so the other side never reads half a file."""
        import onnx_ir as ir

        partial = self.folder / (BLOCK_FILE + ".partial")
        partial.write_bytes(ir.serde.serialize_model(block_model).SerializeToString())
        partial.rename(self.folder / BLOCK_FILE)

    def result(self) -> SideResult:
        """Wait for the second process; its failure is raised here as it happened there."""
        code = self._proc.wait()
        result_path = self.folder / "result.pkl"
        if not result_path.is_file():
            log = (self.folder / "worker.log").read_text(errors="replace").strip().splitlines()
            tail = "\n".join(log[-20:]) or "(no output)"
            raise RuntimeError(f"the export's second process ({WORKER_MODULE}) exited with code {code} without a "
                               f"result; its output ended with:\n{tail}")
        with open(result_path, "rb") as f:
            outcome = pickle.load(f)
        if "stagevar_error" in outcome:
            raise StagevarError(outcome["stagevar_error"])
        if "error" in outcome:
            raise RuntimeError(f"the export's second process failed:\n{outcome['error']}")
        return outcome["result"]
