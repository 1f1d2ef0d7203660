"""Triton Python-backend model that runs the whole stagevar pipeline in one instance.

`stagevar-serve triton` copies this file to `<repo>/<model>/1/model.py`; it is not imported
by the package (it needs the `triton_python_backend_utils` module that Triton's stub provides).

Why one model for the whole pipeline: the scale loop keeps a K/V cache of several GB on the
device that grows from scale to scale; splitting scales into separate Triton models would move
it through Triton tensors at every scale. So each instance owns one `Pipeline`.

Inputs (every one with the leading batch dimension, as max_batch_size > 0 implies):
PROMPT string (Infinity exports) or CLASS int64 (VAR exports: an ImageNet class index per row),
SEED int64, and optional PLAN string, ASPECT string ("W:H"), CFG fp32, TAU fp32 overriding the
defaults in the config's parameters. Output IMAGE uint8 [H, W, 3]. A PROMPT sent to a VAR model,
or a CLASS to an Infinity one, is refused with one sentence.
A bad request gets an INVALID_ARG error response of its own; the other requests of the batch
and the instance carry on.
"""

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from stagevar.runtime.errors import StagevarError
from stagevar.serve.batched_generation import GenerationFailure, generate_images
from stagevar.serve.request import CLASS_FOR_INFINITY, PROMPT_FOR_VAR, RequestDefaults, parse_request

OPTIONAL_INPUTS = ("PLAN", "ASPECT", "CFG", "TAU")
WARMUP_PROMPT = "warm-up"
WARMUP_CLASS = 0


