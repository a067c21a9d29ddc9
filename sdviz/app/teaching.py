"""The teaching tabs' event handlers: poke each piece of Stable Diffusion with the loaded model.

One group per tab of the story (forward diffusion, the latent space, text conditioning, the U-Net,
classifier-free guidance), plus Prompt A/B and Export. The math lives in :mod:`sdviz.lessons`; the model work goes
through :mod:`sdviz.app.services` (GPU workers on ZeroGPU); the handlers here only call them and draw the figures.

A student's mistake (a bad number, a file that is no picture, no run yet) never wipes a tab: every handler is
wrapped by :func:`keep_results`, which leaves the tab's outputs as they were (``gr.skip()``) and puts one plain
sentence in the tab's message, the last output of each handler, next to the input.
"""

from __future__ import annotations

import dataclasses
import functools
import random
import shutil
import tempfile
import time
from pathlib import Path

import gradio as gr
from PIL import Image

from sdviz.app import services
from sdviz.app.services import student_error
from sdviz.app.texts import NO_RUN, OUT_OF_WORLD, PICK_PICTURE
from sdviz.errors import SdvizError
from sdviz.lessons import diffusion_lens as lens
from sdviz.lessons import experiments, export, forward, guidance_variants, latent_space, text_attention, unet_diagram
from sdviz.pipeline.models import EMBEDDED, load_model
from sdviz.pipeline.settings import RunSettings
from sdviz.pipeline.text import tokenize
from sdviz.pipeline.trace import Trace
from sdviz.toy import world

PROGRESS = gr.Progress()  # the default that marks a handler's progress argument; Gradio passes a live one
EXPORT_DIR = Path(tempfile.gettempdir()) / "sdviz-exports"
EXPORT_TTL_S = 3600
AVERAGE_SEEDS = 3  # more seeds a sweep averages when the judge's accuracy is flat for the run's own seed
PLAY_SECONDS = 0.7  # Prompt A/B's play: one step per tick


def warning(message: str) -> str:
    return f"⚠️ {message}"


