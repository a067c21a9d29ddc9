"""The reverse-diffusion loop, written out: the one loop behind the CLI, the app, the benchmarks and the lessons.

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

Like diffusers' pipelines it takes a batch: :func:`denoise_batch` runs several users' requests that share a
schedule (same model, size, steps, scheduler and strength) as one batch through the U-Net. Each sample keeps
its own prompt, seed (its own generator: the same noise as alone) and guidance, so its picture does not depend
on the batch. :func:`denoise` is the batch of one. Stages 1-3 are :func:`prepare` (one request at a time, so a
bad request fails alone); stage 4 is :func:`reverse_steps`, which knows nothing of U-Nets or text and also runs
the 2-D lab's exact denoiser.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import rescale_noise_cfg
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image

from sdviz.errors import SdvizError
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
from sdviz.pipeline.text import PromptEmbeddings, encode_prompt
from sdviz.pipeline.trace import StepRecord, Trace, environment, keep

InitImage = str | Path | Image.Image | np.ndarray


# --- Classifier-free guidance, and the loop itself (any noise predictor) ---------------------------------------


def guide(noise_uncond: torch.Tensor, noise_text: torch.Tensor, scale: float, rescale: float = 0.0) -> torch.Tensor:
    """Classifier-free guidance: start from the unconditional estimate and go ``scale`` times the way the
    prompt points. ``rescale`` > 0 brings the result's spread back towards the text estimate's (Lin et al. 2023,
    diffusers' ``guidance_rescale``), which high scales blow up."""
    noise_pred = noise_uncond + scale * (noise_text - noise_uncond)
    if rescale > 0:
        noise_pred = rescale_noise_cfg(noise_pred, noise_text, guidance_rescale=rescale)
    return noise_pred


@dataclass
class NoiseEstimate:
    """What the noise predictor said about x_t at one step."""

    guided: torch.Tensor  # what the scheduler uses (the text estimate itself where CFG is off)
    text: torch.Tensor  # the conditional estimate
    uncond: list[torch.Tensor | None]  # per sample: the unconditional estimate, None where CFG is off this step


@dataclass
class LoopStep:
    index: int
    timestep: torch.Tensor
    sigma: float
    latents: torch.Tensor  # x_t in the scheduler's own form: this step's input
    estimate: NoiseEstimate
    pred_x0: torch.Tensor  # the clean sample the guided estimate implies
    input_scale: float  # what scale_model_input multiplied the latents by
    next_latents: torch.Tensor  # x_(t-1): the scheduler's output


Predictor = Callable[[int, torch.Tensor, torch.Tensor], NoiseEstimate]  # (step index, t, scaled x_t) -> estimate


def reverse_steps(scheduler, latents: torch.Tensor, timesteps, predict: Predictor,
                  step_kwargs: dict) -> Iterator[LoopStep]:
    """Reverse diffusion: at each timestep the predictor estimates the noise in x_t and the scheduler removes
    some of it. Works on any batch of samples (SD latents [B, C, h, w], or points in the plane [N, 2])."""
    for i, t in enumerate(timesteps):
        model_input = scheduler.scale_model_input(latents, t)
        sigma = current_sigma(scheduler, t)
        estimate = predict(i, t, model_input)
        step = scheduler.step(estimate.guided, t, latents, **step_kwargs, return_dict=True)
        pred_x0 = scheduler_x0(scheduler, step)
        if pred_x0 is None:  # e.g. PNDM: compute it from the noise estimate
            pred_x0 = x0_from_noise(scheduler, latents, estimate.guided, t, sigma)
        yield LoopStep(i, t, sigma, latents, estimate, pred_x0, input_scale(scheduler, sigma), step.prev_sample)
        latents = step.prev_sample


# --- Stages 1-3 for one request ----------------------------------------------------------------------------------


@dataclass
class Start:
    """One request made ready for the loop: its text embeddings, its own random numbers and starting latents."""

    settings: RunSettings
    img2img: bool
    height: int
    width: int
    guidance: bool  # CFG in at least one step: two U-Net passes there
    text: PromptEmbeddings
    scheduler: object  # this request's scheduler, timesteps set (one per batch is used for the loop)
    timesteps: torch.Tensor
    generator: torch.Generator
    latents: torch.Tensor  # [1, C, h, w]
    picture: Image.Image | None
    started: float

    @property
    def schedule_key(self) -> tuple:
        """Requests with equal keys visit the same timesteps with the same scheduler: they can share a loop."""
        return (self.height, self.width, self.settings.steps, scheduler_name(self.scheduler), self.img2img,
                len(self.timesteps))

    def cfg_at(self, index: int) -> bool:
        """Whether classifier-free guidance runs at step ``index`` (the run's guidance interval)."""
        s = self.settings
        return self.guidance and s.guidance_start <= index / len(self.timesteps) < s.guidance_end


def prepare(model, settings: RunSettings, init_image: InitImage | None = None) -> Start:
    """Stages 1-3 of one run: check the settings, encode the text, plan the timesteps, make the starting latents."""
    started = time.perf_counter()
    img2img = init_image is not None
    check_settings(settings, img2img=img2img)
    height = settings.height or model.recommended.height
    width = settings.width or model.recommended.width
    layers = model.text_encoder.config.num_hidden_layers
    if settings.text_layer is not None and not 1 <= settings.text_layer <= layers:
        raise SdvizError(f"This model's text encoder has layers 1 to {layers} (got text layer {settings.text_layer}).")

    # 1. Text conditioning. CFG needs the unconditional estimate too, so the U-Net batch holds both prompts.
    guidance = settings.guidance_scale > 1 and model.unet.config.time_cond_proj_dim is None
    text = encode_prompt(model, settings.prompt, settings.negative_prompt, guidance, layer=settings.text_layer)

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
        latents = randn_tensor(shape, generator=generator, device=model.device, dtype=text.text_embeds.dtype)
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
        noise = randn_tensor(clean.shape, generator=generator, device=model.device, dtype=text.text_embeds.dtype)
        latents = scheduler.add_noise(clean, noise, timesteps[:1])
    return Start(settings, img2img, height, width, guidance, text, scheduler, timesteps, generator, latents,
                 picture, started)


# --- Stages 4-5 for a batch of requests ---------------------------------------------------------------------------


@torch.no_grad()
def denoise_batch(model, starts: Sequence[Start]) -> Iterator[list[StepRecord] | list[Trace]]:
    """Run prepared requests that share a schedule as one batch: yield each step's records (one per request),
    then their traces. Closing the generator ends the loop at the step it is on."""
    if len({s.schedule_key for s in starts}) != 1:
        raise ValueError("requests in one batch must share model size, steps, scheduler and strength")
    scheduler, timesteps = starts[0].scheduler, starts[0].timesteps  # one scheduler steps the whole batch
    latents = torch.cat([s.latents for s in starts])
    generators = [s.generator for s in starts]  # each sample's step noise (ancestral schedulers) from its own seed
    step_kwargs = scheduler_step_kwargs(scheduler, generators[0] if len(starts) == 1 else generators)

    # 4. The denoising loop.
    records: list[list[StepRecord]] = [[] for _ in starts]
    passes = [0] * len(starts)
    for step in reverse_steps(scheduler, latents, timesteps, _unet_predictor(model, starts), step_kwargs):
        out = []
        for j in range(len(starts)):
            uncond = step.estimate.uncond[j]
            passes[j] += 1 if uncond is None else 2
            record = StepRecord(
                index=step.index, timestep=float(step.timestep), sigma=step.sigma,
                latents=keep(step.latents[j : j + 1]), noise_uncond=keep(uncond),
                noise_text=keep(step.estimate.text[j : j + 1]), noise_guided=keep(step.estimate.guided[j : j + 1]),
                pred_x0=keep(step.pred_x0[j : j + 1]), input_scale=step.input_scale,
            )
            records[j].append(record)
            out.append(record)
        yield out
        latents = step.next_latents

    # 5. Decode the final latents into the pictures (a lone run's alone, a batch's together).
    images = [vae.decode_to_pil(model, latents)] if len(starts) == 1 else vae.decode_batch_to_pil(model, latents)
    traces = []
    for j, start in enumerate(starts):
        final = latents[j : j + 1]
        traces.append(Trace(
            settings=start.settings, model=model.name, scheduler=scheduler_name(scheduler),
            mode="img2img" if start.img2img else "txt2img", guidance=start.guidance, height=start.height,
            width=start.width, prompt_tokens=start.text.prompt, negative_tokens=start.text.negative,
            steps=records[j], final_latents=final.detach()[0].float().cpu(), image=images[j],
            init_image=start.picture, seconds=time.perf_counter() - start.started, environment=environment(model),
            unet_passes=passes[j],
        ))
    yield traces


def _unet_predictor(model, starts: Sequence[Start]) -> Predictor:
    """The U-Net as the loop's noise predictor: one batch holds the unconditional rows of the requests guided at
    this step (first, as in diffusers), then every request's text row; CFG is then applied request by request."""
    text_embeds = torch.cat([s.text.text_embeds for s in starts])

    def predict(i: int, t, model_input: torch.Tensor) -> NoiseEstimate:
        guided = [j for j, s in enumerate(starts) if s.cfg_at(i)]
        rows, embeds = model_input, text_embeds
        if guided:
            rows = torch.cat([model_input[guided], model_input])
            embeds = torch.cat([starts[j].text.uncond_embeds for j in guided] + [text_embeds])
        noise = model.unet(rows, t, encoder_hidden_states=embeds, return_dict=False)[0]
        noise_uncond, noise_text = noise[: len(guided)], noise[len(guided) :]
        uncond: list[torch.Tensor | None] = [None] * len(starts)
        noise_pred = []
        for j, s in enumerate(starts):
            text_j = noise_text[j : j + 1]
            if j in guided:
                uncond[j] = noise_uncond[guided.index(j) : guided.index(j) + 1]
                text_j = guide(uncond[j], text_j, s.settings.guidance_scale, s.settings.guidance_rescale)
            noise_pred.append(text_j)
        return NoiseEstimate(guided=torch.cat(noise_pred), text=noise_text, uncond=uncond)

    return predict


# --- One run ---------------------------------------------------------------------------------------------------------


def denoise(model, settings: RunSettings, init_image: InitImage | None = None) -> Iterator[StepRecord | Trace]:
    """Run Stable Diffusion, yielding each step's record as soon as it is computed, then the trace."""
    batch = denoise_batch(model, [prepare(model, settings, init_image)])
    try:
        for items in batch:
            yield items[0]
    finally:
        batch.close()  # closing this generator (a Stop) ends the loop at once


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


def generate_batch(model, settings: Sequence[RunSettings], batch_size: int = 16) -> list[Trace]:
    """Run several text-to-image requests to the end, ``batch_size`` at a time through one U-Net batch (the
    evaluation's many seeds). Each picture equals its lone run's within 1/255 (tests/test_batching.py)."""
    traces: list[Trace] = []
    for first in range(0, len(settings), batch_size):
        chunk = [prepare(model, s) for s in settings[first : first + batch_size]]
        groups: dict[tuple, list[int]] = {}
        for j, start in enumerate(chunk):  # requests that cannot share a loop run in loops of their own
            groups.setdefault(start.schedule_key, []).append(j)
        done: dict[int, Trace] = {}
        for members in groups.values():
            *_, last = denoise_batch(model, [chunk[j] for j in members])
            done.update(zip(members, last, strict=True))
        traces += [done[j] for j in range(len(chunk))]
    return traces


def scheduler_step_kwargs(scheduler, generator) -> dict:
    """Like diffusers: pass eta=0 and the run's generator(s) to schedulers whose step() takes them (the 2-D lab
    uses it too)."""
    accepted = inspect.signature(scheduler.step).parameters
    kwargs = {}
    if "eta" in accepted:
        kwargs["eta"] = 0.0
    if "generator" in accepted:
        kwargs["generator"] = generator
    return kwargs
