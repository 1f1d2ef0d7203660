"""Validation of user prompts, shared by the runtime and the exporter."""

from __future__ import annotations

from collections.abc import Sequence

from .errors import StagevarError


def normalize_prompts(prompts: str | Sequence[str]) -> list[str]:
    """Return a non-empty list of non-blank prompt strings, or raise one clear StagevarError."""
    if isinstance(prompts, str):
        prompts = [prompts]
    if not isinstance(prompts, Sequence):
        raise StagevarError(f"Prompts must be a string or a list of strings, not {type(prompts).__name__}.")
    if len(prompts) == 0:
        raise StagevarError("The prompt list is empty; pass at least one prompt.")
    out = []
    for i, p in enumerate(prompts):
        if not isinstance(p, str):
            raise StagevarError(f"Prompt {i} is a {type(p).__name__}, not a string.")
        check_encodable(p, i)
        if not p.strip():
            raise StagevarError(f"Prompt {i} is empty; describe the image to generate.")
        out.append(p)
    return out


def check_encodable(prompt: str, index: int) -> None:
    """Refuse text that is not valid Unicode (lone surrogates: bytes a shell passed that are not
    UTF-8, which Python keeps as \\udcXX), which the tokenizer cannot take."""
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = prompt[exc.start]
        byte = f" (byte 0x{ord(bad) - 0xDC00:02x})" if 0xDC80 <= ord(bad) <= 0xDCFF else ""
        raise StagevarError(f"Prompt {index} is not valid UTF-8 text{byte} at character {exc.start}; "
                            f"pass the prompt in UTF-8.") from None
