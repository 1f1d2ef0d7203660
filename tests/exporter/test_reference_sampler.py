"""The eager reference sampler: determinism, plans, batching, LOWRANK mechanics, replay."""

import numpy as np
import pytest
import torch

from stagevar.exporter.infinity.lowrank import area_upsample_tokens, lowrank_scale, representative_indices
from stagevar.exporter.infinity.model_bundle import InfinityBundle
from stagevar.exporter.infinity.presets import infinity_tiny
from stagevar.exporter.infinity.sampler import ReferenceSampler
from stagevar.exporter.infinity.transformer import text_key_bias
from stagevar.runtime import lowrank as np_lowrank
from stagevar.runtime.errors import StagevarError
from stagevar.runtime.resize import area_resize_tokens
from stagevar.runtime.schedules import H_DIV_W_TEMPLATES, get_schedule
from stagevar.runtime.stage_plan import PLAN_PRESETS, Mode, make_plan


@pytest.fixture(scope="module")
def sampler():
    return ReferenceSampler(InfinityBundle.random(infinity_tiny(), seed=0))


def test_same_seed_gives_the_same_image_and_another_seed_does_not(sampler):
    a = sampler.generate("a red apple", plan="stagevar", resolution="0.25M", seed=3)
    b = sampler.generate("a red apple", plan="stagevar", resolution="0.25M", seed=3)
    c = sampler.generate("a red apple", plan="stagevar", resolution="0.25M", seed=4)
    np.testing.assert_array_equal(a.images, b.images)
    assert not np.array_equal(a.images, c.images)


def test_exact_and_stagevar_differ_and_stagevar_runs_fewer_token_passes(sampler):
    exact = sampler.generate("a cat", plan="exact", seed=0, keep_intermediates=True)
    fast = sampler.generate("a cat", plan="stagevar", seed=0, keep_intermediates=True)
    assert exact.images.shape == fast.images.shape == (1, 256, 256, 3)
    assert not np.array_equal(exact.images, fast.images)
    schedule = get_schedule("1:1", "1M")
    assert exact.token_passes == 2 * 10521 == exact.plan.token_passes(schedule)
    assert fast.token_passes == pytest.approx(fast.plan.token_passes(schedule))
    assert exact.token_passes / fast.token_passes > 3.9
    # Scales before the fidelity stage are identical: the plans only differ from scale 40 on.
    for k in range(10):
        np.testing.assert_array_equal(exact.records[k].bits, fast.records[k].bits)


def test_a_batch_of_two_prompts_equals_two_single_calls(sampler):
    both = sampler.generate(["a red apple on a table", "sunset"], plan="stagevar", resolution="0.25M", seed=10)
    first = sampler.generate("a red apple on a table", plan="stagevar", resolution="0.25M", seed=10)
    second = sampler.generate("sunset", plan="stagevar", resolution="0.25M", seed=11)
    np.testing.assert_allclose(both.codes[0], first.codes[0], atol=1e-6)
    np.testing.assert_allclose(both.codes[1], second.codes[0], atol=1e-6)
    np.testing.assert_array_equal(both.images[0], first.images[0])
    np.testing.assert_array_equal(both.images[1], second.images[0])


def test_num_images_per_prompt_uses_consecutive_seeds(sampler):
    two = sampler.generate("a boat", plan="exact", resolution="0.06M", seed=7, num_images_per_prompt=2)
    one = sampler.generate("a boat", plan="exact", resolution="0.06M", seed=8)
    assert two.images.shape[0] == 2
    np.testing.assert_array_equal(two.images[1], one.images[0])


@pytest.mark.parametrize("plan", PLAN_PRESETS)
def test_every_plan_and_every_aspect_template_generates_at_006m(sampler, plan):
    for h_div_w in H_DIV_W_TEMPLATES:
        result = sampler.generate("a house", plan=plan, aspect=h_div_w, resolution="0.06M", seed=1)
        fh, fw = get_schedule(h_div_w, "0.06M").final_hw
        assert result.images.shape == (1, 4 * fh, 4 * fw, 3)
        assert result.images.dtype == np.uint8
        assert result.images.std() > 0


def test_stagevar_skips_the_last_two_scales_and_lowranks_the_first_fidelity_scale(sampler):
    result = sampler.generate("a tree", plan="stagevar", resolution="0.25M", seed=2, keep_intermediates=True)
    modes = [r.mode for r in result.records]
    assert modes[-3:] == [Mode.LOWRANK, Mode.SKIP, Mode.SKIP]
    assert all(m is Mode.CFG for m in modes[:-3])
    lowrank = result.records[-3]
    assert len(lowrank.indices) == 8
    assert [i.shape[1] for i in lowrank.indices] == list(result.plan.ranks[-3])
    assert result.records[-1].bits is None


def test_replaying_recorded_noise_reproduces_the_run(sampler):
    first = sampler.generate("a bird", plan="stagevar-full", resolution="0.25M", seed=5, keep_intermediates=True)
    noise = [r.noise for r in first.records]
    replay = sampler.generate("a bird", plan="stagevar-full", resolution="0.25M", seed=999, noise=noise)
    np.testing.assert_array_equal(first.images, replay.images)


