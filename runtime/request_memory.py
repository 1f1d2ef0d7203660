"""Peak memory of a request, the memory available to it, and the micro-batches that fit.

A request's working memory grows linearly with its number of images: every image brings its own
cond/null rows of the K/V cache and of every activation. So the estimate is bytes per image, from
the plan (which scales run, with or without CFG rows), the schedule (tokens per scale, image size)
and the model (depth, width, heads, VAE channels). The weights are not part of it: they are
memory-mapped once per process whatever the batch.

The estimate is deliberately conservative (four score-sized attention buffers at full size, the
largest VAE level's activations three times over, x1.25 for allocator slack): splitting a request
in two costs a little speed, running out of memory costs the request. Micro-batches give the same
images as one batch: image i's noise depends only on its seed, and batching never changes pixels.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from .errors import StagevarError
from .schedules import ScaleSchedule
from .stage_plan import Mode, StagePlan

_F32 = 4
_SLACK = 1.25  # allocator arenas, temporaries the graphs keep between nodes
# Per-image memory ONNX Runtime CPU uses beyond the tensors modelled here (many small per-node
# buffers): infinity-tiny at 0.25M with plan stagevar measured 41 MB per image where the model
# above gives 19 MB (docs/benchmarks.md); negligible next to a 2B model's gigabytes.
_PER_IMAGE_OVERHEAD = 32 << 20
# Memory the process keeps for itself (interpreter, sessions' own buffers) beyond requests.
_RESERVE_BYTES = 512 << 20
GIB = float(1 << 30)


@dataclass(frozen=True)
class RequestMemory:
    """Estimated peak bytes of one image of a request, and of the phases that make it."""

    scales_bytes: int  # K/V cache + text rows + the largest scale's activations, per image
    vae_bytes: int  # codes + the VAE decoder's largest activations + the uint8 image, per image

    @property
    def per_image(self) -> int:
        return int((max(self.scales_bytes, self.vae_bytes) + _PER_IMAGE_OVERHEAD) * _SLACK)

    def peak(self, images: int) -> int:
        return images * self.per_image


def estimate(model: dict, schedule: ScaleSchedule, plan: StagePlan, kv_bytes: int = _F32,
             max_text_tokens: int = 512) -> RequestMemory:
    """Per-image peak of running `plan` on `schedule` with the manifest's `model` entry."""
    cfg = model["config"]
    depth, width, heads = int(cfg["depth"]), int(cfg["embed_dim"]), int(cfg["num_heads"])
    head_dim, chunks = int(model["head_dim"]), int(cfg["block_chunks"])
    bits = int(model["bits_per_token"])
    counts, modes = schedule.token_counts, plan.modes
    rows_per_image = [2 if m is Mode.CFG else 1 for m in modes]
    first_rows = 2 if modes and modes[0] is Mode.CFG else 1  # the cache is allocated at the first scale
    capacity = sum(c for c, m in zip(counts, modes) if m in (Mode.CFG, Mode.UNCOND))
    kv = capacity * depth * 2 * first_rows * heads * head_dim * kv_bytes
    text = depth * 2 * 2 * heads * max_text_tokens * head_dim * _F32 + 2 * max_text_tokens * width * _F32
    noise = schedule.total_tokens * bits * _F32 * 2  # uniforms, plus Gumbel/projections (smaller)
    largest = 0
    prefix = 0
    for count, mode, rows in zip(counts, modes, rows_per_image):
        if mode is Mode.SKIP:
            continue
        # ONNX Runtime CPU keeps about four score-sized buffers alive per attention (Q K^T, scaled
        # and masked, exp/softmax, its output): infinity-tiny at 0.25M exact measured 170 MB per
        # image with 39 MB per score copy and 20 MB of K/V (docs/benchmarks.md, issue 14).
        scores = rows * heads * count * (prefix + count) * _F32 * 4
        hidden = rows * count * width * _F32 * 10  # residual, q/k/v, 4x MLP, norms
        chunk_outputs = 2 * chunks * count * width * _F32  # this scale's and the previous one's
        logits = count * 2 * bits * _F32
        largest = max(largest, scores + hidden + chunk_outputs + logits)
        if mode is not Mode.LOWRANK:
            prefix += count
    fh, fw = schedule.scales[-1]
    pixels = fh * fw * int(model["pixels_per_token"]) ** 2
    vae = model.get("vae", {})
    level0 = int(vae.get("base_channels", 128)) * int((vae.get("channel_mult") or (1,))[0])
    code_map = int(vae.get("code_dim", bits)) * fh * fw * _F32 * 2
    vae_bytes = code_map + 3 * level0 * pixels * _F32 + 3 * pixels
    return RequestMemory(scales_bytes=kv + text + noise + largest + code_map, vae_bytes=vae_bytes + noise)


def available_memory(device: str = "cpu") -> int | None:
    """Bytes this process may still use on `device`, or None when it cannot be known.

    CPU: the smaller of the kernel's MemAvailable and the cgroup (container) limit's headroom,
    less a small reserve. CUDA: not measured here (None), so only `max_batch` limits batches.
    """
    if device != "cpu":
        return None
    found = [v for v in (_meminfo_available(), _cgroup_headroom()) if v is not None]
    if not found:
        return None
    return max(0, min(found) - _RESERVE_BYTES)


def micro_batch_size(per_image: int, images: int, budget: int | None, max_batch: int | None,
                     what: str) -> int:
    """Images per micro-batch: as many as fit `budget`, at most `max_batch`; refuse if one can't fit.

    `what` describes the request for the refusal sentence (plan, size, model).
    """
    if max_batch is not None and (isinstance(max_batch, bool) or int(max_batch) != max_batch or max_batch < 1):
        raise StagevarError(f"max_batch must be a positive integer, not {max_batch!r}.")
    size = images if max_batch is None else min(images, int(max_batch))
    if budget is None:
        return size
    fit = budget // max(per_image, 1)
    if fit < 1:
        raise StagevarError(f"One image of this request ({what}) needs about {per_image / GIB:.1f} GiB of memory "
                            f"but only {budget / GIB:.1f} GiB is available; free memory, or use a lower "
                            f"--resolution or the stagevar plan.")
    return max(1, min(size, fit))


def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _cgroup_headroom() -> int | None:
    # cgroup v2 only: "max" means no limit.
    try:
        with open("/sys/fs/cgroup/memory.max", encoding="ascii") as f:
            limit = f.read().strip()
        if limit == "max":
            return None
        with open("/sys/fs/cgroup/memory.current", encoding="ascii") as f:
            current = int(f.read().strip())
        return max(0, int(limit) - current)
    except (OSError, ValueError):
        return None
