"""The sdviz app: text to image, image to image, and a live "peek inside" panel on the denoising loop.

:func:`build_demo` builds the Gradio Blocks (``app.py`` launches it):

    model choice
    tabs: Text to image | Image to image | the teaching tabs (from sdviz.teaching_ui, when present)
    the peek-inside panel: every step of the latest run, live while it runs, scrubbable afterwards

How a run streams (:func:`live_run`): the event iterates :func:`sdviz.sampler.denoise` (the one
denoising loop) and yields a live update for a step whenever that keeps the time the loop spends
waiting for updates within ``LIVE_BUDGET`` of the run (on a slow model every step is shown, on a fast
one the newest step a few times a second); every step stays in the trace for scrubbing. Live pictures
use the fast approximate colours; full VAE decodes are made on demand and cached
(:class:`sdviz.render.DecodeCache`); the final picture is always the full decode.

The loop runs in the event's own thread, not a helper thread: a helper would fight the page's
rendering for Python's global lock, and on a small model that slowed the loop itself several times.

The UI holds no math: pictures, numbers and plots come from :mod:`sdviz.render`.
"""

from __future__ import annotations

import base64
import importlib.util
import io
import os
import random
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
import numpy as np
from PIL import Image

from sdviz import render, toyworld
from sdviz.errors import SdvizError
from sdviz.models import EMBEDDED, KNOWN_HUB_MODELS, Model, load_model
from sdviz.sampler import denoise
from sdviz.schedulers import SCHEDULERS, scheduler_name
from sdviz.settings import MAX_STEPS, RunSettings, check_settings
from sdviz.trace import StepRecord, Trace

MODELS_ENV = "SDVIZ_MODELS"  # comma-separated allow-list of models; the first is the default
CONCURRENCY_ENV = "SDVIZ_CONCURRENCY"  # runs at once (default: 1 on a CPU, 2 on a GPU)
QUEUE_SIZE_ENV = "SDVIZ_QUEUE_SIZE"  # waiting requests before "queue full" (default 64)
EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "assets" / "examples"

DEFAULT_SCHEDULER = "default"  # the dropdown/API value for "the model's own scheduler"
UI_MAX_STEPS = min(100, MAX_STEPS)
UI_MAX_SEED = 2**32 - 1  # what the seed box and the dice accept (the CLI takes larger ones too)
STATE_TTL_S = 1800  # a session's latest trace and its cached decodes live 30 min after the last run
LIVE_BUDGET = 0.1  # live updates may hold the loop up for at most this share of a run's time
GENERATE_CONCURRENCY_ID = "generate"  # text to image and image to image share one pool of slots
PEEK_CONCURRENCY_ID = "peek"  # scrubbing and full decodes: cheap, but they use the VAE


# --- Settings from the page (or the API) -----------------------------------------------------------

def allowed_models(env: dict | None = None) -> list[str]:
    """The models the dropdown offers: ``$SDVIZ_MODELS`` (comma-separated) or the embedded model and
    the hub checkpoints sdviz knows. Nothing else can be chosen from the page or the API."""
    env = os.environ if env is None else env
    listed = [m.strip() for m in env.get(MODELS_ENV, "").split(",") if m.strip()]
    return listed or [EMBEDDED, *KNOWN_HUB_MODELS]


def model_label(name: str) -> str:
    if name == EMBEDDED:
        return "embedded: tiny toy-world SD (offline)"
    return name


def scheduler_choices(model: Model | None) -> list[tuple[str, str]]:
    own = f"the model's own ({scheduler_name(model.pipe.scheduler)})" if model is not None else "the model's own"
    return [(own, DEFAULT_SCHEDULER)] + [(name, name) for name in SCHEDULERS]


def run_settings(prompt, negative_prompt, steps, guidance_scale, seed, scheduler, strength=0.8) -> RunSettings:
    """The page's values as :class:`RunSettings` (width and height: the model's own, like the CLI)."""
    return RunSettings(
        prompt="" if prompt is None else prompt,
        negative_prompt="" if negative_prompt is None else negative_prompt,
        steps=_whole(steps, "Steps"),
        guidance_scale=_number(guidance_scale, "Guidance scale (CFG)"),
        seed=_whole(seed, "Seed"),
        scheduler=None if scheduler in (None, "", DEFAULT_SCHEDULER) else scheduler,
        strength=_number(strength, "Strength"),
    )


