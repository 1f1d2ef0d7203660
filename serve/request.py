"""One generation request as a server receives it: parsed, checked, and refused in one sentence.

Triton (`triton_model.py`) and Ray Serve (`ray_app.py`) both turn their wire format into
`GenerationRequest`s here, so a bad prompt, plan or aspect gets the same sentence on every
engine, and is refused before it reaches the pipeline (where it would fail a whole batch).

Two model families are served: Infinity (text-to-image: a prompt) and VAR (class-conditional:
an ImageNet class index). `RequestDefaults.family` says which one the server holds; a request
made for the other family is refused in one sentence (PROMPT_FOR_VAR, CLASS_FOR_INFINITY).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Any, Mapping

import numpy as np

from stagevar.runtime.errors import StagevarError, shown
from stagevar.runtime.guidance import check_cfg, check_tau
from stagevar.runtime.schedules import get_schedule
from stagevar.runtime.stage_plan import DEFAULT_PLAN, PLAN_PRESETS

# numpy's generators take any non-negative int; Triton's SEED is int64, so keep that range
# everywhere and a seed means the same image on every engine.
MAX_SEED = 2**63 - 1
# The tokenizer truncates long prompts anyway; this only bounds what one request can make
# the server hold and tokenize.
MAX_PROMPT_CHARS = 4096
# Plans and aspects are a few characters ("stagevar-full", "16:9"); longer text is refused
# before it is parsed or echoed.
MAX_OPTION_CHARS = 32
JSON_FIELDS = ("prompt", "class", "seed", "plan", "aspect", "cfg", "tau")
FAMILIES = ("infinity", "var")
# One HTTP request may ask for several classes (one image each); bounded like the prompt, so a
# request cannot make a replica queue thousands of images.
MAX_CLASSES_PER_REQUEST = 16
PROMPT_FOR_VAR = ("This server runs a class-conditional VAR model: send a class (an ImageNet class index such as "
                  "207), not a prompt.")
CLASS_FOR_INFINITY = "This server runs a text-to-image Infinity model: send a prompt, not a class."


@dataclass(frozen=True)
class RequestDefaults:
    """What a request gets for the fields it leaves out (None: the export's own value).

    `family` and `num_classes` describe the served export (`for_export` fills them in from its
    manifest); they decide whether a request carries a prompt or a class label."""

    plan: str = DEFAULT_PLAN
    aspect: str = "1:1"
    cfg: float | None = None
    tau: float | None = None
    resolution: str | None = None
    family: str = "infinity"
    num_classes: int = 1000

    def check(self) -> "RequestDefaults":
        """Refuse bad defaults when a server is configured, not at its first request."""
        if self.family not in FAMILIES:
            raise StagevarError(f"Model family {shown(self.family)} is not served; stagevar-serve serves "
                                f"{' and '.join(FAMILIES)} exports.")
        if self.family == "var":
            parse_request(None, 0, cfg=self.cfg, tau=self.tau, defaults=self, class_label=0)
        else:
            parse_request("check", 0, cfg=self.cfg, tau=self.tau, defaults=self)
        return self

    def for_export(self, manifest_data: dict) -> "RequestDefaults":
        """These defaults for the export whose manifest.json content is `manifest_data`."""
        family = manifest_data.get("family", "infinity")
        if family != "var":
            return replace(self, family=family)
        try:
            num_classes = int(manifest_data["model"]["config"]["num_classes"])
        except (KeyError, TypeError, ValueError):
            raise StagevarError("manifest.json of this VAR export does not give num_classes; export again.") from None
        return replace(self, family=family, num_classes=num_classes)


@dataclass(frozen=True)
class GenerationRequest:
    """One image to generate. `h_div_w` is the aspect template the aspect maps to: requests
    with the same template, plan, cfg, tau and resolution can share one batched pipeline call.
    Infinity requests carry a `prompt`, VAR requests a `class_label` (the other is None)."""

    prompt: str | None
    seed: int
    plan: str
    aspect: str
    h_div_w: float
    resolution: str | None
    cfg: float | None
    tau: float | None
    class_label: int | None = None

    @property
    def batch_key(self) -> tuple:
        return (self.plan, self.h_div_w, self.resolution, self.cfg, self.tau)


def parse_request(prompt: Any, seed: Any = 0, plan: Any = None, aspect: Any = None, cfg: Any = None,
                  tau: Any = None, defaults: RequestDefaults = RequestDefaults(),
                  class_label: Any = None) -> GenerationRequest:
    """Check one request's fields (None: the default) and return it, or raise one StagevarError.

    An Infinity server takes a `prompt`, a VAR server a `class_label`; the other is refused."""
    if defaults.family == "var":
        return _parse_var(prompt, class_label, seed, plan, aspect, cfg, tau, defaults)
    if class_label is not None:
        raise StagevarError(CLASS_FOR_INFINITY)
    prompt = _text("prompt", prompt)
    if not prompt.strip():
        raise StagevarError("The prompt is empty; describe the image to generate.")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise StagevarError(f"The prompt has {len(prompt)} characters; keep it under {MAX_PROMPT_CHARS}.")
    seed = _seed(seed)
    plan = defaults.plan if plan is None else _option("plan", plan)
    if plan not in PLAN_PRESETS:
        raise StagevarError(f"Plan {shown(plan)} is not known; use one of {', '.join(PLAN_PRESETS)}.")
    aspect = defaults.aspect if aspect is None else _option("aspect", aspect)
    resolution = defaults.resolution
    # get_schedule refuses malformed aspects, aspects far from every template and unknown
    # resolutions, each in one sentence; "1M" stands in for "the export's" here.
    schedule = get_schedule(aspect, resolution or "1M")
    # The runtime's ranges (runtime/guidance.py): a request outside them would get NaN pixels.
    cfg = defaults.cfg if cfg is None else check_cfg(cfg)
    tau = defaults.tau if tau is None else check_tau(tau)
    return GenerationRequest(prompt, seed, plan, aspect, schedule.h_div_w, resolution, cfg, tau)


def _parse_var(prompt, class_label, seed, plan, aspect, cfg, tau, defaults: RequestDefaults) -> GenerationRequest:
    """A VAR request: one class label, square 256/512 px images, no tau and no resolution."""
    if prompt is not None:
        raise StagevarError(PROMPT_FOR_VAR)
    if class_label is None:
        raise StagevarError("The request has no class; send an ImageNet class index such as 207.")
    if isinstance(class_label, bool) or not isinstance(class_label, (int, np.integer)):
        # A float (207.0 from a client that sent CLASS as FP32, or 207.9) is refused, not truncated.
        raise StagevarError(f"The class must be an integer class index, not {type(class_label).__name__} "
                            f"{shown(class_label)}.")
    if not 0 <= int(class_label) < defaults.num_classes:
        raise StagevarError(f"Class {shown(class_label)} is not a class of this model; give 0 to "
                            f"{defaults.num_classes - 1}.")
    seed = _seed(seed)
    plan = defaults.plan if plan is None else _option("plan", plan)
    if plan not in PLAN_PRESETS:
        raise StagevarError(f"Plan {shown(plan)} is not known; use one of {', '.join(PLAN_PRESETS)}.")
    aspect = defaults.aspect if aspect is None else _option("aspect", aspect)
    if aspect != "1:1":
        raise StagevarError(f"Aspect {shown(aspect)} does not apply: VAR models make square images; drop it.")
    if tau is not None or defaults.tau is not None:
        raise StagevarError("tau does not apply to VAR models (they sample with top-k and top-p); drop it.")
    if defaults.resolution is not None:
        raise StagevarError("A resolution does not apply to VAR models (their image size is fixed); drop it.")
    cfg = defaults.cfg if cfg is None else check_cfg(cfg)
    return GenerationRequest(None, seed, plan, "1:1", 1.0, None, cfg, None, int(class_label))


def parse_json_request(body: bytes | str, defaults: RequestDefaults = RequestDefaults()) -> list[GenerationRequest]:
    """An HTTP body {"prompt": ..., "seed": ..., "plan", "aspect", "cfg", "tau" optional} (Infinity)
    or {"class": 207 or [207, 88], "seed": ..., "plan", "cfg" optional} (VAR): its image requests."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise StagevarError('The request body is not JSON; send {"prompt": "...", "seed": 0}.') from None
    except RecursionError:  # json recurses per nesting level: [[[[...]]]] exhausts the stack
        raise StagevarError('The request body nests too deeply; send a flat JSON object such as '
                            '{"prompt": "...", "seed": 0}.') from None
    if not isinstance(data, dict):
        raise StagevarError('The request body must be a JSON object such as {"prompt": "...", "seed": 0}.')
    return parse_fields(data, defaults)


def parse_fields(fields: Mapping[str, Any], defaults: RequestDefaults = RequestDefaults()) -> list[GenerationRequest]:
    """Named fields (a JSON object, or a Python caller's keyword arguments), unknown names refused.

    One request per image: a prompt, or a class; a list of classes gives one image per class,
    image i with seed + i (as `Pipeline(class_labels=[...], seed=s)`)."""
    unknown = sorted(set(fields) - set(JSON_FIELDS))
    if unknown:
        names = ", ".join(shown(name) for name in unknown[:5]) + (", ..." if len(unknown) > 5 else "")
        raise StagevarError(f"Unknown field(s) {names}; "
                            f"the fields are {', '.join(JSON_FIELDS)}.")
    rest = (fields.get("plan"), fields.get("aspect"), fields.get("cfg"), fields.get("tau"), defaults)
    if defaults.family != "var":
        if "class" in fields:
            raise StagevarError(CLASS_FOR_INFINITY)
        if "prompt" not in fields:
            raise StagevarError('The request has no "prompt"; describe the image to generate.')
        return [parse_request(fields["prompt"], fields.get("seed", 0), *rest)]
    if "prompt" in fields:
        raise StagevarError(PROMPT_FOR_VAR)
    if "class" not in fields:
        raise StagevarError('The request has no "class"; send an ImageNet class index such as 207.')
    labels = fields["class"]
    if isinstance(labels, list):
        if not 0 < len(labels) <= MAX_CLASSES_PER_REQUEST:
            raise StagevarError(f"The class list has {len(labels)} entries; send 1 to {MAX_CLASSES_PER_REQUEST} "
                                f"class indices.")
        first = _seed(fields.get("seed", 0))
        if first + len(labels) - 1 > MAX_SEED:
            raise StagevarError(f"Seed {first} leaves no room for {len(labels)} images; give a smaller seed.")
        return [parse_request(None, first + i, *rest, class_label=c) for i, c in enumerate(labels)]
    return [parse_request(None, fields.get("seed", 0), *rest, class_label=labels)]


def _text(name: str, value: Any) -> str:
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise StagevarError(f"The {name} is not valid UTF-8 text; send it UTF-8 encoded.") from None
    if not isinstance(value, str):
        raise StagevarError(f"The {name} must be text, not {type(value).__name__}.")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # JSON "\ud800": a lone surrogate the tokenizer cannot take
        raise StagevarError(f"The {name} is not valid Unicode text (it holds a lone surrogate); "
                            f"send UTF-8 text.") from None
    return value


def _option(name: str, value: Any) -> str:
    text = _text(name, value).strip()
    if len(text) > MAX_OPTION_CHARS:
        raise StagevarError(f"The {name} {shown(text)} is too long to be valid; see the "
                            f"documentation for the accepted values.")
    return text


def _seed(value: Any) -> int:
    if isinstance(value, bool) or not _is_integer(value) or not 0 <= int(value) <= MAX_SEED:
        raise StagevarError(f"Seed {shown(value)} is not valid; give an integer from 0 to 2**63-1.")
    return int(value)


def _is_integer(value: Any) -> bool:
    try:
        return int(value) == value and not isinstance(value, (str, bytes))
    except (TypeError, ValueError, OverflowError):
        return False
