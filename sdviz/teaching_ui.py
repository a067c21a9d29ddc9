"""The teaching tabs: poke each piece of Stable Diffusion with the loaded model.

:func:`teaching_tabs` is called by :func:`sdviz.ui.build_demo` inside its ``gr.Tabs()``; it adds one tab per
piece of the story the seed document tells (forward diffusion, the latent space, text conditioning, the
U-Net, classifier-free guidance), plus Prompt A/B and Export. The math lives in the panel modules
(:mod:`sdviz.forward`, :mod:`sdviz.latent_space`, :mod:`sdviz.attention`, :mod:`sdviz.unet_diagram`,
:mod:`sdviz.experiments`, :mod:`sdviz.export`); the callbacks here only call them and turn a
:class:`~sdviz.errors.SdvizError` into a ``gr.Error`` the student sees.

Events that run a model part (VAE, text encoder, U-Net) share the app's generation slots
(``concurrency_id="generate"`` with no limit of their own, so the app's generate event decides how many
run at once); cheap CPU events (re-showing stored maps) run without a limit. The model work itself goes
through the functions under "Model work", which :func:`sdviz.hosting.gpu` runs in a GPU worker on a ZeroGPU
Space: they take the model's name and plain values and return plain values; the callbacks draw the figures.
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
import numpy as np
from PIL import Image

from sdviz import attention, experiments, export, forward, hosting, latent_space, toyworld, unet_diagram
from sdviz.errors import SdvizError
from sdviz.models import load_model
from sdviz.settings import RunSettings
from sdviz.text import Tokens, tokenize
from sdviz.trace import Trace
from sdviz.ui import load_for_app

GENERATE_CONCURRENCY_ID = "generate"  # the app's generation slots (sdviz.ui uses the same id)
EXPORT_CONCURRENCY_ID = "export"
PROGRESS = gr.Progress()  # the default that marks a callback's progress argument; Gradio passes a live one
STATE_TTL_S = 1800
EXPORT_DIR = Path(tempfile.gettempdir()) / "sdviz-exports"
EXPORT_TTL_S = 3600
PICK_PICTURE = "Pick a picture first: upload one, or press **A toy picture** or **My last picture**."
NO_RUN = "Generate an image first (Text to image or Image to image): this panel works on your latest run."

EXPLAIN_FORWARD = """**Forward diffusion: the ink spreading on tissue paper.** Training takes a clean picture and
mixes noise into it, a little at first and then until nothing of the picture is left. In latent space,
*x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) noise*: move **t** and watch the picture dissolve.
No neural network is involved in this direction, only the model's noise schedule; the U-Net is trained to
look at such a mix and say which part is noise, which is how it learns to run the process backwards."""

EXPLAIN_LATENT = """**The latent space: why Stable Diffusion is fast.** The VAE encoder squeezes the picture into a
small grid of numbers (Stable Diffusion: 48 times fewer), the U-Net does all its work there, and the VAE
decoder turns the result back into pixels. Pictures are not random (every face has eyes and a mouth), so
a well-trained VAE loses little: compare the decode with the original and read the error below."""

EXPLAIN_TEXT = """**Text conditioning.** The tokenizer cuts the prompt into tokens (with a start and an end token,
padded to a fixed length); the CLIP text encoder turns each token into a vector (the heat map: one row per
token). The U-Net reads these vectors through its **cross-attention** layers: every latent pixel weighs the
tokens, and the weights add up to 1. **Run and capture** repeats your last run with this prompt and records
those weights: the maps show which word "lands" where, over the whole run or at one step."""

EXPLAIN_UNET = """**The U-Net: the noise predictor.** As the seed document says, it has a *contracting path*
(encoders: the latent grid shrinks, the channels grow) and an *expansive path* (decoders: the grid grows
back), with *skip connections* carrying each resolution's details across. Stable Diffusion adds the
timestep to every block and **cross-attention** (purple) where the prompt enters. Drawn from the selected
model's own configuration."""

EXPLAIN_CFG = """**Classifier-free guidance (CFG).** Each step the U-Net estimates the noise twice, without and with
the prompt; the scheduler uses *uncond + g (text - uncond)*. **Sweep**: your last run's settings and seed at
several g (same starting noise, so only guidance changes). **What-if**: pick one recorded step and
recombine its two stored estimates at another g: the picture shows where that step would have aimed (the
predicted clean latents x0), with no new U-Net call."""