def _whole(value, what: str) -> int:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return int(value)
    raise SdvizError(f"{what} must be a whole number (got {value!r}).")


def _number(value, what: str) -> float:
    if isinstance(value, (int, float, np.number)) and not isinstance(value, bool):
        return float(value)
    raise SdvizError(f"{what} must be a number (got {value!r}).")


def load_for_app(name: str) -> Model:
    """Load an allow-listed model (cached) and warm its preview colours; bad ones give a gr.Error."""
    try:
        model = load_model(name)
    except SdvizError as err:
        raise gr.Error(str(err)) from err
    render.prepare(model)
    return model


# --- The page --------------------------------------------------------------------------------------

EXPLAIN_LATENTS = """**The latents x_t.** Stable Diffusion does not paint pixels: it works on *latents*, a small
grid with 4 numbers for every 8x8 block of pixels, **48x fewer numbers** than the picture (the VAE
translates between the two). Each tile is one of the 4 channels (red = positive, blue = negative,
white = 0). At the first step they are pure random noise; watch structure appear. The colour
previews are a quick **approximation** (a straight linear guess from the 4 channels, no decoder)."""

EXPLAIN_NOISE = """**The noise predictor.** At every step the U-Net looks at x_t and guesses the noise in it,
twice: once **without** the prompt (unconditional) and once **with** it (text). Their difference
(text - uncond) is what the prompt adds. **Classifier-free guidance** pushes along it:
guided = uncond + CFG x (text - uncond). The scheduler then removes part of the *guided* noise. The
direction is usually faint, so it is drawn on its own, stronger colour scale (see the numbers)."""

EXPLAIN_DECODES = """**Back to pixels.** Removing *all* of the guessed noise at once gives the predicted clean
latent **x0**: blurry early on, sharper with every step. Here the VAE decoder turns x_t and x0 into
pictures: full decodes, computed when you pick a step. The animation replays the run (x_t left,
x0 right, approximate colours; its last frame is the real final picture)."""

EXPLAIN_PLOT = """**The schedule.** Sigma is how much noise is left in x_t: the scheduler plans it to fall
from pure noise to almost none. Below: the spread of x_t shrinks towards that of a clean latent,
while the predicted x0 settles down. The red line marks the step you are looking at."""

WAITING = "appears when you press Generate"
LATENT_CAPTIONS = ("x_t: the 4 latent channels", "x_t in colour (approximate)", "predicted x0 (approximate)")
CFG_INFO = "How hard to follow the prompt. 1 or less means no guidance (one U-Net pass per step); 5-8 is typical."

CSS = """
.peek-figures { display: grid; grid-template-columns: repeat(auto-fill, minmax(140px, 190px)); gap: 12px; }
.peek-figures figure { margin: 0; }
.peek-figures img, .peek-empty { width: 100%; aspect-ratio: 1; object-fit: contain; image-rendering: pixelated;
  border: 1px solid var(--border-color-primary); border-radius: var(--radius-sm); box-sizing: border-box; }
.peek-empty { display: flex; align-items: center; justify-content: center; text-align: center; padding: 8px;
  font-size: 0.8em; color: var(--body-text-color-subdued); background: var(--background-fill-secondary); }
.peek-figures figcaption { font-size: 0.85em; text-align: center; margin-top: 4px; }
.peek-picture .image-container > button, .final-picture .image-container > button { width: 100%; height: 100%; }
.peek-picture .image-frame, .final-picture .image-frame { width: 100%; height: 100%; padding-top: 30px;
  box-sizing: border-box; }
.peek-picture img, .final-picture img { width: 100%; height: 100%; object-fit: contain; image-rendering: pixelated; }
.explain { font-size: 0.92em; }
#peek-status { min-height: 1.6em; }
#peek-numbers table { font-size: 0.9em; }
"""


def prompt_examples() -> list[str]:
    """Prompts in the toy world's words (the last combination was never seen in training)."""
    held_out = toyworld.HELD_OUT[0]
    return [
        toyworld.caption("red", "circle", "big", "left"),
        toyworld.caption("blue", "square", "small", "top"),
        toyworld.caption("green", "triangle", "big", "center"),
        toyworld.caption("yellow", "circle", None, "right"),
        toyworld.caption(held_out[0], held_out[1], "big", held_out[2]),
    ]


