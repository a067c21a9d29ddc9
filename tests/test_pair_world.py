"""Two-shape scenes: drawn as their captions say, never overlapping, held-out pairs kept out; and the pixel judge
finds both shapes and the relation between them, and flags pictures that are not two clear shapes."""

from __future__ import annotations

import random
from collections import Counter

import numpy as np
import pytest
from PIL import Image, ImageFilter

from sdviz.toy import world
from sdviz.toy.judge import judge_pair


def scenes(n: int, seed: int = 0, **kwargs) -> list[world.PairScene]:
    rng = random.Random(seed)
    return [world.random_pair_scene(rng, **kwargs) for _ in range(n)]


def test_pair_scenes_follow_their_relation_and_never_overlap():
    for relation in world.RELATIONS:
        for scene in scenes(200, relation=relation):
            a, b = scene.first, scene.second
            assert (a.colour, a.shape) != (b.colour, b.shape)  # different colours or shapes
            gap = max(abs(a.cx - b.cx), abs(a.cy - b.cy)) - a.half - b.half
            assert gap >= world.PAIR_GAP
            if relation != "and":
                assert world.seen_relation((a.cx, a.cy), (b.cx, b.cy)) == relation
    arrangements = Counter(world.seen_relation((s.first.cx, s.first.cy), (s.second.cx, s.second.cy))
                           for s in scenes(400, relation="and"))
    assert set(arrangements) == {"left", "right", "above", "below"}  # "and": any arrangement


def test_held_out_pairs_never_appear_in_training_batches():
    _, drawn = world.batch(random.Random(3), 2000, pair_fraction=0.5, size=32)
    pairs = [s for s in drawn if isinstance(s, world.PairScene)]
    assert 800 < len(pairs) < 1200
    for s in pairs:
        assert not world.is_held_out_pair((s.first.colour, s.first.shape), (s.second.colour, s.second.shape))


def test_the_one_shape_stream_is_unchanged_without_pairs():
    """The shipped model's training draws exactly the pictures it drew before pairs existed."""
    a, scenes_a = world.batch(random.Random(7), 20)
    b, scenes_b = world.batch(random.Random(7), 20, pair_fraction=0.0)
    assert np.array_equal(a, b) and scenes_a == scenes_b
    assert all(isinstance(s, world.Scene) for s in scenes_a)


def test_captions_of_pairs():
    assert world.pair_caption(("red", "circle"), "left", ("blue", "square")) == \
        "a red circle to the left of a blue square"
    assert world.pair_caption(("red", "circle"), "and", ("blue", "square")) == "a red circle and a blue square"
    for word in " ".join(world.RELATIONS.values()).split():
        assert word in world.PAIR_VOCABULARY


@pytest.mark.parametrize("side", [128, 64])
def test_the_judge_finds_both_shapes_and_the_relation_in_drawn_pairs(side):
    wrong = Counter()
    drawn = [s for r in world.RELATIONS for s in scenes(40, seed=hash(r) % 1000, relation=r)]
    for scene in drawn:
        verdict = judge_pair(world.draw_scene(scene, side))
        first = (scene.first.colour, scene.first.shape)
        second = (scene.second.colour, scene.second.shape)
        marks = verdict.agrees(first, second, scene.relation)
        wrong.update(k for k, ok in marks.items() if not ok)
        assert len(verdict.masks) == 2 and verdict.masks[0].shape == (64, 64)
    assert wrong["shapes"] <= 0.02 * len(drawn) and wrong["relation"] <= 0.02 * len(drawn), wrong


def test_each_mask_covers_its_own_shape():
    scene = world.PairScene(world.Shape("red", "square", 0.3, 0.5, 0.12), world.Shape("blue", "circle", 0.7, 0.5, 0.12),
                            "left", (240, 240, 240))
    verdict = judge_pair(world.draw_scene(scene, 128))
    i, j = verdict.assign(("red", "square"), ("blue", "circle"))
    red, blue = verdict.masks[i], verdict.masks[j]
    assert red[:, :32].sum() > 0.99 * red.sum() and blue[:, 32:].sum() > 0.99 * blue.sum()
    assert verdict.agrees(("red", "square"), ("blue", "circle"), "left") == {"shapes": True, "relation": True}
    assert verdict.agrees(("red", "square"), ("blue", "circle"), "right") == {"shapes": True, "relation": False}
    assert verdict.agrees(("blue", "square"), ("red", "circle"), "and") == {"shapes": False}  # colours swapped


def test_the_judge_flags_overlaps_missing_shapes_and_mush():
    touching = world.PairScene(world.Shape("red", "square", 0.45, 0.5, 0.12), world.Shape("blue", "square", 0.6, 0.5, 0.12),
                               "left", (240, 240, 240))
    assert not judge_pair(world.draw_scene(touching, 128)).found  # one blob of two colours
    one = world.draw(world.random_scene(random.Random(1)), 128)
    assert "one shape only" in " ".join(judge_pair(one).problems)
    assert "blank" in " ".join(judge_pair(Image.new("RGB", (128, 128), (240, 240, 240))).problems)
    rng = random.Random(2)
    mush = [world.draw_scene(world.random_pair_scene(rng), 128).filter(ImageFilter.GaussianBlur(5)) for _ in range(20)]
    assert sum(judge_pair(m).found for m in mush) <= 2
