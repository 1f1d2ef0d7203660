"""T5-style tokenization for Infinity's text encoder (infinity.md section 6).

``encode_prompts`` uses only numpy and ``tokenizers`` so that the runtime can reuse the exact
same logic without torch or transformers. ``load_tokenizer`` imports transformers lazily, and
only to convert a SentencePiece-only folder.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

from stagevar.runtime.errors import StagevarError

PAD_TOKEN, EOS_TOKEN, UNK_TOKEN = "<pad>", "</s>", "<unk>"
PAD_ID, EOS_ID, UNK_ID = 0, 1, 2
DEFAULT_MAX_LENGTH = 512

# Merges of the tiny tokenizer, in priority order, written in the byte-level alphabet
# ("Ġ" is the space byte). Common English pairs, so prompts tokenize to fewer ids than bytes.
_TINY_MERGES = (
    ("Ġ", "t"), ("h", "e"), ("i", "n"), ("a", "n"), ("e", "r"), ("o", "n"), ("r", "e"),
    ("Ġ", "a"), ("e", "n"), ("a", "t"), ("o", "r"), ("e", "s"), ("Ġt", "he"), ("in", "g"),
    ("Ġ", "s"), ("Ġ", "c"), ("Ġ", "o"), ("Ġ", "w"), ("e", "d"), ("Ġ", "f"), ("Ġ", "p"),
    ("Ġ", "b"), ("Ġ", "m"), ("a", "r"), ("a", "l"), ("i", "t"), ("Ġ", "an"), ("Ġan", "d"),
    ("Ġo", "f"), ("Ġ", "i"), ("Ġi", "n"), ("o", "u"), ("l", "e"), ("Ġ", "h"), ("Ġ", "d"),
    ("s", "t"), ("Ġ", "r"), ("Ġ", "l"), ("o", "w"), ("Ġp", "h"), ("o", "t"), ("Ġph", "ot"),
    ("Ġphot", "o"), ("Ġc", "at"), ("Ġd", "o"), ("Ġdo", "g"),
)


def _bytes_to_unicode() -> dict[int, str]:
    # The byte-level BPE alphabet: printable bytes map to themselves, the others to code points
    # from 256 on, so every byte is one visible character (what pre_tokenizers.ByteLevel emits).
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
            *range(ord("®"), ord("ÿ") + 1)]
    mapping, extra = {}, 0
    for b in range(256):
        if b in keep:
            mapping[b] = chr(b)
        else:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


def build_tiny_tokenizer(max_length: int = DEFAULT_MAX_LENGTH) -> Tokenizer:
    """A small deterministic byte-level BPE tokenizer with T5 special ids, built without files.

    Ids: ``<pad>``=0, ``</s>``=1, ``<unk>``=2, then the 256 bytes in byte order, then one id per
    merge. Any text is encodable (no unknown tokens). A post-processor appends ``</s>`` and
    truncation keeps at most ``max_length`` ids, ``</s>`` included.
    """
    vocab = {PAD_TOKEN: PAD_ID, EOS_TOKEN: EOS_ID, UNK_TOKEN: UNK_ID}
    for ch in _bytes_to_unicode().values():
        vocab[ch] = len(vocab)
    for a, b in _TINY_MERGES:
        assert a in vocab and b in vocab and a + b not in vocab, (a, b)
        vocab[a + b] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=list(_TINY_MERGES), unk_token=UNK_TOKEN))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([PAD_TOKEN, EOS_TOKEN, UNK_TOKEN])
    tok.post_processor = processors.TemplateProcessing(
        single=f"$A {EOS_TOKEN}", pair=f"$A {EOS_TOKEN} $B {EOS_TOKEN}",
        special_tokens=[(EOS_TOKEN, EOS_ID)])
    tok.enable_truncation(max_length)
    return tok


def load_tokenizer(folder: str | os.PathLike) -> Tokenizer:
    """Load a tokenizer from a local folder: ``tokenizer.json``, else a T5 ``spiece.model``.

    The SentencePiece-only layout (e.g. a google/flan-t5-xl folder without tokenizer.json) is
    converted through transformers' T5 tokenizer (``legacy=True``, as Infinity loads it).
    Raises ``StagevarError`` when the folder or both files are missing or unreadable.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise StagevarError(f"Tokenizer folder {folder} does not exist; pass the text encoder "
                            f"folder that holds tokenizer.json or spiece.model.")
    tok_json, spiece = folder / "tokenizer.json", folder / "spiece.model"
    if tok_json.is_file():
        try:
            return Tokenizer.from_file(str(tok_json))
        except Exception as exc:  # tokenizers raises a plain Exception for bad JSON
            raise StagevarError(f"Tokenizer file {tok_json} could not be read ({exc}); "
                                f"re-download or re-export it.") from exc
    if spiece.is_file():
        return _convert_spiece(folder, spiece)
    raise StagevarError(f"Tokenizer folder {folder} has neither tokenizer.json nor spiece.model; "
                        f"pass the folder of the T5 text encoder.")


def _convert_spiece(folder: Path, spiece: Path) -> Tokenizer:
    # Lazy import: the runtime reuses this module and must not need transformers. Note that in
    # transformers 5 `T5TokenizerFast(vocab_file=...)` silently ignores the file (it builds an
    # empty Unigram model); `from_pretrained` on the folder performs the real conversion.
    try:
        from transformers import T5TokenizerFast

        hf = T5TokenizerFast.from_pretrained(str(folder), legacy=True, local_files_only=True)
        tok = hf.backend_tokenizer
    except Exception as exc:
        raise StagevarError(f"SentencePiece model {spiece} could not be converted ({exc}); "
                            f"provide a tokenizer.json instead.") from exc
    probe = tok.encode("a", add_special_tokens=False).ids
    if not probe or all(i == UNK_ID for i in probe):
        raise StagevarError(f"SentencePiece model {spiece} converted to a tokenizer that knows "
                            f"no words; provide a tokenizer.json instead.")
    return tok


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
            warnings.warn(f"Prompt {i} is longer than {limit} tokens and was truncated.",
                          stacklevel=2)
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
