"""The 2-D diffusion lab: its exact noise predictor against Monte Carlo, classifier-free guidance at g = 1 against the
conditional sampler, and the samples' statistics as guidance grows (what Ho & Salimans' Figure 2 shows)."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from diffusers.utils.torch_utils import randn_tensor

from sdviz.errors import SdvizError
from sdviz.lessons import diffusion_2d as lab
from sdviz.lessons.diffusion_2d import MIXTURE, LabSettings
from sdviz.pipeline.sampler import NoiseEstimate, reverse_steps, scheduler_step_kwargs
from sdviz.pipeline.schedulers import current_sigma

ALPHAS_CUMPROD = lab.make_lab_scheduler("ddim").alphas_cumprod.double().numpy()


def monte_carlo_noise(x_t: np.ndarray, alpha_bar: float, label: int | None, draws: int, seed: int):
    """E[eps | x_t] by importance sampling: draw x0 from the data (or one class), weight each by how likely it makes
    x_t, average the noise that would have produced x_t from it. Returns the estimate and its standard error."""
    rng = np.random.default_rng(seed)
    x0 = MIXTURE.sample(draws, rng, label)
    eps = (x_t[None] - math.sqrt(alpha_bar) * x0) / math.sqrt(1 - alpha_bar)
    log_w = -0.5 * (eps**2).sum(axis=1)  # N(x_t; sqrt(ab) x0, (1 - ab) I), up to a constant
    w = np.exp(log_w - log_w.max())
    w /= w.sum()
    estimate = (w[:, None] * eps).sum(axis=0)
    stderr = np.sqrt((w[:, None] ** 2 * (eps - estimate) ** 2).sum(axis=0))
    return estimate, stderr, 1 / (w**2).sum()


@pytest.mark.parametrize("t", [60, 300, 600, 999])
def test_the_exact_noise_predictor_matches_a_monte_carlo_estimate(t):
    """At noisy points typical of the data (or of one class) at this t, the unconditional and conditional estimates."""
    alpha_bar = float(ALPHAS_CUMPROD[t])
    rng = np.random.default_rng(t)
    compared = 0
    for label in (None, 0, 2):
        clean = MIXTURE.sample(3, rng, label)
        points = math.sqrt(alpha_bar) * clean + math.sqrt(1 - alpha_bar) * rng.standard_normal(clean.shape)
        exact = lab.exact_noise(MIXTURE, points, alpha_bar)
        for i, x_t in enumerate(points):
            estimate, stderr, effective = monte_carlo_noise(x_t, alpha_bar, label, draws=200_000, seed=i)
            if effective < 300:
                continue  # too few draws land near x_t for the estimate to mean anything
            compared += 1
            predicted = exact.unconditional[i] if label is None else exact.per_class[i, label]
            assert np.all(np.abs(predicted - estimate) <= 5 * stderr + 2e-3), (t, x_t, label, predicted, estimate)
    assert compared >= 7  # of 9


def test_the_noise_prediction_is_minus_sqrt_one_minus_alpha_bar_times_the_score():
    """eps = -sqrt(1 - ab) grad log p_t(x_t): compare with finite differences of the noisy data's log density."""
    rng = np.random.default_rng(0)
    for t in (0, 50, 500, 999):
        a = float(ALPHAS_CUMPROD[t])
        x = rng.normal(size=(20, 2)) * 2
        h = 1e-5
        grad = np.stack([(lab.log_density(MIXTURE, x + h * e, a) - lab.log_density(MIXTURE, x - h * e, a)) / (2 * h)
                         for e in np.eye(2)], axis=1)
        np.testing.assert_allclose(lab.exact_noise(MIXTURE, x, a).unconditional, -math.sqrt(1 - a) * grad,
                                   rtol=1e-5, atol=1e-6)
        for k in range(3):  # each class alone too, far from it as well
            grad_k = np.stack([(lab.log_density(MIXTURE, x + h * e, a, k) - lab.log_density(MIXTURE, x - h * e, a, k))
                               / (2 * h) for e in np.eye(2)], axis=1)
            np.testing.assert_allclose(lab.exact_noise(MIXTURE, x, a).per_class[:, k], -math.sqrt(1 - a) * grad_k,
                                       rtol=1e-5, atol=1e-6)