class TritonPythonModel:
    """Loads the export named in the config at initialize; answers one image per batch row."""

    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        try:
            self._load(args, params)
        except StagevarError as exc:
            # The model fails to load with our sentence in Triton's log, instead of a traceback.
            raise pb_utils.TritonModelException(f"stagevar: {exc}") from None

    def _load(self, args, params):
        from stagevar.runtime.manifest import MANIFEST_NAME
        from stagevar.runtime.pipeline import Pipeline

        root = Path(params.get("artifacts", ""))
        if not root.is_absolute():
            # A relative path (e.g. artifacts copied into the repository for KServe) is
            # relative to this model's directory in the repository.
            root = Path(args["model_repository"]) / root
        expected = params.get("manifest_sha256", "")
        manifest = root / MANIFEST_NAME
        if expected and manifest.is_file():
            actual = hashlib.sha256(manifest.read_bytes()).hexdigest()
            if actual != expected:
                raise StagevarError(f"The export in {root} changed after this model repository was written "
                                    f"(manifest.json differs); run `stagevar-serve triton` again.")
        device = params.get("device", "cpu")
        if device == "cuda" and args.get("model_instance_kind") == "GPU":
            # Each instance is its own stub process: showing it only its GPU makes the pipeline's
            # "cuda" (device 0) the GPU Triton placed this instance on.
            os.environ["CUDA_VISIBLE_DEVICES"] = str(args.get("model_instance_device_id", "0"))
        self.defaults = RequestDefaults(
            plan=params.get("plan") or RequestDefaults.plan,
            aspect=params.get("aspect") or RequestDefaults.aspect,
            cfg=_float_param(params, "cfg"),
            tau=_float_param(params, "tau"),
            resolution=params.get("resolution") or None,
        )
        # Pipeline.from_dir checks the manifest (schema, file list, sizes or sha256 by `verify`).
        self.pipeline = Pipeline.from_dir(root, backend=params.get("backend", "ort"), device=device,
                                          verify=params.get("verify", "record"))
        # The export decides the family (PROMPT or CLASS requests), not the config's text.
        self.defaults = self.defaults.for_export(self.pipeline.manifest.data).check()
        self.primary = "CLASS" if self.defaults.family == "var" else "PROMPT"
        if params.get("warmup", "true").lower() == "true":
            # The first request would otherwise pay session start-up and first-run costs.
            warmup = (parse_request(None, 0, defaults=self.defaults, class_label=WARMUP_CLASS) if self.primary == "CLASS"
                      else parse_request(WARMUP_PROMPT, 0, defaults=self.defaults))
            warm = generate_images(self.pipeline, [warmup])[0]
            if isinstance(warm, Exception):
                raise StagevarError(f"The warm-up generation failed: {warm}")

    def execute(self, requests):
        try:
            return self._execute(requests)
        except Exception as exc:  # never let one batch take the instance down: answer everyone
            failure = GenerationFailure(f"The stagevar model failed on this batch ({type(exc).__name__}: "
                                        f"{(str(exc).strip().splitlines() or [''])[0][:300]}).")
            return [_error_response(failure) for _ in requests]

    def _execute(self, requests):
        # Parse every row of every request first, then run all valid rows together, so that
        # compatible requests share one batched pipeline call.
        parsed = [self._parse(request) for request in requests]
        rows = [row for item in parsed if not isinstance(item, Exception) for row in item]
        results = iter(generate_images(self.pipeline, rows))
        responses = []
        for item in parsed:
            if isinstance(item, Exception):
                responses.append(_error_response(item))
                continue
            images = [next(results) for _ in item]
            responses.append(_image_response(images))
        return responses

    def _parse(self, request):
        """The request's rows as GenerationRequests, or the StagevarError that refuses it."""
        try:
            primary = self.primary
            other = "PROMPT" if primary == "CLASS" else "CLASS"
            if pb_utils.get_input_tensor_by_name(request, other) is not None:
                raise StagevarError(PROMPT_FOR_VAR if other == "PROMPT" else CLASS_FOR_INFINITY)
            needed = f"{primary} and SEED"
            values = _column(request, primary, required=needed)
            seeds = _column(request, "SEED", required=needed)
            n = len(values)
            if n == 0:  # Triton lets a client send PROMPT [0, 1]; there is nothing to generate
                raise StagevarError(f"The request has no rows ({primary} has 0 rows); send at least one "
                                    f"{primary.lower()}.")
            extra = {name: _column(request, name, required=None) for name in OPTIONAL_INPUTS}
            for name, column in (("SEED", seeds), *extra.items()):
                if column is not None and len(column) != n:
                    raise StagevarError(f"Input {name} has {len(column)} rows but {primary} has {n}; "
                                        f"send one value per {primary.lower()}.")
            rows = []
            for i in range(n):
                options = [None if extra[name] is None else extra[name][i] for name in OPTIONAL_INPUTS]
                if primary == "CLASS":  # row i's label goes with row i's seed and options
                    rows.append(parse_request(None, seeds[i], *options, defaults=self.defaults, class_label=values[i]))
                else:
                    rows.append(parse_request(values[i], seeds[i], *options, defaults=self.defaults))
            # IMAGE is one tensor per request: its rows must share one image size. Refused here,
            # before any of them is generated.
            if len({row.h_div_w for row in rows}) > 1:
                raise StagevarError("The rows of one request asked for different aspect ratios; "
                                    "send one request per aspect ratio.")
            return rows
        except StagevarError as exc:
            return exc

    def finalize(self):
        self.pipeline = None


def _float_param(params, key):
    """A number from the config's parameters; "" means the model's own default."""
    text = params.get(key, "")
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        raise StagevarError(f"Parameter {key!r} in config.pbtxt must be a number or empty, not {text!r}.") from None


def _column(request, name, required):
    """One value per batch row of input `name` ((rows, 1) as Triton sends dims [1]), or None."""
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        if required:  # the inputs every request needs, as text ("PROMPT and SEED")
            raise StagevarError(f"Input {name} is missing; every request needs {required}.")
        return None
    array = tensor.as_numpy()
    if array.ndim == 0 or array.size != array.shape[0]:
        raise StagevarError(f"Input {name} has shape {list(array.shape)}; send one value per row (dims [1]).")
    return [value.item() if isinstance(value, np.generic) else value for value in array.reshape(-1)]


def _image_response(images):
    errors = [img for img in images if isinstance(img, Exception)]
    if errors:
        return _error_response(errors[0])
    return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("IMAGE", np.stack(images))])


def _error_response(exc):
    code = "INTERNAL" if isinstance(exc, GenerationFailure) else "INVALID_ARG"
    error_type = pb_utils.TritonError
    if hasattr(error_type, code):  # error codes exist in Triton >= 23.xx stubs
        return pb_utils.InferenceResponse(error=error_type(str(exc), getattr(error_type, code)))
    return pb_utils.InferenceResponse(error=error_type(str(exc)))
