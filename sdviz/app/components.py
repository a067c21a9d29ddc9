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
from sdviz.app.services import UnreadablePicture, decodes_are_cheap, is_hub_id, student_error
from sdviz.lessons import guided, links, peek
from sdviz.pipeline.models import EMBEDDED, Model
from sdviz.pipeline.schedulers import SCHEDULERS, scheduler_name
from sdviz.pipeline.settings import MAX_INIT_PIXELS, RunSettings
from sdviz.toy import model as toy_model
from sdviz.toy import world

EXAMPLES_DIR = Path(__file__).resolve().parents[2] / "assets" / "examples"
DEFAULT_SCHEDULER = links.DEFAULT_SCHEDULER  # the dropdown/API value for "the model's own scheduler"
UI_MAX_STEPS = links.UI_MAX_STEPS  # lesson links check steps against the same end


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

    class TeachingPicture(gr.Image):
        """Gradio's image input (the same widget), for the teaching tabs: a file it cannot read reaches the handler
        as an :class:`~sdviz.app.services.UnreadablePicture` (the message) instead of failing the event, so the
        handler can keep the tab's last good result and say what is wrong next to the input."""

        is_template = True

        def preprocess(self, payload):
            try:
                return super().preprocess(payload)
            except Image.DecompressionBombError:
                return UnreadablePicture(f"That picture has too many pixels; the most this app takes is "
                                         f"{MAX_INIT_PIXELS // 1_000_000} megapixels: shrink it first.")
            except Exception:  # PIL raises several kinds for files that are not pictures
                return UnreadablePicture(texts.UNREADABLE_UPLOAD)

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
    return (f"**{model_label(model.name)}**: pictures {texts.picture_shape(model)}, latents {texts.latent_shape(model)} "
            f"({compression_ratio(model):g}x fewer numbers); reads {model.tokenizer.model_max_length} tokens; "
            f"recommended {rec.steps} steps, CFG {rec.guidance_scale:g}; on {model.device.type}.")


def scheduler_choices(model: Model | None) -> list[tuple[str, str]]:
    own = f"the model's own ({scheduler_name(model.pipe.scheduler)})" if model is not None else "the model's own"
    return [(own, DEFAULT_SCHEDULER)] + [(name, name) for name in SCHEDULERS]


def prompt_examples(model: Model | None = None) -> list[str]:
    """Prompts in the toy world's words (the last of each kind was never seen in training); two-shape scenes too
    for a model that reads them."""
    held_out, (first, second) = world.HELD_OUT[0], world.PAIR_HELD_OUT[0]
    prompts = [
        world.caption("red", "circle", "big", "left"),
        world.caption("blue", "square", "small", "top"),
        world.caption("green", "triangle", "big", "center"),
        world.caption("yellow", "circle", None, "right"),
        world.caption(held_out[0], held_out[1], "big", held_out[2]),
    ]
    if model is not None and toy_model.is_toy_tokenizer(model.tokenizer) and toy_model.reads_pairs(model.tokenizer):
        prompts += [
            world.pair_caption(("yellow", "triangle"), "and", ("green", "circle")),
            world.pair_caption(("purple", "circle"), "above", ("orange", "square")),
            world.pair_caption(first, "left", second),
        ]
    return prompts


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
    """The peek-inside panel: a compact live view (the final picture, x_t and x0 decoded, the guided noise, the step
    counter and the timeline), then the details (latents, noise estimates, numbers, the plot, the animation)."""

    status: gr.Markdown  # the step counter and what is happening
    final: gr.Image  # the final picture (full VAE decode), shared by both generate tabs
    live: gr.HTML  # x_t and predicted x0 decoded (or previewed), the guided noise
    live_text: gr.Markdown
    step: gr.Slider
    play: gr.Button
    back: gr.Button
    forward: gr.Button
    speed: gr.Slider  # steps a second when playing
    loop: gr.Checkbox
    slow: gr.Checkbox  # slow motion for the next run
    timer: gr.Timer
    latents: gr.HTML  # x_t's channels
    latents_text: gr.Markdown
    noise: gr.HTML  # the four noise estimates
    numbers: gr.Markdown
    plot: gr.Image
    plot_text: gr.Markdown
    animation: gr.Image

    def frame_outputs(self) -> list:
        return [self.status, self.step, self.live, self.latents, self.noise, self.numbers, self.plot, self.plot_text]

    def all_outputs(self) -> list:
        return [*self.frame_outputs(), self.animation]


