"""The export-friendly Infinity transformer: cached decoding, CFG rows, key layout."""

from pathlib import Path

import numpy as np
import pytest
import torch

from stagevar.exporter.infinity.config import InfinityConfig
from stagevar.exporter.infinity.presets import infinity2b, infinity8b, infinity_tiny
from stagevar.exporter.infinity.random_init import random_transformer
from stagevar.exporter.infinity.transformer import (
    InfinityTransformer,
    block_causal_bias,
    cfg_combine,
    text_key_bias,
)
from stagevar.runtime.rope import rope_cos_sin
from stagevar.runtime.schedules import get_schedule

# Copied from shared/reference: key names and shapes of the official modules (commit 4c27bbb).
REFERENCE = Path(__file__).parent / "data" / "infinity_state_dict_keys.tsv"


def _tsv_shapes(model_name: str) -> dict[str, tuple[int, ...]]:
    shapes = {}
    for line in REFERENCE.read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name, key, shape = line.split("\t")[:3]
        if name == model_name:
            shapes[key] = tuple(int(s) for s in shape.strip("()").split(",") if s.strip())
    return shapes


def _expand_blocks(shapes: dict, chunks: int, per_chunk: int) -> dict:
    out = {}
    for key, shape in shapes.items():
        if key.startswith("block_chunks.0.module.0."):
            leaf = key[len("block_chunks.0.module.0.") :]
            for c in range(chunks):
                for j in range(per_chunk):
                    out[f"block_chunks.{c}.module.{j}.{leaf}"] = shape
        else:
            out[key] = shape
    return out


@pytest.mark.parametrize("preset_fn,name", [(infinity2b, "infinity_2b"), (infinity8b, "infinity_8b")])
def test_state_dict_keys_and_shapes_match_the_official_layout(preset_fn, name):
    cfg = preset_fn().transformer
    with torch.device("meta"):
        model = InfinityTransformer(cfg)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    expected = _expand_blocks(_tsv_shapes(name), cfg.block_chunks, cfg.blocks_per_chunk)
    assert set(ours) == set(expected)
    assert ours == expected


def _setup(cfg: InfinityConfig, rows: int, text_len: int = 5, seed: int = 0):
    model = random_transformer(cfg, seed)
    g = torch.Generator().manual_seed(seed + 7)
    text = torch.randn(rows, text_len, cfg.text_channels, generator=g)
    mask = torch.ones(rows, text_len, dtype=torch.int64)
    mask[0, -2:] = 0  # one shorter prompt exercises the key mask
    return model, model.text_condition(text, text_key_bias(mask))


@torch.no_grad()
def test_cached_decoding_equals_one_uncached_block_causal_forward():
    cfg = infinity_tiny().transformer
    schedule = get_schedule("1:1", "0.06M")
    model, cond = _setup(cfg, rows=2)
    cos, sin = (torch.from_numpy(t) for t in rope_cos_sin(schedule, cfg.head_dim))
    g = torch.Generator().manual_seed(3)
    inputs = [model.embed_scale(None, 0, cond)]
    for k in range(1, schedule.num_scales):
        codes = torch.randn(2, schedule.token_counts[k], cfg.bits_per_token, generator=g)
        inputs.append(model.embed_scale(codes, k, cond))

    cached_logits, past = [], None
    for k, x in enumerate(inputs):
        s, n = schedule.offsets[k], schedule.token_counts[k]
        hidden, new_kv, _ = model.forward_scale(x, cond, cos[s : s + n], sin[s : s + n], past)
        past = new_kv if past is None else [(torch.cat((a, c), 2), torch.cat((b, d), 2)) for (a, b), (c, d) in zip(past, new_kv)]
        cached_logits.append(model.head_logits(hidden, cond))

    full = torch.cat(inputs, dim=1)
    mask = block_causal_bias(list(schedule.token_counts))
    hidden, _, _ = model.forward_scale(full, cond, cos, sin, None, attn_bias=mask)
    uncached = model.head_logits(hidden, cond)
    torch.testing.assert_close(torch.cat(cached_logits, dim=1), uncached, atol=2e-5, rtol=1e-5)


@torch.no_grad()
def test_rope_offsets_matter_so_scale_index_bugs_would_show():
    # The official non-fused path restarts RoPE at 0 for every scale (issue #91); ours must not.
    cfg = infinity_tiny().transformer
    schedule = get_schedule("1:1", "0.06M")
    model, cond = _setup(cfg, rows=1)
    cos, sin = (torch.from_numpy(t) for t in rope_cos_sin(schedule, cfg.head_dim))
    k, n = 3, schedule.token_counts[3]
    x = model.embed_scale(torch.randn(1, n, cfg.bits_per_token), k, cond)
    s = schedule.offsets[k]
    right, _, _ = model.forward_scale(x, cond, cos[s : s + n], sin[s : s + n], None)
    wrong, _, _ = model.forward_scale(x, cond, cos[:n], sin[:n], None)
    assert (right - wrong).abs().max() > 1e-3


@torch.no_grad()
def test_text_padding_does_not_change_the_condition():
    cfg = infinity_tiny().transformer
    model = random_transformer(cfg, 1)
    text = torch.randn(1, 4, cfg.text_channels)
    alone = model.text_condition(text, text_key_bias(torch.ones(1, 4)))
    padded_text = torch.cat((text, torch.randn(1, 3, cfg.text_channels)), dim=1)
    padded = model.text_condition(padded_text, text_key_bias(torch.tensor([[1, 1, 1, 1, 0, 0, 0]])))
    torch.testing.assert_close(alone.sos_BD, padded.sos_BD, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(alone.gss_B16C, padded.gss_B16C, atol=1e-6, rtol=1e-6)


def test_cfg_combine_follows_the_official_rule():
    cond, null = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    out = cfg_combine(torch.cat((cond, null)), cfg=3.0, tau=0.5)
    torch.testing.assert_close(out, (3 * cond - 2 * null) / 0.5)


def test_first_scale_uses_sos_and_later_scales_use_word_embed():
    cfg = infinity_tiny().transformer
    model, cond = _setup(cfg, rows=2)
    x0 = model.embed_scale(None, 0, cond)
    torch.testing.assert_close(x0[:, 0], cond.sos_BD + model.pos_start[0, 0] + model.lvl_embed.weight[0])
    codes = torch.randn(2, 4, cfg.bits_per_token)
    x1 = model.embed_scale(codes, 1, cond)
    torch.testing.assert_close(x1, model.word_embed(codes) + model.lvl_embed.weight[1])


def test_random_weights_give_bits_that_are_mostly_sampled_not_snapped():
    from stagevar.runtime.sampling import prob_bit0

    cfg = infinity_tiny().transformer
    model, cond = _setup(cfg, rows=1)
    cos, sin = (torch.from_numpy(t) for t in rope_cos_sin(get_schedule("1:1", "0.06M"), cfg.head_dim))
    with torch.no_grad():
        x = model.embed_scale(torch.randn(1, 16, cfg.bits_per_token) / 5.0, 2, cond)
        hidden, _, _ = model.forward_scale(x, cond, cos[5:21], sin[5:21], None)
        p0 = prob_bit0(model.head_logits(hidden, cond).numpy() / 0.5)
    snapped = np.mean(np.minimum(p0, 1 - p0) <= 0.03)
    assert 0.0 < snapped < 0.6
