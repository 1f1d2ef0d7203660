"""Infinity's text encoder: the T5 encoder (google/flan-t5-xl), fp32 (infinity.md section 6).

A thin wrapper around ``transformers.T5EncoderModel`` that returns float32
``last_hidden_state``. Infinity keeps only each prompt's valid rows, so prompts are padded to
the longest in the batch (not to 512): with the attention mask the valid rows are the same.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer
from torch import nn

from stagevar.exporter.infinity.tokenizer import build_tiny_tokenizer, load_tokenizer
from stagevar.runtime.errors import StagevarError

# Checkpoint parts of a full T5 (encoder-decoder) folder that the encoder does not use.
_UNUSED_PREFIXES = ("decoder.", "lm_head.")


@dataclass(frozen=True)
class TextEncoderConfig:
    """Shape of a T5 encoder (the fields of HF ``T5Config`` that matter for the encoder)."""

    d_model: int
    num_layers: int
    num_heads: int
    d_kv: int
    d_ff: int
    vocab_size: int
    feed_forward_proj: str = "gated-gelu"
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    layer_norm_epsilon: float = 1e-6
    max_length: int = 512

    def to_hf(self):
        """The equivalent ``transformers.T5Config`` (encoder only, no dropout, eager attention)."""
        from transformers import T5Config

        cfg = T5Config(
            vocab_size=self.vocab_size, d_model=self.d_model, d_kv=self.d_kv, d_ff=self.d_ff,
            num_layers=self.num_layers, num_heads=self.num_heads,
            relative_attention_num_buckets=self.relative_attention_num_buckets,
            relative_attention_max_distance=self.relative_attention_max_distance,
            feed_forward_proj=self.feed_forward_proj, layer_norm_epsilon=self.layer_norm_epsilon,
            dropout_rate=0.0, tie_word_embeddings=False, use_cache=False, is_encoder_decoder=False,
            pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
        )
        return cfg

    @classmethod
    def from_hf(cls, cfg, max_length: int = 512) -> "TextEncoderConfig":
        """Read the encoder-relevant fields of a ``transformers.T5Config``."""
        return cls(
            d_model=cfg.d_model, num_layers=cfg.num_layers, num_heads=cfg.num_heads,
            d_kv=cfg.d_kv, d_ff=cfg.d_ff, vocab_size=cfg.vocab_size,
            feed_forward_proj=cfg.feed_forward_proj,
            relative_attention_num_buckets=cfg.relative_attention_num_buckets,
            relative_attention_max_distance=cfg.relative_attention_max_distance,
            layer_norm_epsilon=cfg.layer_norm_epsilon, max_length=max_length,
        )


def flan_t5_xl_config() -> TextEncoderConfig:
    """google/flan-t5-xl encoder, as Infinity-2B and -8B use it (Ct5 = 2048)."""
    return TextEncoderConfig(d_model=2048, num_layers=24, num_heads=32, d_kv=64, d_ff=5120,
                             vocab_size=32128)


def tiny_t5_config() -> TextEncoderConfig:
    """A tiny T5 encoder for tests, sized for :func:`build_tiny_tokenizer`.

    d_model is 128 because Infinity's text pooling has d_model // 128 heads (infinity.md 11).
    """
    return TextEncoderConfig(d_model=128, num_layers=2, num_heads=4, d_kv=32, d_ff=256,
                             vocab_size=build_tiny_tokenizer().get_vocab_size())


class T5TextEncoder(nn.Module):
    """(input_ids int64 (B, T), attention_mask int64 (B, T)) -> float32 (B, T, d_model)."""

    def __init__(self, t5, config: TextEncoderConfig) -> None:
        super().__init__()
        self.t5 = t5
        self.config = config

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Encoder last hidden state in float32; rows past a prompt's length are padding."""
        out = self.t5(input_ids=input_ids, attention_mask=attention_mask, return_dict=True)
        return out.last_hidden_state.float()


def _eager(t5) -> None:
    # Eager attention: T5's relative position bias is an additive mask term, and the eager path
    # is the one that exports to ONNX and matches the reference bit for bit across backends.
    t5.config._attn_implementation = "eager"


