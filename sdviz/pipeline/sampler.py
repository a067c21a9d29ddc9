"""The reverse-diffusion loop, written out: the one loop behind the CLI, the app and the benchmarks.

1. Text conditioning: prompt (and negative prompt) -> CLIP embeddings.
2. Timesteps: a fresh scheduler for this run decides which noise levels to visit.
3. Starting latents: pure noise (text to image), or the init image's latents with noise added
   up to the starting timestep (image to image).
4. The loop: the U-Net estimates the noise in x_t, once for the negative/empty prompt and once for the
   prompt; classifier-free guidance pushes the estimate away from the unconditional one; the
   scheduler removes some of that noise, giving the next, cleaner x_t.
5. The VAE decodes the final latents into the picture.

It follows diffusers' ``StableDiffusionPipeline`` and ``StableDiffusionImg2ImgPipeline`` operation for
operation (same random numbers, same order), so it gives the very same picture; the difference is that
it records every step in a :class:`~sdviz.pipeline.trace.Trace` and hands each step out as soon as it exists.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image

from sdviz.pipeline import vae
from sdviz.pipeline.schedulers import (
    check_steps,
    current_sigma,
    input_scale,
    make_scheduler,
    scheduler_name,
    scheduler_x0,
    x0_from_noise,
)
from sdviz.pipeline.settings import RunSettings, check_settings, load_init_image
from sdviz.pipeline.text import encode_prompt
from sdviz.pipeline.trace import StepRecord, Trace, environment, keep

InitImage = str | Path | Image.Image | np.ndarray


@torch.no_grad()
def denoise(model, settings: RunSettings, init_image: InitImage | None = None) -> Iterator[StepRecord | Trace]:
    """Run Stable Diffusion, yielding each step's record as soon as it is computed, then the trace."""
    started = time.perf_counter()
    img2img = init_image is not None
    check_settings(settings, img2img=img2img)
    height = settings.height or model.recommended.height
    width = settings.width or model.recommended.width
    g = settings.guidance_scale

    # 1. Text conditioning. CFG needs the unconditional estimate too, so the batch holds both prompts.
    guidance = g > 1 and model.unet.config.time_cond_proj_dim is None
    text = encode_prompt(model, settings.prompt, settings.negative_prompt, guidance)
    prompt_embeds = text.unet_batch()

    # 2. Timesteps, on a scheduler of this run's own (schedulers count steps internally).
    scheduler = make_scheduler(model, settings.scheduler)
    check_steps(scheduler, settings.steps)
    scheduler.set_timesteps(settings.steps, device=model.device)
    timesteps = scheduler.timesteps
    generator = torch.Generator("cpu").manual_seed(settings.seed)  # CPU noise: same picture on any device

    # 3. Starting latents.
    if not img2img:
        f = model.vae_scale_factor
        shape = (1, model.unet.config.in_channels, height // f, width // f)
        latents = randn_tensor(shape, generator=generator, device=model.device, dtype=prompt_embeds.dtype)
        latents = latents * scheduler.init_noise_sigma
        picture = None
    else:
        picture = load_init_image(init_image, width, height)
        # Strength decides how much of the schedule runs: skip the first (noisiest) steps.
        t_start = settings.steps - expected_steps(settings, img2img=True)
        timesteps = timesteps[t_start * scheduler.order :]
        if hasattr(scheduler, "set_begin_index"):
            scheduler.set_begin_index(t_start * scheduler.order)
        clean = vae.encode(model, picture, generator)  # forward diffusion starts from the picture's latents
        noise = randn_tensor(clean.shape, generator=generator, device=model.device, dtype=prompt_embeds.dtype)
        latents = scheduler.add_noise(clean, noise, timesteps[:1])
    step_kwargs = _step_kwargs(scheduler, generator)

    # 4. The denoising loop.
    records: list[StepRecord] = []
    for i, t in enumerate(timesteps):
        model_input = torch.cat([latents] * 2) if guidance else latents
        model_input = scheduler.scale_model_input(model_input, t)
        sigma = current_sigma(scheduler, t)
        noise_pred = model.unet(model_input, t, encoder_hidden_states=prompt_embeds, return_dict=False)[0]
        if guidance:
            noise_uncond, noise_text = noise_pred.chunk(2)
            noise_pred = noise_uncond + g * (noise_text - noise_uncond)  # classifier-free guidance
        else:
            noise_uncond, noise_text = None, noise_pred
        step = scheduler.step(noise_pred, t, latents, **step_kwargs, return_dict=True)
        pred_x0 = scheduler_x0(scheduler, step)
        if pred_x0 is None:  # e.g. PNDM: compute it from the noise estimate
            pred_x0 = x0_from_noise(scheduler, latents, noise_pred, t, sigma)
        record = StepRecord(
            index=i, timestep=float(t), sigma=sigma, latents=keep(latents), noise_uncond=keep(noise_uncond),
            noise_text=keep(noise_text), noise_guided=keep(noise_pred), pred_x0=keep(pred_x0),
            input_scale=input_scale(scheduler, sigma),
        )
        records.append(record)
        yield record
        latents = step.prev_sample

    # 5. Decode the final latents into the picture.
    image = vae.decode_to_pil(model, latents)
    yield Trace(
        settings=settings, model=model.name, scheduler=scheduler_name(scheduler),
        mode="img2img" if img2img else "txt2img", guidance=guidance, height=height, width=width,
        prompt_tokens=text.prompt, negative_tokens=text.negative, steps=records,
        final_latents=latents.detach()[0].float().cpu(), image=image, init_image=picture,
        seconds=time.perf_counter() - started, environment=environment(model),
    )


def expected_steps(settings: RunSettings, img2img: bool) -> int:
    """How many of the schedule's steps a run visits: all (text to image), or the last ``strength`` share."""
    return min(int(settings.steps * settings.strength), settings.steps) if img2img else settings.steps


def generate(model, settings: RunSettings, init_image: InitImage | None = None,
             on_step: Callable[[StepRecord], None] | None = None) -> Trace:
    """Run to the end and return the trace; ``on_step`` sees each step as it is computed."""
    for item in denoise(model, settings, init_image):
        if isinstance(item, Trace):
            return item
        if on_step is not None:
            on_step(item)
    raise RuntimeError("the loop ended without a trace")  # unreachable: denoise always ends with one


def _step_kwargs(scheduler, generator: torch.Generator) -> dict:
    """Like diffusers: pass eta=0 and the run's generator to schedulers whose step() takes them."""
    accepted = inspect.signature(scheduler.step).parameters
    kwargs = {}
    if "eta" in accepted:
        kwargs["eta"] = 0.0
    if "generator" in accepted:
        kwargs["generator"] = generator
    return kwargs