def generate_controls(defaults: RunSettings, model: Model | None, prefix: str) -> GenerateControls:
    """One tab's settings and buttons in one row of four columns: compact, so that the live view fits below them on a
    projector (1280 x 720)."""
    with gr.Row(equal_height=False, elem_classes=["generate-row"]):
        with gr.Column(scale=4, min_width=260):
            prompt = gr.Textbox(label="Prompt", lines=2, placeholder=texts.PROMPT_PLACEHOLDER,
                                elem_id=f"{prefix}-prompt")
            negative = gr.Textbox(label="Negative prompt", value="", lines=1, elem_id=f"{prefix}-negative",
                                  placeholder="what to steer away from (with CFG > 1)")
        with gr.Column(scale=3, min_width=200):
            # No precision=0 on steps and seed: Gradio would round 2.5 (or fail on NaN) before run_settings can say why
            steps = Slider(1, UI_MAX_STEPS, value=defaults.steps, step=1, label="Steps",
                           elem_id=f"{prefix}-steps")
            guidance = Slider(0, 20, value=defaults.guidance_scale, step=0.5, label="CFG scale",
                              elem_id=f"{prefix}-cfg")
        with gr.Column(scale=3, min_width=200):
            with gr.Row(equal_height=True):
                seed = gr.Number(value=defaults.seed, step=1, label="Seed", elem_id=f"{prefix}-seed", scale=3,
                                 min_width=90)
                dice = gr.Button("Random seed", size="sm", scale=1, min_width=80)
            scheduler = gr.Dropdown(scheduler_choices(model), value=DEFAULT_SCHEDULER, label="Scheduler",
                                    elem_id=f"{prefix}-scheduler")
        with gr.Column(scale=2, min_width=140):
            generate = gr.Button("Generate", variant="primary", size="lg", elem_id=f"{prefix}-generate",
                                 elem_classes=["generate-button"])
            stop = gr.Button("Stop", variant="stop", elem_id=f"{prefix}-stop")
    return GenerateControls(prompt, negative, steps, guidance, seed, dice, scheduler, generate, stop)


def final_image() -> gr.Image:
    return gr.Image(label="Final picture (full VAE decode)", type="pil", format="png", interactive=False,
                    height=240, buttons=["download", "fullscreen"], elem_id="final", elem_classes=["final-picture"],
                    scale=1, min_width=200)


def peek_panel(model: Model | None = None) -> PeekPanel:
    """The panel (call after the tabs): the compact live view first, the details below it."""
    real = model is not None and decodes_are_cheap(model)
    with gr.Column(elem_id="live-view"):
        status = gr.Markdown("Press **Generate**: every step of the run appears here as it is computed.",
                             elem_id="peek-status")
        with gr.Row(equal_height=True):
            final = final_image()
            with gr.Column(scale=3):
                live = gr.HTML(live_html({k: None for k in texts.LIVE_CAPTIONS}, real), elem_id="peek-live")
        with gr.Row(equal_height=False, elem_id="timeline"):
            back = gr.Button("◀ step", size="sm", min_width=70, scale=0, elem_id="peek-back")
            play = gr.Button("▶ Play", size="sm", min_width=90, scale=0, elem_id="peek-play")
            forward = gr.Button("step ▶", size="sm", min_width=70, scale=0, elem_id="peek-forward")
            step = gr.Slider(1, 2, value=1, step=1, precision=0, label="Step", interactive=False, elem_id="peek-step",
                             scale=4, min_width=200)
            speed = gr.Slider(1, 10, value=3, step=1, label="steps / s", elem_id="peek-speed", scale=1,
                              min_width=110)
            with gr.Column(scale=0, min_width=130):
                loop = gr.Checkbox(value=True, label="loop", elem_id="peek-loop", container=False)
                slow = gr.Checkbox(value=False, label="slow motion", elem_id="peek-slow", container=False)
        timer = gr.Timer(1 / 3, active=False)
    with gr.Column(elem_id="peek"):
        gr.Markdown("## Peek inside the loop")
        with gr.Row():
            live_text = gr.Markdown(texts.explain_live(real), elem_classes=["explain"], elem_id="peek-live-text")
            gr.Markdown(texts.EXPLAIN_TIMELINE, elem_classes=["explain"])
        with gr.Row():
            with gr.Column(scale=5):
                latents = gr.HTML(waiting_latents(), elem_id="peek-latents")
            with gr.Column(scale=2, min_width=280):
                latents_text = gr.Markdown(texts.explain_latents(model) if model is not None else "",
                                           elem_classes=["explain"], elem_id="peek-latents-text")
        with gr.Row():
            with gr.Column(scale=5):
                noise = gr.HTML(waiting_noise(), elem_id="peek-noise")
            with gr.Column(scale=2, min_width=280):
                gr.Markdown(texts.EXPLAIN_NOISE, elem_classes=["explain"])
        with gr.Row():
            with gr.Column(scale=5):
                plot = gr.Image(label="noise schedule and latent statistics", show_label=False, type="pil",
                                format="png", interactive=False, elem_id="peek-plot", buttons=["fullscreen"])
            with gr.Column(scale=2, min_width=280):
                numbers = gr.Markdown(elem_id="peek-numbers")
                plot_text = gr.Markdown(texts.explain_plot(), elem_classes=["explain"], elem_id="peek-plot-text")
        animation = gr.Image(label="the whole run, in real VAE decodes (animation)", type="pil", format="gif",
                             interactive=False, height=340, buttons=["download", "fullscreen"],
                             elem_id="peek-animation", elem_classes=["peek-picture"])
    return PeekPanel(status, final, live, live_text, step, play, back, forward, speed, loop, slow, timer, latents,
                     latents_text, noise, numbers, plot, plot_text, animation)