def keep_results(outputs: int):
    """Decorator: a handler with ``outputs`` outputs before its message. On a student's mistake (SdvizError or
    gr.Error) it returns gr.skip() for each, so the tab keeps its last good result, and the message says why."""

    def decorate(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except SdvizError as err:
                message = str(err)
            except gr.Error as err:
                message = err.message
            return (*[gr.skip()] * outputs, warning(message))

        return wrapper

    return decorate


def _trace(run) -> Trace:
    if not isinstance(run, Trace):
        raise student_error(NO_RUN)
    return run


def _base_settings(model, run) -> tuple[RunSettings, object]:
    """The last run's settings (and init picture) when it used this model; else the model's defaults."""
    if isinstance(run, Trace) and run.model == model.name:
        return run.settings, run.init_image
    rec = model.recommended
    return RunSettings(steps=rec.steps, guidance_scale=rec.guidance_scale), None


def steps_counted(trace: Trace, short: bool = False) -> str:
    """Why the run made one step more than asked for, in brackets (PNDM), else ''."""
    note = export.steps_note(trace, short)
    return f" ({note})" if note else ""


# --- Pictures in, for Forward diffusion and Latent space ----------------------------------------------------


@keep_results(1)
def toy_picture(model_name, seed=None):
    """A random picture from the toy world (a new one each time unless a seed is given), at the model's size."""
    model = load_model(model_name)
    rec = model.recommended
    scene = world.random_scene(random.Random(seed))
    return world.draw(scene, size=max(rec.width, rec.height)).resize((rec.width, rec.height)), ""


@keep_results(1)
def last_picture(run):
    return _trace(run).image, ""


def picture_uploaded(image):
    """At upload: a file that is no picture is taken out of the input again (the view handler says why)."""
    try:
        services.check_picture(image)
    except SdvizError:
        return None
    return gr.skip()


def check_upload(path) -> None:
    """Image to image, at upload: refuse a file that is no picture, or too big, with the reason (gr.Error)."""
    try:
        services.check_picture(path)
    except SdvizError as err:
        raise student_error(err) from err


def _picture(model, image) -> tuple[Image.Image | str, str]:
    """The tab's picture as the handlers take it (path or PIL) and a note on what fitting it to the model did."""
    if image is None:
        raise SdvizError(PICK_PICTURE)
    services.check_picture(image)
    if isinstance(image, Image.Image):
        size = image.size
    else:
        with Image.open(image) as opened:
            size = opened.size
    rec = model.recommended
    return image, fitted_note(size, (rec.width, rec.height))


def fitted_note(size: tuple[int, int], target: tuple[int, int]) -> str:
    """What fitting a picture to the model's size does to it, in one sentence ('' when nothing)."""
    (w, h), (tw, th) = size, target
    if (w, h) == (tw, th):
        return ""
    scale = max(tw / w, th / h)
    cw, ch = round(tw / scale), round(th / scale)
    cropped = f"cropped to its middle {cw}x{ch} and " if (cw, ch) != (w, h) else ""
    return f"Your {w}x{h} picture was {cropped}resized to {tw}x{th}, the size this model works at."


def _view_inputs(model_name, image):
    if image is None:  # an emptied input: keep what the tab shows, say nothing
        return None
    return _picture(load_model(model_name), image)


@keep_results(4)
def forward_view(model_name, image, t, seed):
    picked = _view_inputs(model_name, image)
    if picked is None:
        return gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()
    picture, note = picked
    result = services.noise_picture(model_name, picture, int(t), int(seed or 0))
    levels = forward.schedule_levels(load_model(model_name))  # the schedule alone: no network, no GPU
    return (result.image, latent_space.channels_figure(result.noisy_latents, f"noisy latents at t = {result.timestep}"),
            forward.schedule_figure(levels, result.timestep), forward.describe(result), note)


def out_of_world(model_name, report: latent_space.LatentReport) -> str:
    """Why a round trip is poor, when the embedded model's VAE meets a picture from outside its toy world."""
    if model_name == EMBEDDED and report.psnr < 25:
        return OUT_OF_WORLD.format(psnr=report.psnr)
    return ""


@keep_results(3)
def latent_view(model_name, image):
    picked = _view_inputs(model_name, image)
    if picked is None:
        return gr.skip(), gr.skip(), gr.skip(), gr.skip()
    picture, note = picked
    report = services.explore_latents(model_name, picture)
    text = latent_space.describe(report)
    why = out_of_world(model_name, report)
    return (report.decoded, latent_space.channels_figure(report.latents, "the picture's latents"),
            f"{text}\n\n{why}" if why else text, note)


# --- Text & attention ---------------------------------------------------------------------------------------


@keep_results(3)
def tokens_view(model_name, prompt, run):
    model = load_model(model_name)
    if not prompt and isinstance(run, Trace):
        prompt = run.settings.prompt
    tokens = tokenize(model.tokenizer, prompt or "")
    figure = text_attention.embedding_figure(services.embed_tokens(model_name, tokens), tokens)
    return text_attention.token_rows(tokens), text_attention.describe_tokens(tokens), figure, ""


@keep_results(5)
def attention_run(model_name, prompt, run, include_special=True, progress=PROGRESS):
    model = load_model(model_name)
    settings, init_image = _base_settings(model, run)
    if prompt:
        settings = dataclasses.replace(settings, prompt=prompt)
    progress(0, desc="running with attention capture")
    trace, maps = services.capture_attention(model_name, settings, init_image)
    figure = text_attention.attention_figure(maps, trace.image, None, bool(include_special))
    slider = gr.Slider(minimum=0, maximum=len(maps.per_step), value=0, step=1, interactive=True,
                       label=f"step (0 = the whole run; {len(maps.per_step)} steps{steps_counted(trace, True)})")
    return (trace.image, figure, slider, text_attention.describe_maps(maps, None, bool(include_special)),
            (maps, trace.image), "")


@keep_results(2)
def attention_step(step, include_special, captured):
    """Re-show stored maps: step 0 = the whole run, 1..N = one step."""
    if captured is None:
        raise SdvizError("Press 'Run and capture attention' first.")
    maps, image = captured
    index = None if int(step) == 0 else int(step) - 1
    return (text_attention.attention_figure(maps, image, index, bool(include_special)),
            text_attention.describe_maps(maps, index, bool(include_special)), "")


@keep_results(2)
def lens_run(model_name, prompt, run, progress=PROGRESS):
    """Diffusion Lens: the last run's settings (or the model's defaults) with the typed prompt, once per text layer."""
    model = load_model(model_name)
    settings, init_image = _base_settings(model, run)
    if prompt:
        settings = dataclasses.replace(settings, prompt=prompt)
    layers = lens.lens_layers(lens.text_layers(model))
    progress(0, desc=f"Diffusion Lens: {len(layers)} runs, one per text-encoder layer")
    result = services.diffusion_lens(model_name, settings, init_image, layers)
    return lens.lens_figure(result), lens.describe_lens(result), ""


# --- U-Net ---------------------------------------------------------------------------------------------------


@keep_results(3)
def unet_view(model_name):
    layout = unet_diagram.describe_unet(load_model(model_name))
    return unet_diagram.diagram(layout), unet_diagram.table(layout), unet_diagram.describe(layout), ""


# --- CFG experiments ----------------------------------------------------------------------------------------


@keep_results(3)
def cfg_sweep(run, scales_text, progress=PROGRESS):
    trace = _trace(run)
    scales = experiments.parse_scales(scales_text)
    progress(0, desc=f"running the sweep: {len(scales)} guidance scales, a run each")
    sweep = services.guidance_sweep(trace.model, trace.settings, scales, trace.init_image)
    if sweep.flat:  # one seed shows no trade-off: average a few more
        others = []
        for i in range(1, AVERAGE_SEEDS + 1):
            progress(i / (AVERAGE_SEEDS + 1), desc=f"flat for this seed: averaging seed {trace.settings.seed + i}")
            settings = dataclasses.replace(trace.settings, seed=trace.settings.seed + i)
            others.append(services.guidance_sweep(trace.model, settings, scales, trace.init_image))
        sweep = experiments.with_more_seeds(sweep, others)
    return (experiments.sweep_pictures_figure(sweep), experiments.sweep_figure(sweep),
            experiments.describe_sweep(sweep), "")


def cfg_tab_opened(run):
    """Fit the what-if step slider to the latest run; the what-if's and the variants' g start at the run's g."""
    if not isinstance(run, Trace):
        return gr.skip(), gr.skip(), NO_RUN, gr.skip()
    n = len(run.steps)
    info = (f"Latest run: \"{run.settings.prompt}\", {n} steps{steps_counted(run)} at g = "
            f"{run.settings.guidance_scale:g}{'' if run.guidance else ' (no CFG: the what-if needs g > 1)'}.")
    return (gr.Slider(minimum=1, maximum=max(n, 2), value=1, interactive=True),
            gr.Slider(value=run.settings.guidance_scale), info, gr.Slider(value=run.settings.guidance_scale))


@keep_results(3)
def cfg_what_if(run, step, scale):
    trace = _trace(run)
    result = services.what_if(trace.model, trace, int(step) - 1, float(scale))
    return result.recorded_image, result.image, experiments.describe_what_if(result), ""


def _number(value, name: str) -> float:
    """A slider's value as a float, or a plain sentence (the API can send anything)."""
    try:
        return float(value)
    except (TypeError, ValueError) as err:
        raise SdvizError(f"{name} must be a number (got {value!r}).") from err


@keep_results(3)
def cfg_variants(run, scale, rescale, start, end, progress=PROGRESS):
    """Guidance variants: plain CFG, rescale and CFG on an interval, from the last run's settings and seed at g."""
    trace = _trace(run)
    scale, rescale = _number(scale, "The guidance scale"), _number(rescale, "Guidance rescale")
    start, end = _number(start, "The interval's start"), _number(end, "The interval's end")
    if start >= end:
        raise SdvizError(f"Guidance from {start:g} to {end:g} covers no steps: the start must be below the end.")
    settings = dataclasses.replace(trace.settings, guidance_scale=scale)
    progress(0, desc="three runs from the same noise: plain CFG, rescale, an interval")
    variants = services.compare_guidance(trace.model, settings, rescale, (start, end), trace.init_image)
    return (guidance_variants.variants_figure(variants), guidance_variants.spread_figure(variants),
            guidance_variants.describe_variants(variants), "")


# --- Prompt A/B ---------------------------------------------------------------------------------------------


def ab_labels(ab: experiments.PromptAB) -> list[str]:
    return [f"A: \"{ab.a.settings.prompt}\"" if ab.a.settings.prompt else "A: (empty prompt)",
            f"B: \"{ab.b.settings.prompt}\"" if ab.b.settings.prompt else "B: (empty prompt: unconditional)"]


def ab_pictures(ab: experiments.PromptAB, step: int) -> tuple:
    """Step ``step`` (1-based) of both runs: A's x_t and x0 decodes, B's, and the trajectories with the step marked."""
    n = len(ab.a.steps)
    step = min(max(int(step), 1), n)
    a, b = ab.a.steps[step - 1], ab.b.steps[step - 1]
    a_xt, a_x0 = services.decode_pair(ab.a.model, a.latents, a.pred_x0)
    b_xt, b_x0 = services.decode_pair(ab.b.model, b.latents, b.pred_x0)
    figure = experiments.trajectories_figure(ab.projection, ab_labels(ab), step)
    return a_xt, a_x0, b_xt, b_x0, figure


@keep_results(8)
def ab_run(run, prompt_b, progress=PROGRESS):
    trace = _trace(run)
    prompt_b = prompt_b or ""  # empty is allowed, as everywhere: the model then draws without a prompt
    progress(0, desc="running prompt B")
    ab = services.prompt_ab(trace.model, trace.settings, prompt_b, trace.init_image, trace)
    n = len(ab.a.steps)
    slider = gr.Slider(minimum=1, maximum=max(n, 2), value=n, step=1, interactive=True,
                       label=f"step (both runs; {n} steps{steps_counted(trace, True)})")
    return (ab, slider, *ab_pictures(ab, n), experiments.describe_ab(ab), "")


@keep_results(5)
def ab_step(ab, step):
    if not isinstance(ab, experiments.PromptAB):
        raise SdvizError("Press 'Run prompt B from the same noise' first.")
    return (*ab_pictures(ab, step), "")


def ab_play(ab, step):
    """Play from the current step (from the first one when at the end)."""
    if not isinstance(ab, experiments.PromptAB):
        return gr.Timer(active=False), gr.skip(), warning("Press 'Run prompt B from the same noise' first.")
    start = 1 if int(step) >= len(ab.a.steps) else int(step)
    return gr.Timer(active=True), start, ""


def ab_pause():
    return gr.Timer(active=False)


def ab_tick(ab, step):
    """One tick of the play: the next step, or stop at the last one."""
    if not isinstance(ab, experiments.PromptAB) or int(step) >= len(ab.a.steps):
        return gr.Timer(active=False), *[gr.skip()] * 6
    nxt = int(step) + 1
    return gr.skip(), nxt, *ab_pictures(ab, nxt)


# --- Export -------------------------------------------------------------------------------------------------


@keep_results(1)
def export_run(run, progress=PROGRESS):
    trace = _trace(run)
    model = services.load_for_app(trace.model)  # fits the preview colours the bundle uses, once per model
    progress(0, desc=f"decoding {len(trace.steps)} steps with the VAE")
    decodes = services.decode_steps(trace.model, trace)
    _forget_old_exports()
    EXPORT_DIR.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(dir=EXPORT_DIR))  # one folder per export: the file keeps a readable name
    return str(export.write_bundle(model, trace, folder / export.bundle_name(trace), decodes)), ""


def _forget_old_exports() -> None:
    """Delete exports older than EXPORT_TTL_S (Gradio serves its own copy of each file)."""
    if not EXPORT_DIR.exists():
        return
    cutoff = time.time() - EXPORT_TTL_S
    for folder in EXPORT_DIR.iterdir():
        if folder.is_dir() and folder.stat().st_mtime < cutoff:
            shutil.rmtree(folder, ignore_errors=True)