def image_examples() -> list[list[str]]:
    """Example pictures in assets/examples, each with a prompt that changes one thing about it."""
    recolour = {"red": "blue", "blue": "orange", "yellow": "purple", "green": "red"}
    examples = []
    for path in sorted(EXAMPLES_DIR.glob("*.png")):
        words = path.stem.split("_")
        prompt = " ".join(["a", *[recolour.get(w, w) for w in words]])
        examples.append([str(path), prompt])
    return examples


@dataclass
class GenerateControls:
    """One tab's settings and buttons."""

    prompt: gr.Textbox
    negative_prompt: gr.Textbox
    steps: gr.Slider
    guidance_scale: gr.Slider
    seed: gr.Number
    dice: gr.Button
    scheduler: gr.Dropdown
    generate: gr.Button
    stop: gr.Button
    final: gr.Image | None  # made in the tab's right-hand column, after the controls


@dataclass
class PeekPanel:
    status: gr.Markdown
    step: gr.Slider
    latents: gr.HTML  # x_t's channels, x_t and the predicted x0 in approximate colours
    noise: gr.HTML  # the four noise estimates
    numbers: gr.Markdown
    plot: gr.Plot
    x_t_decode: gr.Image
    x0_decode: gr.Image
    animation: gr.Image

    def frame_outputs(self) -> list:
        return [self.status, self.step, self.latents, self.noise, self.numbers, self.plot]

    def all_outputs(self) -> list:
        return [*self.frame_outputs(), self.x_t_decode, self.x0_decode, self.animation]


def _generate_controls(defaults: RunSettings, model: Model | None, img2img: bool) -> GenerateControls:
    prefix = "img2img" if img2img else "txt2img"
    prompt = gr.Textbox(label="Prompt", lines=2, placeholder="a big red circle on the left",
                        info="Empty is allowed: the model then draws without a prompt.", elem_id=f"{prefix}-prompt")
    negative = gr.Textbox(label="Negative prompt", value="", placeholder="what to steer away from (with CFG > 1)",
                          elem_id=f"{prefix}-negative")
    with gr.Row():
        steps = gr.Slider(1, UI_MAX_STEPS, value=defaults.steps, step=1, precision=0, label="Steps",
                          info="How many times the U-Net is asked", elem_id=f"{prefix}-steps")
        guidance = gr.Slider(0, 20, value=defaults.guidance_scale, step=0.5, label="CFG scale", info=CFG_INFO,
                             elem_id=f"{prefix}-cfg")
    with gr.Row(equal_height=True):
        seed = gr.Number(value=defaults.seed, precision=0, minimum=0, maximum=UI_MAX_SEED, label="Seed",
                         info="Same seed + same settings = same picture", elem_id=f"{prefix}-seed", scale=3)
        dice = gr.Button("Random seed", size="md", scale=1, min_width=100)
        scheduler = gr.Dropdown(scheduler_choices(model), value=DEFAULT_SCHEDULER, label="Scheduler",
                                info="Which noise levels to visit and how to step", elem_id=f"{prefix}-scheduler",
                                scale=3)
    with gr.Row():
        generate = gr.Button("Generate", variant="primary", elem_id=f"{prefix}-generate")
        stop = gr.Button("Stop", variant="stop", elem_id=f"{prefix}-stop")
    return GenerateControls(prompt, negative, steps, guidance, seed, dice, scheduler, generate, stop, final=None)


def _final_image(prefix: str) -> gr.Image:
    return gr.Image(label="Final picture (full VAE decode)", type="pil", format="png", interactive=False,
                    height=320, buttons=["download", "fullscreen"], elem_id=f"{prefix}-final",
                    elem_classes=["final-picture"])


