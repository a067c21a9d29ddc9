"""The latent space: the numbers of the VAE's squeeze and of its round trip."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, StableDiffusionPipeline
from PIL import Image

from sdviz.lessons.latent_space import channels_figure, describe, explore_latents, reconstruction_error
from sdviz.pipeline import vae
from sdviz.pipeline.models import Model, Recommended


@pytest.fixture(scope="module")
def picture():
    return Image.fromarray(np.random.default_rng(1).integers(0, 255, (40, 30, 3), dtype=np.uint8))


def test_numbers_come_from_the_model(tiny_model, picture):
    report = explore_latents(tiny_model, picture)
    assert report.picture.size == (32, 32)  # resized to the model's picture size
    assert report.latents.shape == (4, 16, 16)  # the tiny VAE shrinks 2x per side
    assert report.pixel_values == 32 * 32 * 3
    assert report.latent_values == 4 * 16 * 16
    assert report.ratio == vae.compression_ratio(tiny_model) == 3
    assert report.decoded.size == (32, 32)
    assert report.psnr == pytest.approx(10 * math.log10(1 / report.mse))
    assert len(report.channel_ranges) == 4 and all(lo <= hi for lo, hi in report.channel_ranges)
    text = describe(report)
    assert "3,072 numbers" in text and "1,024 numbers" in text and "3x fewer" in text


def test_an_sd_shaped_vae_gives_48x(tiny_model, picture):
    """SD's VAE: 4 blocks (3 halvings, 8x per side) and 4 latent channels."""
    torch.manual_seed(0)
    vae8 = AutoencoderKL(block_out_channels=[4, 4, 4, 4], down_block_types=["DownEncoderBlock2D"] * 4,
                         up_block_types=["UpDecoderBlock2D"] * 4, latent_channels=4, norm_num_groups=2)
    pipe = StableDiffusionPipeline(**{**tiny_model.pipe.components, "vae": vae8})
    model = Model(name="sd-shaped", pipe=pipe, recommended=Recommended(20, 7.5, 64, 64), device=torch.device("cpu"),
                  dtype=torch.float32)
    report = explore_latents(model, picture)
    assert report.latents.shape == (4, 8, 8)
    assert report.ratio == 48 == vae.compression_ratio(model)
    assert "48x fewer numbers" in describe(report)


def test_reconstruction_error_values():
    black, white = Image.new("RGB", (8, 8), (0, 0, 0)), Image.new("RGB", (8, 8), (255, 255, 255))
    assert reconstruction_error(black, black) == (0.0, math.inf)
    mse, psnr = reconstruction_error(black, white)
    assert mse == 1.0 and psnr == 0.0
    grey = Image.new("RGB", (8, 8), (51, 51, 51))  # 0.2
    mse, psnr = reconstruction_error(black, grey)
    assert mse == pytest.approx(0.04) and psnr == pytest.approx(10 * math.log10(25))


def test_channels_figure_has_a_panel_per_channel():
    latents = torch.arange(4 * 3 * 5, dtype=torch.float32).reshape(4, 3, 5) - 30
    fig = channels_figure(latents)
    images = [ax for ax in fig.axes if ax.get_images()]
    assert len(images) == 4
    shown = images[2].get_images()[0]
    assert np.array_equal(shown.get_array(), latents[2].numpy())
    assert shown.get_clim() == (-30.0, 30.0)  # one symmetric scale for all channels
