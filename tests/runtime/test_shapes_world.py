"""The shapes world generator and its analyser (runtime side, numpy only)."""

import numpy as np
import pytest

from stagevar.runtime.shapes_analyser import detect, judge, summarise
from stagevar.runtime.shapes_world import (
    HELD_OUT_PAIRS, caption, eval_prompts, parse_caption, render, sample_batch, sample_scene)


def test_generator_is_deterministic_from_its_seed():
    # Guards against hidden global randomness (np.random.* or an unseeded generator) in the
    # generator: the same seed must give the same pixels and captions, another seed other ones.
    a, ca, _ = sample_batch(7, 16)
    b, cb, _ = sample_batch(7, 16)
    c, cc, _ = sample_batch(8, 16)
    assert np.array_equal(a, b) and ca == cb
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("held_out", [False, True])
def test_analyser_reads_back_every_generated_scene_exactly(held_out):
    # Guards against analyser errors (shape thresholds, colour matching, component merging,
    # position anchors) and against generator layouts the analyser cannot read (touching objects).
    imgs, _, scenes = sample_batch(3, 300, held_out=held_out)
    for img, scene in zip(imgs, scenes):
        found = sorted((d.colour, d.shape, d.top, d.left, d.side) for d in detect(img))
        want = sorted((o.colour, o.shape, o.row, o.col, o.side) for o in scene.objects)
        assert found == want, caption(scene)
        assert judge(scene, img)["overall"], caption(scene)


def test_held_out_pairs_never_appear_in_training_scenes_and_always_in_held_out_ones():
    # Guards against the held-out split leaking into training data (or held-out prompts that do
    # not actually contain a held-out pair).
    rng = np.random.default_rng(0)
    for _ in range(500):
        assert not {(o.colour, o.shape) for o in sample_scene(rng).objects} & HELD_OUT_PAIRS
        assert {(o.colour, o.shape) for o in sample_scene(rng, held_out=True).objects} & HELD_OUT_PAIRS


def test_judge_fails_images_that_do_not_match_the_prompt():
    # Guards against a judge that passes anything: another scene's image must fail the prompt.
    prompts = eval_prompts(30)
    wrong = 0
    for (text, scene), (_, other) in zip(prompts, prompts[1:] + prompts[:1]):
        res = judge(scene, render(other))
        wrong += not res["overall"]
    assert wrong == len(prompts)
    assert summarise([{"count": True, "colour": False, "shape": None, "position": True, "size": None,
                       "overall": False}])["colour"] == 0.0


def test_every_paraphrase_parses_back_to_its_scene():
    # Guards against --prompts FILE prompts losing their adherence score (parser out of step
    # with the caption templates) or parsing to the wrong objects/relation.
    rng = np.random.default_rng(1)
    for _ in range(200):
        s = sample_scene(rng)
        for v in range(6):
            p = parse_caption(caption(s, v))
            assert p is not None and p.kind == s.kind and p.relation == s.relation
            assert [(o.colour, o.shape) for o in p.objects] == [(o.colour, o.shape) for o in s.objects]
            assert (p.position, p.size) == (s.position, s.size)
    assert parse_caption("a photo of a cat") is None
