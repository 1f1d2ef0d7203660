"""Requirements for the Infinity BSQ-VAE decoder module."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from stagevar.exporter.infinity.vae_decoder import (
    BSQVAEDecoder,
    VAEDecoderConfig,
    to_uint8_rgb,
    vae_d14_patchify_config,
    vae_d32_config,
    vae_tiny_config,
)

# Copy of shared/reference/infinity_state_dict_keys.tsv (rows vae_2b / vae_8b are used here).
KEYS_TSV = Path(__file__).parent / "data" / "infinity_state_dict_keys.tsv"
# Checkpoint-only buffers of the official file: not decoder parameters.
MASK_KEYS = {"quantizer.lfq.mask", "quantize.lfq.mask"}


def _reference_rows(model: str) -> dict[str, tuple[int, ...]]:
    rows = {}
    for line in KEYS_TSV.read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name, key, shape = line.split("\t")
        if name == model and key not in MASK_KEYS:
            rows[key] = tuple(ast.literal_eval(shape))
    return rows


@pytest.mark.parametrize("model,config", [("vae_2b", vae_d32_config()),
                                          ("vae_8b", vae_d14_patchify_config())])
def test_official_configs_reproduce_reference_keys_and_shapes(model, config):
    expected = _reference_rows(model)
    assert len(expected) > 100
    with torch.device("meta"):
        decoder = BSQVAEDecoder(config)
    got = {k: tuple(v.shape) for k, v in decoder.state_dict().items()}
    assert sorted(set(expected) - set(got)) == []
    assert sorted(set(got) - set(expected)) == []
    assert {k: v for k, v in got.items() if expected[k] != v} == {}


def test_upsample_factor_is_the_patch_size():
    assert vae_d32_config().upsample_factor == 16
    assert vae_d14_patchify_config().upsample_factor == 8
    assert vae_tiny_config().upsample_factor == 4


def test_config_is_frozen_and_rejects_channels_not_divisible_by_groups():
    cfg = vae_tiny_config()
    with pytest.raises(Exception):
        cfg.code_dim = 3  # type: ignore[misc]
    with pytest.raises(ValueError, match="norm_groups"):
        VAEDecoderConfig(code_dim=8, base_channels=48, channel_mult=(1, 2))


def _reference_decode(sd: dict, cfg: VAEDecoderConfig, z: torch.Tensor) -> torch.Tensor:
    # Independent functional spelling of infinity.md section 5, driven by the key names only.
    def conv(x, name, pad=1):
        return F.conv2d(x, sd[f"{name}.conv.weight"], sd[f"{name}.conv.bias"], padding=pad)

    def gn_act(x, name):
        x = F.group_norm(x, 32, sd[f"{name}.norm.weight"], sd[f"{name}.norm.bias"], eps=1e-6)
        return x * torch.sigmoid(x)

    def res(x, name):
        h = conv(gn_act(x, f"{name}.norm1"), f"{name}.conv1")
        h = conv(gn_act(h, f"{name}.norm2"), f"{name}.conv2")
        if f"{name}.nin_shortcut.conv.weight" in sd:
            x = conv(x, f"{name}.nin_shortcut", pad=0)
        return x + h

    h = conv(z, "decoder.conv_in")
    h = res(res(h, "decoder.mid.block_1"), "decoder.mid.block_2")
    for i in reversed(range(len(cfg.channel_mult))):
        for j in range(cfg.num_res_blocks + 1):
            h = res(h, f"decoder.up.{i}.block.{j}")
        if i != 0:
            h = conv(F.interpolate(h, scale_factor=2, mode="nearest"), f"decoder.up.{i}.upsample.conv")
    return conv(gn_act(h, "decoder.norm_out"), "decoder.conv_out").clamp(-1, 1)


def test_decoder_matches_functional_reference_of_the_official_structure():
    cfg = VAEDecoderConfig(code_dim=14, base_channels=32, channel_mult=(1, 2, 4), num_res_blocks=2)
    torch.manual_seed(0)
    decoder = BSQVAEDecoder(cfg).eval()
    z = torch.randn(2, 14, 6, 5)
    with torch.no_grad():
        out = decoder(z)
        ref = _reference_decode(decoder.state_dict(), cfg, z)
    assert out.shape == (2, 3, 24, 20)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)


def test_tiny_decoder_turns_a_64_grid_into_a_256_image_in_range():
    torch.manual_seed(0)
    decoder = BSQVAEDecoder(vae_tiny_config()).eval()
    codes = torch.sign(torch.randn(1, 32, 64, 64)) / 32 ** 0.5
    with torch.no_grad():
        img = decoder(codes)
    assert img.shape == (1, 3, 256, 256) and img.dtype == torch.float32
    assert img.min() >= -1 and img.max() <= 1
    assert img.std() > 0.01


def test_forward_clamps_to_minus_one_one():
    torch.manual_seed(0)
    decoder = BSQVAEDecoder(vae_tiny_config()).eval()
    with torch.no_grad():
        decoder.decoder.conv_out.conv.bias.copy_(torch.tensor([5.0, -5.0, 0.0]))
        img = decoder(torch.randn(1, 32, 4, 4))
    assert torch.all(img[:, 0] == 1) and torch.all(img[:, 1] == -1)


def test_to_uint8_rgb_truncates_like_the_official_script_and_keeps_rgb_order():
    img = torch.tensor([-1.0, 0.0, 1.0, 0.999, -0.999]).view(1, 1, 1, 5).expand(1, 3, 1, 5).clone()
    img[:, 1] = 1.0  # G channel saturated, R and B follow the ramp
    out = to_uint8_rgb(img)
    assert out.dtype == torch.uint8 and out.shape == (1, 1, 5, 3)
    # (x + 1) / 2 * 255 truncated: 0 -> 127.5 -> 127, 0.999 -> 254.87 -> 254.
    assert out[0, 0, :, 0].tolist() == [0, 127, 255, 254, 0]
    assert out[0, 0, :, 1].tolist() == [255] * 5
    expected = np.floor((img.numpy() + 1) / 2 * 255).astype(np.uint8).transpose(0, 2, 3, 1)
    assert np.array_equal(out.numpy(), expected)
    assert torch.equal(BSQVAEDecoder.to_uint8_rgb(img), out)


@pytest.mark.slow
def test_tiny_decoder_exports_to_onnx_and_matches_onnxruntime(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    torch.manual_seed(0)
    decoder = BSQVAEDecoder(vae_tiny_config()).eval()
    z = torch.randn(1, 32, 8, 8)
    program = torch.onnx.export(decoder, (z,), dynamo=True, opset_version=20)
    program.save(str(tmp_path / "vae.onnx"))
    sess = ort.InferenceSession(str(tmp_path / "vae.onnx"), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: z.numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(got, decoder(z).numpy(), atol=1e-4)