def test_far_out_points_and_both_ends_of_the_schedule_give_finite_predictions():
    points = np.array([[60.0, 60.0], [-80.0, 5.0], [0.0, 0.0], [1e-9, -1e-9]])
    for a in (float(ALPHAS_CUMPROD[0]), float(ALPHAS_CUMPROD[999]), 1 - 1e-12, 1e-6):
        noise = lab.exact_noise(MIXTURE, points, a)
        assert np.isfinite(noise.unconditional).all() and np.isfinite(noise.per_class).all()
        np.testing.assert_allclose(np.exp(noise.log_resp).sum(axis=1), 1.0)
    # (60, 60) at t = 0 belongs to the class whose centre is nearest along the metric: one-hot, no NaN
    resp = np.exp(lab.exact_noise(MIXTURE, points, float(ALPHAS_CUMPROD[0])).log_resp)
    assert resp[0].max() == pytest.approx(1.0)


def conditional_sampler(settings: LabSettings, guidance: str) -> np.ndarray:
    """The loop with the plain conditional (or unconditional) predictor, no CFG formula: the final points."""
    scheduler = lab.make_lab_scheduler(settings.scheduler)
    scheduler.set_timesteps(settings.steps)
    generator = torch.Generator("cpu").manual_seed(settings.seed)
    latents = randn_tensor((settings.samples, 2), generator=generator, dtype=torch.float64) * scheduler.init_noise_sigma
    labels = lab.class_labels(settings.samples, settings.label)

    def predict(i, t, model_input):
        sigma = current_sigma(scheduler, t)
        noise = lab.exact_noise(MIXTURE, model_input.numpy(), 1 / (1 + sigma**2))
        eps = torch.from_numpy(noise.conditional(labels) if guidance == "conditional" else noise.unconditional)
        return NoiseEstimate(guided=eps, text=eps, uncond=[None])

    for step in reverse_steps(scheduler, latents, scheduler.timesteps, predict,
                              scheduler_step_kwargs(scheduler, generator)):
        latents = step.next_latents
    return latents.numpy()


@pytest.mark.parametrize("scheduler", lab.SCHEDULER_NAMES)
def test_guidance_one_is_the_conditional_sampler_and_zero_the_unconditional_one(scheduler):
    settings = LabSettings(label=None, steps=12, scheduler=scheduler, samples=300, seed=3)
    for g, which in ((1.0, "conditional"), (0.0, "unconditional")):
        guided = lab.sample_2d(replace(settings, guidance_scale=g)).points[-1]
        np.testing.assert_allclose(guided, conditional_sampler(settings, which), rtol=0, atol=1e-9)


def test_the_conditional_sampler_reproduces_each_class():
    """g = 1, many samples: each class's mean and covariance, within the Monte-Carlo error of 4000 samples."""
    for label in range(3):
        points = np.concatenate([lab.sample_2d(LabSettings(label=label, guidance_scale=1.0, steps=50, samples=1000,
                                                            seed=seed)).points[-1] for seed in range(4)])
        mean, cov = points.mean(axis=0), np.cov(points.T)
        np.testing.assert_allclose(mean, MIXTURE.means[label], atol=0.05)
        np.testing.assert_allclose(cov, MIXTURE.covs[label], atol=0.05)


def test_without_guidance_the_samples_cover_all_three_classes_equally():
    trace = lab.sample_2d(LabSettings(label=0, guidance_scale=0.0, steps=50, samples=1000, seed=1))
    owner = np.argmax(lab.exact_noise(MIXTURE, trace.points[-1], 1 - 1e-12).log_resp, axis=1)
    np.testing.assert_allclose(np.bincount(owner, minlength=3) / len(owner), [1 / 3] * 3, atol=0.05)


