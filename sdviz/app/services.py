"""The model work the page needs, in one place: loading a model for the app, its preview colours, full decodes of
a run's steps, and every call into a model part (the loop, the VAE, the text encoder, the U-Net).

The playground and the teaching tabs both use this module and never each other. The handlers draw figures from
what these functions return; the functions themselves hold no Gradio component.

On a ZeroGPU Space :func:`sdviz.app.hosting.gpu` runs each function marked ``@hosting.gpu`` in a forked worker that
holds a GPU for at most ``duration`` seconds. So they take the model's *name* and plain values, return plain values
(pictures, CPU tensors and arrays, dataclasses of those), and turn :class:`SdvizError` into ``gr.Error`` themselves:
only a ``gr.Error``'s message comes back from the worker. Everywhere else they are plain calls.
"""

from __future__ import annotations

import functools
import random
import time
from collections.abc import Iterator
from pathlib import Path

import gradio as gr
import numpy as np
import torch
from PIL import Image

from sdviz.app import hosting
from sdviz.app.sessions import PanelRun
from sdviz.errors import SdvizError
from sdviz.lessons import diffusion_lens as lens
from sdviz.lessons import experiments, export, forward, guidance_variants, latent_space, text_attention
from sdviz.lessons.peek import RgbMap
from sdviz.pipeline import capture, vae
from sdviz.pipeline.batching import Batcher
from sdviz.pipeline.models import EMBEDDED, Model, compute_lock, load_model, use_cpu_threads
from sdviz.pipeline.sampler import denoise
from sdviz.pipeline.settings import RunSettings, load_init_image
from sdviz.pipeline.text import Tokens
from sdviz.pipeline.trace import StepRecord, Trace
from sdviz.toy import world
from sdviz.toy.model import is_toy_tokenizer

# --- Errors a student sees ---------------------------------------------------------------------------------


def student_error(message: SdvizError | str) -> gr.Error:
    """A message for the student, shown on the page and returned by the API (not a crash: no traceback in the
    server log)."""
    return gr.Error(str(message), print_exception=False)


def friendly(fn):
    """Decorator: an :class:`SdvizError` raised by ``fn`` reaches the student as it is (:func:`student_error`)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except SdvizError as err:
            raise student_error(err) from err

    return wrapper


class UnreadablePicture(str):
    """What a teaching tab's picture input passes on instead of a picture it could not read: the message (a plain
    string, so it crosses to a GPU worker and back like any value)."""


def check_picture(path) -> None:
    """Read a whole uploaded picture (header, pixel count, every pixel), as a run would: SdvizError if it can't."""
    if isinstance(path, UnreadablePicture):
        raise SdvizError(str(path))
    if path is not None:
        load_init_image(path, 8, 8)


# --- The model, ready for the page --------------------------------------------------------------------------


def load_for_app(name: str) -> Model:
    """Load a model (cached) and fit its preview colours; bad ones give a gr.Error. The callers decide which
    names are allowed (:func:`sdviz.app.hosting.check_allowed`)."""
    try:
        model = load_model(name)
    except SdvizError as err:
        raise student_error(err) from err  # one plain sentence already (sdviz.pipeline.models)
    use_cpu_threads(model)  # as the CLI does: same pixels, and a small model's loop is not slowed by idle threads
    preview_map(model)
    decodes_are_cheap(model)
    return model


def is_hub_id(name: str) -> bool:
    """A name that is neither the embedded model nor a folder here: loading it needs the Hugging Face hub."""
    return name != EMBEDDED and not Path(name).expanduser().exists()


def preview_map(model: Model) -> RgbMap:
    """The model's fitted latent -> RGB map for the fast previews (fitted once; kept in ``model.derived``)."""
    if "rgb_map" in model.derived:
        return model.derived["rgb_map"]
    if hosting.zero_gpu():  # fitting uses the VAE: only a GPU worker may
        model.derived["rgb_map"] = fit_preview_colours(model.name)
    return vae.preview_map(model, preview_cards(model))


def preview_cards(model: Model) -> list[Image.Image] | None:
    """Pictures like the model's own to fit its preview on: the toy world's, for a model of the embedded kind
    (:func:`sdviz.toy.model.is_toy_tokenizer`); otherwise None (:func:`sdviz.pipeline.vae.preview_cards`)."""
    if not is_toy_tokenizer(model.tokenizer):
        return None
    rng = random.Random(0)
    return [world.draw(world.random_scene(rng), size=model.recommended.width) for _ in range(32)]


