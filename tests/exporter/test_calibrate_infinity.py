"""`stagevar-export calibrate` on Infinity (exporter/infinity/calibrate.py): what it measures and refuses."""

import numpy as np
import pytest

from stagevar.exporter.infinity.calibrate import measure_table, parse_alphas, read_prompts
from stagevar.exporter.infinity.sampler import ReferenceSampler
from stagevar.exporter.rank_calibration import energy_ranks
from stagevar.runtime.errors import StagevarError
from stagevar.runtime.schedules import get_schedule
from stagevar.runtime.stage_plan import fidelity_scales

PROMPTS = ["a red fox in the snow", "a lighthouse in a storm"]


def test_measures_the_chunk_inputs_of_the_fidelity_scales(tiny_bundle):
    # Chunk c > 0 takes chunk c-1's output as input, so the eager sampler's chunk outputs of the
    # cfg-off run give the expected ratios independently of the hooks. Guards: hooking the wrong
    # tensor (a chunk's output), the wrong scale, the CFG rows instead of the null rows, or
    # averaging across chunks.
    resolution = "0.06M"  # 7 scales: fidelity = 8x8, 12x12, 16x16 (cheap)
    got = measure_table(tiny_bundle, PROMPTS, ["0.96", "0.8"], aspect="1:1", resolution=resolution, seed=5,
                        say=lambda m: None)
    schedule = get_schedule("1:1", resolution)
    ref = ReferenceSampler(tiny_bundle).generate(PROMPTS, plan="cfg-off", cfg=tiny_bundle.preset.default_cfg,
                                                 tau=tiny_bundle.preset.default_tau, resolution=resolution,
                                                 seed=[5, 6], keep_intermediates=True)
    for p, k in enumerate(fidelity_scales(schedule.num_scales)):
        outputs = ref.records[k].chunk_outputs  # per chunk (rows=2 null rows, M, C)
        assert outputs[0].shape[0] == len(PROMPTS)
        m = schedule.token_counts[k]
        for c in range(1, len(outputs)):
            want = np.mean([energy_ranks(img, [0.96, 0.8]) for img in outputs[c - 1]], axis=0) / m
            assert got["0.96"][p][c] == pytest.approx(want[0]) and got["0.8"][p][c] == pytest.approx(want[1])
    assert all(0 < r <= 1 for rows in got.values() for row in rows for r in row)


def test_options_are_checked_in_one_sentence(tmp_path):
    assert parse_alphas("0.96, 0.98") == ("0.96", "0.98")
    for bad, match in (("1.5", "strictly between"), ("x", "not a number"), ("0.9,0.90", "twice"), ("", "empty")):
        with pytest.raises(StagevarError, match=match):
            parse_alphas(bad)
    prompts, source = read_prompts(None, 3)
    assert len(prompts) == 3 and source == "built-in"
    (tmp_path / "p.txt").write_text("one\n\n two \n")
    assert read_prompts(tmp_path / "p.txt", None) == (["one", "two"], str(tmp_path / "p.txt"))
    with pytest.raises(StagevarError, match="more than the 2 prompts"):
        read_prompts(tmp_path / "p.txt", 5)
    with pytest.raises(StagevarError, match="positive integer"):
        read_prompts(None, 0)
    with pytest.raises(StagevarError, match="could not be read"):
        read_prompts(tmp_path / "missing.txt", None)
