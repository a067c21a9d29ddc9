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

Many users (see docs/reliability.md): the panel always shows the session's latest run
(:class:`sdviz.sessions.PanelRun`); Stop ends the loop after the step in progress; the events that follow a
run (:func:`build_demo`'s ``settle``, the step slider) touch the panel only while their run is still the
latest. Limits, the model allow-list, GPU reservations and the launch settings come from
:mod:`sdviz.hosting`.

The UI holds no math: pictures, numbers and plots come from :mod:`sdviz.render`.
"""

from __future__ import annotations

import base64
import importlib.util
import io
import random
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
import numpy as np
from PIL import Image

from sdviz import hosting, render, toyworld, vae
from sdviz.errors import SdvizError
from sdviz.hosting import allowed_models  # noqa: F401  (the allow-list, re-exported for app.py and tests)
from sdviz.models import EMBEDDED, Model, load_model, use_cpu_threads
from sdviz.sampler import denoise
from sdviz.schedulers import SCHEDULERS, scheduler_name
from sdviz.sessions import DONE, FAILED, RUNNING, STOPPED, PanelRun, SessionRuns
from sdviz.settings import MAX_INIT_PIXELS, MAX_SEED, MAX_STEPS, RunSettings, check_settings
from sdviz.text import tokenize
from sdviz.trace import StepRecord, Trace

EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "assets" / "examples"

DEFAULT_SCHEDULER = "default"  # the dropdown/API value for "the model's own scheduler"
UI_MAX_STEPS = min(100, MAX_STEPS)
UI_MAX_SEED = 2**32 - 1  # what the dice makes (typed seeds may go up to MAX_SEED, like the CLI's)
MAX_PROMPT_CHARS = 2000  # far beyond what the text encoder reads (77 tokens); longer text is refused
STATE_TTL_S = 1800  # a session's latest run lives 30 min after its last use (and goes when the tab closes)
LIVE_BUDGET = 0.05  # live updates may hold the loop up for at most this share of a run's time
SETTLE_WAIT_S = 30  # after Stop: how long the follow-up waits for the loop to finish its current step
GENERATE_CONCURRENCY_ID = "generate"  # text to image and image to image share one pool of slots
PEEK_CONCURRENCY_ID = "peek"  # scrubbing and full decodes: cheap, but they use the VAE
PEEK_CONCURRENCY = 4
UNREADABLE_PICTURE = "Could not read the starting picture: upload a PNG, JPEG or WebP image."


# --- Settings from the page (or the API) -----------------------------------------------------------

def student_error(message: SdvizError | str) -> gr.Error:
    """A message for the student, shown on the page and returned by the API (not a crash: no traceback in the
    server log)."""
    return gr.Error(str(message), print_exception=False)


def model_label(name: str) -> str:
    if name == EMBEDDED:
        return "embedded: tiny toy-world SD (offline)"
    return name


def scheduler_choices(model: Model | None) -> list[tuple[str, str]]:
    own = f"the model's own ({scheduler_name(model.pipe.scheduler)})" if model is not None else "the model's own"
    return [(own, DEFAULT_SCHEDULER)] + [(name, name) for name in SCHEDULERS]


def run_settings(prompt, negative_prompt, steps, guidance_scale, seed, scheduler, strength=0.8) -> RunSettings:
    """The page's values as :class:`RunSettings` (width and height: the model's own, like the CLI).
    Raises :class:`SdvizError` for values that are not even the right kind (the ranges are checked by
    :func:`sdviz.settings.check_settings`)."""
    return RunSettings(
        prompt=_text(prompt, "The prompt"),
        negative_prompt=_text(negative_prompt, "The negative prompt"),
        steps=_whole(steps, "Steps"),
        guidance_scale=_number(guidance_scale, "Guidance scale (CFG)"),
        seed=_seed(seed),
        scheduler=None if scheduler in (None, "", DEFAULT_SCHEDULER) else scheduler,
        strength=_number(strength, "Strength"),
    )


def _text(value, what: str) -> str:
    text = "" if value is None else value
    if not isinstance(text, str):
        raise SdvizError(f"{what} must be text (got {type(value).__name__}).")
    if len(text) > MAX_PROMPT_CHARS:
        raise SdvizError(f"{what} is {len(text)} characters long; the text encoder reads only its first 77 tokens "
                         f"(about 60 words): shorten it to at most {MAX_PROMPT_CHARS} characters.")
    return text


def _whole(value, what: str) -> int:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return int(value)
    raise SdvizError(f"{what} must be a whole number (got {value!r}).")


def _seed(value) -> int:
    if value is None or value == "":
        raise SdvizError(f"The seed is empty: type a whole number from 0 to {UI_MAX_SEED}, or press Random seed.")
    seed = _whole(value, "The seed")
    if seed < 0:
        raise SdvizError(f"The seed must be 0 or more (got {seed}): type another whole number, or press Random seed.")
    if seed > MAX_SEED:
        raise SdvizError(f"The seed {seed} is too large: the largest is {MAX_SEED} (or press Random seed).")
    return seed


def _number(value, what: str) -> float:
    if isinstance(value, (int, float, np.number)) and not isinstance(value, bool):
        return float(value)
    raise SdvizError(f"{what} must be a number (got {value!r}).")


def prompt_notes(model: Model, settings: RunSettings) -> tuple[str, list[str]]:
    """What to tell the student about the prompts before the run: a note for the status line (empty prompt:
    unconditional generation) and warnings naming the words a too-long prompt loses."""
    note = ("Empty prompt: **unconditional generation** (the model draws without any text to follow). "
            if not settings.prompt.strip() else "")
    warnings = []
    for what, text in (("prompt", settings.prompt), ("negative prompt", settings.negative_prompt)):
        dropped = tokenize(model.tokenizer, text).dropped_words if text else []
        if dropped:
            shown = " ".join(dropped[:40]) + (f" … ({len(dropped) - 40} more)" if len(dropped) > 40 else "")
            warnings.append(f"The {what} is longer than the {model.tokenizer.model_max_length} tokens the text "
                            f"encoder reads, so it was cut. Dropped ({len(dropped)} words): {shown}")
    return note, warnings


@contextmanager
def _no_stub_file():
    """Gradio writes a .pyi stub next to the module of every new component class, at import; a Space's app folder
    is no place to write into, and the classes below add no events to stub."""
    import gradio.component_meta as meta

    write_stub = meta.create_or_modify_pyi
    meta.create_or_modify_pyi = lambda *args, **kwargs: None
    try:
        yield
    finally:
        meta.create_or_modify_pyi = write_stub


with _no_stub_file():
    class PictureUpload(gr.Image):
        """Gradio's image input (the same widget on the page), whose unreadable uploads give a message the
        student can act on: Gradio's own check raises a bare error that a public app must not show."""

        is_template = True  # the page draws it with the parent's (gr.Image's) widget

        def preprocess(self, payload):
            try:
                return super().preprocess(payload)
            except gr.Error:
                raise
            except Image.DecompressionBombError as err:
                raise student_error(f"The starting picture has too many pixels; the most this app takes is "
                                    f"{MAX_INIT_PIXELS // 1_000_000} megapixels: shrink it first.") from err
            except Exception as err:  # PIL raises several kinds for files that are not pictures
                raise student_error(UNREADABLE_PICTURE) from err

    class Slider(gr.Slider):
        """Gradio's slider (the same widget), whose out-of-range message names it: "Steps: Value 0 is less than
        minimum value 1." instead of Gradio's bare "Value 0 is less than ...", which an API caller cannot place."""

        is_template = True

        def preprocess(self, payload):
            try:
                return super().preprocess(payload)
            except gr.Error as err:
                raise student_error(f"{self.label}: {err.message}") from err


