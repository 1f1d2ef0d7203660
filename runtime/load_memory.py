"""What opening an export costs in memory, estimated before anything is allocated.

The estimate reads the manifest's graph files (their initializer tables only, never a weight)
and follows how `OrtBackend` opens them:

- CPU: every distinct external tensor is resident once for all sessions (`shared_weights.py`).
  Non-fp16 tensors are memory-mapped: file-backed pages, loaded on first use and reclaimable,
  so they cost RAM but can never trigger the out-of-memory killer. fp16 tensors get one fp32
  copy (the CPU provider computes them in fp32): anonymous memory, twice their bytes on disk.
- CUDA: each session uploads its own initializers to the GPU (ONNX Runtime shares a user
  buffer between sessions only when that buffer already lives on the device, which the Python
  API cannot hand it), so device memory is the sum over sessions, fp16 staying fp16. On the
  host, initializers are read tensor by tensor from the mapped files and copied to the device:
  anonymous host memory stays at the runtime's own overhead plus about one tensor.

`check_fits` refuses, in one sentence, a load whose anonymous memory exceeds what the machine
has available (MemAvailable, or the cgroup limit when lower): never an out-of-memory kill.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import StagevarError
from .graph_weights import GraphWeights, graph_weights, load_graph_proto
from .weight_folding import foldable_nodes, folded_bytes, fuse_transposed_matmuls

GB = 1e9
# Calibrated on ORT 1.32 CPU (docs/benchmarks.md, "Load memory"): the Python interpreter,
# numpy, onnxruntime and the tokenizer, before any session.
RUNTIME_OVERHEAD_BYTES = 300 << 20
# Per session: graph structures, kernels, the execution plan (measured 1-40 MB per graph
# on infinity-mid and Infinity-2B).
SESSION_OVERHEAD_BYTES = 64 << 20
# CUDA: context, cuBLAS/cuDNN handles and workspaces on the device, per process (typical).
CUDA_CONTEXT_BYTES = 1 << 30


@dataclass(frozen=True)
class LoadEstimate:
    """Bytes an export needs when opened on `device` (see the module docstring).

    `mapped_bytes`: distinct weights served from memory maps (file-backed, reclaimable).
    `converted_bytes`: fp32 copies of fp16 weights (CPU only, anonymous, made once).
    `inline_bytes`: constants inside the graph files, per session (anonymous).
    `anonymous_bytes`: what must fit in RAM for the load to succeed (incl. overheads).
    `host_peak_bytes`: resident host memory once every weight has been touched.
    `device_bytes`: GPU memory for the weights (CUDA only; activations come on top).
    """

    device: str
    precision: str
    sessions: int
    mapped_bytes: int
    converted_bytes: int
    inline_bytes: int
    anonymous_bytes: int
    host_peak_bytes: int
    device_bytes: int = 0

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def read_graph_weights(manifest, graphs, upcast_fp16: bool = True) -> list[GraphWeights]:
    """The initializer tables of `graphs` of an export (no weight is read), with what stays
    resident after the CPU loader's rewrite (transposed MatMuls fused, constants folded)."""
    tables = []
    for name in graphs:
        path = manifest.graph_path(name)
        model = load_graph_proto(path, name)
        table = graph_weights(model, name, path)
        external = {t.name for t in table.external}
        fuse_transposed_matmuls(model, external)
        folded = folded_bytes(model, external, upcast_fp16)
        folding = {id(n) for n in foldable_nodes(model, external)}
        used = {o.name for o in model.graph.output}
        for node in model.graph.node:
            if id(node) not in folding:
                used.update(node.input)
        tables.append(dataclasses.replace(table, resident=frozenset(external & used),
                                          folded_bytes=sum(folded.values())))
    return tables


