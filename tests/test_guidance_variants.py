"""Guidance variants and Diffusion Lens in the one loop, against their oracles: diffusers' pipeline (guidance
rescale), the plain run (the last text layer, a full guidance interval) and U-Net call counts."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline

from sdviz.errors import SdvizError
from sdviz.pipeline.sampler import generate
from sdviz.pipeline.schedulers import make_scheduler
from sdviz.pipeline.settings import RunSettings

BASE = RunSettings(prompt="a big red circle on the left", negative_prompt="blue", steps=6, guidance_scale=9.0,
                   seed=5, height=32, width=32)


def pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=int)


@pytest.mark.parametrize("scheduler", ["euler", "ddim", "dpmpp_2m"])
@pytest.mark.parametrize("rescale", [0.3, 0.7, 1.0])
def test_guidance_rescale_equals_diffusers_pipeline(tiny_model, scheduler, rescale):
    settings = dataclasses.replace(BASE, scheduler=scheduler, guidance_rescale=rescale)
    pipe = StableDiffusionPipeline(**{**tiny_model.pipe.components, "scheduler": make_scheduler(tiny_model, scheduler)})
    expected = pipe(settings.prompt, negative_prompt=settings.negative_prompt, num_inference_steps=settings.steps,
                    guidance_scale=settings.guidance_scale, guidance_rescale=rescale, height=32, width=32,
                    generator=torch.Generator("cpu").manual_seed(settings.seed)).images[0]
    ours = generate(tiny_model, settings)
    assert np.abs(pixels(ours.image) - pixels(expected)).max() <= 1
    plain = generate(tiny_model, dataclasses.replace(settings, guidance_rescale=0.0))
    assert not torch.equal(ours.final_latents, plain.final_latents)  # the rescale did something


def test_guidance_on_an_interval_saves_unet_passes_and_only_there(tiny_model):
    base = dataclasses.replace(BASE, scheduler="euler")  # one U-Net call a step (PNDM adds a warm-up step)
    full = generate(tiny_model, base)
    first_half = generate(tiny_model, dataclasses.replace(base, guidance_start=0.0, guidance_end=0.5))
    middle = generate(tiny_model, dataclasses.replace(base, guidance_start=0.3, guidance_end=0.6))
    assert full.unet_passes == 12 and first_half.unet_passes == 9 and middle.unet_passes == 8
    assert [r.noise_uncond is not None for r in first_half.steps] == [True] * 3 + [False] * 3
    assert [r.noise_uncond is not None for r in middle.steps] == [False, False, True, True, False, False]
    # Up to the interval's end the run is the full-CFG run; after it the steps follow the prompt alone.
    for a, b in zip(full.steps[:3], first_half.steps[:3], strict=True):
        assert torch.equal(a.noise_guided, b.noise_guided)
    assert torch.equal(first_half.steps[4].noise_guided, first_half.steps[4].noise_text)
    assert not torch.equal(full.final_latents, first_half.final_latents)
    explicit_full = generate(tiny_model, dataclasses.replace(base, guidance_start=0.0, guidance_end=1.0))
    assert torch.equal(explicit_full.final_latents, full.final_latents)


def test_diffusion_lens_last_layer_is_the_normal_run_and_earlier_layers_differ(tiny_model):
    layers = tiny_model.text_encoder.config.num_hidden_layers
    normal = generate(tiny_model, BASE)
    last = generate(tiny_model, dataclasses.replace(BASE, text_layer=layers))
    assert torch.equal(last.final_latents, normal.final_latents)
    first = generate(tiny_model, dataclasses.replace(BASE, text_layer=1))
    assert not torch.equal(first.final_latents, normal.final_latents)


@pytest.mark.parametrize("change, words", [
    (dict(guidance_rescale=1.5), "rescale"), (dict(guidance_rescale=float("nan")), "rescale"),
    (dict(guidance_start=0.6, guidance_end=0.4), "interval"), (dict(guidance_end=1.2), "interval"),
    (dict(text_layer=0), "text layer"), (dict(text_layer=99), "layers 1 to"),
])
def test_bad_variant_settings_are_refused_in_words(tiny_model, change, words):
    with pytest.raises(SdvizError, match=words):
        generate(tiny_model, dataclasses.replace(BASE, **change))