EXPLAIN_AB = """**Prompt A/B.** Prompt A is your last run; prompt B runs with the same seed and settings, so both start
from exactly the same noise. The plot projects both latent trajectories onto their two main directions
(PCA): the paths start at one point and drift apart as the U-Net follows different words."""

EXPLAIN_EXPORT = """**Export** your last run as one zip: the final picture, settings.json (to reproduce it),
trace.npz (every step's tensors, for a notebook), the animation, and every step's panels as PNGs
(for slides). The command line writes the same file: `python -m sdviz generate ... --out out/ --bundle run.zip`."""


# --- Small helpers ----------------------------------------------------------------------------------


def friendly(fn):
    """Turn SdvizError into gr.Error (the message reaches the student as it is)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except SdvizError as err:
            raise gr.Error(str(err)) from err

    return wrapper


def _trace(run) -> Trace:
    if not isinstance(run, Trace):
        raise gr.Error(NO_RUN)
    return run


def _base_settings(model, run) -> tuple[RunSettings, object]:
    """The last run's settings (and init picture) when it used this model; else the model's defaults."""
    if isinstance(run, Trace) and run.model == model.name:
        return run.settings, run.init_image
    rec = model.recommended
    return RunSettings(steps=rec.steps, guidance_scale=rec.guidance_scale), None


# --- Model work: each use of the VAE, the text encoder or the U-Net --------------------------------------
# On a ZeroGPU Space hosting.gpu runs each of these in a forked worker that holds a GPU for at most `duration`
# seconds. So they take the model's *name* and plain values, return plain values (pictures, CPU tensors and
# arrays, dataclasses of those), and turn SdvizError into gr.Error themselves: only a gr.Error's message
# comes back from the worker. Everywhere else they are plain calls.


@hosting.gpu(duration=hosting.QUICK_SECONDS)
@friendly
def _noise_picture(model_name: str, image: Image.Image, t: int, seed: int) -> forward.NoisedPicture:
    return forward.noise_picture(load_model(model_name), image, t, seed=seed)


@hosting.gpu(duration=hosting.QUICK_SECONDS)
@friendly
def _explore_latents(model_name: str, image: Image.Image) -> latent_space.LatentReport:
    return latent_space.explore_latents(load_model(model_name), image)


@hosting.gpu(duration=hosting.QUICK_SECONDS)
@friendly
def _embed_tokens(model_name: str, tokens: Tokens) -> np.ndarray:
    return attention.embedding_matrix(load_model(model_name), tokens)


@hosting.gpu(duration=hosting.loop_seconds)
@friendly
def _capture_attention(model_name: str, settings: RunSettings,
                       init_image: Image.Image | None) -> tuple[Trace, attention.AttentionMaps]:
    return attention.capture_run(load_model(model_name), settings, init_image)


@hosting.gpu(duration=hosting.sweep_seconds)
@friendly
def _guidance_sweep(model_name: str, settings: RunSettings, scales: list[float],
                    init_image: Image.Image | None) -> experiments.Sweep:
    return experiments.guidance_sweep(load_model(model_name), settings, scales, init_image)


@hosting.gpu(duration=hosting.QUICK_SECONDS)
@friendly
def _what_if(model_name: str, trace: Trace, step: int, scale: float) -> experiments.WhatIf:
    return experiments.what_if(load_model(model_name), trace, step, scale)


@hosting.gpu(duration=hosting.loop_seconds)
@friendly
def _prompt_ab(model_name: str, settings: RunSettings, prompt_b: str, init_image: Image.Image | None,
               trace_a: Trace) -> experiments.PromptAB:
    return experiments.prompt_ab(load_model(model_name), settings, prompt_b, init_image, trace_a=trace_a)


# --- Callbacks (module level, so tests can call them directly) ----------------------------------------


@friendly
def toy_picture(model_name, seed=None):
    """A random picture from the toy world (a new one each time unless a seed is given), at the model's size."""
    model = load_model(model_name)
    rec = model.recommended
    scene = toyworld.random_scene(random.Random(seed))
    return toyworld.draw(scene, size=max(rec.width, rec.height)).resize((rec.width, rec.height))


def last_picture(run):
    return _trace(run).image