def estimate_load(manifest, device: str, graphs, tables: list[GraphWeights] | None = None) -> LoadEstimate:
    """Estimate the memory of opening `graphs` of `manifest` on ONNX Runtime `device`."""
    tables = read_graph_weights(manifest, graphs) if tables is None else tables
    distinct: dict[tuple, np.dtype] = {}
    per_session = 0
    inline = 0
    folded = 0
    for table in tables:
        for t in table.external:
            if table.resident is None or t.name in table.resident:
                distinct[((table.path.parent / t.location).resolve(), t.offset, t.length)] = t.dtype
        per_session += sum(t.length for t in table.external) + table.inline_bytes
        inline += table.inline_bytes + (table.inline_fp16_bytes if device == "cpu" else 0)
        # Folded constants (attention bias concatenations): small; counted per graph, an upper
        # bound where graphs share them.
        folded += table.folded_bytes
        if device == "cpu" and table.reads_weights_at_load:
            # onnxruntime loads Conv graphs itself: fp32 weights plus its blocked (NCHWc) copies,
            # measured 5.7x the fp16 bytes of Infinity's VAE decoder.
            folded += 3 * sum(t.length * (2 if t.dtype == np.float16 else 1) for t in table.external)
    fp16 = sum(key[2] for key, dtype in distinct.items() if dtype == np.float16)
    other = sum(key[2] for key, dtype in distinct.items() if dtype != np.float16)
    overhead = RUNTIME_OVERHEAD_BYTES + SESSION_OVERHEAD_BYTES * len(tables)
    precision = str(manifest.data.get("precision", "?"))
    if device == "cpu":
        converted, mapped = 2 * fp16, other
        anonymous = converted + inline + folded + overhead
        return LoadEstimate(device, precision, len(tables), mapped, converted, inline, anonymous,
                            anonymous + mapped)
    largest = max((t.length for table in tables for t in table.external), default=0)
    anonymous = overhead + inline + largest
    return LoadEstimate(device, precision, len(tables), fp16 + other, 0, inline, anonymous,
                        anonymous + fp16 + other, device_bytes=per_session + CUDA_CONTEXT_BYTES)


def available_memory() -> int | None:
    """Bytes this process can still allocate: MemAvailable, or less under a cgroup memory limit.

    None where neither can be read (not Linux): the check is then skipped.
    """
    values = []
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    values.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    limit = _cgroup_headroom()
    if limit is not None:
        values.append(limit)
    return min(values) if values else None


def _cgroup_headroom() -> int | None:
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        if parts[0] == "0" and parts[1] == "":  # cgroup v2
            base = Path("/sys/fs/cgroup") / parts[2].lstrip("/")
            pair = (base / "memory.max", base / "memory.current")
        elif "memory" in parts[1].split(","):  # cgroup v1
            base = Path("/sys/fs/cgroup/memory") / parts[2].lstrip("/")
            pair = (base / "memory.limit_in_bytes", base / "memory.usage_in_bytes")
        else:
            continue
        try:
            limit, usage = (p.read_text().strip() for p in pair)
        except OSError:
            continue
        if limit != "max" and int(limit) < 1 << 60:
            return max(int(limit) - int(usage), 0)
    return None


def check_fits(estimate: LoadEstimate, root, available: int | None = None) -> None:
    """Refuse, in one sentence, a load whose anonymous memory does not fit (before any allocation)."""
    available = available_memory() if available is None else available
    if available is None or estimate.anonymous_bytes <= available:
        return
    need, have = estimate.anonymous_bytes / GB, available / GB
    if estimate.device == "cpu" and estimate.converted_bytes:
        raise StagevarError(
            f"This fp16 export ({root}) needs about {need:.1f} GB of memory on the CPU provider "
            f"(one fp32 copy of its fp16 weights), this machine has {have:.1f} GB available; export "
            f"with --precision fp32 for CPU (its weights are memory-mapped), or use --device cuda.")
    raise StagevarError(f"Opening export {root} on {estimate.device} needs about {need:.1f} GB of host memory, "
                        f"this machine has {have:.1f} GB available; free memory or use a larger machine.")


def process_memory() -> dict:
    """This process's memory now, in MiB: rss, peak_rss (high-water mark), anon and file parts.

    Empty where /proc is missing (not Linux).
    """
    fields = {"VmRSS": "rss_mb", "VmHWM": "peak_rss_mb", "RssAnon": "anon_mb", "RssFile": "file_mb"}
    out = {}
    try:
        with open(f"/proc/{os.getpid()}/status") as f:
            for line in f:
                key = line.split(":", 1)[0]
                if key in fields:
                    out[fields[key]] = int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        return {}
    return out