def live_html(pictures: dict[str, Image.Image | None], real: bool, at_start: bool = False,
              waiting: str = texts.WAITING) -> str:
    """The compact live view's three pictures: x_t and predicted x0 (real decodes, or the preview) and the guided
    noise; ``at_start``: x_t is still nearly pure noise (its caption says why its decode does not look like it).
    A picture not given says ``waiting`` in its place."""
    captions = dict(texts.LIVE_CAPTIONS) | ({} if real else texts.PREVIEW_CAPTIONS)
    if at_start and real:
        captions["x_t"] = texts.NOISE_AT_START
    return figures_html([(captions[k], pictures.get(k)) for k in texts.LIVE_CAPTIONS], waiting,
                        css_class="peek-figures live-figures", photos={0, 1})


def waiting_latents(waiting: str = texts.WAITING) -> str:
    """The latents' place before the first run (``waiting`` says when they come; also while a run starts)."""
    return figures_html([(texts.LATENTS_CAPTION, None)], waiting)


def waiting_noise(waiting: str = texts.WAITING) -> str:
    """The noise estimates' place before the first run, or while a run starts."""
    return figures_html([(peek.NOISE_TITLES[k], None) for k in peek.NOISE_KINDS], waiting)


def figures_html(figures: list[tuple[str, Image.Image | None]],
                 missing: str = "not computed: CFG ≤ 1 means one U-Net pass, with the prompt",
                 scales: list[float | None] | None = None, css_class: str = "peek-figures",
                 photos: set[int] = frozenset()) -> str:
    """Captioned pictures in a row, inlined as image data: the page needs no extra request per picture
    (on a small model, serving those requests slowed the loop more than drawing the pictures did).
    ``scales``: a signed colour scale per picture, drawn as a legend under it (blue -s, white 0, red +s).
    Pictures are PNG (crisp blocks), except the ``photos`` (indices: decodes) larger than 256 pixels a side (a big
    model's), which are shrunk to 256 and sent as JPEG, to keep each streamed step small."""
    cells = []
    for i, (caption, picture) in enumerate(figures):
        if picture is None:
            body = f'<div class="peek-empty">{missing}</div>'
        else:
            body = f'<img src="{_data_url(picture, i in photos)}" alt="{caption}">'
        scale = scales[i] if scales else None
        legend = (f'<div class="peek-legend"><span>−{scale:.2g}</span><span>0</span><span>+{scale:.2g}</span></div>'
                  if scale is not None and picture is not None else "")
        cells.append(f"<figure>{body}{legend}<figcaption>{caption}</figcaption></figure>")
    return f'<div class="{css_class}">{"".join(cells)}</div>'


def _data_url(picture: Image.Image, photo: bool = False) -> str:
    out = io.BytesIO()
    if photo and max(picture.size) > 256:
        picture = picture.convert("RGB")
        picture.thumbnail((256, 256), Image.Resampling.LANCZOS)
        picture.save(out, format="JPEG", quality=88)
        kind = "jpeg"
    else:
        picture.save(out, format="PNG", compress_level=1)  # a third of the default level's time, 12% more bytes
        kind = "png"
    return f"data:image/{kind};base64,{base64.b64encode(out.getvalue()).decode()}"