@pytest.mark.parametrize("scheduler", ["ddim", "euler", "dpmpp_2m"])
def test_more_guidance_moves_samples_away_from_the_other_classes_and_concentrates_them(scheduler):
    """Ho & Salimans' Figure 2: as guidance grows each class's samples leave the others behind and bunch up; much
    guidance carries them past the far edge of their own class."""
    stats = {}
    for g in (1.0, 3.0, 10.0):
        trace = lab.sample_2d(LabSettings(label=None, guidance_scale=g, steps=30, scheduler=scheduler, samples=900))
        stats[g] = lab.class_stats(trace)
    for k in range(3):
        distance = [stats[g][k].distance_to_others for g in (1.0, 3.0, 10.0)]
        spread = [stats[g][k].spread for g in (1.0, 3.0, 10.0)]
        radius = [stats[g][k].radius for g in (1.0, 3.0, 10.0)]
        assert distance[0] < distance[1] - 0.2 < distance[2] - 0.4, distance
        assert spread[0] > spread[1] > spread[2] and spread[2] < 0.6 * spread[0], spread
        assert radius[0] == pytest.approx(2.0, abs=0.15)  # g = 1: where the data is
        far_edge = 2 + 2 * 0.35  # two stds across the circle beyond the class's centre
        assert radius[2] > far_edge - 0.1 and np.mean(stats[10.0][k].own_share) == 1.0, radius


def test_the_trace_keeps_every_step_as_the_predictor_saw_it():
    trace = lab.sample_2d(LabSettings(steps=8, scheduler="euler", samples=100))
    assert trace.points.shape == (9, 100, 2) and trace.pred_x0.shape == (8, 100, 2)
    assert trace.timesteps[0] == 999 and np.all(np.diff(trace.alpha_bars) > 0)
    assert trace.points[0].std() == pytest.approx(1.0, abs=0.12)  # pure noise, variance preserving (Euler too)
    assert np.abs(trace.points[-1]).max() < 6


@pytest.mark.parametrize("change, says", [
    (dict(guidance_scale=11.0), "guidance scale"), (dict(guidance_scale=float("nan")), "guidance scale"),
    (dict(steps=0), "number of steps"), (dict(steps=2.5), "number of steps"), (dict(samples=5000), "samples"),
    (dict(seed=-1), "seed"), (dict(scheduler="magic"), "Unknown scheduler"), (dict(label=3), "class"),
])
def test_bad_settings_are_refused_in_words(change, says):
    with pytest.raises(SdvizError, match=says):
        lab.sample_2d(replace(LabSettings(), **change))


def test_the_figures_show_every_point_and_say_which_step():
    trace = lab.sample_2d(LabSettings(samples=150, steps=5))
    first = lab.lab_figure(trace, 0)
    assert "the start (pure noise): t = 999" in first.axes[0].get_title()
    assert "after 2 of 5 steps" in lab.lab_figure(trace, 2).axes[0].get_title()
    dots = [c for c in first.axes[0].collections if c.get_label().endswith(" class")]
    assert [c.get_label() for c in dots] == ["red class", "blue class", "green class"]
    assert sum(len(c.get_offsets()) for c in dots) == 150
    last = lab.lab_figure(trace, 5)
    assert "after all 5 steps" in last.axes[0].get_title()
    comparison = lab.comparison_figure(lab.compare_guidance(trace.settings))
    assert [ax.get_title() for ax in comparison.axes] == ["g = 0 (unconditional)", "g = 1 (conditional)",
                                                          "g = 3 (guided)", "g = 10 (guided)"]
    assert "| g = 10 (guided) |" in lab.describe_comparison(lab.compare_guidance(trace.settings))


# --- The page's handlers (sdviz.app.lab2d), called directly -------------------------------------------------------


