"""Run the requests a server collected (a Triton batch, a Ray Serve batch) through one Pipeline.

Requests that agree on plan, aspect template, resolution, cfg and tau become one batched
pipeline call (class labels for a VAR export, prompts otherwise): image i of a batch equals the
same prompt (or class) and seed run alone (the pipeline
draws each image's noise from its own seed), so batching changes throughput, never pixels.
A failure is kept to the request that caused it: a group that fails is run again one request
at a time, and every request gets back either its image or its own error.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from stagevar.runtime.errors import StagevarError

from .request import GenerationRequest

log = logging.getLogger("stagevar.serve")


class GenerationFailure(Exception):
    """The pipeline failed on a valid request (a bug or a device error, not the user's input).
    Servers answer it as an internal error; the traceback goes to the server log."""


Result = np.ndarray | StagevarError | GenerationFailure


def generate_images(pipeline, requests: Sequence[GenerationRequest]) -> list[Result]:
    """One result per request, in order: a uint8 (H, W, 3) image, or the request's own error."""
    results: list[Result | None] = [None] * len(requests)
    groups: dict[tuple, list[int]] = {}
    for i, req in enumerate(requests):
        groups.setdefault(req.batch_key, []).append(i)
    for indices in groups.values():
        images = _run(pipeline, [requests[i] for i in indices])
        if isinstance(images, Exception) and len(indices) > 1:
            # Which request broke the batch is unknown: run each alone so only it fails.
            for i in indices:
                single = _run(pipeline, [requests[i]])
                results[i] = single if isinstance(single, Exception) else single[0]
            continue
        for j, i in enumerate(indices):
            results[i] = images if isinstance(images, Exception) else images[j]
    return results  # type: ignore[return-value]


def _run(pipeline, group: list[GenerationRequest]) -> np.ndarray | Exception:
    first = group[0]
    try:
        if first.class_label is not None:  # a VAR export: class labels, no tau/aspect/resolution
            out = pipeline(class_labels=[r.class_label for r in group], seed=[r.seed for r in group],
                           plan=first.plan, cfg=first.cfg, output_type="np")
        else:
            out = pipeline([r.prompt for r in group], seed=[r.seed for r in group], plan=first.plan,
                           cfg=first.cfg, tau=first.tau, aspect=first.h_div_w, resolution=first.resolution,
                           output_type="np")
        return np.ascontiguousarray(out.images, dtype=np.uint8)
    except StagevarError as exc:
        return exc
    except Exception as exc:  # a server must answer, not die; the log keeps the traceback
        log.exception("stagevar pipeline failed on %d request(s)", len(group))
        first_line = (str(exc).strip().splitlines() or [""])[0][:300]
        return GenerationFailure(f"Image generation failed inside the server ({type(exc).__name__}: "
                                 f"{first_line}); see the server log.")
