"""The VAR family's module trees equal the official state dicts (var_state_dict_keys.tsv).

Guards: a renamed, missing or extra key (e.g. `ada_lin.0` instead of `ada_lin.1`, a missing
`zero_k_bias` buffer, shared AdaLN keys on d16, per-block `ada_lin` on d36), a wrong shape
(heads != depth, FFN ratio, 512 vs 256 patch list in pos_1LC / attn_bias), and a decoder whose
up levels are listed in run order instead of by level. Built on the meta device: d36 costs no memory.
"""

from pathlib import Path

import pytest
import torch

from stagevar.exporter.var.config import get_var_preset
from stagevar.exporter.var.model import VAR
from stagevar.exporter.var.vqvae import VQVAE

TSV = Path(__file__).resolve().parent / "data" / "var_state_dict_keys.tsv"  # copy of ../shared/reference


def _expected(model_file: str) -> list[tuple[str, tuple, str]]:
    rows = []
    for line in TSV.read_text().splitlines()[1:]:
        name, key, shape, dtype = line.split("\t")
        if name == model_file:
            rows.append((key, tuple(int(x) for x in shape.strip("()").split(",") if x.strip()), dtype))
    assert rows, f"no rows for {model_file}"
    return rows


def _actual(module: torch.nn.Module) -> list[tuple[str, tuple, str]]:
    return [(k, tuple(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in module.state_dict().items()]


@pytest.mark.parametrize("preset,model_file,params_m", [("var-d16", "var_d16.pth", 310.28), ("var-d36", "var_d36.pth", 2353.89)])
def test_var_state_dict_equals_official(preset, model_file, params_m):
    with torch.device("meta"):
        model = VAR(get_var_preset(preset).var)
    assert _actual(model) == _expected(model_file)  # keys, order, shapes and dtypes
    assert round(sum(p.numel() for p in model.parameters()) / 1e6, 2) == params_m  # var.md §1 count


def test_vqvae_state_dict_equals_official():
    with torch.device("meta"):
        vae = VQVAE(get_var_preset("var-d16").vae, num_scales=10)
    assert sorted(_actual(vae)) == sorted(_expected("vae_ch160v4096z32.pth"))