def test_the_lab_tab_samples_scrubs_and_plays():
    import gradio as gr
    from matplotlib.figure import Figure

    from sdviz.app import lab2d

    out = lab2d.lab_run("three Gaussians", None, "blue", 4.0, 6, "euler", 200.0, 2.0)
    run, slider, figure, text, comparison, table, message = out
    assert isinstance(run, lab.Lab2DTrace) and message == ""
    assert run.settings == LabSettings(label=1, guidance_scale=4.0, steps=6, scheduler="euler", samples=200,
                                             seed=2)
    assert [ax.get_title() for ax in comparison.axes] == [lab.scale_title(g) for g in (0, 1, 3, 4, 10)]
    assert slider.maximum == 6 and slider.value == 6
    assert isinstance(figure, Figure) and isinstance(comparison, Figure)
    assert "The samples" in text and "blue" in text and "| g = 4 (guided) |" in table
    figure, text, message = lab2d.lab_step(run, 0)
    assert "The start" in text and "the start (pure noise)" in figure.axes[0].get_title()
    timer, start, message = lab2d.lab_play(run, 6)  # at the samples: plays from the noise
    assert timer.active and start == 0
    timer, step, figure, text = lab2d.lab_tick(run, 5)
    assert step == 6 and "The samples" in text
    timer, *rest = lab2d.lab_tick(run, 6)  # at the end the play stops
    assert timer.active is False and all(isinstance(r, type(gr.skip())) for r in rest)
    assert lab2d.lab_opened(run, "three Gaussians", None, "red", 1, 5, "ddim", 100, 0)[0] == gr.skip()  # has a run


GAUSSIANS = ("three Gaussians", None)
EMPTY_CANVAS = {"background": None, "layers": [], "composite": np.full((300, 300, 3), 255, np.uint8)}


@pytest.mark.parametrize("inputs, says", [
    ((*GAUSSIANS, "purple", 3, 30, "ddim", 500, 0), "Pick a class"),
    ((*GAUSSIANS, "red", "lots", 30, "ddim", 500, 0), "must be a number"),
    ((*GAUSSIANS, "red", 3, 30, "ddim", 500, 2.5), "whole number"),
    ((*GAUSSIANS, "red", 3, 30, "ddim", 20, 0), "number of samples"),
    ((*GAUSSIANS, "red", 3, 30, "magic", 500, 0), "Unknown scheduler"),
    ((*GAUSSIANS, "red", 3, 30, "ddim", 500, None), "seed"),
    (("my drawing", None, "red", 3, 30, "ddim", 500, 0), "Draw something first"),
    (("my drawing", EMPTY_CANVAS, "red", 3, 30, "ddim", 500, 0), "Draw something first"),
    (("a photo", None, "red", 3, 30, "ddim", 500, 0), "Pick the data"),
])
def test_bad_lab_input_keeps_the_tab_and_says_why(inputs, says):
    import gradio as gr

    from sdviz.app import lab2d

    *outputs, message = lab2d.lab_run(*inputs)
    assert all(o == gr.skip() for o in outputs) and says in message and message.startswith("⚠️")
    *outputs, message = lab2d.lab_step(None, 3)
    assert all(o == gr.skip() for o in outputs) and "Sample" in message


# --- A student's drawing as the data ---------------------------------------------------------------------------


def drawing(strokes) -> np.ndarray:
    """A 300 x 300 white canvas with (class, PIL shape, box) strokes, as the page's Sketchpad hands it over (RGB)."""
    from PIL import Image, ImageDraw

    canvas = Image.new("RGB", (300, 300), "white")
    pen = ImageDraw.Draw(canvas)
    for label, shape, box in strokes:
        colour = lab.CLASS_COLOURS[label]
        if shape == "ring":
            pen.ellipse(box, outline=colour, width=8)
        else:
            pen.line(box, fill=colour, width=8)
    return np.array(canvas)


RING_AND_BAR = [(0, "ring", (50, 50, 250, 250)), (2, "line", (150, 110, 150, 190))]  # red ring radius 2, green bar


