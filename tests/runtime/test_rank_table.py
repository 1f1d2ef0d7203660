"""Requirements for runtime/rank_table.py (stagevar.md section 3)."""

import pytest

from stagevar.runtime.errors import StagevarError
from stagevar.runtime.rank_table import available_alphas, canonical_alpha, rank_ratios


def test_available_alphas_as_written_in_the_file():
    alphas = available_alphas()
    assert alphas[0] == "0.999" and alphas[-1] == "0.70"
    assert "0.96" in alphas and "0.90" in alphas
    assert len(alphas) == 12


def test_rank_ratios_gives_three_rows_of_eight():
    rows = rank_ratios("0.96")
    assert len(rows) == 3 and all(len(r) == 8 for r in rows)
    # scale-40 row of alpha 0.96 (mean ~17.69 %)
    assert rows[0][0] == pytest.approx(0.016776672694393688)
    assert sum(rows[0]) / 8 == pytest.approx(0.1769, abs=1e-4)
    # order is sides 40, 48, 64
    assert rows[1][0] == pytest.approx(0.01340312164472197)
    assert rows[2][0] == pytest.approx(0.008212925943716094)


def test_alpha_may_be_given_as_number_or_other_spelling():
    assert canonical_alpha(0.96) == "0.96"
    assert canonical_alpha("0.9") == "0.90"
    assert rank_ratios(0.9) == rank_ratios("0.90")


@pytest.mark.parametrize("bad", ["0.5", "abc", None, 1.0])
def test_unknown_alpha_lists_valid_ones(bad):
    with pytest.raises(StagevarError, match="0.96"):
        rank_ratios(bad)
