"""Requirements for the T5-style tokenizer helpers (shared later with the runtime)."""

from __future__ import annotations

import ast
import io
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from stagevar.exporter.infinity import tokenizer as tokenizer_module
from stagevar.exporter.infinity.tokenizer import (
    build_tiny_tokenizer,
    encode_prompts,
    load_tokenizer,
)
from stagevar.runtime.errors import StagevarError

PROMPTS = ["a cat", "a photo of the cat and the dog sitting in the garden"]


def test_tiny_tokenizer_has_t5_special_ids_and_appends_eos():
    tok = build_tiny_tokenizer()
    assert (tok.token_to_id("<pad>"), tok.token_to_id("</s>"), tok.token_to_id("<unk>")) == (0, 1, 2)
    enc = tok.encode("a photo of a cat")
    assert enc.ids[-1] == 1 and 1 not in enc.ids[:-1]
    # Merges make common words shorter than their bytes.
    assert len(enc.ids) < len("a photo of a cat") + 1


def test_tiny_tokenizer_is_deterministic_and_encodes_any_text_without_unknowns():
    assert build_tiny_tokenizer().to_str() == build_tiny_tokenizer().to_str()
    tok = build_tiny_tokenizer()
    text = "Ünïcode ✓ 東京, tabs\tand\nnewlines!"
    enc = tok.encode(text)
    assert 2 not in enc.ids
    assert tok.decode(enc.ids) == text


def test_tiny_tokenizer_truncates_to_max_length_keeping_eos():
    enc = build_tiny_tokenizer(max_length=8).encode("x" * 50)
    assert len(enc.ids) == 8 and enc.ids[-1] == 1


def test_encode_prompts_pads_to_the_longest_prompt_not_to_512():
    tok = build_tiny_tokenizer()
    ids, mask, lengths = encode_prompts(tok, PROMPTS)
    assert ids.dtype == mask.dtype == lengths.dtype == np.int64
    assert ids.shape == mask.shape == (2, int(lengths.max())) and ids.shape[1] < 512
    for b, prompt in enumerate(PROMPTS):
        alone = tok.encode(prompt).ids
        assert lengths[b] == len(alone)
        assert ids[b, : lengths[b]].tolist() == alone
        assert mask[b].tolist() == [1] * lengths[b] + [0] * (ids.shape[1] - lengths[b])
        assert np.all(ids[b, lengths[b]:] == 0)


def test_encode_prompts_truncates_with_a_warning_naming_the_prompt_and_keeps_eos():
    tok = build_tiny_tokenizer()
    with pytest.warns(UserWarning, match="Prompt 1 is longer than 6 tokens"):
        ids, mask, lengths = encode_prompts(tok, PROMPTS, max_length=6)
    assert lengths.tolist() == [3, 6]
    assert ids[1, 5] == 1
    assert ids[1, :5].tolist() == tok.encode(PROMPTS[1]).ids[:5]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        encode_prompts(tok, PROMPTS[:1], max_length=6)


def test_encode_prompts_warns_when_the_tokenizer_itself_truncated():
    with pytest.warns(UserWarning, match="Prompt 0 is longer than 8 tokens"):
        _, _, lengths = encode_prompts(build_tiny_tokenizer(max_length=8), ["x" * 40])
    assert lengths.tolist() == [8]


def test_encode_prompts_ignores_padding_configured_on_the_tokenizer():
    tok = build_tiny_tokenizer()
    plain = encode_prompts(tok, PROMPTS)
    tok.enable_padding(length=64, pad_id=0, pad_token="<pad>")
    for a, b in zip(plain, encode_prompts(tok, PROMPTS)):
        assert np.array_equal(a, b)


@pytest.mark.parametrize("bad", [[], "a cat", ["a cat", None], [3]])
def test_encode_prompts_rejects_empty_lists_and_non_strings(bad):
    with pytest.raises(StagevarError):
        encode_prompts(build_tiny_tokenizer(), bad)


def test_tokenizer_module_imports_only_numpy_and_tokenizers_at_top_level():
    tree = ast.parse(Path(tokenizer_module.__file__).read_text())
    roots = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            roots.add(node.module.split(".")[0])
    allowed = {"__future__", "numpy", "tokenizers", "stagevar"} | set(sys.stdlib_module_names)
    assert roots <= allowed, roots - allowed
    assert not {"torch", "transformers"} & roots


def test_load_tokenizer_reads_tokenizer_json(tmp_path):
    tok = build_tiny_tokenizer()
    tok.save(str(tmp_path / "tokenizer.json"))
    loaded = load_tokenizer(tmp_path)
    assert loaded.encode(PROMPTS[1]).ids == tok.encode(PROMPTS[1]).ids


def test_load_tokenizer_converts_a_sentencepiece_only_folder(tmp_path):
    spm = pytest.importorskip("sentencepiece")
    pytest.importorskip("transformers")
    corpus = ["a photo of a cat sitting on a red chair", "the quick brown fox jumps over the dog",
              "an astronaut riding a horse on the moon"] * 30
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus), model_writer=model, vocab_size=60, model_type="unigram",
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, pad_piece="<pad>", eos_piece="</s>",
        unk_piece="<unk>", hard_vocab_limit=False, minloglevel=2)
    (tmp_path / "spiece.model").write_bytes(model.getvalue())
    tok = load_tokenizer(tmp_path)
    sp = spm.SentencePieceProcessor(model_proto=model.getvalue())
    for text in ["a photo of a cat", "the red horse on the moon"]:
        assert tok.encode(text).ids == sp.encode(text) + [1]


def test_load_tokenizer_fails_for_missing_folder_or_files(tmp_path):
    with pytest.raises(StagevarError, match="does not exist"):
        load_tokenizer(tmp_path / "absent")
    with pytest.raises(StagevarError, match="neither tokenizer.json nor spiece.model"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(StagevarError, match="could not be read"):
        load_tokenizer(tmp_path)
