"""Transformer checkpoints in the official layouts: round trips and strict key checking."""

import pytest
import torch

from stagevar.exporter.infinity.checkpoint import load_transformer, write_transformer
from stagevar.exporter.infinity.presets import infinity_tiny
from stagevar.exporter.infinity.random_init import official_cfg_uncond_rows, random_transformer
from stagevar.runtime.errors import StagevarError

CFG = infinity_tiny().transformer


@pytest.fixture(scope="module")
def model():
    return random_transformer(CFG, seed=5)


def _same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=0, atol=0)


@pytest.mark.parametrize("name", ["infinity_tiny.pth", "infinity_tiny.safetensors"])
def test_single_file_round_trip(tmp_path, model, name):
    path = write_transformer(model, tmp_path / name)
    _same_weights(model, load_transformer(path, CFG))


def test_sharded_folder_round_trip_like_the_8b_release(tmp_path, model):
    folder = write_transformer(model, tmp_path / "sharded", sharded_max_bytes=200_000)
    assert len(list(folder.glob("*.safetensors"))) > 1
    _same_weights(model, load_transformer(folder, CFG))


def test_renamed_key_is_named_in_the_error(tmp_path, model):
    state = dict(model.state_dict())
    state["block_chunks.0.module.0.sa.q_bias_renamed"] = state.pop("block_chunks.0.module.0.sa.q_bias")
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(StagevarError) as err:
        load_transformer(tmp_path / "bad.pth", CFG)
    assert "block_chunks.0.module.0.sa.q_bias" in str(err.value)
    assert "q_bias_renamed" in str(err.value)


def test_missing_key_is_named_in_the_error(tmp_path, model):
    state = dict(model.state_dict())
    del state["head.weight"]
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(StagevarError, match=r"head\.weight"):
        load_transformer(tmp_path / "bad.pth", CFG)


def test_wrong_model_checkpoint_is_refused(tmp_path):
    other = random_transformer(infinity_tiny().transformer.__class__(**{**infinity_tiny().transformer.__dict__, "embed_dim": 128}), 0)
    write_transformer(other, tmp_path / "other.pth")
    with pytest.raises(StagevarError):
        load_transformer(tmp_path / "other.pth", CFG)


def test_short_null_text_is_extended_with_the_official_init_rows(tmp_path, model):
    state = dict(model.state_dict())
    state["cfg_uncond"] = state["cfg_uncond"][:10].clone() + 1.0
    torch.save(state, tmp_path / "short.pth")
    loaded = load_transformer(tmp_path / "short.pth", CFG)
    torch.testing.assert_close(loaded.cfg_uncond[:10], state["cfg_uncond"])
    torch.testing.assert_close(loaded.cfg_uncond[10:], official_cfg_uncond_rows(CFG.text_maxlen, CFG.text_channels)[10:])


def test_long_null_text_is_truncated(tmp_path, model):
    state = dict(model.state_dict())
    extra = torch.randn(5, CFG.text_channels)
    state["cfg_uncond"] = torch.cat((state["cfg_uncond"], extra))
    torch.save(state, tmp_path / "long.pth")
    loaded = load_transformer(tmp_path / "long.pth", CFG)
    torch.testing.assert_close(loaded.cfg_uncond, model.cfg_uncond)


def test_official_null_text_init_equals_independently_computed_values():
    """Bug guarded against: null-text rows that are deterministic and bounded but not the
    official ones (another std, bound, seed or scale, or torch >= 2.12's rejection-sampling
    trunc_normal_, which draws other values from the same seed). The expected values are the
    release's inverse-CDF sampler computed here in float64 with the standard library's normal
    quantile, from the same uniform draws (torch's CPU generator seeded 0): a truncated normal
    of std 1.2 within +-2, divided by sqrt(128). Tolerance: float32 erfinv against float64."""
    from statistics import NormalDist

    a = official_cfg_uncond_rows(16, 128)
    torch.testing.assert_close(a, official_cfg_uncond_rows(16, 128), rtol=0, atol=0)
    normal = NormalDist()
    low, high = 2 * normal.cdf(-2 / 1.2) - 1, 2 * normal.cdf(2 / 1.2) - 1  # erf(x / sqrt 2) = 2 cdf - 1
    uniforms = torch.rand(16, 128, generator=torch.Generator().manual_seed(0)).double()
    y = low + (high - low) * uniforms  # uniform on [erf(-2/1.2/sqrt 2), erf(2/1.2/sqrt 2)]
    expected = torch.tensor([[1.2 * normal.inv_cdf((float(v) + 1) / 2) for v in row] for row in y],
                            dtype=torch.float64).clamp(-2, 2) / 128**0.5
    torch.testing.assert_close(a.double(), expected, rtol=0, atol=2e-6)
    # Shape of the law, not only the draws: bounded by 2/sqrt(C) and spread like the truncated
    # normal (std 1.2 * 0.7958 = 0.955 before scaling, truncated at 1.667 sigma; 2048 draws).
    assert a.abs().max() <= 2.0 / 128**0.5 + 1e-6
    assert float(a.std() * 128**0.5) == pytest.approx(0.955, rel=0.05)
