"""The evaluation script: how it scores pictures, and a quick run end to end on a tiny random model."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sdviz.pipeline.capture import AttentionMaps
from sdviz.pipeline.models import load_model
from sdviz.toy import evaluate, train, world
from sdviz.toy.evaluate import (
    Judgement,
    PairJudgement,
    PairPrompt,
    Prompt,
    accuracy,
    attention_on_own_shape,
    generate_and_judge_pairs,
    held_out_prompts,
    knows_pairs,
    pair_accuracy,
    pair_prompts,
    save_pair_grid,
    write_markdown,
)
from sdviz.toy.judge import judge, judge_pair


def drawn_judgement(prompt: Prompt, **drawn) -> Judgement:
    """A judgement of a drawn picture (by default, exactly what the prompt asks for)."""
    wanted = {"colour": prompt.colour, "shape": prompt.shape, "position": prompt.position, "size": prompt.size}
    scene = world.random_scene(random.Random(0), **{**wanted, **drawn})
    image = world.draw(scene)
    return Judgement(prompt, seed=0, guidance_scale=5.0, verdict=judge(image), image=image)


def test_held_out_prompts_cover_every_held_out_combination_in_every_caption_form():
    prompts = held_out_prompts()
    assert len(prompts) == len(world.HELD_OUT) * 3
    assert {(p.colour, p.shape, p.position) for p in prompts} == set(world.HELD_OUT)
    assert {p.size for p in prompts} == {None, "small", "big"}
    assert "a small red triangle on the left" in {p.text for p in prompts}
    assert "a red triangle on the left" in {p.text for p in prompts}
    assert 0 < len(held_out_prompts(quick=True)) < len(prompts)


def test_accuracy_counts_each_attribute_the_caption_names():
    right = drawn_judgement(Prompt("red", "triangle", "left", "big"))
    wrong_colour = drawn_judgement(Prompt("red", "circle", "top", None), colour="blue", size="small")
    result = accuracy([right, wrong_colour])
    assert result["colour"] == 0.5 and result["shape"] == 1.0 and result["position"] == 1.0
    assert result["size"] == 1.0  # only the first caption names a size
    assert result["all"] == 0.5 and result["clean"] == 1.0 and result["n"] == 2
    assert accuracy([wrong_colour])["size"] is None


def test_seed_spread_scores_each_seed_on_its_own():
    right = drawn_judgement(Prompt("red", "triangle", "left", None))
    wrong_colour = drawn_judgement(Prompt("red", "triangle", "left", None), colour="blue")
    # seed 0: both pictures right; seed 1: one of two wrong in colour; seed 2: the colour wrong in both
    judgements = [dataclasses.replace(j, seed=seed) for seed, j in
                  [(0, right), (0, right), (1, right), (1, wrong_colour), (2, wrong_colour), (2, wrong_colour)]]
    spread = evaluate.seed_spread(judgements)
    assert spread["colour"] == [0.0, 1.0] and spread["all"] == [0.0, 1.0]
    assert spread["shape"] == [1.0, 1.0] and spread["position"] == [1.0, 1.0]
    assert "size" not in spread  # no caption names a size
    assert accuracy(judgements)["colour"] == 0.5  # the pooled figure hides the spread


def test_a_picture_that_is_no_clear_shape_is_wrong_on_every_attribute():
    blank = Image.new("RGB", (64, 64), (240, 240, 240))
    j = Judgement(Prompt("red", "circle", "center", "big"), 0, 5.0, judge(blank), blank)
    assert j.correct == {"colour": False, "shape": False, "position": False, "size": False}
    assert accuracy([j])["clean"] == 0.0


def test_markdown_goes_between_the_markers_and_keeps_the_rest(tmp_path):
    doc = tmp_path / "evaluation.md"
    doc.write_text(f"# Evaluation\n\nintro\n\n{evaluate.MARK_BEGIN}\nold numbers\n{evaluate.MARK_END}\n\noutro\n")
    write_markdown(doc, "new numbers\n")
    text = doc.read_text()
    assert "old numbers" not in text and "new numbers" in text
    assert text.startswith("# Evaluation\n\nintro\n") and text.endswith("\noutro\n")
    write_markdown(doc, "newer numbers\n")
    assert doc.read_text().count(evaluate.MARK_BEGIN) == 1


def test_quick_run_writes_json_markdown_and_grids(tiny_model_dir, tmp_path):
    out, md, images = tmp_path / "results.json", tmp_path / "docs" / "evaluation.md", tmp_path / "docs" / "images"
    results = evaluate.main(["--quick", "--model", str(tiny_model_dir), "--device", "cpu", "--steps", "3",
                             "--out", str(out), "--markdown", str(md), "--images", str(images)])
    saved = json.loads(out.read_text())
    n_prompts = len(held_out_prompts(quick=True))
    scales = [row["guidance_scale"] for row in saved["guidance"]]
    assert scales == sorted({*evaluate.GUIDANCE_SCALES, results["settings"]["guidance_scale"]})
    assert len(saved["pictures"]) == n_prompts * len(scales)
    for row in saved["guidance"]:
        assert row["n"] == n_prompts and all(0 <= row[k] <= 1 for k in ("colour", "shape", "position", "all"))
    assert math.isfinite(saved["vae_psnr"]["mean_db"]) and saved["vae_psnr"]["pictures"] == 20
    speed = saved["speed"]
    assert speed["generation"]["median_s"] > 0 and speed["generation"]["steps"] == 3
    assert speed["load"]["cold_median_s"] > 0 and speed["load"]["warm_median_s"] > 0

    text = md.read_text()
    assert "| guidance | colour | shape | position | size | all | clean |" in text
    assert "](images/eval_grid.png)" in text and "](images/eval_guidance.png)" in text
    assert Image.open(images / "eval_grid.png").width > 0 and Image.open(images / "eval_guidance.png").width > 0


def test_guidance_is_chosen_on_prompts_the_evaluation_never_asks():
    """benchmarks/choose_guidance.py: seen combinations in every caption form, none held out, at other seeds."""
    path = Path(__file__).resolve().parent.parent / "benchmarks" / "choose_guidance.py"
    spec = importlib.util.spec_from_file_location("choose_guidance", path)
    choose = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(choose)
    prompts = choose.validation_prompts()
    combos = {(p.colour, p.shape, p.position) for p in prompts}
    assert len(combos) == 9 and len(prompts) == 27
    assert not combos & set(world.HELD_OUT)
    assert {p.size for p in prompts} == set(evaluate.SIZE_WORDS)
    assert not set(choose.SEEDS) & set(range(evaluate.DEFAULT_SEEDS))


# --- Two-shape prompts --------------------------------------------------------------------------------------------

def pair_picture(first, second, relation="left"):
    layout = {"left": ((0.3, 0.5), (0.7, 0.5)), "above": ((0.5, 0.3), (0.5, 0.7))}[relation]
    scene = world.PairScene(world.Shape(*first, *layout[0], 0.12), world.Shape(*second, *layout[1], 0.12), relation,
                            (240, 240, 240))
    image = world.draw_scene(scene, 128)
    return image, judge_pair(image)


def test_pair_accuracy_counts_shapes_over_all_pictures_and_relations_where_both_are_found():
    asked = PairPrompt(("red", "circle"), "left", ("blue", "square"))
    right_image, right = pair_picture(("red", "circle"), ("blue", "square"))
    swapped_image, swapped = pair_picture(("blue", "square"), ("red", "circle"))  # right shapes, wrong relation
    blank = world.draw(world.random_scene(random.Random(0)), 128)
    judgements = [PairJudgement(asked, 0, 2.0, right, right_image), PairJudgement(asked, 1, 2.0, swapped, swapped_image),
                  PairJudgement(asked, 2, 2.0, judge_pair(blank), blank)]
    acc = pair_accuracy(judgements)
    assert acc["found"] == pytest.approx(2 / 3) and acc["shapes"] == pytest.approx(2 / 3)
    assert acc["relation"] == 0.5 and acc["n"] == 3 and acc["attention_words"] is None


def test_attention_on_its_own_shape_reads_the_judges_masks():
    asked = PairPrompt(("red", "circle"), "left", ("blue", "square"))
    _, verdict = pair_picture(("red", "circle"), ("blue", "square"))
    labels = ["<start>", "a", "red", "circle", "to", "the", "left", "of", "a", "blue", "square", "<end>"]
    maps = np.full((1, len(labels), 16, 16), 0.01, dtype=np.float32)
    maps[0, labels.index("red"), :, :8] = 1.0  # "red" attends to the left half: its own shape
    maps[0, labels.index("blue"), :, :8] = 1.0  # "blue" too: the other shape's
    attention = AttentionMaps(labels=labels, groups=[[i] for i in range(len(labels))], per_step=maps,
                              timesteps=[999.0], layers=["l"], heads={"l": 1})
    assert attention_on_own_shape(attention, asked, verdict) == {"red": True, "blue": False}
    other = PairPrompt(("green", "circle"), "left", ("blue", "square"))  # the picture does not show it
    assert attention_on_own_shape(attention, other, verdict) is None


def test_a_model_trained_on_pairs_is_evaluated_on_them_with_attention(tmp_path):
    train.main(["--preset", "v3-micro", "--workdir", str(tmp_path / "w"), "--out", str(tmp_path / "m"),
                "--threads", "1", "--device", "cpu"])
    model = load_model(tmp_path / "m", device="cpu")
    assert knows_pairs(model)
    prompts = pair_prompts(quick=True)
    assert len(prompts) == 4 and all(p.relation in ("and", "left") for p in prompts)
    judgements = generate_and_judge_pairs(model, prompts[:1], [0], 2.0, 2, with_attention=True)
    assert judgements[0].image.size == (128, 128)  # an untrained model: nothing to find, but it runs end to end
    grid = Image.open(save_pair_grid(judgements * 3, tmp_path / "pairs.png", columns=2))
    assert grid.size == (2 * (128 + 4), 2 * (128 + 46))  # 3 tiles in 2 columns: 2 rows
