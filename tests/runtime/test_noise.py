"""Requirements for runtime/noise.py (DESIGN.md section 5)."""

import numpy as np
import pytest

from stagevar.runtime.errors import StagevarError
from stagevar.runtime.noise import ScaleNoise, draw_request_noise, draw_scale_noise
from stagevar.runtime.schedules import get_schedule
from stagevar.runtime.stage_plan import Mode, make_plan

SQ = get_schedule("1:1", "1M")


def _flat(noise):
    out = []
    for n in noise:
        if n is None:
            out.append(None)
            continue
        out.append(n.uniforms)
        out.extend(n.gumbel or ())
        out.extend(n.projections or ())
    return out


def test_same_seed_gives_identical_noise_and_other_seeds_differ():
    plan = make_plan("stagevar", SQ)
    a = _flat(draw_request_noise(7, plan, SQ, batch=1, bits_per_token=32))
    b = _flat(draw_request_noise(7, plan, SQ, batch=1, bits_per_token=32))
    c = _flat(draw_request_noise(8, plan, SQ, batch=1, bits_per_token=32))
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert (x is None and y is None) or np.array_equal(x, y)
    assert not np.array_equal(a[0], c[0])


def test_request_noise_shapes_follow_plan_and_schedule():
    plan = make_plan("stagevar", SQ)
    noise = draw_request_noise(0, plan, SQ, batch=2, bits_per_token=32)
    assert len(noise) == 13
    assert noise[11] is None and noise[12] is None
    for k in range(10):
        n = noise[k]
        assert n.uniforms.shape == (2, SQ.token_counts[k], 32) and n.uniforms.dtype == np.float32
        assert n.gumbel is None and n.projections is None
    low = noise[10]
    assert len(low.gumbel) == len(low.projections) == 8
    for g, q, r in zip(low.gumbel, low.projections, plan.ranks[10]):
        assert g.shape == (2, 1600) and g.dtype == np.float32 and np.all(np.isfinite(g))
        assert q.shape == (2, 1600, r) and q.dtype == np.float32


def test_draw_order_is_uniforms_then_gumbel_and_q_per_chunk():
    rng = np.random.default_rng(5)
    n = draw_scale_noise(rng, Mode.LOWRANK, 1, 6, 3, ranks=(2, 4))
    ref = np.random.default_rng(5)
    assert np.array_equal(n.uniforms, ref.random((1, 6, 3), dtype=np.float32))
    for c, r in enumerate((2, 4)):
        u = np.clip(ref.random((1, 6)), 1e-20, 1 - 1e-16)
        assert np.array_equal(n.gumbel[c], (-np.log(-np.log(u))).astype(np.float32))
        assert np.array_equal(n.projections[c], ref.standard_normal((1, 6, r), dtype=np.float32) * np.float32(1.0 / np.sqrt(r)))


def test_skip_draws_nothing():
    rng = np.random.default_rng(3)
    state = rng.bit_generator.state
    assert draw_scale_noise(rng, "skip", 1, 10, 4) is None
    assert rng.bit_generator.state == state


def test_projection_variance_is_one_over_rank():
    rng = np.random.default_rng(11)
    n = draw_scale_noise(rng, Mode.LOWRANK, 1, 4000, 1, ranks=(4, 64))
    for q, r in zip(n.projections, (4, 64)):
        assert abs(float(q.mean())) < 0.01
        assert float(q.var()) == pytest.approx(1 / r, rel=0.05)


def test_gumbel_noise_has_gumbel_moments():
    n = draw_scale_noise(np.random.default_rng(12), "lowrank", 4, 50000, 1, ranks=(1,))
    g = n.gumbel[0].astype(np.float64)
    assert g.mean() == pytest.approx(np.euler_gamma, abs=0.01)
    assert g.var() == pytest.approx(np.pi ** 2 / 6, rel=0.03)


def test_generator_may_be_passed_and_is_advanced():
    plan = make_plan("exact", get_schedule("1:1", "0.06M"))
    rng = np.random.default_rng(1)
    first = draw_request_noise(rng, plan, get_schedule("1:1", "0.06M"), 1, 32)
    second = draw_request_noise(rng, plan, get_schedule("1:1", "0.06M"), 1, 32)
    assert not np.array_equal(first[0].uniforms, second[0].uniforms)
    assert isinstance(first[0], ScaleNoise)


@pytest.mark.parametrize("bad", [-1, 1.5, "7", None, True])
def test_bad_seed_is_a_user_error(bad):
    with pytest.raises(StagevarError):
        draw_request_noise(bad, make_plan("exact", SQ), SQ, 1, 32)


def test_lowrank_without_ranks_is_refused():
    with pytest.raises(ValueError):
        draw_scale_noise(np.random.default_rng(0), Mode.LOWRANK, 1, 4, 2)
