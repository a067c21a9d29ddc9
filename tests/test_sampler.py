"""The sdviz loop against its oracle, diffusers' own Stable Diffusion pipelines."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionPipeline
from PIL import Image

from sdviz.pipeline.sampler import denoise, generate
from sdviz.pipeline.schedulers import SCHEDULERS, make_scheduler, x0_from_noise
from sdviz.pipeline.settings import RunSettings
from sdviz.pipeline.trace import StepRecord, Trace

PROMPT = "a big red circle on the left"


def pipeline_image(model, settings, init_image=None):
    """What diffusers' own pipeline makes from the same parts and settings."""
    scheduler = make_scheduler(model, settings.scheduler)
    kwargs = dict(
        negative_prompt=settings.negative_prompt or None,
        num_inference_steps=settings.steps,
        guidance_scale=settings.guidance_scale,
        generator=torch.Generator("cpu").manual_seed(settings.seed),
    )
    if init_image is None:
        pipe = StableDiffusionPipeline(**{**model.pipe.components, "scheduler": scheduler})
        return pipe(settings.prompt, height=settings.height, width=settings.width, **kwargs).images[0]
    pipe = StableDiffusionImg2ImgPipeline(**{**model.pipe.components, "scheduler": scheduler})
    return pipe(settings.prompt, image=init_image, strength=settings.strength, **kwargs).images[0]


def max_pixel_difference(a: Image.Image, b: Image.Image) -> int:
    return int(np.abs(np.asarray(a, dtype=int) - np.asarray(b, dtype=int)).max())


@pytest.mark.parametrize("negative", ["", "blue square"])
@pytest.mark.parametrize("scheduler", list(SCHEDULERS))
def test_txt2img_equals_diffusers_pipeline(tiny_model, scheduler, negative):
    settings = RunSettings(prompt=PROMPT, negative_prompt=negative, steps=4, guidance_scale=6.0, seed=3,
                           scheduler=scheduler, height=32, width=32)
    trace = generate(tiny_model, settings)
    assert max_pixel_difference(trace.image, pipeline_image(tiny_model, settings)) <= 1


@pytest.mark.parametrize("negative", ["", "blue square"])
@pytest.mark.parametrize("scheduler", list(SCHEDULERS))
def test_img2img_equals_diffusers_pipeline(tiny_model, scheduler, negative):
    start = Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8))
    settings = RunSettings(prompt=PROMPT, negative_prompt=negative, steps=5, guidance_scale=6.0, seed=3,
                           scheduler=scheduler, height=32, width=32, strength=0.6)
    trace = generate(tiny_model, settings, init_image=start)
    assert len(trace.steps) == (3 if scheduler != "pndm" else 4)  # int(5 * 0.6) steps (+1 for PNDM's warm-up)
    assert max_pixel_difference(trace.image, pipeline_image(tiny_model, settings, trace.init_image)) <= 1


def test_without_guidance_one_unet_pass_and_same_image(tiny_model):
    settings = RunSettings(prompt=PROMPT, negative_prompt="ignored", steps=3, guidance_scale=1.0, seed=1,
                           height=32, width=32)
    trace = generate(tiny_model, settings)
    assert not trace.guidance
    assert all(s.noise_uncond is None for s in trace.steps)
    assert torch.equal(trace.steps[0].noise_text, trace.steps[0].noise_guided)
    assert max_pixel_difference(trace.image, pipeline_image(tiny_model, settings)) <= 1


@pytest.mark.parametrize("scheduler", list(SCHEDULERS))
def test_guided_estimate_is_the_cfg_combination(tiny_model, scheduler):
    g = 7.5
    trace = generate(tiny_model, RunSettings(prompt=PROMPT, steps=3, guidance_scale=g, scheduler=scheduler,
                                             height=32, width=32))
    for s in trace.steps:
        expected = s.noise_uncond.float() + g * (s.noise_text.float() - s.noise_uncond.float())
        torch.testing.assert_close(s.noise_guided.float(), expected, atol=2e-2, rtol=1e-2)


@pytest.mark.parametrize("scheduler", ["ddim", "euler", "euler_a", "dpmpp_2m"])
def test_x0_formula_matches_the_schedulers_own_x0(tiny_model, scheduler):
    """Where a scheduler reports x0 itself, the formula used for the others (PNDM) agrees with it."""
    trace = generate(tiny_model, RunSettings(prompt=PROMPT, steps=4, guidance_scale=5.0, scheduler=scheduler,
                                             height=32, width=32))
    fresh = make_scheduler(tiny_model, scheduler)
    fresh.set_timesteps(4)
    for s in trace.steps:
        ours = x0_from_noise(fresh, s.latents.float(), s.noise_guided.float(), s.timestep, s.sigma)
        torch.testing.assert_close(ours, s.pred_x0.float(), atol=5e-2, rtol=2e-2)


def test_pndm_x0_is_computed_and_approaches_the_result(tiny_model):
    trace = generate(tiny_model, RunSettings(prompt=PROMPT, steps=6, scheduler="pndm", height=32, width=32))
    assert all(torch.isfinite(s.pred_x0.float()).all() for s in trace.steps)
    first, last = trace.steps[0].pred_x0.float(), trace.steps[-1].pred_x0.float()
    final = trace.final_latents
    assert (last - final).abs().mean() < (first - final).abs().mean()


