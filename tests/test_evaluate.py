"""The evaluation script: how it scores pictures, and a quick run end to end on a tiny random model."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import random
from pathlib import Path

from PIL import Image

from sdviz.toy import evaluate, world
from sdviz.toy.evaluate import Judgement, Prompt, accuracy, held_out_prompts, write_markdown
from sdviz.toy.judge import judge


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