@friendly
def forward_view(model_name, image, t, seed):
    if image is None:
        return None, None, None, PICK_PICTURE
    result = _noise_picture(model_name, image, int(t), int(seed or 0))
    levels = forward.schedule_levels(load_model(model_name))  # the schedule alone: no network, no GPU
    return (result.image, latent_space.channels_figure(result.noisy_latents, f"noisy latents at t = {result.timestep}"),
            forward.schedule_figure(levels, result.timestep), forward.describe(result))


@friendly
def latent_view(model_name, image):
    if image is None:
        return None, None, PICK_PICTURE
    report = _explore_latents(model_name, image)
    return report.decoded, latent_space.channels_figure(report.latents, "the picture's latents"), latent_space.describe(report)


@friendly
def tokens_view(model_name, prompt, run):
    model = load_model(model_name)
    if not prompt and isinstance(run, Trace):
        prompt = run.settings.prompt
    tokens = tokenize(model.tokenizer, prompt or "")
    figure = attention.embedding_figure(_embed_tokens(model_name, tokens), tokens)
    return attention.token_rows(tokens), attention.describe_tokens(tokens), figure


@friendly
def attention_run(model_name, prompt, run, progress=PROGRESS):
    model = load_model(model_name)
    settings, init_image = _base_settings(model, run)
    if prompt:
        settings = dataclasses.replace(settings, prompt=prompt)
    progress(0, desc="running with attention capture")
    trace, maps = _capture_attention(model_name, settings, init_image)
    gallery = attention.token_gallery(maps, trace.image)
    slider = gr.Slider(minimum=0, maximum=len(maps.per_step), value=0, step=1, interactive=True)
    return trace.image, gallery, slider, attention.describe_maps(maps), (maps, trace.image)


@friendly
def attention_step(step, include_special, captured):
    """Re-show stored maps: step 0 = the whole run, 1..N = one step."""
    if captured is None:
        raise gr.Error("Press 'Run and capture attention' first.")
    maps, image = captured
    index = None if int(step) == 0 else int(step) - 1
    return attention.token_gallery(maps, image, index, include_special), attention.describe_maps(maps, index)


@friendly
def unet_view(model_name):
    layout = unet_diagram.describe_unet(load_model(model_name))
    return unet_diagram.diagram(layout), unet_diagram.table(layout), unet_diagram.describe(layout)


@friendly
def cfg_sweep(run, scales_text, progress=PROGRESS):
    trace = _trace(run)
    scales = experiments.parse_scales(scales_text)
    progress(0, desc=f"running the sweep: {len(scales)} guidance scales, a run each")
    sweep = _guidance_sweep(trace.model, trace.settings, scales, trace.init_image)
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
    result = _what_if(trace.model, trace, int(step) - 1, float(scale))
    return result.recorded_image, result.image, experiments.describe_what_if(result)


@friendly
def ab_run(run, prompt_b, progress=PROGRESS):
    trace = _trace(run)
    if not prompt_b:
        raise gr.Error("Type prompt B first.")
    progress(0, desc="running prompt B")
    ab = _prompt_ab(trace.model, trace.settings, prompt_b, trace.init_image, trace)
    figure = experiments.trajectories_figure(ab.projection, [f"A: {ab.a.settings.prompt}", f"B: {prompt_b}"])
    return trace.image, ab.b.image, figure, experiments.describe_ab(ab)


@friendly
def export_run(run):
    trace = _trace(run)
    model = load_for_app(trace.model)  # the bundle's pictures use the preview colours, fitted here once per model
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


# --- The tabs ----------------------------------------------------------------------------------------


def _picture_input(prefix: str) -> tuple[gr.Image, gr.Button, gr.Button]:
    # PNG, not Gradio's default WebP: lossy compression smears the toy world's hard edges
    image = gr.Image(label="Picture", type="pil", format="png", sources=["upload", "clipboard"], height=240,
                     elem_id=f"{prefix}-picture", elem_classes=["teaching-picture"])
    with gr.Row():
        toy = gr.Button("A toy picture", size="sm", elem_id=f"{prefix}-toy")
        last = gr.Button("My last picture", size="sm", elem_id=f"{prefix}-last")
    return image, toy, last


def _picture_output(label: str, elem_id: str, height: int, **kwargs) -> gr.Image:
    """A picture a tab shows, scaled to fill its box with sharp pixels (CSS ``.teaching-picture`` in sdviz.ui):
    the embedded model's pictures are only 64x64."""
    return gr.Image(label=label, type="pil", format="png", interactive=False, height=height, elem_id=elem_id,
                    elem_classes=["teaching-picture"], **kwargs)