def test_injected_indices_replace_the_sampled_ones(sampler):
    first = sampler.generate("a bird", plan="stagevar", resolution="0.25M", seed=5, keep_intermediates=True)
    k = len(first.records) - 3
    swapped = {k: [i[:, ::-1].copy() for i in first.records[k].indices]}
    replay = sampler.generate("a bird", plan="stagevar", resolution="0.25M", seed=5, indices=swapped, keep_intermediates=True)
    for got, want in zip(replay.records[k].indices, swapped[k]):
        np.testing.assert_array_equal(got, want)
    assert not np.allclose(replay.records[k].logits, first.records[k].logits)


def test_bad_prompts_are_refused_with_one_sentence(sampler):
    with pytest.raises(StagevarError, match="empty"):
        sampler.generate([], plan="exact")
    with pytest.raises(StagevarError, match="empty"):
        sampler.generate("   ", plan="exact")


def test_unknown_plan_and_unsupported_aspect_are_refused(sampler):
    with pytest.raises(StagevarError):
        sampler.generate("x", plan="fastest")
    with pytest.raises(StagevarError):
        sampler.generate("x", aspect="10:1")


# ---- LOWRANK mechanics ----------------------------------------------------------------------


def test_restoration_keeps_the_upsampled_cache_outside_the_indices_and_writes_outputs_inside():
    bundle = InfinityBundle.random(infinity_tiny(), seed=1)
    model = bundle.transformer
    cfg = model.config
    cond = model.text_condition(torch.randn(1, 3, cfg.text_channels), text_key_bias(torch.ones(1, 3)))
    prev_hw, cur_hw, M = (4, 4), (6, 6), 36
    cache = [torch.randn(1, 16, cfg.embed_dim) for _ in range(cfg.block_chunks)]
    x = torch.randn(1, M, cfg.embed_dim)
    ranks = tuple(range(3, 3 + cfg.block_chunks))
    gumbel = tuple(torch.randn(1, M) for _ in ranks)
    proj = tuple(torch.randn(1, M, r) / r**0.5 for r in ranks)
    cos, sin = torch.ones(M, cfg.head_dim // 2), torch.zeros(M, cfg.head_dim // 2)
    with torch.no_grad():
        hidden, outputs, trace = lowrank_scale(model, x, cond, cos, sin, None, cache, prev_hw, cur_hw, ranks, gumbel, proj)
    last = cfg.block_chunks - 1
    idx = trace.indices[last][0]
    outside = torch.ones(M, dtype=torch.bool)
    outside[idx] = False
    upsampled = area_upsample_tokens(cache[last], prev_hw, cur_hw)
    torch.testing.assert_close(hidden[0, outside], upsampled[0, outside])
    assert not torch.allclose(hidden[0, idx], upsampled[0, idx])
    assert len(set(idx.tolist())) == ranks[last]


def test_torch_and_numpy_representative_indices_agree():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 50, 8, generator=g)
    gumbel = -torch.log(-torch.log(torch.rand(2, 50, generator=g)))
    ours = representative_indices(x, gumbel, 12).numpy()
    theirs = np_lowrank.representative_indices(x.numpy(), gumbel.numpy(), 12)
    # Two libraries sum ||x||^2 in different orders (CPU-dependent): the selected sets may differ
    # only where the 12th and 13th scores are within float32 rounding of each other. A wrong
    # score (e.g. ||x|| instead of log ||x||^2) or order (descending) differs away from ties.
    score = np.log(np.sum(x.numpy().astype(np.float64) ** 2, axis=-1)) + gumbel.numpy()
    for b in range(score.shape[0]):
        if not np.array_equal(ours[b], theirs[b]):
            top = np.sort(score[b])[::-1]
            assert top[11] - top[12] < 1e-5 * max(1.0, abs(top[11])), f"row {b}: indices differ away from a tie"
    assert ours.dtype == theirs.dtype == np.int64


def test_torch_area_upsample_equals_the_runtime_matrices():
    x = torch.randn(2, 32 * 32, 5)
    ours = area_upsample_tokens(x, (32, 32), (40, 40)).numpy()
    np.testing.assert_allclose(ours, area_resize_tokens(x.numpy(), (32, 32), (40, 40)), atol=1e-6)


def test_lowrank_ranks_follow_the_rank_table():
    plan = make_plan("stagevar", get_schedule("1:1", "1M"))
    assert plan.ranks[10] == (27, 219, 337, 401, 410, 317, 252, 306)


def test_the_8b_style_patchified_variant_generates_end_to_end():
    """56 bits per token = 14 code channels x 2x2 pixel-unshuffle, as Infinity-8B."""
    from stagevar.exporter.infinity.presets import infinity_tiny_patchify

    sampler = ReferenceSampler(InfinityBundle.random(infinity_tiny_patchify(), seed=0))
    result = sampler.generate("a cat", plan="stagevar", resolution="0.06M", seed=0, keep_intermediates=True)
    # Codes accumulate on twice the transformer grid (16x16 -> 32x32), decoded x2 -> 64x64 pixels.
    assert result.codes.shape == (1, 14, 32, 32)
    assert result.images.shape == (1, 64, 64, 3)
    assert result.records[3].bits.shape == (1, 36, 56)
    assert result.codes.std() > 0 and result.images.std() > 0