def _peek_panel() -> PeekPanel:
    def picture(label: str, elem_id: str, **kwargs) -> gr.Image:
        options = {"type": "pil", "format": "png", "height": 180, "min_width": 120, "buttons": ["fullscreen"]} | kwargs
        return gr.Image(label=label, interactive=False, elem_id=elem_id, elem_classes=["peek-picture"], **options)

    def explanation(text: str) -> None:
        with gr.Column(scale=2, min_width=280):
            gr.Markdown(text, elem_classes=["explain"])

    with gr.Column(elem_id="peek"):
        gr.Markdown("## Peek inside the loop")
        status = gr.Markdown("Press **Generate**: every step of the run appears here as it is computed.",
                             elem_id="peek-status")
        step = gr.Slider(1, 2, value=1, step=1, precision=0, label="Step", interactive=False, elem_id="peek-step",
                         info="After a run, move it to look at any step (full VAE decodes are made on demand).")
        with gr.Row():
            with gr.Column(scale=5):
                latents = gr.HTML(figures_html([(c, None) for c in LATENT_CAPTIONS], WAITING), elem_id="peek-latents")
            explanation(EXPLAIN_LATENTS)
        with gr.Row():
            with gr.Column(scale=5):
                noise = gr.HTML(figures_html([(render.NOISE_TITLES[k], None) for k in render.NOISE_KINDS], WAITING),
                                elem_id="peek-noise")
            explanation(EXPLAIN_NOISE)
        with gr.Row():
            with gr.Column(scale=5), gr.Row():
                x_t_decode = picture("x_t, VAE decode", "peek-xt-decode")
                x0_decode = picture("predicted x0, VAE decode", "peek-x0-decode")
                animation = picture("the whole run (animation)", "peek-animation", format="gif", scale=2,
                                    buttons=["download"])
            explanation(EXPLAIN_DECODES)
        with gr.Row():
            with gr.Column(scale=5):
                plot = gr.Plot(label="noise schedule and latent statistics", format="png", elem_id="peek-plot")
            with gr.Column(scale=2, min_width=280):
                numbers = gr.Markdown(elem_id="peek-numbers")
                gr.Markdown(EXPLAIN_PLOT, elem_classes=["explain"])
    return PeekPanel(status, step, latents, noise, numbers, plot, x_t_decode, x0_decode, animation)


def _frame_values(panel: PeekPanel, model: Model, record: StepRecord, total: int) -> dict:
    """The panel's pictures and numbers for one step (no plot, no full decodes)."""
    frame = render.peek_frame(model, record, total)
    latents = zip(LATENT_CAPTIONS, (frame.latents, frame.latents_rgb, frame.pred_x0_rgb), strict=True)
    noise = [(render.NOISE_TITLES[kind], frame.noise[kind]) for kind in render.NOISE_KINDS]
    return {
        panel.latents: figures_html(list(latents)),
        panel.noise: figures_html(noise),
        panel.numbers: render.numbers_markdown(frame.numbers),
    }


def figures_html(figures: list[tuple[str, Image.Image | None]],
                 missing: str = "not computed: CFG ≤ 1 means one U-Net pass, with the prompt") -> str:
    """Captioned pictures in a row, inlined as PNG data: the page needs no extra request per picture
    (on a small model, serving those requests slowed the loop more than drawing the pictures did)."""
    cells = []
    for caption, picture in figures:
        if picture is None:
            body = f'<div class="peek-empty">{missing}</div>'
        else:
            out = io.BytesIO()
            picture.save(out, format="PNG")
            body = f'<img src="data:image/png;base64,{base64.b64encode(out.getvalue()).decode()}" alt="{caption}">'
        cells.append(f"<figure>{body}<figcaption>{caption}</figcaption></figure>")
    return f'<div class="peek-figures">{"".join(cells)}</div>'


def _expected_steps(settings: RunSettings, img2img: bool) -> int:
    return min(int(settings.steps * settings.strength), settings.steps) if img2img else settings.steps