def teaching_tabs(model_choice: gr.Dropdown, run_state: gr.State) -> None:
    """One tab per panel; call inside the app's ``gr.Tabs()``."""
    model_events = dict(api_visibility="private", concurrency_id=GENERATE_CONCURRENCY_ID, concurrency_limit=None)
    cheap_events = dict(api_visibility="private", concurrency_limit=None)

    with gr.Tab("Forward diffusion", id="forward"):
        gr.Markdown(EXPLAIN_FORWARD)
        with gr.Row():
            with gr.Column(scale=2):
                f_image, f_toy, f_last = _picture_input("forward")
                f_t = gr.Slider(0, 999, value=400, step=1, label="timestep t", elem_id="forward-t",
                                info="0 = the clean picture, 999 = pure noise")
                f_seed = gr.Number(value=0, precision=0, minimum=0, label="noise seed", elem_id="forward-seed")
            with gr.Column(scale=3):
                f_noisy = _picture_output("decoded noisy latents", "forward-noisy", height=240)
                f_text = gr.Markdown(elem_id="forward-text")
        with gr.Row():
            # show_label=False on every plot here: each figure has its own title, which the label would cover
            f_schedule = gr.Plot(label="the noise schedule", show_label=False, format="png",
                                 elem_id="forward-schedule")
            f_latents = gr.Plot(label="the noisy latents", show_label=False, format="png", elem_id="forward-latents")
        f_toy.click(toy_picture, [model_choice], f_image, **cheap_events)
        f_last.click(last_picture, [run_state], f_image, **cheap_events)
        f_outputs = [f_noisy, f_latents, f_schedule, f_text]
        for trigger in (f_image.change, f_t.release, f_seed.submit):
            trigger(forward_view, [model_choice, f_image, f_t, f_seed], f_outputs, trigger_mode="always_last",
                    **model_events)

    with gr.Tab("Latent space", id="latent"):
        gr.Markdown(EXPLAIN_LATENT)
        with gr.Row():
            with gr.Column():
                l_image, l_toy, l_last = _picture_input("latent")
            l_decoded = _picture_output("decoded from the latents (VAE round trip)", "latent-decoded", height=240)
        l_channels = gr.Plot(label="the 4 latent channels", show_label=False, format="png",
                             elem_id="latent-channels")
        l_text = gr.Markdown(elem_id="latent-text")
        l_toy.click(toy_picture, [model_choice], l_image, **cheap_events)
        l_last.click(last_picture, [run_state], l_image, **cheap_events)
        l_image.change(latent_view, [model_choice, l_image], [l_decoded, l_channels, l_text],
                       trigger_mode="always_last", **model_events)

    with gr.Tab("Text & attention", id="attention"):
        gr.Markdown(EXPLAIN_TEXT)
        a_prompt = gr.Textbox(label="Prompt", placeholder="empty = the prompt of your last run",
                              elem_id="attention-prompt")
        with gr.Row():
            a_tokenize = gr.Button("Show tokens and embeddings", elem_id="attention-tokenize")
            a_run = gr.Button("Run and capture attention", variant="primary", elem_id="attention-run")
        with gr.Row():
            a_tokens = gr.Dataframe(headers=["position", "token", "id", "role"], interactive=False, max_height=300,
                                    label="tokens", elem_id="attention-tokens")
            with gr.Column():
                a_token_text = gr.Markdown(elem_id="attention-token-text")
                a_embeddings = gr.Plot(label="text embeddings", show_label=False, format="png",
                                       elem_id="attention-embeddings")
        with gr.Row():
            a_image = _picture_output("the picture", "attention-image", height=220, scale=1)
            with gr.Column(scale=3):
                a_step = gr.Slider(0, 1, value=0, step=1, label="step (0 = the whole run)", interactive=False,
                                   elem_id="attention-step")
                a_special = gr.Checkbox(value=True, label="show start, end and padding tokens")
                a_gallery = gr.Gallery(label="cross-attention per token (bright = attended)", columns=6,
                                       height=260, object_fit="contain", format="png", elem_id="attention-gallery",
                                       elem_classes=["teaching-gallery"])
        a_text = gr.Markdown(elem_id="attention-text")
        a_captured = gr.State(None, time_to_live=STATE_TTL_S)
        a_tokenize.click(tokens_view, [model_choice, a_prompt, run_state], [a_tokens, a_token_text, a_embeddings],
                         **model_events)
        a_run.click(attention_run, [model_choice, a_prompt, run_state],
                    [a_image, a_gallery, a_step, a_text, a_captured], **model_events)
        for trigger in (a_step.release, a_special.input):
            trigger(attention_step, [a_step, a_special, a_captured], [a_gallery, a_text],
                    trigger_mode="always_last", **cheap_events)

    with gr.Tab("U-Net", id="unet"):
        gr.Markdown(EXPLAIN_UNET)
        u_draw = gr.Button("Draw the selected model's U-Net", elem_id="unet-draw")
        u_text = gr.Markdown(elem_id="unet-text")
        u_plot = gr.Plot(label="the U-Net", show_label=False, format="png", elem_id="unet-plot")
        u_table = gr.Dataframe(headers=unet_diagram.TABLE_HEADERS, interactive=False, label="blocks",
                               elem_id="unet-table")
        u_draw.click(unet_view, [model_choice], [u_plot, u_table, u_text], **cheap_events)

    with gr.Tab("CFG experiments", id="cfg") as cfg_tab:
        gr.Markdown(EXPLAIN_CFG)
        c_info = gr.Markdown(NO_RUN, elem_id="cfg-info")
        gr.Markdown("### Sweep")
        with gr.Row():
            c_scales = gr.Textbox(value="1, 2, 4, 7.5, 12", label="guidance scales", scale=3,
                                  info=f"up to {experiments.MAX_SWEEP}; each one is a whole run", elem_id="cfg-scales")
            c_sweep = gr.Button("Run the sweep", variant="primary", scale=1, elem_id="cfg-sweep")
        c_gallery = gr.Gallery(label="same seed, different guidance", columns=6, height=280, object_fit="contain",
                               format="png", elem_id="cfg-gallery", elem_classes=["teaching-gallery"])
        with gr.Row():
            c_plot = gr.Plot(label="measures against the guidance scale", show_label=False, format="png",
                             elem_id="cfg-plot")
            c_table = gr.Markdown(elem_id="cfg-table")
        gr.Markdown("### What-if at one step")
        with gr.Row():
            c_step = gr.Slider(1, 2, value=1, step=1, label="step", interactive=False, elem_id="cfg-step")
            c_scale = gr.Slider(0, 20, value=7.5, step=0.5, label="guidance scale g", elem_id="cfg-scale")
        with gr.Row():
            c_recorded = _picture_output("predicted x0 at the run's own g (VAE decode)", "cfg-recorded", height=200)
            c_what_if = _picture_output("predicted x0 at the new g (VAE decode)", "cfg-what-if", height=200)
        c_text = gr.Markdown(elem_id="cfg-text")
        cfg_tab.select(cfg_tab_opened, [run_state], [c_step, c_scale, c_info], **cheap_events)
        c_sweep.click(cfg_sweep, [run_state, c_scales], [c_gallery, c_plot, c_table], **model_events)
        for trigger in (c_step.release, c_scale.release):
            trigger(cfg_what_if, [run_state, c_step, c_scale], [c_recorded, c_what_if, c_text],
                    trigger_mode="always_last", **model_events)

    with gr.Tab("Prompt A/B", id="ab"):
        gr.Markdown(EXPLAIN_AB)
        with gr.Row():
            b_prompt = gr.Textbox(label="Prompt B", placeholder="a small blue square at the top", scale=3,
                                  elem_id="ab-prompt")
            b_run = gr.Button("Run prompt B from the same noise", variant="primary", scale=1, elem_id="ab-run")
        with gr.Row():
            b_image_a = _picture_output("A (your last run)", "ab-a", height=220)
            b_image_b = _picture_output("B", "ab-b", height=220)
            b_plot = gr.Plot(label="latent trajectories (PCA)", show_label=False, format="png", elem_id="ab-plot")
        b_text = gr.Markdown(elem_id="ab-text")
        b_run.click(ab_run, [run_state, b_prompt], [b_image_a, b_image_b, b_plot, b_text], **model_events)

    with gr.Tab("Export", id="export"):
        gr.Markdown(EXPLAIN_EXPORT)
        e_button = gr.Button("Build the zip of my last run", variant="primary", elem_id="export-build")
        e_file = gr.File(label="the run as a zip", interactive=False, elem_id="export-file")
        e_button.click(export_run, [run_state], e_file, api_visibility="private",
                       concurrency_id=EXPORT_CONCURRENCY_ID, concurrency_limit=2)
