"""CFG experiments: the sweep, the what-if at one recorded step, and prompt A/B."""

from __future__ import annotations

import dataclasses
import types

import numpy as np
import pytest
import torch

from sdviz.errors import SdvizError
from sdviz.lessons import experiments
from sdviz.lessons.experiments import (
    describe_sweep,
    guidance_sweep,
    judge_accuracy,
    parse_scales,
    project_trajectories,
    prompt_ab,
    prompt_attributes,
    sweep_figure,
    sweep_pictures_figure,
    what_if,
    what_if_x0,
    with_more_seeds,
)
from sdviz.pipeline.sampler import generate
from sdviz.pipeline.settings import RunSettings
from sdviz.toy import world

SETTINGS = RunSettings(prompt="a big red circle on the left", steps=4, guidance_scale=6.0, seed=3)


@pytest.fixture(scope="module")
def runs(tiny_model):
    return {name: generate(tiny_model, dataclasses.replace(SETTINGS, scheduler=name))
            for name in (None, "ddim", "euler", "dpmpp_2m")}


@pytest.mark.parametrize("scheduler", [None, "ddim", "euler", "dpmpp_2m"])
def test_what_if_at_the_runs_own_scale_reproduces_the_recorded_x0(tiny_model, runs, scheduler):
    trace = runs[scheduler]
    for step, record in enumerate(trace.steps):
        recorded = record.pred_x0.float()
        again = what_if_x0(tiny_model, trace, step, trace.settings.guidance_scale)
        # The trace keeps float16 copies: agreement to float16 precision of the values involved.
        tolerance = 2e-3 * float(recorded.abs().max()) + 2e-3
        assert torch.allclose(again, recorded, atol=tolerance), (step, float((again - recorded).abs().max()))


def test_what_if_moves_x0_along_the_guidance_direction(tiny_model, runs):
    trace = runs[None]
    x = {g: what_if_x0(tiny_model, trace, 1, g) for g in (0.0, 3.0, 6.0, 12.0)}
    # x0 is affine in g: equal steps in g give equal steps in x0.
    assert torch.allclose(x[6.0] - x[3.0], x[3.0] - x[0.0], atol=1e-4)
    assert torch.allclose(x[12.0] - x[6.0], 2 * (x[6.0] - x[3.0]), atol=1e-4)
    assert float((x[12.0] - x[6.0]).abs().max()) > 1e-3
    result = what_if(tiny_model, trace, 1, 12.0)
    assert result.image.size == trace.image.size and result.recorded_image.size == trace.image.size
    assert torch.equal(result.x0, x[12.0])


def test_what_if_needs_guidance_and_a_real_step(tiny_model, runs):
    unguided = generate(tiny_model, dataclasses.replace(SETTINGS, guidance_scale=1.0))
    with pytest.raises(SdvizError, match="no classifier-free guidance"):
        what_if_x0(tiny_model, unguided, 0, 5.0)
    with pytest.raises(SdvizError, match="Step 100 does not exist"):
        what_if_x0(tiny_model, runs[None], 99, 5.0)
    with pytest.raises(SdvizError, match="guidance scale"):
        what_if_x0(tiny_model, runs[None], 0, float("nan"))


def test_sweep_same_seed_distances_from_the_unguided_picture(tiny_model):
    sweep = guidance_sweep(tiny_model, SETTINGS, [0.5, 1.0, 4.0, 12.0])
    assert [p.guidance_scale for p in sweep.points] == [0.5, 1.0, 4.0, 12.0]
    d = {p.guidance_scale: p.distance for p in sweep.points}
    assert d[0.5] == d[1.0] == 0.0  # g <= 1: no guidance, the very same picture
    assert 0 < d[4.0] < d[12.0]
    at_12 = generate(tiny_model, dataclasses.replace(SETTINGS, guidance_scale=12.0)).image
    assert np.array_equal(np.asarray(sweep.points[3].image), np.asarray(at_12))
    assert all(p.accuracy is None for p in sweep.points)  # not the embedded model: no judge
    fig = sweep_figure(sweep)
    assert list(fig.axes[0].get_lines()[0].get_ydata()) == [d[0.5], d[1.0], d[4.0], d[12.0]]


class SeesABigRedSquareOnTheLeft:
    """A stand-in for the pixel judge's verdict (the tiny model's pictures show nothing the real judge knows)."""

    clear, problems = True, ()
    colour, shape, size, position = "red", "square", "big", "left"
    rgb = (200, 40, 40)  # 20 from the toy red (220, 40, 40)

    def agrees(self, **wanted) -> dict[str, bool]:
        return {k: getattr(self, k) == v for k, v in wanted.items()}


def test_sweep_uses_the_judge_when_asked(tiny_model, monkeypatch):
    monkeypatch.setattr(experiments, "judge", lambda image: SeesABigRedSquareOnTheLeft())
    sweep = guidance_sweep(tiny_model, dataclasses.replace(SETTINGS, steps=2), [2.0], use_judge=True)
    assert sweep.points[0].accuracy == 0.75  # 3 of the 4 named attributes
    assert sweep.points[0].verdict == "shape: square"  # what the judge got wrong, in words
    assert sweep.judged and len(sweep_figure(sweep).axes) == 2
    labels = sweep_pictures_figure(sweep).axes[0]
    assert labels.get_title() == "g = 2" and labels.get_xlabel() == "judge: 75%\nshape: square"