def live_run(panel: PeekPanel, final: gr.Image, states: tuple[gr.State, gr.State], model_name: str,
             settings: RunSettings, init_image=None) -> Iterator[dict]:
    """The generate event: run the loop, showing its steps in the panel as they are computed, then the
    final picture and the trace (into ``states``: the session's latest run and a decode cache for it).

    Each live update makes the loop wait while the page's pictures are made and sent (Gradio asks for
    the next step only after that). So a step is shown when the waiting so far stays within
    ``LIVE_BUDGET`` of the run's time: on a slow model every step, on a fast one the newest step a few
    times a second. Closing this generator (Stop, or the tab closing) ends the loop at that step.
    """
    img2img = init_image is not None
    try:
        check_settings(settings, img2img=img2img)
    except SdvizError as err:
        raise gr.Error(str(err)) from err
    model = load_for_app(model_name)
    expected = _expected_steps(settings, img2img)
    yield {
        final: None, panel.x_t_decode: None, panel.x0_decode: None, panel.animation: None,
        panel.status: f"Starting: {expected} steps on **{model_label(model.name)}**…",
        panel.step: gr.Slider(minimum=1, maximum=max(expected, 2), value=1, interactive=False),
    }
    started = time.perf_counter()
    waited = 0.0  # seconds the loop has spent waiting for live updates
    plot_cost = 0.2  # what the next live plot may cost (drawn here, encoded by Gradio); measured as we go
    records: list[StepRecord] = []
    trace = None
    steps = denoise(model, settings, init_image)
    try:
        for item in steps:
            if isinstance(item, Trace):
                trace = item
                break
            records.append(item)
            update_started = time.perf_counter()
            if item.index > 0 and waited > LIVE_BUDGET * (update_started - started):
                continue  # keep the loop going; the trace keeps this step for scrubbing
            total = max(expected, len(records))
            values = _frame_values(panel, model, item, total)
            values[panel.step] = gr.Slider(maximum=max(total, 2), value=item.index + 1)
            values[panel.status] = (f"Step **{item.index + 1} / {total}** (t = {item.timestep:.0f}), "
                                    f"{update_started - started:.1f} s. Live previews use approximate colours.")
            if waited + plot_cost <= LIVE_BUDGET * (update_started - started):
                plot_started = time.perf_counter()
                values[panel.plot] = render.schedule_figure(records, item.index, total)
                plot_cost = 2 * (time.perf_counter() - plot_started)
            yield values
            waited += time.perf_counter() - update_started
    except SdvizError as err:
        raise gr.Error(str(err)) from err
    finally:
        steps.close()  # on Stop: ends the loop here
    if trace is None:
        return
    last = trace.steps[-1]
    values = _frame_values(panel, model, last, len(trace.steps))
    values.update({
        final: trace.image,
        panel.step: gr.Slider(maximum=max(len(trace.steps), 2), value=len(trace.steps), interactive=True),
        panel.status: (f"Done: {len(trace.steps)} steps in {trace.seconds:.2f} s ({trace.scheduler}, "
                       f"CFG {'on' if trace.guidance else 'off'}). Move the step slider to look at any step."),
    })
    run_state, cache_state = states
    yield values | {run_state: trace, cache_state: render.DecodeCache(trace)}


def _trace_or_error(run: Trace | None) -> Trace:
    if not isinstance(run, Trace):
        raise gr.Error("There is no finished run in this session yet (or it expired): press Generate first.")
    return run


def _decodes(panel: PeekPanel, model: Model, cache: render.DecodeCache, index: int) -> dict:
    return {
        panel.x_t_decode: cache.get(model, index, "x_t"),
        panel.x0_decode: cache.get(model, index, "x0"),
    }