def build_random_text_encoder(config: TextEncoderConfig, seed: int = 0) -> T5TextEncoder:
    """A randomly initialised T5 encoder (fp32, eval mode), identical for equal seeds."""
    from transformers import T5EncoderModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        t5 = T5EncoderModel(config.to_hf())
    _eager(t5)
    return T5TextEncoder(t5.float().eval(), config).eval()


def load_text_encoder(folder: str | os.PathLike) -> tuple[T5TextEncoder, Tokenizer]:
    """Load a T5 encoder (fp32, eval) and its tokenizer from a local HF folder.

    Works with a full T5 folder (e.g. google/flan-t5-xl: its decoder weights are skipped) or
    an encoder-only one. Raises ``StagevarError`` when the folder is missing, is not a T5
    model, or lacks encoder weights (never leaves a weight randomly initialised).
    """
    folder = Path(folder)
    cfg_path = folder / "config.json"
    if not folder.is_dir() or not cfg_path.is_file():
        raise StagevarError(f"Text encoder folder {folder} does not exist or has no config.json; "
                            f"pass a local google/flan-t5-xl folder.")
    try:
        model_type = json.loads(cfg_path.read_text()).get("model_type")
    except (OSError, ValueError, AttributeError) as exc:
        raise StagevarError(f"Text encoder config {cfg_path} is not valid JSON; "
                            f"re-download the model folder.") from exc
    if model_type != "t5":
        raise StagevarError(f"Text encoder folder {folder} holds a '{model_type}' model, not T5; "
                            f"pass a google/flan-t5-xl folder.")
    t5, info = _from_pretrained(folder)
    _check_loading_info(folder, info, t5)
    _eager(t5)
    config = TextEncoderConfig.from_hf(t5.config)
    return T5TextEncoder(t5.float().eval(), config).eval(), load_tokenizer(folder)


def _from_pretrained(folder: Path):
    from transformers import T5EncoderModel

    try:
        # ignore_mismatched_sizes only moves size mismatches into the loading info, where
        # _check_loading_info rejects them by name.
        return T5EncoderModel.from_pretrained(
            str(folder), local_files_only=True, dtype=torch.float32, output_loading_info=True,
            ignore_mismatched_sizes=True)
    except Exception as exc:  # missing/corrupt weight files: user errors here
        lines = str(exc).strip().splitlines() or [type(exc).__name__]
        raise StagevarError(f"Text encoder weights in {folder} could not be loaded "
                            f"({lines[0][:200]}); check that the folder holds a complete T5 "
                            f"checkpoint.") from exc


def _check_loading_info(folder: Path, info: dict, t5) -> None:
    # from_pretrained only logs missing keys and initialises them randomly: refuse instead.
    # The encoder's token embedding is tied to `shared`, so either spelling may be absent.
    tied = {"encoder.embed_tokens.weight", "shared.weight"}
    missing = sorted(set(info.get("missing_keys", ())) - tied)
    if not {"encoder.embed_tokens.weight", "shared.weight"} - set(info.get("missing_keys", ())):
        missing = ["shared.weight"] + missing
    unexpected = sorted(k for k in info.get("unexpected_keys", ())
                        if not k.startswith(_UNUSED_PREFIXES))
    mismatched = [str(m[0]) if isinstance(m, (tuple, list)) else str(m)
                  for m in info.get("mismatched_keys", ())]
    problems = []
    if missing:
        problems.append(f"missing {', '.join(missing[:5])}")
    if unexpected:
        problems.append(f"unexpected {', '.join(unexpected[:5])}")
    if mismatched:
        problems.append(f"wrong shape {', '.join(mismatched[:5])}")
    if problems:
        raise StagevarError(f"The T5 text encoder checkpoint in {folder} does not match its "
                            f"config: {'; '.join(problems)}. Use a complete T5 encoder folder.")


def write_text_encoder(encoder: T5TextEncoder, tokenizer: Tokenizer,
                       folder: str | os.PathLike) -> Path:
    """Save ``encoder`` (HF ``save_pretrained``, safetensors) and ``tokenizer.json`` to a folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    encoder.t5.save_pretrained(str(folder))
    tokenizer.save(str(folder / "tokenizer.json"))
    return folder