@hosting.gpu(duration=30)
def fit_preview_colours(model_name: str) -> RgbMap:
    model = load_model(model_name)
    return vae.preview_map(model, preview_cards(model))


CHEAP_DECODE_S = 0.05  # a VAE decode at most this long is made for every live frame (else: the fast preview)
SMALL_DECODER_PARAMS = 10_000_000  # on a CPU: a decoder this small, for pictures of at most SMALL_PICTURE pixels,
SMALL_PICTURE = 256 * 256  # is cheap (the embedded model's: 0.6 M parameters, 64x64; SD's: 49 M, 512x512)


def decodes_are_cheap(model: Model) -> bool:
    """Whether live frames can show real VAE decodes. On a CPU by the VAE's size (a machine shared with other work
    would make a timing flip from run to run): a decoder of at most ``SMALL_DECODER_PARAMS`` parameters for pictures
    of at most ``SMALL_PICTURE`` pixels (the embedded model: one decode about 0.02 s on one thread). On a GPU by
    timing one decode of the model's picture size (the fastest of three, at most ``CHEAP_DECODE_S``). On ZeroGPU
    never (each decode would need a GPU worker)."""
    if hosting.zero_gpu():
        return False
    if "decodes_cheap" not in model.derived:
        rec = model.recommended
        if model.device.type == "cpu":
            params = sum(p.numel() for p in model.vae.decoder.parameters())
            cheap = params <= SMALL_DECODER_PARAMS and rec.width * rec.height <= SMALL_PICTURE
        else:
            f = model.vae_scale_factor
            latents = torch.zeros(1, model.vae.config.latent_channels, rec.height // f, rec.width // f)
            times = []
            for _ in range(4):  # the first call pays for lazy set-up
                started = time.perf_counter()
                vae.decode_to_pil(model, latents)
                times.append(time.perf_counter() - started)
            cheap = min(times[1:]) <= CHEAP_DECODE_S
        model.derived["decodes_cheap"] = cheap
    return model.derived["decodes_cheap"]


# --- The playground: the loop, and full decodes of its steps --------------------------------------------------


def run_loop(model_name: str, settings: RunSettings, init_image=None) -> Iterator[StepRecord | Trace]:
    """The one denoising loop (:func:`sdviz.pipeline.sampler.denoise`) for one run of the app, alone. On ZeroGPU it
    runs in a GPU worker (:data:`run_loop_on_gpu`), which passes on only gr.Error messages: hence the translation."""
    try:
        yield from denoise(load_model(model_name), settings, init_image)
    except SdvizError as err:
        raise student_error(err) from err


run_loop_on_gpu = hosting.gpu(run_loop, duration=hosting.loop_seconds)


class RunStream:
    """One run of the app as the playground reads it: its steps, then its trace. On a server of its own (not ZeroGPU)
    the run joins :func:`batcher`'s batches with the other users' runs; ``close()`` (Stop) drops only this run."""

    def __init__(self, model_name: str, settings: RunSettings, init_image=None) -> None:
        self.ticket = None
        if hosting.zero_gpu() or not hosting.batching():
            self._steps = run_loop_on_gpu(model_name, settings, init_image)  # each call its own loop
        else:
            self.ticket = batcher().submit(model_name, settings, init_image)
            self._steps = self._from_ticket()

    def _from_ticket(self) -> Iterator[StepRecord | Trace]:
        try:
            yield from self.ticket
        except SdvizError as err:
            raise student_error(err) from err

    def __iter__(self) -> Iterator[StepRecord | Trace]:
        return self._steps

    def behind(self) -> bool:
        """Whether newer steps are already computed than the one just taken (then showing this one is wasted)."""
        return self.ticket is not None and self.ticket.waiting() > 0

    @property
    def batch_size(self) -> int:
        return self.ticket.batch_size if self.ticket is not None else 1

    def decoded(self, index: int) -> list[tuple[tuple[int, str], Image.Image]]:
        """VAE decodes of step ``index`` already made by the batch for this run (its first step, in a class's batch):
        ((index, "x_t" or "x0"), picture) pairs, handed over once."""
        if self.ticket is None:
            return []
        return [(key, self.ticket.decoded.pop(key)) for key in list(self.ticket.decoded) if key[0] == index]

    def close(self) -> None:
        if self.ticket is not None:
            self.ticket.stop()
        self._steps.close()


@functools.cache
def batcher() -> Batcher:
    """The process's one :class:`~sdviz.pipeline.batching.Batcher`: every playground run on this server goes through
    it, so the runs of users who press Generate together share the loop."""
    return Batcher(load_model, hosting.batch_size, cache_mb=hosting.run_cache_mb(), first_decodes=decodes_are_cheap)


@hosting.gpu(duration=hosting.QUICK_SECONDS)
def decode_pair(model_name: str, x_t, x0) -> tuple[Image.Image, Image.Image]:
    model = load_model(model_name)
    return vae.decode_to_pil(model, x_t), vae.decode_to_pil(model, x0)


def step_decodes(model: Model, run: PanelRun, index: int) -> tuple[Image.Image, Image.Image]:
    """Full VAE decodes of step ``index``'s x_t and predicted x0: kept in the run's store for scrubbing; on ZeroGPU
    made in a GPU worker each time (a worker cannot fill a store of this process)."""
    record = run.steps[index]
    if hosting.zero_gpu():
        return decode_pair(model.name, record.x_t, record.pred_x0)
    pictures = []
    for kind, latents in (("x_t", record.x_t), ("x0", record.pred_x0)):
        picture = run.decodes.get((index, kind))
        if picture is None:
            with compute_lock:  # between the batch's steps, not beside them (see pipeline.models.compute_lock)
                picture = vae.decode_to_pil(model, latents)
            run.decodes.put((index, kind), picture)
        pictures.append(picture)
    return pictures[0], pictures[1]


# --- The teaching tabs: each use of the VAE, the text encoder or the U-Net -------------------------------------


@hosting.gpu(duration=hosting.QUICK_SECONDS)
@friendly
def noise_picture(model_name: str, image: Image.Image, t: int, seed: int) -> forward.NoisedPicture:
    return forward.noise_picture(load_model(model_name), image, t, seed=seed)


@hosting.gpu(duration=hosting.QUICK_SECONDS)
@friendly
def explore_latents(model_name: str, image: Image.Image) -> latent_space.LatentReport:
    return latent_space.explore_latents(load_model(model_name), image)


@hosting.gpu(duration=hosting.QUICK_SECONDS)
@friendly
def embed_tokens(model_name: str, tokens: Tokens) -> np.ndarray:
    return text_attention.embedding_matrix(load_model(model_name), tokens)


@hosting.gpu(duration=hosting.loop_seconds)
@friendly
def capture_attention(model_name: str, settings: RunSettings,
                      init_image: Image.Image | None) -> tuple[Trace, capture.AttentionMaps]:
    return capture.capture_run(load_model(model_name), settings, init_image)


@hosting.gpu(duration=hosting.sweep_seconds)
@friendly
def guidance_sweep(model_name: str, settings: RunSettings, scales: list[float],
                   init_image: Image.Image | None) -> experiments.Sweep:
    return experiments.guidance_sweep(load_model(model_name), settings, scales, init_image)


@hosting.gpu(duration=hosting.lens_seconds)
@friendly
def diffusion_lens(model_name: str, settings: RunSettings, init_image: Image.Image | None,
                   layers: list[int]) -> lens.LensResult:
    return lens.diffusion_lens(load_model(model_name), settings, init_image, layers)


@hosting.gpu(duration=hosting.variants_seconds)
@friendly
def compare_guidance(model_name: str, settings: RunSettings, rescale: float, interval: tuple[float, float],
                     init_image: Image.Image | None) -> guidance_variants.Variants:
    return guidance_variants.guidance_variants(load_model(model_name), settings, rescale, interval, init_image)


@hosting.gpu(duration=hosting.QUICK_SECONDS)
@friendly
def what_if(model_name: str, trace: Trace, step: int, scale: float) -> experiments.WhatIf:
    return experiments.what_if(load_model(model_name), trace, step, scale)


@hosting.gpu(duration=hosting.loop_seconds)
@friendly
def prompt_ab(model_name: str, settings: RunSettings, prompt_b: str, init_image: Image.Image | None,
              trace_a: Trace) -> experiments.PromptAB:
    return experiments.prompt_ab(load_model(model_name), settings, prompt_b, init_image, trace_a=trace_a)


def _decode_seconds(model_name: str, trace: Trace) -> int:
    return hosting.loop_seconds(model_name, trace.settings)


@hosting.gpu(duration=_decode_seconds)
@friendly
def decode_steps(model_name: str, trace: Trace) -> list[tuple[Image.Image, Image.Image]]:
    """Every step's x_t and predicted x0 through the VAE decoder (for the export)."""
    return export.step_decodes(load_model(model_name), trace)