def build_demo(models: Sequence[str] | None = None, *, concurrency_limit: int | None = None,
               queue_size: int | None = None) -> gr.Blocks:
    """The sdviz app (not launched). ``models``: the allow-list for the dropdown, the first is the default
    (by default :func:`allowed_models`)."""
    models = [str(m) for m in (models or allowed_models())]
    try:
        model = load_for_app(models[0])
        rec = model.recommended
        defaults = RunSettings(steps=rec.steps, guidance_scale=rec.guidance_scale, strength=rec.strength)
        model_note = _model_note(model)
    except gr.Error as err:  # the app still opens; the message says what went wrong
        model, defaults = None, RunSettings()
        model_note = f"⚠️ {err.message}"
    if concurrency_limit is None:
        concurrency_limit = int(os.environ.get(CONCURRENCY_ENV, 0)) or (
            2 if model is not None and model.device.type == "cuda" else 1)
    if queue_size is None:
        queue_size = int(os.environ.get(QUEUE_SIZE_ENV, 64))

    with gr.Blocks(title="sdviz: peek inside Stable Diffusion", delete_cache=(600, 3600)) as demo:
        gr.Markdown("# sdviz: watch Stable Diffusion make a picture, step by step\n"
                    "Type a prompt, press **Generate**, and watch the loop below: the noisy latents, the U-Net's "
                    "noise estimates, classifier-free guidance, and the VAE turning latents back into pixels.")
        with gr.Row(equal_height=True):
            model_choice = gr.Dropdown([(model_label(m), m) for m in models], value=models[0], label="Model",
                                       info="The embedded model works offline; hub models need a download.",
                                       elem_id="model", scale=2)
            model_info = gr.Markdown(model_note, elem_id="model-info")
        model_state = gr.State(models[0])  # the model that loaded; the generate events use this one
        # The session's latest finished run, for the peek panel and the teaching tabs.
        run_state = gr.State(None, time_to_live=STATE_TTL_S)
        cache_state = gr.State(None, time_to_live=STATE_TTL_S)  # full VAE decodes of that run

        with gr.Tabs(elem_id="tabs"):
            with gr.Tab("Text to image", id="txt2img"):
                with gr.Row():
                    with gr.Column(scale=3):
                        txt = _generate_controls(defaults, model, img2img=False)
                        gr.Examples([[p] for p in prompt_examples()], inputs=[txt.prompt], label="Try a prompt")
                    with gr.Column(scale=2):
                        txt.final = _final_image("txt2img")
            with gr.Tab("Image to image", id="img2img"):
                with gr.Row():
                    with gr.Column(scale=3):
                        init_image = gr.Image(label="Start from this picture", type="filepath",
                                              sources=["upload", "clipboard"], height=220, elem_id="img2img-init")
                        strength = gr.Slider(0.05, 1, value=defaults.strength, step=0.05, label="Strength",
                                             info="How much noise to add to it first: 1 = keep almost nothing",
                                             elem_id="img2img-strength")
                        img = _generate_controls(defaults, model, img2img=True)
                        if image_examples():
                            gr.Examples(image_examples(), inputs=[init_image, img.prompt], label="Try a picture")
                    with gr.Column(scale=2):
                        img.final = _final_image("img2img")
            if importlib.util.find_spec("sdviz.teaching_ui") is not None:
                from sdviz.teaching_ui import teaching_tabs

                teaching_tabs(model_choice, run_state)

        panel = _peek_panel()

        # --- Events ---------------------------------------------------------------------------------
        def txt2img(prompt, negative_prompt, steps, guidance_scale, seed, scheduler, model_name):
            try:
                settings = run_settings(prompt, negative_prompt, steps, guidance_scale, seed, scheduler)
            except SdvizError as err:
                raise gr.Error(str(err)) from err
            yield from live_run(panel, txt.final, (run_state, cache_state), model_name, settings)

        def img2img(image, prompt, negative_prompt, strength, steps, guidance_scale, seed, scheduler, model_name):
            if image is None:
                raise gr.Error("Image to image needs a starting picture: upload one or pick an example.")
            try:
                settings = run_settings(prompt, negative_prompt, steps, guidance_scale, seed, scheduler, strength)
            except SdvizError as err:
                raise gr.Error(str(err)) from err
            yield from live_run(panel, img.final, (run_state, cache_state), model_name, settings, init_image=image)

        def finish(run, cache):
            """After a run: full decodes of the last step and the animation (the final picture is out)."""
            trace = _trace_or_error(run)
            model = load_for_app(trace.model)
            cache = cache if isinstance(cache, render.DecodeCache) and cache.matches(trace) else render.DecodeCache(trace)
            gif = Image.open(io.BytesIO(render.run_animation(model, trace)))
            last = len(trace.steps) - 1
            return {**_decodes(panel, model, cache, last), panel.animation: gif, cache_state: cache,
                    panel.plot: render.schedule_figure(trace.steps, last, len(trace.steps))}

        def show_step(step, run, cache):
            """Scrubbing: everything the panel shows for the chosen step, with full decodes."""
            trace = _trace_or_error(run)
            model = load_for_app(trace.model)
            cache = cache if isinstance(cache, render.DecodeCache) and cache.matches(trace) else render.DecodeCache(trace)
            index = min(max(_whole(step, "Step") - 1, 0), len(trace.steps) - 1)
            record = trace.steps[index]
            values = _frame_values(panel, model, record, len(trace.steps))
            values.update(_decodes(panel, model, cache, index))
            values[panel.plot] = render.schedule_figure(trace.steps, index, len(trace.steps))
            values[panel.status] = f"Showing step **{index + 1} / {len(trace.steps)}** of the last run."
            values[cache_state] = cache
            return values

        def stopped(run):
            done = isinstance(run, Trace)
            n = len(run.steps) if done else 2
            return {
                panel.status: "Stopped. " + ("Move the slider to look at the last finished run." if done else ""),
                panel.step: gr.Slider(maximum=max(n, 2), value=n, interactive=done),
            }

        def choose_model(name, current):
            """The dropdown changed: load the model and use its recommended settings. A model that fails
            keeps the previous one in use (and the dropdown goes back to it)."""
            if name == current:  # e.g. the dropdown going back after a failure
                return {model_state: current}
            model = load_for_app(name)
            rec = model.recommended
            updates = {model_state: name, model_info: _model_note(model),
                       strength: gr.Slider(value=rec.strength)}
            for controls in (txt, img):
                updates[controls.steps] = gr.Slider(value=rec.steps)
                updates[controls.guidance_scale] = gr.Slider(value=rec.guidance_scale)
                updates[controls.scheduler] = gr.Dropdown(choices=scheduler_choices(model), value=DEFAULT_SCHEDULER)
            return updates

        finish_outputs = [panel.x_t_decode, panel.x0_decode, panel.animation, panel.plot, cache_state]
        for controls, fn, inputs, name in (
            (txt, txt2img, [txt.prompt, txt.negative_prompt, txt.steps, txt.guidance_scale, txt.seed, txt.scheduler],
             "txt2img"),
            (img, img2img, [init_image, img.prompt, img.negative_prompt, strength, img.steps, img.guidance_scale,
                            img.seed, img.scheduler], "img2img"),
        ):
            # The API result: (final picture, status, step, latents, noise, numbers, plot, decodes..., animation)
            outputs = [controls.final, *panel.all_outputs(), run_state, cache_state]
            event = controls.generate.click(
                fn, [*inputs, model_state], outputs, api_name=name, concurrency_id=GENERATE_CONCURRENCY_ID,
                concurrency_limit=concurrency_limit, show_progress="hidden",
            )
            event.success(finish, [run_state, cache_state], finish_outputs, api_visibility="private",
                          concurrency_id=PEEK_CONCURRENCY_ID, concurrency_limit=4, show_progress="hidden")
            controls.stop.click(stopped, [run_state], [panel.status, panel.step], cancels=[event],
                                api_visibility="private", concurrency_limit=None, queue=False)
            controls.dice.click(lambda: random.randint(0, UI_MAX_SEED), None, controls.seed,
                                api_visibility="private", concurrency_limit=None, queue=False)
        panel.step.input(show_step, [panel.step, run_state, cache_state],
                         [*panel.frame_outputs(), panel.x_t_decode, panel.x0_decode, cache_state],
                         api_visibility="private", concurrency_id=PEEK_CONCURRENCY_ID, concurrency_limit=4,
                         trigger_mode="always_last", show_progress="hidden")
        model_choice.change(
            choose_model, [model_choice, model_state],
            [model_state, model_info, strength, txt.steps, txt.guidance_scale, txt.scheduler, img.steps,
             img.guidance_scale, img.scheduler],
            api_visibility="private", concurrency_limit=None, show_progress="hidden",
        ).failure(lambda current: current, model_state, model_choice, api_visibility="private", queue=False)

    demo.queue(max_size=queue_size)
    return demo


def _model_note(model: Model) -> str:
    from sdviz.vae import compression_ratio

    rec = model.recommended
    f = model.vae_scale_factor
    channels = model.vae.config.latent_channels
    return (f"**{model_label(model.name)}**: pictures {rec.width}x{rec.height}, latents {channels}x{rec.height // f}"
            f"x{rec.width // f} ({compression_ratio(model):.0f}x fewer numbers); recommended {rec.steps} steps, "
            f"CFG {rec.guidance_scale:g}; on {model.device.type}.")


def launch_kwargs() -> dict:
    """Settings for ``demo.launch`` (server name and port come from GRADIO_SERVER_NAME/PORT)."""
    return {
        "css": CSS,
        "footer_links": ["api", "gradio", "settings"],
        "max_file_size": "10mb",
        "enable_monitoring": False,
        "show_error": False,
    }

