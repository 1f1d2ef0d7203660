"""Official checkpoint quirks (exporter/infinity/checkpoint.py): what the loader forgives, and only that."""

import pytest
import torch

from stagevar.exporter.infinity.official_layout import transformer_state

from stagevar.exporter.infinity.checkpoint import LEGACY_BUFFERS, load_transformer
from stagevar.exporter.infinity.presets import infinity_tiny
from stagevar.exporter.infinity.random_init import random_transformer
from stagevar.runtime.errors import StagevarError

CFG = infinity_tiny().transformer


@pytest.fixture(scope="module")
def model():
    return random_transformer(CFG, seed=3)


@pytest.mark.parametrize("legacy, drop_zero_k, said", [
    (True, False, ["ignored the legacy buffers lvl_1L, attn_bias_for_masking"]),
    (False, True, ["filled 17 absent zero_k_bias buffers with zeros"]),
    (True, True, ["Infinity_invisible_qlen", "filled 17 absent zero_k_bias"]),
])
def test_official_quirks_load_with_one_line(tmp_path, model, legacy, drop_zero_k, said):
    # Guards: refusing the released files (legacy buffers), leaving absent zero_k_bias on the
    # meta device / uninitialised, and doing it silently.
    torch.save(transformer_state(model, legacy, drop_zero_k), tmp_path / "official.pth")
    lines = []
    loaded = load_transformer(tmp_path / "official.pth", CFG, say=lines.append)
    assert len(lines) == 1 and all(s in lines[0] for s in said)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[k], v, rtol=0, atol=0)


def test_a_stored_zero_k_bias_is_loaded_as_stored(tmp_path, model):
    # Guards: overwriting checkpoint values with zeros instead of only filling absent ones.
    state = transformer_state(model)
    key = "block_chunks.0.module.0.sa.zero_k_bias"
    state[key] = torch.full_like(state[key], 0.25)
    torch.save(state, tmp_path / "k.pth")
    lines = []
    loaded = load_transformer(tmp_path / "k.pth", CFG, say=lines.append)
    assert lines == [] and torch.equal(loaded.state_dict()[key], state[key])


@pytest.mark.parametrize("edit, named", [
    (lambda s: s.update({"lvl_2L": torch.zeros(1)}), "lvl_2L"),
    (lambda s: s.update({"block_chunks.0.module.0.sa.extra_bias": torch.zeros(64)}), "extra_bias"),
    (lambda s: s.pop("block_chunks.1.module.0.sa.q_bias"), "block_chunks.1.module.0.sa.q_bias"),
    (lambda s: s.pop("head.bias"), "head.bias"),
])
def test_other_extra_or_missing_keys_are_still_refused_with_the_lists(tmp_path, model, edit, named):
    # Guards: a forgiving filter (dropping any unknown key, filling any missing bias) that would
    # load a different model with random or zero weights.
    state = transformer_state(model, legacy=True, drop_zero_k=True)
    edit(state)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(StagevarError, match=named):
        load_transformer(tmp_path / "bad.pth", CFG, say=lambda m: None)


def test_legacy_names_are_exactly_the_official_four():
    assert LEGACY_BUFFERS == ("lvl_1L", "attn_bias_for_masking", "Infinity_visible_kvlen", "Infinity_invisible_qlen")