def test_a_flat_accuracy_is_averaged_over_more_seeds_and_the_text_says_so(tiny_model, monkeypatch):
    monkeypatch.setattr(experiments, "judge", lambda image: SeesABigRedSquareOnTheLeft())
    settings = dataclasses.replace(SETTINGS, steps=2, prompt="a big red square")
    sweep = guidance_sweep(tiny_model, settings, [1.0, 4.0], use_judge=True)
    assert sweep.flat and sweep.points[0].accuracy == 1.0
    # Another seed where the judge sees less at g = 4: the mean drops there, and the figure and the text say so.
    other = dataclasses.replace(guidance_sweep(tiny_model, dataclasses.replace(settings, seed=8), [1.0, 4.0],
                                               use_judge=True))
    other.points[1].accuracy = 0.5
    averaged = with_more_seeds(sweep, [other])
    assert averaged.seeds == [settings.seed, 8] and averaged.mean_accuracy() == [1.0, 0.75]
    text = describe_sweep(averaged)
    assert "a flat line that shows no trade-off" in text and "seeds 8 (2 pictures per g)" in text
    assert "highest, 100%, at g = 1" in text
    figure = sweep_figure(averaged)  # what guidance buys, beside what it costs
    assert [ax.get_title() for ax in figure.axes] == ["what guidance buys: the prompt followed",
                                                      "what it costs: the colour strays from the toy colour"]
    legend = [t.get_text() for t in figure.axes[0].get_legend().get_texts()]
    assert legend == ["mean of 2 seeds", f"seed {settings.seed}"]
    assert averaged.mean_colour_error() == [20.0, 20.0]
    assert "comes closest to the toy colour at g = 1 (20, RGB distance, mean of the seeds)." in text
    other.points[1].colour_error = 60.0  # over-saturated at g = 4 for seed 8: the mean says so
    text = describe_sweep(with_more_seeds(sweep, [other]))
    assert "at g = 4 it strays 40: too much guidance over-saturates it" in text


def test_the_real_judge_scores_a_drawn_toy_picture():
    scene = world.random_scene(__import__("random").Random(5), colour="red", shape="circle", size="big",
                                  position="left")
    picture = world.draw(scene)
    assert judge_accuracy(picture, "a big red circle on the left") == 1.0
    assert judge_accuracy(picture, "a big blue circle on the left") == 0.75
    assert judge_accuracy(picture, "something else entirely") is None


def test_prompt_attributes():
    assert prompt_attributes("A big red circle on the left") == {
        "size": "big", "colour": "red", "shape": "circle", "position": "left"}
    assert prompt_attributes("a photo of a cat") == {}


@pytest.mark.parametrize("text, expected", [("1, 3, 7.5", [1.0, 3.0, 7.5]), ("2 4", [2.0, 4.0]), ("0", [0.0])])
def test_parse_scales(text, expected):
    assert parse_scales(text) == expected


@pytest.mark.parametrize("text", ["", "one, two", "1, -2", "1, 99", ",".join(["1"] * 11), "nan"])
def test_parse_scales_refuses_bad_input(text):
    with pytest.raises(SdvizError):
        parse_scales(text)


def test_prompt_ab_starts_from_the_same_noise(tiny_model, runs):
    ab = prompt_ab(tiny_model, SETTINGS, "a small blue square at the top", trace_a=runs[None])
    assert ab.a is runs[None] and ab.b.settings.prompt == "a small blue square at the top"
    assert ab.b.settings.seed == SETTINGS.seed
    assert torch.equal(ab.a.steps[0].latents, ab.b.steps[0].latents)
    d = ab.divergence
    assert d[0] == 0 and d[-1] > 0 and len(d) == len(ab.a.steps) + 1
    a_path, b_path = ab.projection.paths
    assert a_path.shape == b_path.shape == (len(ab.a.steps) + 1, 2)
    assert np.allclose(a_path[0], b_path[0])  # one shared starting point on the map
    assert 0 < ab.projection.explained.sum() <= 1 + 1e-9
    assert "same noise" in experiments.describe_ab(ab)


def test_pca_finds_the_direction_of_a_straight_path():
    """Synthetic trajectories along one line: the first direction holds all the variance."""
    class Fake:
        def __init__(self, scale):
            line = torch.linspace(0, 1, 5)[:, None, None, None] * torch.ones(1, 2, 2, 2) * scale
            self.steps = [types.SimpleNamespace(latents=line[i]) for i in range(4)]
            self.final_latents = line[4]

    projection = project_trajectories([Fake(1.0), Fake(2.0)])
    assert projection.explained[0] == pytest.approx(1.0)
    first = projection.paths[1][:, 0]
    assert np.all(np.diff(first) != 0) and np.allclose(projection.paths[1][:, 1], 0, atol=1e-9)
