"""The page's building blocks: two Gradio widgets with messages a student can act on, the groups of components
that both generate tabs share (their settings, the peek-inside panel), and the pictures of the teaching tabs.

Builders only make components (call them inside ``gr.Blocks``); :mod:`sdviz.app.layout` places them and wires
their events.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
from PIL import Image

from sdviz.app import texts
from sdviz.app.gradio_internals import no_stub_files
from sdviz.app.services import is_hub_id, student_error
from sdviz.lessons import peek
from sdviz.pipeline.models import EMBEDDED, Model
from sdviz.pipeline.schedulers import SCHEDULERS, scheduler_name
from sdviz.pipeline.settings import MAX_INIT_PIXELS, MAX_STEPS, RunSettings
from sdviz.toy import world

EXAMPLES_DIR = Path(__file__).resolve().parents[2] / "assets" / "examples"
DEFAULT_SCHEDULER = "default"  # the dropdown/API value for "the model's own scheduler"
UI_MAX_STEPS = min(100, MAX_STEPS)


with no_stub_files():
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
                raise student_error(texts.UNREADABLE_PICTURE) from err

    class Slider(gr.Slider):
        """Gradio's slider (the same widget), whose out-of-range message names it: "Steps: Value 0 is less than
        minimum value 1." instead of Gradio's bare "Value 0 is less than ...", which an API caller cannot place."""

        is_template = True

        def preprocess(self, payload):
            try:
                return super().preprocess(payload)
            except gr.Error as err:
                raise student_error(f"{self.label}: {err.message}") from err


# --- Names and examples on the page ------------------------------------------------------------------------


def model_label(name: str) -> str:
    """The model's name in the dropdown and the status line: where it comes from, and whether it needs internet."""
    if name == EMBEDDED:
        return "embedded: tiny toy-world SD (offline)"
    if is_hub_id(name):
        return f"{name} (hub: needs internet)"
    return name


def model_note(model: Model) -> str:
    """One line on the loaded model: its picture and latent sizes, recommended settings and device."""
    from sdviz.pipeline.vae import compression_ratio

    rec = model.recommended
    f = model.vae_scale_factor
    channels = model.vae.config.latent_channels
    return (f"**{model_label(model.name)}**: pictures {rec.width}x{rec.height}, latents {channels}x{rec.height // f}"
            f"x{rec.width // f} ({compression_ratio(model):.0f}x fewer numbers); recommended {rec.steps} steps, "
            f"CFG {rec.guidance_scale:g}; on {model.device.type}.")


def scheduler_choices(model: Model | None) -> list[tuple[str, str]]:
    own = f"the model's own ({scheduler_name(model.pipe.scheduler)})" if model is not None else "the model's own"
    return [(own, DEFAULT_SCHEDULER)] + [(name, name) for name in SCHEDULERS]


def prompt_examples() -> list[str]:
    """Prompts in the toy world's words (the last combination was never seen in training)."""
    held_out = world.HELD_OUT[0]
    return [
        world.caption("red", "circle", "big", "left"),
        world.caption("blue", "square", "small", "top"),
        world.caption("green", "triangle", "big", "center"),
        world.caption("yellow", "circle", None, "right"),
        world.caption(held_out[0], held_out[1], "big", held_out[2]),
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


# --- A generate tab's settings, and the peek-inside panel -------------------------------------------------------


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
    final: gr.Image | None = None  # made in the tab's right-hand column, after the controls


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


def generate_controls(defaults: RunSettings, model: Model | None, prefix: str) -> GenerateControls:
    prompt = gr.Textbox(label="Prompt", lines=2, placeholder="a big red circle on the left",
                        info="Empty is allowed: the model then draws without a prompt.", elem_id=f"{prefix}-prompt")
    negative = gr.Textbox(label="Negative prompt", value="", placeholder="what to steer away from (with CFG > 1)",
                          elem_id=f"{prefix}-negative")
    with gr.Row():
        # No precision=0 on steps and seed: Gradio would round 2.5 (or fail on NaN) before run_settings can say why.
        steps = Slider(1, UI_MAX_STEPS, value=defaults.steps, step=1, label="Steps",
                       info="How many times the U-Net is asked", elem_id=f"{prefix}-steps")
        guidance = Slider(0, 20, value=defaults.guidance_scale, step=0.5, label="CFG scale", info=texts.CFG_INFO,
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
    return GenerateControls(prompt, negative, steps, guidance, seed, dice, scheduler, generate, stop)


def final_image(prefix: str) -> gr.Image:
    return gr.Image(label="Final picture (full VAE decode)", type="pil", format="png", interactive=False,
                    height=320, buttons=["download", "fullscreen"], elem_id=f"{prefix}-final",
                    elem_classes=["final-picture"])


def peek_panel() -> PeekPanel:
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
                latents = gr.HTML(figures_html([(c, None) for c in texts.LATENT_CAPTIONS], texts.WAITING),
                                  elem_id="peek-latents")
            explanation(texts.EXPLAIN_LATENTS)
        with gr.Row():
            with gr.Column(scale=5):
                noise = gr.HTML(figures_html([(peek.NOISE_TITLES[k], None) for k in peek.NOISE_KINDS], texts.WAITING),
                                elem_id="peek-noise")
            explanation(texts.EXPLAIN_NOISE)
        with gr.Row():
            with gr.Column(scale=5), gr.Row():
                x_t_decode = picture("x_t, VAE decode", "peek-xt-decode")
                x0_decode = picture("predicted x0, VAE decode", "peek-x0-decode")
                animation = picture("the whole run (animation)", "peek-animation", format="gif", scale=2,
                                    buttons=["download"])
            explanation(texts.EXPLAIN_DECODES)
        with gr.Row():
            with gr.Column(scale=5):
                plot = gr.Plot(label="noise schedule and latent statistics", show_label=False, format="png",
                               elem_id="peek-plot")
            with gr.Column(scale=2, min_width=280):
                numbers = gr.Markdown(elem_id="peek-numbers")
                gr.Markdown(texts.EXPLAIN_PLOT, elem_classes=["explain"])
    return PeekPanel(status, step, latents, noise, numbers, plot, x_t_decode, x0_decode, animation)


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


# --- The teaching tabs' pictures ------------------------------------------------------------------------------


def picture_input(prefix: str) -> tuple[gr.Image, gr.Button, gr.Button]:
    # PNG, not Gradio's default WebP: lossy compression smears the toy world's hard edges
    image = gr.Image(label="Picture", type="pil", format="png", sources=["upload", "clipboard"], height=240,
                     elem_id=f"{prefix}-picture", elem_classes=["teaching-picture"])
    with gr.Row():
        toy = gr.Button("A toy picture", size="sm", elem_id=f"{prefix}-toy")
        last = gr.Button("My last picture", size="sm", elem_id=f"{prefix}-last")
    return image, toy, last


def picture_output(label: str, elem_id: str, height: int, **kwargs) -> gr.Image:
    """A picture a tab shows, scaled to fill its box with sharp pixels (CSS ``.teaching-picture`` in
    :mod:`sdviz.app.texts`): the embedded model's pictures are only 64x64."""
    return gr.Image(label=label, type="pil", format="png", interactive=False, height=height, elem_id=elem_id,
                    elem_classes=["teaching-picture"], **kwargs)
