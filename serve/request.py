"""One generation request as a server receives it: parsed, checked, and refused in one sentence.

Triton (`triton_model.py`) and Ray Serve (`ray_app.py`) both turn their wire format into
`GenerationRequest`s here, so a bad prompt, plan or aspect gets the same sentence on every
engine, and is refused before it reaches the pipeline (where it would fail a whole batch).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Mapping

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
JSON_FIELDS = ("prompt", "seed", "plan", "aspect", "cfg", "tau")


@dataclass(frozen=True)
class RequestDefaults:
    """What a request gets for the fields it leaves out (None: the export's own value)."""

    plan: str = DEFAULT_PLAN
    aspect: str = "1:1"
    cfg: float | None = None
    tau: float | None = None
    resolution: str | None = None

    def check(self) -> "RequestDefaults":
        """Refuse bad defaults when a server is configured, not at its first request."""
        parse_request("check", 0, cfg=self.cfg, tau=self.tau, defaults=self)
        return self


@dataclass(frozen=True)
class GenerationRequest:
    """One image to generate. `h_div_w` is the aspect template the aspect maps to: requests
    with the same template, plan, cfg, tau and resolution can share one batched pipeline call."""

    prompt: str
    seed: int
    plan: str
    aspect: str
    h_div_w: float
    resolution: str | None
    cfg: float | None
    tau: float | None

    @property
    def batch_key(self) -> tuple:
        return (self.plan, self.h_div_w, self.resolution, self.cfg, self.tau)


def parse_request(prompt: Any, seed: Any = 0, plan: Any = None, aspect: Any = None, cfg: Any = None,
                  tau: Any = None, defaults: RequestDefaults = RequestDefaults()) -> GenerationRequest:
    """Check one request's fields (None: the default) and return it, or raise one StagevarError."""
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


def parse_json_request(body: bytes | str, defaults: RequestDefaults = RequestDefaults()) -> GenerationRequest:
    """An HTTP body {"prompt": ..., "seed": ..., "plan", "aspect", "cfg", "tau" optional}."""
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


def parse_fields(fields: Mapping[str, Any], defaults: RequestDefaults = RequestDefaults()) -> GenerationRequest:
    """Named fields (a JSON object, or a Python caller's keyword arguments), unknown names refused."""
    unknown = sorted(set(fields) - set(JSON_FIELDS))
    if unknown:
        names = ", ".join(shown(name) for name in unknown[:5]) + (", ..." if len(unknown) > 5 else "")
        raise StagevarError(f"Unknown field(s) {names}; "
                            f"the fields are {', '.join(JSON_FIELDS)}.")
    if "prompt" not in fields:
        raise StagevarError('The request has no "prompt"; describe the image to generate.')
    return parse_request(fields["prompt"], fields.get("seed", 0), fields.get("plan"), fields.get("aspect"),
                         fields.get("cfg"), fields.get("tau"), defaults)


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
