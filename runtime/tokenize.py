"""Prompt tokenization for the text encoder graph: numpy + tokenizers only (no transformers)."""

from __future__ import annotations

import warnings

import numpy as np
from tokenizers import Tokenizer

from .errors import StagevarError, StagevarWarning
from .prompts import check_encodable

PAD_TOKEN = "<pad>"
PAD_ID = 0
DEFAULT_MAX_LENGTH = 512


def load_tokenizer_json(path) -> Tokenizer:
    """Load an HF `tokenizer.json` saved beside an export."""
    try:
        return Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises a bare Exception on bad JSON
        raise StagevarError(f"The tokenizer file {path} cannot be read ({str(exc).splitlines()[0]}); export again.") from None


def encode_prompts(
    tokenizer: Tokenizer, prompts: list[str], max_length: int = DEFAULT_MAX_LENGTH
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Tokenize prompts T5-style: ids with ``</s>``, padded to the longest prompt of the batch.

    Returns ``input_ids`` int64 (B, T), ``attention_mask`` int64 (B, T) and ``lengths`` int64
    (B,), where T = max(lengths). Padding goes to the right with id 0. Only the first T
    positions matter: Infinity keeps the valid rows only, and those equal the rows of the
    official 512-padded encoding. A prompt longer than ``max_length`` ids (``</s>``
    included) is truncated keeping its trailing ``</s>``, with a warning naming its index.
    """
    if isinstance(prompts, str) or not isinstance(prompts, (list, tuple)) or not prompts:
        raise StagevarError("Prompts must be a non-empty list of strings.")
    for i, p in enumerate(prompts):
        if not isinstance(p, str):
            raise StagevarError(f"Prompt {i} is a {type(p).__name__}, not a string; pass text.")
        check_encodable(p, i)
    if max_length < 1:
        raise StagevarError(f"max_length must be at least 1, got {max_length}.")
    limit = max_length
    if tokenizer.truncation is not None:
        limit = min(limit, int(tokenizer.truncation["max_length"]))
    rows = []
    for i, enc in enumerate(tokenizer.encode_batch(list(prompts), add_special_tokens=True)):
        # Use the attention mask rather than assuming no padding, so a tokenizer loaded with
        # padding enabled still yields its valid ids only.
        keep = [(t, s) for t, s, m in zip(enc.ids, enc.special_tokens_mask, enc.attention_mask)
                if m]
        truncated = bool(enc.overflowing)
        if len(keep) > max_length:
            # Keep the trailing special tokens (the </s>) as T5 truncation does.
            n_tail = 0
            while n_tail < len(keep) and keep[len(keep) - 1 - n_tail][1]:
                n_tail += 1
            n_tail = min(n_tail, max_length)
            keep = keep[: max_length - n_tail] + keep[len(keep) - n_tail:]
            truncated = True
        if truncated:
            warnings.warn(f"Prompt {i} is longer than {limit} tokens and was truncated (its end is cut "
                          f"off; shorten it to keep all of it).", StagevarWarning, stacklevel=2)
        rows.append([t for t, _ in keep])
    lengths = np.array([len(r) for r in rows], dtype=np.int64)
    if lengths.min() == 0:
        raise StagevarError(f"Prompt {int(np.argmin(lengths))} encodes to no tokens; the "
                            f"tokenizer must append </s>.")
    pad_id = tokenizer.token_to_id(PAD_TOKEN)
    pad_id = PAD_ID if pad_id is None else pad_id
    ids = np.full((len(rows), int(lengths.max())), pad_id, dtype=np.int64)
    mask = np.zeros_like(ids)
    for b, row in enumerate(rows):
        ids[b, : len(row)] = row
        mask[b, : len(row)] = 1
    return ids, mask, lengths


def pad_to_bucket(ids: np.ndarray, mask: np.ndarray, buckets, tokenizer: Tokenizer | None = None):
    """`ids` and `mask` padded on the right to the smallest of `buckets` that holds them (masked
    pad tokens change no valid row); unchanged when `buckets` is empty or none is long enough."""
    width = ids.shape[1]
    target = min((int(b) for b in buckets or () if int(b) >= width), default=width)
    if target == width:
        return ids, mask
    pad_id = tokenizer.token_to_id(PAD_TOKEN) if tokenizer is not None else None
    pad_id = PAD_ID if pad_id is None else pad_id
    wide_ids = np.full((ids.shape[0], target), pad_id, dtype=ids.dtype)
    wide_mask = np.zeros((mask.shape[0], target), dtype=mask.dtype)
    wide_ids[:, :width], wide_mask[:, :width] = ids, mask
    return wide_ids, wide_mask