def test_a_drawing_becomes_a_mixture_of_small_gaussians_of_its_colours():
    mixture = lab.drawn_mixture(drawing(RING_AND_BAR))
    assert len(mixture.weights) == lab.MAX_DRAWN and mixture.present == [0, 2]
    radius = np.linalg.norm(mixture.means, axis=1)
    ring, bar = mixture.classes == 0, mixture.classes == 2
    # the canvas spans -3 .. 3, so the 200-px ring (drawn 8 px wide, inwards) lies from radius 1.84 to 2
    assert 1.8 < radius[ring].min() and radius[ring].max() < 2.02
    assert np.abs(mixture.means[bar, 0]).max() < 0.15 and np.abs(mixture.means[bar, 1]).max() < 0.85
    top_left = lab.drawn_mixture(drawing([(1, "line", (20, 20, 40, 20))]))
    assert top_left.present == [1] and np.all(top_left.means[:, 0] < -2) and np.all(top_left.means[:, 1] > 2)


def test_the_exact_noise_predictor_of_a_drawing_matches_monte_carlo():
    mixture = lab.drawn_mixture(drawing(RING_AND_BAR))
    alpha_bar = float(ALPHAS_CUMPROD[300])
    rng = np.random.default_rng(5)
    for label in (None, 0, 2):
        clean = mixture.sample(2, rng, label)
        points = math.sqrt(alpha_bar) * clean + math.sqrt(1 - alpha_bar) * rng.standard_normal(clean.shape)
        exact = lab.exact_noise(mixture, points, alpha_bar)
        for i, x_t in enumerate(points):
            x0 = mixture.sample(200_000, np.random.default_rng(i), label)
            eps = (x_t[None] - math.sqrt(alpha_bar) * x0) / math.sqrt(1 - alpha_bar)
            w = np.exp(-0.5 * (eps**2).sum(axis=1) - np.max(-0.5 * (eps**2).sum(axis=1)))
            w /= w.sum()
            estimate = (w[:, None] * eps).sum(axis=0)
            stderr = np.sqrt((w[:, None] ** 2 * (eps - estimate) ** 2).sum(axis=0))
            predicted = exact.unconditional[i] if label is None else exact.per_class[i, label]
            assert np.all(np.abs(predicted - estimate) <= 5 * stderr + 2e-3), (label, predicted, estimate)
    assert np.all(np.isneginf(lab.exact_noise(mixture, points, alpha_bar).log_resp[:, 1]))  # no blue strokes


def test_sampling_a_drawing_draws_it_and_guidance_separates_its_colours():
    mixture = lab.drawn_mixture(drawing(RING_AND_BAR))
    trace = lab.sample_2d(LabSettings(guidance_scale=1.0, samples=600, steps=40), mixture)
    assert set(trace.labels) == {0, 2}  # "all three": the colours drawn, half each
    final, ring = trace.points[-1], trace.labels == 0
    np.testing.assert_allclose(np.median(np.linalg.norm(final[ring], axis=1)), 1.92, atol=0.1)  # on the ring
    assert np.abs(final[~ring, 0]).mean() < 0.25 and np.abs(final[~ring, 1]).max() < 1.5  # on the bar
    with pytest.raises(SdvizError, match="no blue class"):
        lab.sample_2d(LabSettings(label=1), mixture)


def test_the_lab_tab_samples_a_drawing():
    from sdviz.app import lab2d

    canvas = {"background": None, "layers": [], "composite": drawing(RING_AND_BAR)}
    run, *_, message = lab2d.lab_run("my drawing", canvas, "all three", 3.0, 10, "ddim", 200, 0)
    assert message == "" and run.mixture.present == [0, 2]
    assert lab2d.drawing_changed("three Gaussians", canvas, "all three", 3.0, 10, "ddim", 200, 0)[0] == \
        lab2d.lab_opened(run)[0]  # a stroke while the Gaussians are the data: nothing happens (gr.skip())
