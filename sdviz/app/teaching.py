"""The teaching tabs' event handlers: poke each piece of Stable Diffusion with the loaded model.

One group per tab of the story (forward diffusion, the latent space, text conditioning, the U-Net,
classifier-free guidance), plus Prompt A/B and Export. The math lives in :mod:`sdviz.lessons`; the model work goes
through :mod:`sdviz.app.services` (GPU workers on ZeroGPU); the handlers here only call them, draw the figures, and
turn a :class:`~sdviz.errors.SdvizError` into a message the student sees (:func:`sdviz.app.services.friendly`).
"""

from __future__ import annotations

import dataclasses
import random
import shutil
import tempfile
import time
from pathlib import Path

import gradio as gr

from sdviz.app import services
from sdviz.app.services import friendly, student_error
from sdviz.app.texts import NO_RUN, PICK_PICTURE
from sdviz.lessons import experiments, export, forward, latent_space, text_attention, unet_diagram
from sdviz.pipeline.models import load_model
from sdviz.pipeline.settings import RunSettings
from sdviz.pipeline.text import tokenize
from sdviz.pipeline.trace import Trace
from sdviz.toy import world

PROGRESS = gr.Progress()  # the default that marks a handler's progress argument; Gradio passes a live one
EXPORT_DIR = Path(tempfile.gettempdir()) / "sdviz-exports"
EXPORT_TTL_S = 3600


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


@friendly
def toy_picture(model_name, seed=None):
    """A random picture from the toy world (a new one each time unless a seed is given), at the model's size."""
    model = load_model(model_name)
    rec = model.recommended
    scene = world.random_scene(random.Random(seed))
    return world.draw(scene, size=max(rec.width, rec.height)).resize((rec.width, rec.height))


def last_picture(run):
    return _trace(run).image


@friendly
def forward_view(model_name, image, t, seed):
    if image is None:
        return None, None, None, PICK_PICTURE
    result = services.noise_picture(model_name, image, int(t), int(seed or 0))
    levels = forward.schedule_levels(load_model(model_name))  # the schedule alone: no network, no GPU
    return (result.image, latent_space.channels_figure(result.noisy_latents, f"noisy latents at t = {result.timestep}"),
            forward.schedule_figure(levels, result.timestep), forward.describe(result))


@friendly
def latent_view(model_name, image):
    if image is None:
        return None, None, PICK_PICTURE
    report = services.explore_latents(model_name, image)
    return report.decoded, latent_space.channels_figure(report.latents, "the picture's latents"), latent_space.describe(report)


@friendly
def tokens_view(model_name, prompt, run):
    model = load_model(model_name)
    if not prompt and isinstance(run, Trace):
        prompt = run.settings.prompt
    tokens = tokenize(model.tokenizer, prompt or "")
    figure = text_attention.embedding_figure(services.embed_tokens(model_name, tokens), tokens)
    return text_attention.token_rows(tokens), text_attention.describe_tokens(tokens), figure


@friendly
def attention_run(model_name, prompt, run, progress=PROGRESS):
    model = load_model(model_name)
    settings, init_image = _base_settings(model, run)
    if prompt:
        settings = dataclasses.replace(settings, prompt=prompt)
    progress(0, desc="running with attention capture")
    trace, maps = services.capture_attention(model_name, settings, init_image)
    gallery = text_attention.token_gallery(maps, trace.image)
    slider = gr.Slider(minimum=0, maximum=len(maps.per_step), value=0, step=1, interactive=True)
    return trace.image, gallery, slider, text_attention.describe_maps(maps), (maps, trace.image)


@friendly
def attention_step(step, include_special, captured):
    """Re-show stored maps: step 0 = the whole run, 1..N = one step."""
    if captured is None:
        raise student_error("Press 'Run and capture attention' first.")
    maps, image = captured
    index = None if int(step) == 0 else int(step) - 1
    return text_attention.token_gallery(maps, image, index, include_special), text_attention.describe_maps(maps, index)


@friendly
def unet_view(model_name):
    layout = unet_diagram.describe_unet(load_model(model_name))
    return unet_diagram.diagram(layout), unet_diagram.table(layout), unet_diagram.describe(layout)


@friendly
def cfg_sweep(run, scales_text, progress=PROGRESS):
    trace = _trace(run)
    scales = experiments.parse_scales(scales_text)
    progress(0, desc=f"running the sweep: {len(scales)} guidance scales, a run each")
    sweep = services.guidance_sweep(trace.model, trace.settings, scales, trace.init_image)
    gallery = [(p.image, f"g = {p.guidance_scale:g}") for p in sweep.points]
    return gallery, experiments.sweep_figure(sweep), experiments.describe_sweep(sweep)


def cfg_tab_opened(run):
    """Fit the what-if step slider to the latest run."""
    if not isinstance(run, Trace):
        return gr.skip(), gr.skip(), NO_RUN
    n = len(run.steps)
    info = (f"Latest run: \"{run.settings.prompt}\", {n} steps at g = {run.settings.guidance_scale:g}"
            f"{'' if run.guidance else ' (no CFG: the what-if needs g > 1)'}.")
    return (gr.Slider(minimum=1, maximum=max(n, 2), value=1, interactive=True),
            gr.Slider(value=run.settings.guidance_scale), info)


@friendly
def cfg_what_if(run, step, scale):
    trace = _trace(run)
    result = services.what_if(trace.model, trace, int(step) - 1, float(scale))
    return result.recorded_image, result.image, experiments.describe_what_if(result)


@friendly
def ab_run(run, prompt_b, progress=PROGRESS):
    trace = _trace(run)
    if not prompt_b:
        raise student_error("Type prompt B first.")
    progress(0, desc="running prompt B")
    ab = services.prompt_ab(trace.model, trace.settings, prompt_b, trace.init_image, trace)
    figure = experiments.trajectories_figure(ab.projection, [f"A: {ab.a.settings.prompt}", f"B: {prompt_b}"])
    return trace.image, ab.b.image, figure, experiments.describe_ab(ab)


@friendly
def export_run(run):
    trace = _trace(run)
    model = services.load_for_app(trace.model)  # fits the preview colours the bundle uses, once per model
    _forget_old_exports()
    EXPORT_DIR.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(dir=EXPORT_DIR))  # one folder per export: the file keeps a readable name
    return str(export.write_bundle(model, trace, folder / export.bundle_name(trace)))


def _forget_old_exports() -> None:
    """Delete exports older than EXPORT_TTL_S (Gradio serves its own copy of each file)."""
    if not EXPORT_DIR.exists():
        return
    cutoff = time.time() - EXPORT_TTL_S
    for folder in EXPORT_DIR.iterdir():
        if folder.is_dir() and folder.stat().st_mtime < cutoff:
            shutil.rmtree(folder, ignore_errors=True)