def test_stream_yields_each_step_before_the_trace(tiny_model):
    items = list(denoise(tiny_model, RunSettings(prompt=PROMPT, steps=5, height=32, width=32)))
    assert all(isinstance(i, StepRecord) for i in items[:-1]) and isinstance(items[-1], Trace)
    assert [i.index for i in items[:-1]] == list(range(len(items) - 1))
    trace = items[-1]
    assert len(trace.steps) == len(items) - 1
    # each step's input is the previous step's output: the chain is complete
    assert trace.steps[0].timestep > trace.steps[-1].timestep


def test_interleaved_runs_do_not_share_state(tiny_model):
    a = RunSettings(prompt=PROMPT, steps=4, scheduler="euler_a", seed=1, height=32, width=32)
    b = RunSettings(prompt="a green square", steps=4, scheduler="euler_a", seed=2, height=32, width=32)
    alone_a, alone_b = generate(tiny_model, a).image, generate(tiny_model, b).image
    run_a, run_b = denoise(tiny_model, a), denoise(tiny_model, b)
    last = {}
    for item_a, item_b in zip(run_a, run_b, strict=True):
        last["a"], last["b"] = item_a, item_b
    assert max_pixel_difference(last["a"].image, alone_a) == 0
    assert max_pixel_difference(last["b"].image, alone_b) == 0


def test_trace_memory_for_sd15_sized_run_is_under_16_mb(tiny_model):
    """SD 1.5 at 512x512 has 4x64x64 latents; the tiny VAE halves, so 128x128 gives the same latents."""
    trace = generate(tiny_model, RunSettings(prompt=PROMPT, steps=50, scheduler="pndm", height=128, width=128,
                                             guidance_scale=7.5))
    assert trace.final_latents.shape == (4, 64, 64)
    assert len(trace.steps) == 51  # PNDM's extra warm-up step
    assert trace.nbytes() < 16 * 2**20


def test_trace_arrays_have_the_documented_shapes(tiny_model):
    trace = generate(tiny_model, RunSettings(prompt=PROMPT, steps=3, height=32, width=32))
    arrays = trace.arrays()
    n = len(trace.steps)
    assert arrays["timesteps"].shape == (n,)
    assert arrays["latents"].shape == (n + 1, 4, 16, 16)
    for name in ("noise_uncond", "noise_text", "noise_guided", "pred_x0"):
        assert arrays[name].shape == (n, 4, 16, 16)
    np.testing.assert_allclose(arrays["latents"][-1], trace.final_latents.numpy())


@pytest.mark.parametrize("scheduler", [None, *SCHEDULERS])
def test_each_run_gets_its_own_scheduler_as_from_config_builds_it(tiny_model, scheduler):
    """make_scheduler copies one built once: the copy is from_config's scheduler, and no two runs share one."""
    cls = SCHEDULERS.get(scheduler, type(tiny_model.pipe.scheduler))
    built = cls.from_config(tiny_model.scheduler_config)
    first, second = make_scheduler(tiny_model, scheduler), make_scheduler(tiny_model, scheduler)
    assert type(first) is cls and first is not second
    expected = dict(built.config)  # with the two legacy fixes StableDiffusionPipeline makes
    if expected.get("steps_offset", 1) != 1:
        expected["steps_offset"] = 1
    if expected.get("clip_sample") is True:
        expected["clip_sample"] = False
    assert dict(first.config) == expected
    assert torch.equal(first.alphas_cumprod, built.alphas_cumprod)
    first.set_timesteps(7)
    assert first.num_inference_steps == 7 and second.num_inference_steps is None
    assert make_scheduler(tiny_model, scheduler).num_inference_steps is None  # the kept one stays unused


def test_a_replaced_model_scheduler_is_the_one_copied(tiny_model):
    original = tiny_model.pipe.scheduler
    try:
        tiny_model.pipe.scheduler = SCHEDULERS["euler"].from_config(original.config, timestep_spacing="trailing")
        assert make_scheduler(tiny_model).config.timestep_spacing == "trailing"
    finally:
        tiny_model.pipe.scheduler = original
    assert type(make_scheduler(tiny_model)) is type(original)


def test_kept_text_embeddings_are_the_encoders_own_and_bounded(tiny_model):
    from sdviz.pipeline import text

    tokens = text.tokenize(tiny_model.tokenizer, "a green square at the top")
    kept = text.embed(tiny_model, tokens)
    assert text.embed(tiny_model, tokens) is kept  # the second time from the kept ones
    assert torch.equal(kept, text._encode(tiny_model, tokens, None))
    assert torch.equal(text.embed(tiny_model, tokens, layer=1), text._encode(tiny_model, tokens, 1))
    for i in range(text.EMBEDDINGS_KEPT + 3):
        text.embed(tiny_model, text.tokenize(tiny_model.tokenizer, f"prompt number {i}"))
    assert len(tiny_model.derived["embeddings"][1]) == text.EMBEDDINGS_KEPT
