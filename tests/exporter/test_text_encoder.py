"""Requirements for the T5 text encoder wrapper."""

from __future__ import annotations

import json

import pytest
import torch

from stagevar.exporter.infinity.text_encoder import (
    T5TextEncoder,
    build_random_text_encoder,
    flan_t5_xl_config,
    load_text_encoder,
    tiny_t5_config,
    write_text_encoder,
)
from stagevar.exporter.infinity.tokenizer import build_tiny_tokenizer, encode_prompts
from stagevar.runtime.errors import StagevarError

PROMPTS = ["a cat", "a photo of the cat and the dog sitting in the garden at dusk"]


@pytest.fixture(scope="module")
def encoder() -> T5TextEncoder:
    return build_random_text_encoder(tiny_t5_config(), seed=0)


def _encode(enc: T5TextEncoder, tok, prompts):
    ids, mask, lengths = encode_prompts(tok, prompts)
    with torch.no_grad():
        return enc(torch.from_numpy(ids), torch.from_numpy(mask)), lengths


def test_tiny_config_fits_the_tiny_tokenizer_and_infinity_text_pooling():
    cfg = tiny_t5_config()
    assert cfg.vocab_size == build_tiny_tokenizer().get_vocab_size()
    assert cfg.d_model % 128 == 0 and cfg.d_model // 128 >= 1


def test_flan_t5_xl_config_gives_the_flan_t5_xl_encoder_shapes():
    from transformers import T5EncoderModel

    with torch.device("meta"):
        t5 = T5EncoderModel(flan_t5_xl_config().to_hf())
    shapes = {k: tuple(v.shape) for k, v in t5.state_dict().items()}
    assert shapes["shared.weight"] == (32128, 2048)
    assert shapes["encoder.block.23.layer.0.SelfAttention.q.weight"] == (2048, 2048)
    assert shapes["encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"] == (32, 32)
    assert shapes["encoder.block.23.layer.1.DenseReluDense.wi_1.weight"] == (5120, 2048)
    assert "encoder.block.24.layer.0.SelfAttention.q.weight" not in shapes


def test_forward_returns_float32_hidden_states(encoder):
    out, lengths = _encode(encoder, build_tiny_tokenizer(), PROMPTS)
    assert out.dtype == torch.float32
    assert out.shape == (2, int(lengths.max()), 128)
    assert torch.isfinite(out).all()


def test_random_encoder_is_reproducible_per_seed(encoder):
    again = build_random_text_encoder(tiny_t5_config(), seed=0)
    other = build_random_text_encoder(tiny_t5_config(), seed=1)
    sd, sd2, sd3 = encoder.state_dict(), again.state_dict(), other.state_dict()
    assert all(torch.equal(sd[k], sd2[k]) for k in sd)
    assert not torch.equal(sd["t5.shared.weight"], sd3["t5.shared.weight"])
    assert not again.training


def test_valid_rows_do_not_depend_on_padding_in_the_batch(encoder):
    tok = build_tiny_tokenizer()
    batch, lengths = _encode(encoder, tok, PROMPTS)
    for b, prompt in enumerate(PROMPTS):
        alone, _ = _encode(encoder, tok, [prompt])
        assert alone.shape[1] == lengths[b]
        torch.testing.assert_close(batch[b, : lengths[b]], alone[0], rtol=0, atol=1e-5)


def test_write_then_load_round_trips_weights_and_tokenizer(tmp_path, encoder):
    tok = build_tiny_tokenizer()
    write_text_encoder(encoder, tok, tmp_path / "t5")
    loaded, loaded_tok = load_text_encoder(tmp_path / "t5")
    assert loaded.config == encoder.config
    assert not loaded.training
    assert loaded_tok.encode(PROMPTS[1]).ids == tok.encode(PROMPTS[1]).ids
    expected, _ = _encode(encoder, tok, PROMPTS)
    got, _ = _encode(loaded, loaded_tok, PROMPTS)
    assert torch.equal(got, expected)


def test_load_fails_for_missing_folder_or_non_t5_model(tmp_path):
    with pytest.raises(StagevarError, match="does not exist"):
        load_text_encoder(tmp_path / "absent")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "clip_text_model"}))
    with pytest.raises(StagevarError, match="'clip_text_model' model, not T5"):
        load_text_encoder(tmp_path)


def test_load_refuses_a_checkpoint_missing_encoder_weights(tmp_path, encoder):
    from safetensors.torch import load_file, save_file

    folder = write_text_encoder(encoder, build_tiny_tokenizer(), tmp_path / "t5")
    weights = folder / "model.safetensors"
    sd = load_file(str(weights))
    del sd["encoder.block.1.layer.1.DenseReluDense.wo.weight"]
    save_file(sd, str(weights), metadata={"format": "pt"})
    with pytest.raises(StagevarError, match=r"missing encoder\.block\.1\.layer\.1\.DenseReluDense"):
        load_text_encoder(folder)


def test_load_accepts_a_full_t5_folder_with_decoder_weights(tmp_path, encoder):
    from safetensors.torch import load_file, save_file

    folder = write_text_encoder(encoder, build_tiny_tokenizer(), tmp_path / "t5")
    weights = folder / "model.safetensors"
    sd = load_file(str(weights))
    sd["decoder.block.0.layer.0.SelfAttention.q.weight"] = torch.zeros(128, 128)
    sd["lm_head.weight"] = torch.zeros(8, 128)
    save_file(sd, str(weights), metadata={"format": "pt"})
    loaded, _ = load_text_encoder(folder)
    assert torch.equal(loaded.state_dict()["t5.encoder.final_layer_norm.weight"],
                       encoder.state_dict()["t5.encoder.final_layer_norm.weight"])
