"""T5-style tokenizers for Infinity's text encoder (infinity.md section 6).

``encode_prompts`` lives in the runtime (numpy + tokenizers only) and is re-exported here.
``load_tokenizer`` imports transformers lazily, and only to convert a SentencePiece-only folder.
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


from stagevar.runtime.tokenize import encode_prompts  # noqa: E402,F401  (re-export)
