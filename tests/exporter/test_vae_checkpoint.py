"""Requirements for loading/writing official Infinity VAE checkpoints."""

from __future__ import annotations

import pytest
import torch

from stagevar.exporter.checkpoint_io import read_state_dict, write_state_dict
from stagevar.exporter.infinity.vae_checkpoint import (
    MASK_KEYS,
    flux_style_key,
    load_vae_decoder,
    quantizer_mask,
    write_vae_checkpoint,
)
from stagevar.exporter.infinity.vae_decoder import BSQVAEDecoder, VAEDecoderConfig
from stagevar.runtime.errors import StagevarError

# Narrow but structurally complete: a channel change (nin_shortcut) and two upsample levels.
CFG = VAEDecoderConfig(code_dim=14, base_channels=32, channel_mult=(1, 2, 2), num_res_blocks=1)


@pytest.fixture(scope="module")
def decoder() -> BSQVAEDecoder:
    torch.manual_seed(0)
    return BSQVAEDecoder(CFG).eval()


def _decode(dec: BSQVAEDecoder) -> torch.Tensor:
    z = torch.randn(1, CFG.code_dim, 5, 4, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return dec(z)


@pytest.mark.parametrize("flux_style", [False, True])
def test_official_pth_round_trips_in_both_key_styles(tmp_path, decoder, flux_style):
    path = write_vae_checkpoint(decoder, tmp_path / "vae.pth", flux_style=flux_style)
    raw = torch.load(path, weights_only=True)
    assert list(raw) == ["vae"]
    assert ("decoder.conv_in.conv.weight" in raw["vae"]) is not flux_style
    assert ("decoder.up.1.upsample.conv.weight" in raw["vae"]) is flux_style
    loaded = load_vae_decoder(path, CFG)
    assert not loaded.training
    assert torch.equal(_decode(loaded), _decode(decoder))


def test_flux_style_key_drops_only_the_wrapper_level():
    assert flux_style_key("decoder.conv_in.conv.weight") == "decoder.conv_in.weight"
    assert flux_style_key("decoder.mid.block_1.norm1.norm.bias") == "decoder.mid.block_1.norm1.bias"
    assert flux_style_key("decoder.up.1.upsample.conv.conv.weight") == "decoder.up.1.upsample.conv.weight"
    assert flux_style_key("decoder.up.0.block.0.nin_shortcut.conv.weight") == \
        "decoder.up.0.block.0.nin_shortcut.weight"


def test_written_masks_are_the_official_int64_bit_weights(tmp_path, decoder):
    sd = read_state_dict(write_vae_checkpoint(decoder, tmp_path / "vae.pth"), wrapper_key="vae")
    for key in MASK_KEYS:
        assert sd[key].dtype == torch.int64
        assert sd[key].tolist() == [2 ** i for i in range(CFG.code_dim - 1, -1, -1)]
    assert torch.equal(quantizer_mask(3), torch.tensor([4, 2, 1]))


def test_plain_state_dict_and_safetensors_are_accepted(tmp_path, decoder):
    write_state_dict(decoder.state_dict(), tmp_path / "plain.pth")
    write_vae_checkpoint(decoder, tmp_path / "vae.safetensors", flux_style=True)
    for name in ("plain.pth", "vae.safetensors"):
        assert torch.equal(_decode(load_vae_decoder(tmp_path / name, CFG)), _decode(decoder))


def test_encoder_keys_are_accepted_and_ignored(tmp_path, decoder):
    sd = read_state_dict(write_vae_checkpoint(decoder, tmp_path / "vae.pth"), wrapper_key="vae")
    sd["encoder.conv_in.conv.weight"] = torch.zeros(32, 3, 3, 3)
    sd["encoder.down.0.block.0.norm1.norm.weight"] = torch.zeros(32)
    write_state_dict(sd, tmp_path / "with_encoder.pth", wrapper_key="vae")
    assert torch.equal(_decode(load_vae_decoder(tmp_path / "with_encoder.pth", CFG)),
                       _decode(decoder))


def _rewrite(tmp_path, decoder, edit) -> str:
    sd = read_state_dict(write_vae_checkpoint(decoder, tmp_path / "vae.pth"), wrapper_key="vae")
    edit(sd)
    return write_state_dict(sd, tmp_path / "edited.pth", wrapper_key="vae")


def test_renamed_key_fails_naming_both_names(tmp_path, decoder):
    def edit(sd):
        sd["decoder.mid.block_1.conv_one.conv.weight"] = sd.pop("decoder.mid.block_1.conv1.conv.weight")

    with pytest.raises(StagevarError) as err:
        load_vae_decoder(_rewrite(tmp_path, decoder, edit), CFG)
    msg = str(err.value)
    assert "missing decoder.mid.block_1.conv1.conv.weight" in msg
    assert "unexpected decoder.mid.block_1.conv_one.conv.weight" in msg


def test_missing_key_fails_naming_it(tmp_path, decoder):
    path = _rewrite(tmp_path, decoder, lambda sd: sd.pop("decoder.norm_out.norm.bias"))
    with pytest.raises(StagevarError, match=r"missing decoder\.norm_out\.norm\.bias"):
        load_vae_decoder(path, CFG)


def test_wrong_shaped_tensor_fails_naming_it(tmp_path, decoder):
    def edit(sd):
        sd["decoder.conv_out.conv.bias"] = torch.zeros(4)

    with pytest.raises(StagevarError, match=r"decoder\.conv_out\.conv\.bias is \(4\,\) but"):
        load_vae_decoder(_rewrite(tmp_path, decoder, edit), CFG)


def test_a_key_under_both_spellings_fails(tmp_path, decoder):
    def edit(sd):
        sd["decoder.conv_in.weight"] = sd["decoder.conv_in.conv.weight"].clone()

    with pytest.raises(StagevarError, match="twice"):
        load_vae_decoder(_rewrite(tmp_path, decoder, edit), CFG)


def test_vae_of_the_other_model_fails_on_the_mask_length(tmp_path, decoder):
    path = write_vae_checkpoint(decoder, tmp_path / "vae.pth", code_dim=32)
    with pytest.raises(StagevarError, match="32-bit quantizer masks but the model expects 14"):
        load_vae_decoder(path, CFG)


def test_other_config_fails_with_shape_mismatches(tmp_path, decoder):
    path = write_vae_checkpoint(decoder, tmp_path / "vae.pth")
    other = VAEDecoderConfig(code_dim=14, base_channels=64, channel_mult=(1, 2, 2), num_res_blocks=1)
    with pytest.raises(StagevarError, match="wrong shape"):
        load_vae_decoder(path, other)


def test_missing_vae_file_fails(tmp_path):
    with pytest.raises(StagevarError, match="does not exist"):
        load_vae_decoder(tmp_path / "nope.pth", CFG)
