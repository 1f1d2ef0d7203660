"""Strict loading of the official VAR / VQVAE files, on random checkpoints in the official layout.

Guards: strict=False loading (a missing key silently random), derivable buffers trusted from
the file (a corrupt attn_bias_for_masking would mask attention), the VQVAE's training buffer
refused when its scale count differs (the official loader accepts it), extra keys accepted.
"""

import pytest
import torch

from stagevar.exporter.var.checkpoint import load_var, load_vqvae, random_checkpoints
from stagevar.exporter.var.config import var_tiny
from stagevar.runtime.errors import StagevarError


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return random_checkpoints(var_tiny(), tmp_path_factory.mktemp("ckpt"), seed=4)


def test_round_trip_is_exact(files):
    preset = var_tiny()
    var_path, vae_path = files
    saved = torch.load(var_path)
    model = load_var(var_path, preset.var)
    for k, v in model.state_dict().items():
        assert torch.equal(v, saved[k]), k
    vae = load_vqvae(vae_path, preset.vae, preset.var.num_scales)
    assert torch.equal(vae.quantize.embedding.weight, torch.load(vae_path)["quantize.embedding.weight"])


def test_derivable_buffers_rebuilt_not_trusted(files, tmp_path):
    preset = var_tiny()
    state = torch.load(files[0])
    state["attn_bias_for_masking"] = torch.zeros_like(state["attn_bias_for_masking"])  # no causal mask
    state["blocks.0.attn.zero_k_bias"] = torch.ones_like(state["blocks.0.attn.zero_k_bias"])
    torch.save(state, tmp_path / "v.pth")
    model = load_var(tmp_path / "v.pth", preset.var)
    assert torch.isinf(model.attn_bias_for_masking).any()
    assert not model.blocks[0].attn.zero_k_bias.any()


@pytest.mark.parametrize("edit,match", [
    (lambda s: s.pop("blocks.1.ffn.fc2.bias"), "missing blocks.1.ffn.fc2.bias"),
    (lambda s: s.__setitem__("blocks.0.ada_lin.0.weight", torch.zeros(1)), "unexpected blocks.0.ada_lin.0.weight"),
    (lambda s: s.__setitem__("head.weight", torch.zeros(10, 64)), "wrong shape head.weight"),
])
def test_var_mismatch_named_in_one_sentence(files, tmp_path, edit, match):
    state = torch.load(files[0])
    edit(state)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(StagevarError, match=match) as exc:
        load_var(tmp_path / "bad.pth", var_tiny().var)
    assert "\n" not in str(exc.value)


def test_vqvae_training_statistics_any_scale_count(files, tmp_path):
    preset = var_tiny()
    state = torch.load(files[1])
    state["quantize.ema_vocab_hit_SV"] = torch.zeros(14, preset.vae.vocab_size)
    torch.save(state, tmp_path / "vae14.pth")
    load_vqvae(tmp_path / "vae14.pth", preset.vae, preset.var.num_scales)
    del state["quantize.quant_resi.qresi_ls.3.bias"]
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(StagevarError, match="missing quantize.quant_resi.qresi_ls.3.bias"):
        load_vqvae(tmp_path / "bad.pth", preset.vae, preset.var.num_scales)


def test_var_weights_are_not_a_vqvae(files):
    with pytest.raises(StagevarError, match="VAR VQVAE checkpoint does not match"):
        load_vqvae(files[0], var_tiny().vae, 10)