def load_for_app(name: str) -> Model:
    """Load a model (cached) and warm its preview colours; bad ones give a gr.Error. The callers decide which
    names are allowed (:func:`sdviz.hosting.check_allowed`)."""
    try:
        model = load_model(name)
    except SdvizError as err:
        raise student_error(err) from err
    use_cpu_threads(model)  # as the CLI does: same pixels, and a small model's loop is not slowed by idle threads
    _prepare_previews(model)
    return model


def _prepare_previews(model: Model) -> None:
    if not hosting.zero_gpu():
        render.prepare(model)
    elif "rgb_map" not in model.derived:  # fitting uses the VAE: on ZeroGPU only a GPU worker may; keep its result
        model.derived["rgb_map"] = _fit_preview_colours(model.name)


@hosting.gpu(duration=30)
def _fit_preview_colours(model_name: str):
    model = load_model(model_name)
    render.prepare(model)
    return model.derived["rgb_map"]


def run_loop(model_name: str, settings: RunSettings, init_image=None) -> Iterator[StepRecord | Trace]:
    """The one denoising loop (:func:`sdviz.sampler.denoise`) for one run of the app. On ZeroGPU it runs in a
    GPU worker (:data:`_run_loop_on_gpu`), which passes on only gr.Error messages: hence the translation here."""
    try:
        yield from denoise(load_model(model_name), settings, init_image)
    except SdvizError as err:
        raise student_error(err) from err


