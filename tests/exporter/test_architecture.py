"""--model auto / --config: the architecture read from checkpoints (exporter/infinity/architecture.py, auto_preset.py)."""

import json
from dataclasses import replace

import pytest
import torch

from stagevar.exporter.infinity.architecture import infer_transformer_fields, infer_vae_fields, shapes_of
from stagevar.exporter.infinity.auto_preset import check_preset_fits, infer_preset
from stagevar.exporter.infinity.official_layout import custom_preset, write_official_checkpoints
from stagevar.exporter.infinity.presets import infinity_tiny, infinity_tiny_patchify
from stagevar.exporter.infinity.random_init import random_transformer
from stagevar.exporter.infinity.vae_checkpoint import vae_checkpoint_state_dict
from stagevar.exporter.infinity.vae_decoder import BSQVAEDecoder
from stagevar.runtime.errors import StagevarError


@pytest.fixture(scope="module")
def custom(tmp_path_factory):
    return write_official_checkpoints(tmp_path_factory.mktemp("custom"), custom_preset())


def test_inferred_preset_equals_the_one_the_checkpoints_were_made_from(custom):
    # Guards every rule: depth vs chunks (4 = 2 x 2), heads, FFN ratio, text channels and
    # null-prompt length, bits, VAE widths/levels/res blocks, T5 shape.
    lines = []
    preset = infer_preset(custom["weights"], custom["vae"], custom["text_encoder"], say=lines.append)
    want = custom_preset()
    assert preset.transformer == want.transformer
    assert preset.vae == want.vae
    assert preset.text == want.text
    assert preset.source == "checkpoint" and len(lines) == 1 and "depth 4 in 2 chunks" in lines[0]


def test_patchify_is_read_from_the_bits_and_the_vae():
    # 56 bits per token over a 14-channel VAE: the 8B 2x2 layout. Guards code_dim = bits.
    p = infinity_tiny_patchify()
    fields = infer_transformer_fields(shapes_of(random_transformer(p.transformer, 0).state_dict()))
    assert fields["bits_per_token"] == 56
    from stagevar.exporter.infinity.architecture import split_bits

    assert split_bits(56, 14) == (14, True) and split_bits(32, 32) == (32, False)
    with pytest.raises(StagevarError, match="VAE that belongs"):
        split_bits(56, 32)


def test_vae_widths_from_flux_style_keys_too():
    cfg = custom_preset().vae
    sd = vae_checkpoint_state_dict(BSQVAEDecoder(cfg), flux_style=True)
    got = infer_vae_fields(shapes_of(sd))
    assert (got["code_dim"], got["base_channels"], got["channel_mult"], got["num_res_blocks"]) == (32, 32, (1, 2, 2), 1)


def test_incomplete_chunks_are_refused():
    sd = shapes_of(random_transformer(custom_preset().transformer, 0).state_dict())
    sd = {k: v for k, v in sd.items() if not k.startswith("block_chunks.1.module.1.")}
    with pytest.raises(StagevarError, match="block_chunks.1.module.1"):
        infer_transformer_fields(sd)


def test_named_preset_with_other_checkpoints_says_so_in_one_sentence(custom):
    with pytest.raises(StagevarError, match=r"not infinity-tiny: they have depth 4 \(preset 8\)") as err:
        check_preset_fits(infinity_tiny(), custom["weights"], custom["vae"])
    assert "--model auto" in str(err.value)


def test_config_file_completes_what_keys_cannot_tell(custom, tmp_path):
    # The VAE GroupNorm group count and default cfg are not in the keys: --config gives them.
    cfg = tmp_path / "arch.json"
    cfg.write_text(json.dumps({"name": "my-model", "vae": {"norm_groups": 16}, "default_cfg": 4.0}))
    preset = infer_preset(custom["weights"], custom["vae"], custom["text_encoder"], cfg, say=lambda m: None)
    assert preset.name == "my-model" and preset.vae == replace(custom_preset().vae, norm_groups=16)
    assert preset.default_cfg == 4.0 and preset.source == "checkpoint+config"


@pytest.mark.parametrize("content, match", [
    ({"vae": {"groups": 16}}, "unknown fields"),
    ({"decoder": {}}, "unknown entry 'decoder'"),
    ("[1, 2]", "JSON object"),
    ("{", "not valid JSON"),
])
def test_bad_config_files_are_refused(custom, tmp_path, content, match):
    cfg = tmp_path / "arch.json"
    cfg.write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(StagevarError, match=match):
        infer_preset(custom["weights"], custom["vae"], custom["text_encoder"], cfg, say=lambda m: None)


@pytest.mark.parametrize("depth, chunks", [(8, 8), (6, 3), (6, 2)])
def test_depth_and_chunks_are_told_apart(depth, chunks):
    # Guards swapping blocks-per-chunk and chunks (the custom model has 2 x 2, which hides it).
    cfg = replace(infinity_tiny().transformer, depth=depth, block_chunks=chunks)
    fields = infer_transformer_fields(shapes_of(random_transformer(cfg, 0).state_dict()))
    assert (fields["depth"], fields["block_chunks"]) == (depth, chunks)