# --- The teaching tabs' pictures ------------------------------------------------------------------------------


def picture_input(prefix: str) -> tuple[gr.Image, gr.Button, gr.Button, gr.Markdown]:
    """A teaching tab's picture (a file path for the handlers: they read, check and fit it themselves), its two
    buttons, and the one-line message beside it that says what was wrong or what was done to an upload."""
    # PNG, not Gradio's default WebP: lossy compression smears the toy world's hard edges
    image = TeachingPicture(label="Picture", type="filepath", format="png", sources=["upload", "clipboard"],
                            height=240, elem_id=f"{prefix}-picture", elem_classes=["teaching-picture"])
    with gr.Row():
        toy = gr.Button("A toy picture", size="sm", elem_id=f"{prefix}-toy")
        last = gr.Button("My last picture", size="sm", elem_id=f"{prefix}-last")
    return image, toy, last, message(prefix)


def message(prefix: str) -> gr.Markdown:
    """The one sentence next to a tab's input that says what is wrong (or what was done), empty otherwise."""
    return gr.Markdown("", elem_id=f"{prefix}-message", elem_classes=["teaching-message"])


def picture_output(label: str, elem_id: str, height: int, **kwargs) -> gr.Image:
    """A picture a tab shows, scaled to fill its box with sharp pixels (CSS ``.teaching-picture`` in
    :mod:`sdviz.app.texts`): the embedded model's pictures are only 64x64."""
    return gr.Image(label=label, type="pil", format="png", interactive=False, height=height, elem_id=elem_id,
                    elem_classes=["teaching-picture"], **kwargs)


# --- Lesson links and the guided lesson -----------------------------------------------------------------------


@dataclass
class LinkBar:
    """Copy link to this view (in the header), the link it made, and the notice of what a link left out."""

    copy: gr.Button
    link_box: gr.Textbox  # hidden until a link is made; Gradio's copy button beside it
    notice: gr.Markdown
    query: gr.Textbox  # the checked query for the address bar's JavaScript (in the page, never shown)
    run: gr.Button  # in the page, never shown: the JavaScript presses it when the link says run=1


def copy_link_button() -> gr.Button:
    return gr.Button("Copy link to this view", size="sm", scale=0, min_width=190, elem_id="copy-link")


def link_bar(copy: gr.Button) -> LinkBar:
    """Under the header: the link box (empty and hidden at first) and the notice."""
    link_box = gr.Textbox(label="Link to this view", interactive=False, visible=False, buttons=["copy"],
                          elem_id="link-box")
    notice = gr.Markdown("", visible=False, elem_id="link-notice", elem_classes=["teaching-message"])
    query = gr.Textbox(visible="hidden", elem_id="link-query")
    run = gr.Button("run the link", visible="hidden", elem_id="link-run")
    return LinkBar(copy, link_box, notice, query, run)


@dataclass
class LessonView:
    """One station of the guided lesson on screen, and its buttons."""

    station: gr.State  # its number, 1-based
    title: gr.Markdown
    do: gr.Markdown
    look: gr.Markdown
    question: gr.Markdown
    answer_box: gr.Accordion
    answer: gr.Markdown
    back: gr.Button
    next: gr.Button
    open: gr.Button

    def outputs(self) -> list:
        return [self.station, self.title, self.do, self.look, self.question, self.answer_box, self.answer,
                self.back, self.next, self.open]


def lesson_view() -> LessonView:
    """The guided lesson's first station (call inside its tab)."""
    total = len(guided.STATIONS)
    first = texts.station_texts(1, total, guided.STATIONS[0])
    station = gr.State(1)
    with gr.Column(elem_id="lesson"):
        title = gr.Markdown(first["title"], elem_id="lesson-title")
        do = gr.Markdown(first["do"], elem_id="lesson-do")
        look = gr.Markdown(first["look"], elem_id="lesson-look")
        question = gr.Markdown(first["question"], elem_id="lesson-question")
        with gr.Accordion("Show the answer", open=False, elem_id="lesson-answer-box") as answer_box:
            answer = gr.Markdown(first["answer"], elem_id="lesson-answer")
        with gr.Row(elem_id="lesson-nav"):
            back = gr.Button("◀ Back", interactive=False, scale=1, elem_id="lesson-back")
            open_tab = gr.Button(first["open"], variant="primary", scale=3, elem_id="lesson-open")
            forward = gr.Button("Next ▶", scale=1, elem_id="lesson-next")
    return LessonView(station, title, do, look, question, answer_box, answer, back, forward, open_tab)