_run_loop_on_gpu = hosting.gpu(run_loop, duration=hosting.loop_seconds)


@hosting.gpu(duration=hosting.QUICK_SECONDS)
def _decode_pair(model_name: str, x_t, x0) -> tuple[Image.Image, Image.Image]:
    model = load_model(model_name)
    return vae.decode_to_pil(model, x_t), vae.decode_to_pil(model, x0)


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
CFG_INFO = ("How hard to follow the prompt. 1 or less means no guidance (one U-Net pass per step). SD 1.5 likes 7.5; "
            "the embedded model 2: too much overshoots.")

CSS = """
.peek-figures { display: grid; grid-template-columns: repeat(auto-fill, minmax(140px, 190px)); gap: 12px; }
.peek-figures figure { margin: 0; }
.peek-figures img, .peek-empty { width: 100%; aspect-ratio: 1; object-fit: contain; image-rendering: pixelated;
  border: 1px solid var(--border-color-primary); border-radius: var(--radius-sm); box-sizing: border-box; }
.peek-empty { display: flex; align-items: center; justify-content: center; text-align: center; padding: 8px;
  font-size: 0.8em; color: var(--body-text-color-subdued); background: var(--background-fill-secondary); }
.peek-figures figcaption { font-size: 0.85em; text-align: center; margin-top: 4px; }
/* Pictures fill their box with sharp pixels (the embedded model draws 64x64), below the component's label. */
.peek-picture .image-container > button, .final-picture .image-container > button,
.teaching-picture .image-container > button { width: 100%; height: 100%; }
.teaching-picture .upload-container { width: 100% !important; }  /* an input picture: Gradio sets width: auto */
.peek-picture .image-frame, .final-picture .image-frame, .teaching-picture .image-frame { width: 100%; height: 100%;
  padding-top: 30px; box-sizing: border-box; }
.peek-picture img, .final-picture img, .teaching-picture img { width: 100%; height: 100%; object-fit: contain;
  image-rendering: pixelated; }
/* The teaching galleries keep their 6 columns with fewer pictures (Gradio would stretch 2 pictures to half the
   width each, taller than the gallery), below the label. */
.teaching-gallery .grid-wrap .grid-container { grid-template-columns: repeat(6, minmax(0, 1fr)); padding-top: 32px; }
.teaching-gallery img { image-rendering: pixelated; }
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
        # No precision=0 on steps and seed: Gradio would round 2.5 (or fail on NaN) before run_settings can say why.
        steps = Slider(1, UI_MAX_STEPS, value=defaults.steps, step=1, label="Steps",
                       info="How many times the U-Net is asked", elem_id=f"{prefix}-steps")
        guidance = Slider(0, 20, value=defaults.guidance_scale, step=0.5, label="CFG scale", info=CFG_INFO,
                          elem_id=f"{prefix}-cfg")
    with gr.Row(equal_height=True):
        seed = gr.Number(value=defaults.seed, step=1, label="Seed",
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
                plot = gr.Plot(label="noise schedule and latent statistics", show_label=False, format="png",
                               elem_id="peek-plot")
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


def live_run(panel: PeekPanel, final: gr.Image, run_state: gr.State, model_name: str, settings: RunSettings,
             init_image=None, run: PanelRun | None = None) -> Iterator[dict]:
    """The generate event: run the loop, showing its steps in the panel as they are computed, then the
    final picture and the trace (into ``run_state``, the session's latest finished run).

    ``run`` is the session's :class:`PanelRun` (made here when not given): the loop appends every step to it,
    so follow-up events and the step slider see the same run as the pictures, also after a Stop.

    Each live update makes the loop wait while the page's pictures are made and sent (Gradio asks for
    the next step only after that). So a step is shown when the waiting so far stays within
    ``LIVE_BUDGET`` of the run's time: on a slow model every step, on a fast one the newest step a few
    times a second. The loop ends at the step it is on when this generator is closed (Gradio's cancel,
    or the tab closing) or when ``run.stop_requested`` is set (the Stop button): then the last update
    shows the stopped run.
    """
    img2img = init_image is not None
    try:
        check_settings(settings, img2img=img2img)
    except SdvizError as err:
        raise student_error(err) from err
    model = load_for_app(model_name)
    note, warnings = prompt_notes(model, settings)
    for warning in warnings:
        gr.Warning(warning)
    expected = _expected_steps(settings, img2img)
    run = run if run is not None else PanelRun(model=model.name, expected_steps=expected)
    yield {
        final: None, panel.x_t_decode: None, panel.x0_decode: None, panel.animation: None,
        panel.status: f"{note}Starting: {expected} steps on **{model_label(model.name)}**…",
        panel.step: gr.Slider(minimum=1, maximum=max(expected, 2), value=1, interactive=False),
    }
    started = time.perf_counter()
    waited = 0.0  # seconds the loop has spent waiting for live updates
    plot_cost = 0.2  # what the next live plot may cost (drawn here, encoded by Gradio); measured as we go
    steps = _run_loop_on_gpu(model_name, settings, init_image)
    try:
        for item in steps:
            if isinstance(item, Trace):
                run.finish(item)
                break
            run.steps.append(item)
            if run.stop_requested.is_set():
                break  # Stop: the loop ends at this step
            update_started = time.perf_counter()
            if item.index > 0 and waited > LIVE_BUDGET * (update_started - started):
                continue  # keep the loop going; the run keeps this step for scrubbing
            total = max(expected, len(run.steps))
            values = _frame_values(panel, model, item, total)
            values[panel.step] = gr.Slider(maximum=max(total, 2), value=item.index + 1)
            values[panel.status] = (f"{note}Step **{item.index + 1} / {total}** (t = {item.timestep:.0f}), "
                                    f"{update_started - started:.1f} s. Live previews use approximate colours.")
            if waited + plot_cost <= LIVE_BUDGET * (update_started - started):
                plot_started = time.perf_counter()
                values[panel.plot] = render.schedule_figure(run.steps, item.index, total)
                plot_cost = 2 * (time.perf_counter() - plot_started)
            yield values
            waited += time.perf_counter() - update_started
    except GeneratorExit:
        raise  # closed by Gradio (Stop, or the tab closed): the finally below records it
    except Exception as err:
        run.end(FAILED, err.message if isinstance(err, gr.Error) else "an unexpected error")
        raise
    finally:
        steps.close()  # ends the loop here (it may be mid-run)
        run.end(STOPPED)  # unless it already ended as DONE or FAILED
    if run.outcome == STOPPED:
        yield _stopped_view(panel, model, run)
        return
    trace = run.trace
    last = trace.steps[-1]
    values = _frame_values(panel, model, last, len(trace.steps))
    values.update({
        final: trace.image,
        panel.step: gr.Slider(maximum=max(len(trace.steps), 2), value=len(trace.steps), interactive=True),
        panel.status: (f"{note}Done: {len(trace.steps)} steps in {trace.seconds:.2f} s ({trace.scheduler}, "
                       f"CFG {'on' if trace.guidance else 'off'}). Move the step slider to look at any step."),
    })
    yield values | {run_state: trace}


def _stopped_view(panel: PeekPanel, model: Model, run: PanelRun) -> dict:
    """The panel after Stop: the step the run stopped at, and a slider over the steps it computed."""
    n = len(run.steps)
    if n == 0:
        return {panel.status: "Stopped before the first step.",
                panel.step: gr.Slider(maximum=2, value=1, interactive=False)}
    values = _frame_values(panel, model, run.steps[-1], n)
    values[panel.status] = (f"Stopped at step **{n} / {run.expected_steps}** (no final picture). Move the slider "
                            f"to look at the {n} step{'s' if n > 1 else ''} computed.")
    values[panel.step] = gr.Slider(maximum=max(n, 2), value=n, interactive=n > 1)
    values[panel.plot] = render.schedule_figure(run.steps, n - 1, run.expected_steps)
    return values


def _step_decodes(panel: PeekPanel, model: Model, run: PanelRun, index: int) -> dict:
    """Full VAE decodes of one step: cached per run; on ZeroGPU made in a GPU worker (which cannot fill a cache
    of this process)."""
    if hosting.zero_gpu():
        record = run.steps[index]
        x_t, x0 = _decode_pair(model.name, record.latents, record.pred_x0)
    else:
        x_t, x0 = run.decodes.get(model, index, "x_t"), run.decodes.get(model, index, "x0")
    return {panel.x_t_decode: x_t, panel.x0_decode: x0}


def _session(request: gr.Request | None) -> str | None:
    return getattr(request, "session_hash", None)


def build_demo(models: Sequence[str] | None = None, *, concurrency_limit: int | None = None,
               queue_size: int | None = None, max_sessions: int | None = None) -> gr.Blocks:
    """The sdviz app (not launched). ``models``: the allow-list, the first is the default (by default
    :func:`sdviz.hosting.allowed_models`). The limits default to :func:`sdviz.hosting.capacity` (environment)."""
    models = [str(m) for m in (models or allowed_models())]
    try:
        model = load_for_app(models[0])
        rec = model.recommended
        defaults = RunSettings(steps=rec.steps, guidance_scale=rec.guidance_scale, strength=rec.strength)
        model_note = _model_note(model)
    except gr.Error as err:  # the app still opens; the message says what went wrong
        model, defaults = None, RunSettings()
        model_note = f"⚠️ {err.message}"
    try:
        limits = hosting.capacity(model.device if model is not None else None)
    except SdvizError as err:
        raise SystemExit(f"sdviz: {err}") from err
    concurrency_limit = concurrency_limit or limits.concurrency
    queue_size = queue_size or limits.queue_size
    runs = SessionRuns(max_sessions=max_sessions or limits.max_sessions, ttl_s=STATE_TTL_S)

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
        # The session's latest finished run, for the teaching tabs (the panel's own run is in `runs`).
        run_state = gr.State(None, time_to_live=STATE_TTL_S)

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
                        # image_mode=None: the file as uploaded; sdviz.settings.load_init_image converts RGBA,
                        # grey, palette and 16-bit pictures itself (Gradio's conversion blackens transparency)
                        init_image = PictureUpload(label="Start from this picture", type="filepath", image_mode=None,
                                                   sources=["upload", "clipboard"], height=220, elem_id="img2img-init")
                        strength = Slider(0.05, 1, value=defaults.strength, step=0.05, label="Strength",
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
        def start(request: gr.Request | None, model_name: str, settings: RunSettings, img2img: bool) -> PanelRun:
            return runs.start(_session(request), model_name, _expected_steps(settings, img2img))

        def txt2img(prompt, negative_prompt, steps, guidance_scale, seed, scheduler, model_name,
                    request: gr.Request = None):
            try:
                settings = run_settings(prompt, negative_prompt, steps, guidance_scale, seed, scheduler)
                check_settings(settings)
            except SdvizError as err:
                raise student_error(err) from err
            run = start(request, model_name, settings, img2img=False)
            yield from live_run(panel, txt.final, run_state, model_name, settings, run=run)

        def img2img(image, prompt, negative_prompt, strength, steps, guidance_scale, seed, scheduler, model_name,
                    request: gr.Request = None):
            if image is None:
                raise student_error("Image to image needs a starting picture: upload one or pick an example.")
            try:
                settings = run_settings(prompt, negative_prompt, steps, guidance_scale, seed, scheduler, strength)
                check_settings(settings, img2img=True)
            except SdvizError as err:
                raise student_error(err) from err
            run = start(request, model_name, settings, img2img=True)
            yield from live_run(panel, img.final, run_state, model_name, settings, init_image=image, run=run)

        def request_stop(request: gr.Request = None):
            """The Stop button: the loop ends after the step it is on (Gradio's cancel also closes the event)."""
            run = runs.latest(_session(request))
            if run is not None:
                run.stop_requested.set()

        def settle(request: gr.Request = None):
            """After a generate event ended (finished, stopped or failed): bring the panel to the run's end state.
            Finished: full decodes of the last step, the animation, the final plot. Stopped: the step it stopped
            at and a slider over the steps computed (the event's own last update may have been cut off by the
            cancel, or arrive after a Stop message). Does nothing when a newer run is already going."""
            session = _session(request)
            run = runs.latest(session)
            if run is None:
                return {}
            if run.outcome == RUNNING and run.stop_requested.is_set():
                run.ended.wait(SETTLE_WAIT_S)  # the step in progress finishes first
            if not run.ended.is_set():
                return {}  # a new run is going: it updates the panel itself
            if run.outcome == FAILED:
                return {panel.status: f"The run failed: {run.error}"} if runs.is_latest(session, run) else {}
            if not run.steps:
                return {panel.status: "Stopped before the first step."}
            model = load_for_app(run.model)
            last = len(run.steps) - 1
            values = _step_decodes(panel, model, run, last)
            if run.outcome == DONE:
                values[panel.animation] = Image.open(io.BytesIO(render.run_animation(model, run.trace)))
                values[panel.plot] = render.schedule_figure(run.steps, last, len(run.steps))
            else:
                values.update(_stopped_view(panel, model, run))
            return values if runs.is_latest(session, run) else {}

        def show_step(step, request: gr.Request = None):
            """Scrubbing: everything the panel shows for the chosen step of the session's latest run."""
            session = _session(request)
            run = runs.latest(session)
            if run is not None and not run.ended.is_set():
                return {}  # a run is going: the slider follows it
            if run is None or not run.steps:
                raise student_error("There is no run to look at in this session yet (or it expired): press Generate.")
            model = load_for_app(run.model)
            n = len(run.steps)
            index = min(max(_whole(step, "Step") - 1, 0), n - 1)
            values = _frame_values(panel, model, run.steps[index], n)
            values.update(_step_decodes(panel, model, run, index))
            values[panel.plot] = render.schedule_figure(run.steps, index, n)
            what = "the last run" if run.outcome == DONE else "the stopped run"
            values[panel.status] = f"Showing step **{index + 1} / {n}** of {what}."
            return values if runs.is_latest(session, run) else {}

        def choose_model(name, current):
            """The dropdown changed: load the model and use its recommended settings. A model that fails
            keeps the previous one in use (and the dropdown goes back to it)."""
            if name == current:  # e.g. the dropdown going back after a failure
                return {model_state: current}
            try:
                hosting.check_allowed(name, models)  # Gradio checks the choices too; never load anything else
            except SdvizError as err:
                raise student_error(err) from err
            model = load_for_app(name)
            rec = model.recommended
            updates = {model_state: name, model_info: _model_note(model),
                       strength: gr.Slider(value=rec.strength)}
            for controls in (txt, img):
                updates[controls.steps] = gr.Slider(value=rec.steps)
                updates[controls.guidance_scale] = gr.Slider(value=rec.guidance_scale)
                updates[controls.scheduler] = gr.Dropdown(choices=scheduler_choices(model), value=DEFAULT_SCHEDULER)
            return updates

        def end_session(request: gr.Request = None):
            """The tab closed: free its run and its stored values now, not an hour later."""
            session = _session(request)
            holder = getattr(demo, "state_holder", None)  # Gradio keeps a closed session's values for an hour,
            if holder is not None and session is not None:  # and its copy of the page's settings until it
                holder.delete_state(session)  # has seen SDVIZ_MAX_SESSIONS newer sessions
                with holder.lock:
                    holder.session_data.pop(session, None)
                    holder.time_last_used.pop(session, None)
            runs.end_session(session)
            runs.forget_expired()

        events = []
        for controls, fn, inputs, name in (
            (txt, txt2img, [txt.prompt, txt.negative_prompt, txt.steps, txt.guidance_scale, txt.seed, txt.scheduler],
             "txt2img"),
            (img, img2img, [init_image, img.prompt, img.negative_prompt, strength, img.steps, img.guidance_scale,
                            img.seed, img.scheduler], "img2img"),
        ):
            # The API result: (final picture, status, step, latents, noise, numbers, plot, decodes..., animation)
            outputs = [controls.final, *panel.all_outputs(), run_state]
            event = controls.generate.click(
                fn, [*inputs, model_state], outputs, api_name=name, concurrency_id=GENERATE_CONCURRENCY_ID,
                concurrency_limit=concurrency_limit, show_progress="hidden",
            )
            # The page runs this after the event succeeded, failed or was cancelled (the API does not).
            event.then(settle, None, panel.all_outputs(), api_visibility="private", concurrency_id=PEEK_CONCURRENCY_ID,
                       concurrency_limit=PEEK_CONCURRENCY, show_progress="hidden")
            controls.stop.click(request_stop, None, None, cancels=[event], api_visibility="private", queue=False)
            controls.dice.click(lambda: random.randint(0, UI_MAX_SEED), None, controls.seed,
                                api_visibility="private", concurrency_limit=None, queue=False)
            events.append((controls, event))
        # One panel, one run: starting text to image stops a run of image to image, and the other way round.
        (txt_controls, txt_event), (img_controls, img_event) = events
        txt_controls.generate.click(None, cancels=[img_event])
        img_controls.generate.click(None, cancels=[txt_event])
        panel.step.input(show_step, [panel.step], [*panel.frame_outputs(), panel.x_t_decode, panel.x0_decode],
                         api_visibility="private", concurrency_id=PEEK_CONCURRENCY_ID,
                         concurrency_limit=PEEK_CONCURRENCY, trigger_mode="always_last", show_progress="hidden")
        model_choice.change(
            choose_model, [model_choice, model_state],
            [model_state, model_info, strength, txt.steps, txt.guidance_scale, txt.scheduler, img.steps,
             img.guidance_scale, img.scheduler],
            api_visibility="private", concurrency_limit=None, show_progress="hidden",
        ).failure(lambda current: current, model_state, model_choice, api_visibility="private", queue=False)
        demo.unload(end_session)

    demo.queue(max_size=queue_size)
    demo.sdviz_runs = runs  # the sessions' runs, for tests and benchmarks (memory, clean-up)
    demo.sdviz_models = models
    demo.sdviz_capacity = hosting.Capacity(concurrency_limit, queue_size, runs.max_sessions)
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
    """Settings for ``demo.launch``: the page's look and the security settings of a public Space
    (:func:`sdviz.hosting.secure_launch_settings`). Server name and port come from GRADIO_SERVER_NAME/PORT."""
    return {
        "css": CSS,
        "footer_links": ["api", "gradio", "settings"],
        "state_session_capacity": hosting.capacity().max_sessions,
        **hosting.secure_launch_settings(),
    }
