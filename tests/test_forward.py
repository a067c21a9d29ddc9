"""Forward diffusion: the model's own schedule mixes a picture's latents with noise."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image

from sdviz.errors import SdvizError
from sdviz.lessons.forward import add_noise, noise_picture, schedule_figure, schedule_levels
from sdviz.lessons.latent_space import encode_picture, prepare_picture
from sdviz.pipeline.schedulers import make_scheduler


@pytest.fixture(scope="module")
def picture():
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8))


def rms(x: torch.Tensor) -> float:
    return float(x.float().pow(2).mean().sqrt())


@pytest.mark.parametrize("scheduler", [None, "ddim", "euler", "dpmpp_2m"])
def test_at_t0_the_latents_are_the_input(tiny_model, picture, scheduler):
    result = noise_picture(tiny_model, picture, 0, seed=1, scheduler=scheduler)
    assert result.timestep <= 1  # DPM-Solver's table stops at t = 1
    assert result.signal_level > 0.999 and result.noise_level < 0.05
    # Only the schedule's tiny noise at t = 0 (std 0.03-0.04) separates the result from the input.
    assert rms(result.noisy_latents - result.clean_latents) < 0.06
    assert result.image.size == picture.size


def test_noise_grows_with_t(tiny_model, picture):
    results = [noise_picture(tiny_model, picture, t, seed=1) for t in (0, 100, 300, 600, 999)]
    distances = [rms(r.noisy_latents - r.clean_latents) for r in results]
    assert distances == sorted(distances) and distances[-1] > 10 * distances[0]
    noise = [r.noise_level for r in results]
    signal = [r.signal_level for r in results]
    assert noise == sorted(noise) and signal == sorted(signal, reverse=True)
    assert signal[-1] < 0.1 and noise[-1] > 0.99  # at t = 999 almost nothing of the picture is left
    for r in results:
        assert r.signal_level**2 + r.noise_level**2 == pytest.approx(1.0)


def test_noising_follows_the_formula(tiny_model, picture):
    clean = encode_picture(tiny_model, prepare_picture(tiny_model, picture))
    noisy, t, _ = add_noise(tiny_model, clean, 500, seed=7)
    alpha_bar = float(make_scheduler(tiny_model).alphas_cumprod[500])
    noise = randn_tensor(clean.shape, generator=torch.Generator("cpu").manual_seed(7), dtype=clean.dtype)
    expected = alpha_bar**0.5 * clean + (1 - alpha_bar) ** 0.5 * noise
    assert t == 500
    assert torch.allclose(noisy, expected, atol=1e-5)


def test_every_scheduler_gives_the_same_mix(tiny_model, picture):
    """Euler keeps x0 + sigma * noise; shown as the U-Net sees it, it is the same mix as DDIM's."""
    clean = encode_picture(tiny_model, prepare_picture(tiny_model, picture))
    ddim, _, sigma_ddim = add_noise(tiny_model, clean, 700, seed=2, scheduler="ddim")
    euler, _, sigma_euler = add_noise(tiny_model, clean, 700, seed=2, scheduler="euler")
    assert sigma_euler == pytest.approx(sigma_ddim, rel=1e-4)
    assert torch.allclose(ddim, euler, atol=1e-4)


def test_schedule_plot_marks_t(tiny_model):
    levels = schedule_levels(tiny_model)
    assert len(levels.timesteps) == 1000
    assert np.allclose(levels.signal**2 + levels.noise**2, 1)
    assert np.all(np.diff(levels.noise) > 0)
    fig = schedule_figure(levels, 321)
    ax = fig.axes[0]
    marked = [line for line in ax.get_lines() if list(line.get_xdata()) == [321, 321]]
    assert marked, "the chosen t is marked"
    assert ax.get_xlim() == (0, 999)


@pytest.mark.parametrize("t", [-1, 1000, 2.5])
def test_timesteps_outside_the_schedule_are_refused(tiny_model, picture, t):
    with pytest.raises(SdvizError, match="timestep"):
        noise_picture(tiny_model, picture, t)
