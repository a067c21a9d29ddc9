"""The sdviz page: :func:`build_demo` lays out the components and wires their events (``app.py`` launches it).

    model choice, Copy link to this view (lesson links: sdviz.app.lesson_links)
    tabs: Text to image | Image to image | Forward diffusion | Latent space | Text & attention | U-Net |
          CFG experiments | 2-D diffusion lab | Prompt A/B | Export | Guided lesson
    the peek-inside panel: every step of the latest run, live while it runs, scrubbable afterwards

The handlers are plain functions: the playground's in :mod:`sdviz.app.playground` (bound to the page's
:class:`~sdviz.app.playground.Page`), the teaching tabs' in :mod:`sdviz.app.teaching`. Limits, the model allow-list,
GPU reservations and the launch settings come from :mod:`sdviz.app.hosting`.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence

import gradio as gr

from sdviz.app import components, hosting, lab2d, lesson_links, playground, teaching, texts
from sdviz.app.components import PictureUpload, Slider, picture_input, picture_output
from sdviz.app.lesson_links import LinkControls, Links
from sdviz.app.playground import Page, bind
from sdviz.app.services import load_for_app
from sdviz.app.sessions import STATE_TTL_S, SessionRuns
from sdviz.errors import SdvizError
from sdviz.lessons import diffusion_2d, experiments, guidance_variants, unet_diagram
from sdviz.pipeline.settings import RunSettings

GENERATE_CONCURRENCY_ID = "generate"  # the generate events of both tabs: their runs are batched (services.RunStream)
LESSON_CONCURRENCY_ID = "lessons"  # the teaching tabs' experiments: each its own model calls
PEEK_CONCURRENCY_ID = "peek"  # scrubbing and full decodes: cheap, but they use the VAE
PEEK_CONCURRENCY = 4
EXPORT_CONCURRENCY_ID = "export"
MODEL_EVENTS = dict(api_visibility="private", concurrency_id=LESSON_CONCURRENCY_ID, concurrency_limit=None)  # the
# limit of the "lessons" id is set once, by build_demo's first event with it (Gradio keeps the smallest limit given)
CHEAP_EVENTS = dict(api_visibility="private", concurrency_limit=None)
# The controls of the CFG tab's guidance variants, in one place (elem_id: label, minimum, maximum, step, value); the
# Diffusion Lens section of the Text & attention tab has only its button ("lens-run") and reads "attention-prompt".
VARIANT_SLIDERS = {
    "cfg-variants-scale": ("guidance scale g (all three runs)", 0, 20, 0.5, 7.5),
    "cfg-variants-rescale": ("guidance rescale r (0 = plain CFG)", 0, 1, 0.05, guidance_variants.DEFAULT_RESCALE),
    "cfg-variants-start": ("CFG from (share of the steps)", 0, 0.95, 0.05, guidance_variants.DEFAULT_INTERVAL[0]),
    "cfg-variants-end": ("CFG until (share of the steps)", 0.05, 1, 0.05, guidance_variants.DEFAULT_INTERVAL[1]),
}
VARIANT_LINK_KEYS = {"variants_g": "cfg-variants-scale", "variants_rescale": "cfg-variants-rescale",
                     "variants_from": "cfg-variants-start", "variants_until": "cfg-variants-end"}  # links.KEYS names
PEEK_EVENTS = dict(api_visibility="private", concurrency_id=PEEK_CONCURRENCY_ID, concurrency_limit=PEEK_CONCURRENCY,
                   show_progress="hidden")  # decodes of stored steps: cheap, but they use the VAE


def build_demo(models: Sequence[str] | None = None, *, concurrency_limit: int | None = None,
               queue_size: int | None = None, max_sessions: int | None = None) -> gr.Blocks:
    """The sdviz app (not launched). ``models``: the allow-list, the first is the default (by default
    :func:`sdviz.app.hosting.allowed_models`). The limits default to :func:`sdviz.app.hosting.capacity`."""
    models = [str(m) for m in (models or hosting.allowed_models())]
    try:
        model = load_for_app(models[0])
        rec = model.recommended
        defaults = RunSettings(steps=rec.steps, guidance_scale=rec.guidance_scale, strength=rec.strength)
        model_note = components.model_note(model)
    except gr.Error as err:  # the app still opens; the message says what went wrong
        model, defaults = None, RunSettings()
        model_note = f"⚠️ {err.message}"
    try:
        limits = hosting.capacity(model.device if model is not None else None)
    except SdvizError as err:
        raise SystemExit(f"sdviz: {err}") from err
    runs = SessionRuns(max_sessions=max_sessions or limits.max_sessions, ttl_s=STATE_TTL_S,
                       max_bytes=limits.session_bytes)

    with gr.Blocks(title="sdviz: peek inside Stable Diffusion", delete_cache=(600, 3600)) as demo:
        with gr.Row(equal_height=True, elem_id="header"):
            gr.Markdown("# sdviz: watch Stable Diffusion make a picture, step by step", elem_id="title")
            model_choice = gr.Dropdown([(components.model_label(m), m) for m in models], value=models[0],
                                       label="Model", elem_id="model", scale=1, min_width=320)
        with gr.Row(equal_height=True, elem_id="model-row"):
            model_info = gr.Markdown(model_note, elem_id="model-info")
            copy_link = components.copy_link_button()
        bar = components.link_bar(copy_link)
        controls = LinkControls()  # which component holds each lesson-link key (sdviz.lessons.links.KEYS)
        model_state = gr.State(models[0])
        run_state = gr.State(None, time_to_live=STATE_TTL_S)
        slow_state = gr.State(False)  # the slow-motion box, for the generate events (a State: not in the API)
        with gr.Tabs(elem_id="tabs") as tabs:
            with gr.Tab("Text to image", id="txt2img"):
                txt = _txt2img_tab(defaults, model)
            with gr.Tab("Image to image", id="img2img"):
                img, init_image, strength = _img2img_tab(defaults, model)
            cfg_info = teaching_tabs(model_choice, run_state, controls)
            with gr.Tab("Guided lesson", id="lesson"):
                lesson = components.lesson_view()
        panel = components.peek_panel(model)
        txt.final = img.final = panel.final  # one panel, one final picture: the latest run's
        with gr.Accordion("Prompts to try (text to image)", open=False, elem_id="prompt-examples"):
            gr.Examples([[p] for p in components.prompt_examples(model)], inputs=[txt.prompt], label="Try a prompt")
        if components.image_examples():  # below the panel too: in the tab they would push the live view off screen
            with gr.Accordion("Pictures to try (image to image)", open=False, elem_id="image-examples"):
                gr.Examples(components.image_examples(), inputs=[init_image, img.prompt], label="Try a picture")
        gr.Markdown("Type a prompt, press **Generate**, and watch the loop: the noisy latents, the U-Net's noise "
                    "estimates, classifier-free guidance, and the VAE turning latents back into pixels.")
        page = Page(demo=demo, models=models, runs=runs, panel=panel, txt=txt, img=img, strength=strength,
                    model_state=model_state, model_info=model_info, run_state=run_state, slow_state=slow_state)
        _wire_playground(page, init_image, concurrency_limit or limits.concurrency)
        gr.Button(visible=False, elem_id="lesson-slots").click(  # never clicked: sets the "lessons" slots' limit
            lambda: None, api_visibility="private", concurrency_id=LESSON_CONCURRENCY_ID,
            concurrency_limit=limits.lesson_concurrency)
        _register_links(controls, page, init_image, lesson)
        links = Links(page, controls, tabs, gr.State("txt2img"), gr.State({}), bar.notice, bar.query, bar.link_box,
                      bar.run, lesson, cfg_info, model_choice)
        _wire_links(links, bar.copy, init_image)
        model_choice.change(
            bind(playground.choose_model, page), [model_choice, model_state],
            [model_state, model_info, strength, txt.steps, txt.guidance_scale, txt.scheduler, img.steps,
             img.guidance_scale, img.scheduler, panel.latents_text, panel.live_text],
            api_visibility="private", concurrency_limit=None, show_progress="hidden",
        ).failure(lambda current: current, model_state, model_choice, api_visibility="private", queue=False)
        demo.unload(bind(playground.end_session, page))

    demo.queue(max_size=queue_size or limits.queue_size)
    demo.sdviz_page = page  # the handlers' context: the sessions' runs and the components, for tests and benchmarks
    demo.sdviz_links = links  # the lesson links' context
    return demo


# --- The two generate tabs and the events of the playground ---------------------------------------------------


def _txt2img_tab(defaults: RunSettings, model) -> components.GenerateControls:
    return components.generate_controls(defaults, model, "txt2img")  # its final picture is the panel's


def _img2img_tab(defaults: RunSettings, model) -> tuple[components.GenerateControls, gr.Image, gr.Slider]:
    with gr.Row():
        with gr.Column(scale=1, min_width=250):
            # image_mode=None: the file as uploaded; sdviz.pipeline.settings.load_init_image converts RGBA,
            # grey, palette and 16-bit pictures itself (Gradio's conversion blackens transparency)
            init_image = PictureUpload(label="Start from this picture", type="filepath", image_mode=None,
                                       sources=["upload", "clipboard"], height=104, elem_id="img2img-init")
            strength = Slider(0.05, 1, value=defaults.strength, step=0.05, label="Strength",
                              elem_id="img2img-strength")  # no hint line: it would push the live view off a 720-px screen
        with gr.Column(scale=4):
            steps = model.recommended.img2img_steps if model is not None else defaults.steps  # >= 1 step runs
            img = components.generate_controls(dataclasses.replace(defaults, steps=steps), model, "img2img")
    # Checked at upload, not only at Generate: a fake or oversized picture is refused with its message (a toast)
    # and taken out of the input again.
    init_image.upload(teaching.check_upload, [init_image], None, **CHEAP_EVENTS).failure(
        lambda: None, None, init_image, api_visibility="private", queue=False)
    return img, init_image, strength


def _wire_playground(page: Page, init_image: gr.Image, concurrency_limit: int) -> None:
    """Generate, Stop and the dice of both tabs, what follows a run, the step slider and the timeline."""
    txt, img, panel = page.txt, page.img, page.panel
    peek_events = dict(api_visibility="private", concurrency_id=PEEK_CONCURRENCY_ID,
                       concurrency_limit=PEEK_CONCURRENCY, show_progress="hidden")
    for controls, handler, inputs, name in (
        (txt, playground.txt2img, [txt.prompt, txt.negative_prompt, txt.steps, txt.guidance_scale, txt.seed,
                                   txt.scheduler], "txt2img"),
        (img, playground.img2img, [init_image, img.prompt, img.negative_prompt, page.strength, img.steps,
                                   img.guidance_scale, img.seed, img.scheduler], "img2img"),
    ):
        # First, at once (not queued): the session's run still going, started in either tab, is asked to stop,
        # so it frees its slot and the new run takes the panel; a timeline playing stops. This listener must come
        # before the generate event: the page runs a button's listeners one after the other, each to its end, so a
        # listener after the event (such as a `cancels=` of the other tab's run) would only fire once this run had
        # finished, and would then cancel a run started after it.
        controls.generate.click(bind(playground.replace_run, page), None, [panel.timer, panel.play],
                                api_visibility="private", queue=False)
        # The API result: (final picture, status, step, live view, latents, noise, numbers, plot, plot text,
        # animation)
        outputs = [controls.final, *panel.all_outputs(), page.run_state]
        event = controls.generate.click(
            bind(handler, page), [*inputs, page.model_state, page.slow_state], outputs, api_name=name,
            concurrency_id=GENERATE_CONCURRENCY_ID, concurrency_limit=concurrency_limit, show_progress="hidden",
        )
        # The page runs this after the event succeeded, failed or was cancelled (the API does not).
        event.then(bind(playground.settle, page), None, panel.frame_outputs(), **peek_events).then(
            bind(playground.settle_animation, page), None, panel.animation, **peek_events)
        controls.stop.click(bind(playground.request_stop, page), None, None, cancels=[event],
                            api_visibility="private", queue=False)
        controls.dice.click(lambda: random.randint(0, playground.UI_MAX_SEED), None, controls.seed,
                            api_visibility="private", concurrency_limit=None, queue=False)
    panel.slow.change(lambda slow: slow, panel.slow, page.slow_state, api_visibility="private", queue=False)
    panel.step.input(bind(playground.show_step, page), [panel.step], panel.frame_outputs(), trigger_mode="always_last",
                     **peek_events)
    # The timeline: a server-side timer steps the panel while it plays (gr.Timer ticks only while active)
    timeline = [panel.timer, panel.play]
    panel.play.click(bind(playground.play_pause, page), [panel.play, panel.speed, panel.step], timeline,
                     api_visibility="private", queue=False)
    panel.speed.change(playground.pace, [panel.speed], panel.timer, api_visibility="private", queue=False)
    for trigger, handler in ((panel.timer.tick, playground.step_forward), (panel.forward.click, playground.step_forward),
                             (panel.back.click, playground.step_back)):
        trigger(bind(handler, page), [panel.step, panel.loop], [*panel.frame_outputs(), *timeline],
                trigger_mode="always_last", **peek_events)


# --- Lesson links and the guided lesson (handlers: sdviz.app.lesson_links) -----------------------------------------


def _register_links(controls: LinkControls, page: Page, init_image: gr.Image, lesson: components.LessonView) -> None:
    """The playground's components that lesson links set and read (the teaching tabs register their own)."""
    for tab, generate in (("txt2img", page.txt), ("img2img", page.img)):
        for key, field in lesson_links.SETTINGS.items():
            controls.register(key, getattr(generate, field), tab)
    controls.register("strength", page.strength)
    controls.register("example", init_image)
    controls.register("slow", page.panel.slow)
    controls.register("step", page.panel.step)
    controls.register("station", lesson.station)


def _wire_links(ln: Links, copy: gr.Button, init_image: gr.Image) -> None:
    """Opening a link (the page's address, or a station's button), Copy link, and the lesson's Back and Next."""
    page, panel, lesson = ln.page, ln.page.panel, ln.lesson
    run_inputs = [ln.pending, page.txt.prompt, page.txt.negative_prompt, page.txt.steps, page.txt.guidance_scale,
                  page.txt.seed, page.txt.scheduler, init_image, page.img.prompt, page.img.negative_prompt,
                  page.strength, page.img.steps, page.img.guidance_scale, page.img.seed, page.img.scheduler,
                  page.model_state, page.slow_state]

    # run=1: the page presses a hidden button once the link is applied (texts.SET_URL_JS), so a link that does not
    # run sends no generate event at all (it would wait for a generate slot, and count in the queue)
    run = ln.run.click(bind(lesson_links.run_link, ln), run_inputs, [panel.final, *panel.all_outputs(), page.run_state],
                       **MODEL_EVENTS | {"show_progress": "hidden"})
    run.then(bind(playground.settle, page), None, panel.frame_outputs(), **PEEK_EVENTS).then(
        bind(lesson_links.after_run, ln), [ln.pending, page.run_state], ln.after_run_outputs(), **PEEK_EVENTS).then(
        bind(playground.settle_animation, page), None, panel.animation, **PEEK_EVENTS)
    quiet = CHEAP_EVENTS | {"show_progress": "hidden"}  # they touch components all over the page
    for event in (page.demo.load(bind(lesson_links.restore, ln), [page.model_state], ln.outputs(), **quiet),
                  lesson.open.click(bind(lesson_links.open_station, ln), [lesson.station, page.model_state],
                                    ln.outputs(), **quiet)):
        event.then(fn=None, inputs=[ln.query], js=texts.SET_URL_JS, queue=False)  # the address bar; run=1 runs
        for handler, inputs, outputs in ln.controls.on_open:  # e.g. the 2-D lab samples with the link's settings
            event.then(handler, [ln.tab_state, *inputs], outputs, **LAB_EVENTS)
    for button, handler in ((lesson.back, lesson_links.station_back), (lesson.next, lesson_links.station_next)):
        button.click(bind(handler, ln), [lesson.station], [*lesson.outputs(), ln.query], **CHEAP_EVENTS).then(
            fn=None, inputs=[ln.query], js=texts.SET_URL_JS, queue=False)
    ln.tabs.select(lesson_links.tab_selected, None, [ln.tab_state, ln.link_box], **CHEAP_EVENTS)
    view = {*ln.controls.components(), ln.tab_state, page.model_state, page.run_state, panel.slow, panel.step,
            lesson.station}
    copy.click(bind(lesson_links.copy_link, ln), view, [ln.query, ln.link_box, ln.notice], **CHEAP_EVENTS).then(
        fn=None, inputs=[ln.query], outputs=[ln.link_box], js=texts.COPY_LINK_JS, queue=False)


# --- The teaching tabs: one function per tab, each with its events beside it -----------------------------------


def teaching_tabs(model_choice: gr.Dropdown, run_state: gr.State, links: LinkControls | None = None) -> gr.Markdown:
    """One tab per piece of the story; call inside the app's ``gr.Tabs()``. Each registers its controls for lesson
    links in ``links`` (by default a registry of their own). Returns the CFG tab's line on the latest run (a link
    that runs updates it)."""
    links = links if links is not None else LinkControls()
    _forward_tab(model_choice, run_state, links)
    _latent_tab(model_choice, run_state, links)
    _attention_tab(model_choice, run_state, links)
    _unet_tab(model_choice)
    cfg_info = _cfg_tab(run_state, links)
    _lab2d_tab(links)
    _ab_tab(run_state, links)
    _export_tab(run_state)
    return cfg_info


def _forward_tab(model_choice: gr.Dropdown, run_state: gr.State, links: LinkControls) -> None:
    with gr.Tab("Forward diffusion", id="forward"):
        gr.Markdown(texts.EXPLAIN_FORWARD)
        with gr.Row():
            with gr.Column(scale=2):
                image, toy, last, message = picture_input("forward")
                t = gr.Slider(0, 999, value=400, step=1, label="timestep t", elem_id="forward-t",
                              info="0 = the clean picture, 999 = pure noise")
                seed = gr.Number(value=0, precision=0, minimum=0, label="noise seed", elem_id="forward-seed")
            with gr.Column(scale=3):
                noisy = picture_output("decoded noisy latents", "forward-noisy", height=240)
                text = gr.Markdown(elem_id="forward-text")
        with gr.Row():
            # show_label=False on every plot here: each figure has its own title, which the label would cover
            schedule = gr.Plot(label="the noise schedule", show_label=False, format="png", elem_id="forward-schedule")
            latents = gr.Plot(label="the noisy latents", show_label=False, format="png", elem_id="forward-latents")
    _picture_events(model_choice, run_state, image, toy, last, message)
    links.register("forward_picture", image)
    links.register("forward_t", t)
    links.register("forward_seed", seed)
    for trigger in (image.change, t.release, seed.submit):
        trigger(teaching.forward_view, [model_choice, image, t, seed], [noisy, latents, schedule, text, message],
                trigger_mode="always_last", **MODEL_EVENTS)


def _picture_events(model_choice, run_state, image, toy, last, message) -> None:
    """A teaching picture's buttons, and its upload check: a file that is no picture is taken out again."""
    toy.click(teaching.toy_picture, [model_choice], [image, message], **CHEAP_EVENTS)
    last.click(teaching.last_picture, [run_state], [image, message], **CHEAP_EVENTS)
    image.upload(teaching.picture_uploaded, [image], [image], **CHEAP_EVENTS)


def _latent_tab(model_choice: gr.Dropdown, run_state: gr.State, links: LinkControls) -> None:
    with gr.Tab("Latent space", id="latent"):
        gr.Markdown(texts.EXPLAIN_LATENT)
        with gr.Row():
            with gr.Column():
                image, toy, last, message = picture_input("latent")
            decoded = picture_output("decoded from the latents (VAE round trip)", "latent-decoded", height=240)
        channels = gr.Plot(label="the 4 latent channels", show_label=False, format="png", elem_id="latent-channels")
        text = gr.Markdown(elem_id="latent-text")
    _picture_events(model_choice, run_state, image, toy, last, message)
    links.register("latent_picture", image)
    image.change(teaching.latent_view, [model_choice, image], [decoded, channels, text, message],
                 trigger_mode="always_last", **MODEL_EVENTS)


def _attention_tab(model_choice: gr.Dropdown, run_state: gr.State, links: LinkControls) -> None:
    with gr.Tab("Text & attention", id="attention"):
        gr.Markdown(texts.EXPLAIN_TEXT)
        prompt = gr.Textbox(label="Prompt", placeholder="empty = the prompt of your last run",
                            elem_id="attention-prompt")
        with gr.Row():
            tokenize = gr.Button("Show tokens and embeddings", elem_id="attention-tokenize")
            run = gr.Button("Run and capture attention", variant="primary", elem_id="attention-run")
        message = components.message("attention")
        with gr.Row():
            tokens = gr.Dataframe(headers=["position", "token", "id", "role"], interactive=False, max_height=300,
                                  label="tokens", elem_id="attention-tokens")
            with gr.Column():
                token_text = gr.Markdown(elem_id="attention-token-text")
                embeddings = gr.Plot(label="text embeddings", show_label=False, format="png",
                                     elem_id="attention-embeddings")
        with gr.Row():
            image = picture_output("the picture", "attention-image", height=220, scale=1)
            with gr.Column(scale=3):
                step = gr.Slider(0, 1, value=0, step=1, label="step (0 = the whole run)", interactive=False,
                                 elem_id="attention-step")
                special = gr.Checkbox(value=True, label="show start, end and padding tokens",
                                      elem_id="attention-special")
        maps = gr.Plot(label="cross-attention per token", show_label=False, format="png", elem_id="attention-maps")
        text = gr.Markdown(elem_id="attention-text")
        captured = gr.State(None, time_to_live=STATE_TTL_S)
        _lens_section(model_choice, prompt, run_state)
    links.register("attention_prompt", prompt)
    links.register("attention_special", special)
    tokenize.click(teaching.tokens_view, [model_choice, prompt, run_state], [tokens, token_text, embeddings, message],
                   **MODEL_EVENTS)
    run.click(teaching.attention_run, [model_choice, prompt, run_state, special],
              [image, maps, step, text, captured, message], **MODEL_EVENTS)
    for trigger in (step.release, special.input):
        trigger(teaching.attention_step, [step, special, captured], [maps, text, message],
                trigger_mode="always_last", **CHEAP_EVENTS)


def _lens_section(model_choice: gr.Dropdown, prompt: gr.Textbox, run_state: gr.State) -> None:
    """Diffusion Lens: one run per text-encoder layer, the U-Net reading the text as it is after that layer."""
    gr.Markdown("### Diffusion Lens: what the text means after each layer")
    gr.Markdown(texts.EXPLAIN_LENS, elem_classes=["explain"])
    run = gr.Button("Run the lens: one picture per text-encoder layer", variant="primary", elem_id="lens-run")
    message = components.message("lens")
    pictures = gr.Plot(label="one picture per text-encoder layer", show_label=False, format="png",
                       elem_id="lens-pictures")
    text = gr.Markdown(elem_id="lens-text")
    run.click(teaching.lens_run, [model_choice, prompt, run_state], [pictures, text, message], **MODEL_EVENTS)


def _unet_tab(model_choice: gr.Dropdown) -> None:
    with gr.Tab("U-Net", id="unet"):
        gr.Markdown(texts.EXPLAIN_UNET)
        draw = gr.Button("Draw the selected model's U-Net", elem_id="unet-draw")
        message = components.message("unet")
        text = gr.Markdown(elem_id="unet-text")
        plot = gr.Plot(label="the U-Net", show_label=False, format="png", elem_id="unet-plot")
        table = gr.Dataframe(headers=unet_diagram.TABLE_HEADERS, interactive=False, label="blocks",
                             elem_id="unet-table")
    draw.click(teaching.unet_view, [model_choice], [plot, table, text, message], **CHEAP_EVENTS)


def _cfg_tab(run_state: gr.State, links: LinkControls) -> gr.Markdown:
    with gr.Tab("CFG experiments", id="cfg") as tab:
        gr.Markdown(texts.EXPLAIN_CFG)
        info = gr.Markdown(texts.NO_RUN, elem_id="cfg-info")
        gr.Markdown("### Sweep: whole runs, same seed, several g")
        with gr.Row():
            scales = gr.Textbox(value="1, 2, 4, 7.5, 12", label="guidance scales", scale=3,
                                info=f"up to {experiments.MAX_SWEEP}; each one is a whole run", elem_id="cfg-scales")
            sweep = gr.Button("Run the sweep", variant="primary", scale=1, elem_id="cfg-sweep")
        sweep_message = components.message("cfg-sweep")
        pictures = gr.Plot(label="same seed, different guidance", show_label=False, format="png",
                           elem_id="cfg-pictures")
        plot = gr.Plot(label="measures against the guidance scale", show_label=False, format="png", elem_id="cfg-plot")
        table = gr.Markdown(elem_id="cfg-table")
        gr.Markdown("### What-if at one step: a one-step extrapolation, not a run")
        with gr.Row():
            step = gr.Slider(1, 2, value=1, step=1, label="step", interactive=False, elem_id="cfg-step")
            scale = gr.Slider(0, 20, value=7.5, step=0.5, label="guidance scale g", elem_id="cfg-scale")
        what_if_message = components.message("cfg-what-if")
        with gr.Row():
            recorded = picture_output("predicted x0 at the run's own g (VAE decode)", "cfg-recorded", height=200)
            what_if = picture_output("what-if: this one step's x0 at the new g (extrapolated, not a run)",
                                     "cfg-what-if", height=200)
        text = gr.Markdown(elem_id="cfg-text")
        variants = _variants_section(run_state)
    links.register("cfg_scales", scales)
    links.register("cfg_step", step)
    links.register("cfg_g", scale)
    for key, elem_id in VARIANT_LINK_KEYS.items():
        links.register(key, variants[elem_id])
    tab.select(teaching.cfg_tab_opened, [run_state], [step, scale, info, variants["cfg-variants-scale"]],
               **CHEAP_EVENTS)
    sweep.click(teaching.cfg_sweep, [run_state, scales], [pictures, plot, table, sweep_message], **MODEL_EVENTS)
    for trigger in (step.release, scale.release):
        trigger(teaching.cfg_what_if, [run_state, step, scale], [recorded, what_if, text, what_if_message],
                trigger_mode="always_last", **MODEL_EVENTS)
    return info


def _variants_section(run_state: gr.State) -> dict[str, gr.Slider]:
    """Guidance variants against plain CFG from the same seed; returns the sliders by elem_id (the tab sets the g
    slider to the run's g; lesson links set them all)."""
    gr.Markdown("### Guidance variants: rescale, and guidance on part of the steps only")
    gr.Markdown(texts.EXPLAIN_VARIANTS, elem_classes=["explain"])
    sliders = {}
    with gr.Row():
        for elem_id in ("cfg-variants-scale", "cfg-variants-rescale"):
            sliders[elem_id] = _variant_slider(elem_id)
    with gr.Row():
        for elem_id in ("cfg-variants-start", "cfg-variants-end"):
            sliders[elem_id] = _variant_slider(elem_id)
        compare = gr.Button("Compare with plain CFG", variant="primary", elem_id="cfg-variants-run")
    message = components.message("cfg-variants")
    pictures = gr.Plot(label="plain CFG and the two variants", show_label=False, format="png",
                       elem_id="cfg-variants-pictures")
    spread = gr.Plot(label="the spread of the noise estimate", show_label=False, format="png",
                     elem_id="cfg-variants-spread")
    text = gr.Markdown(elem_id="cfg-variants-text")
    compare.click(teaching.cfg_variants, [run_state, *sliders.values()], [pictures, spread, text, message],
                  **MODEL_EVENTS)
    return sliders


def _variant_slider(elem_id: str) -> gr.Slider:
    label, low, high, step, value = VARIANT_SLIDERS[elem_id]
    return Slider(low, high, value=value, step=step, label=label, elem_id=elem_id)


LAB_LINK_KEYS = ("lab_class", "lab_g", "lab_steps", "lab_scheduler", "lab_samples", "lab_seed")  # links.KEYS names
LAB_EVENTS = dict(api_visibility="private", concurrency_id="lab2d", concurrency_limit=4, show_progress="hidden")


def _lab2d_controls() -> tuple[list[gr.components.Component], gr.Row, gr.Accordion]:
    """The lab's controls, in the order its handlers take them (their ranges: sdviz.lessons.diffusion_2d). Class
    and guidance beside the figure; steps, samples, scheduler, seed and the data in a row below it; the drawing
    below that (both made here, placed later)."""
    lab = diffusion_2d
    g, steps, samples = lab.GUIDANCE, lab.STEPS, lab.SAMPLES
    label = gr.Radio([lab.ALL_CLASSES, *lab.CLASSES], value=lab.ALL_CLASSES, label="class (the prompt)",
                     elem_id="lab2d-class")
    guidance = Slider(g.minimum, g.maximum, value=g.default, step=g.step, label="guidance scale g",
                      info="0 = unconditional, 1 = conditional, more = guided", elem_id="lab2d-guidance")
    with gr.Row(render=False) as below:
        steps = Slider(steps.minimum, steps.maximum, value=steps.default, step=steps.step, label="steps",
                       elem_id="lab2d-steps")
        samples = Slider(samples.minimum, samples.maximum, value=samples.default, step=samples.step, label="samples",
                         elem_id="lab2d-samples")
        scheduler = gr.Dropdown(list(lab.SCHEDULER_NAMES), value=lab.DEFAULT_SCHEDULER, label="scheduler",
                                elem_id="lab2d-scheduler")
        seed = gr.Number(value=lab.SEED.default, precision=0, minimum=lab.SEED.minimum, maximum=lab.SEED.maximum,
                         label="seed", elem_id="lab2d-seed")
        data = gr.Radio(list(lab.DATA_CHOICES), value=lab.DATA_CHOICES[0], label="data", elem_id="lab2d-data")
    with gr.Accordion(texts.LAB2D_DRAW_TITLE, open=False, render=False, elem_id="lab2d-drawing") as drawing_box:
        gr.Markdown(texts.LAB2D_DRAW)
        drawing = gr.Sketchpad(type="numpy", image_mode="RGB", canvas_size=(300, 300), height=380, layers=False,
                               brush=gr.Brush(colors=list(lab.CLASS_COLOURS), color_mode="fixed", default_size=6),
                               label="your data", elem_id="lab2d-sketch")
    return [data, drawing, label, guidance, steps, scheduler, samples, seed], below, drawing_box


def _lab2d_tab(links: LinkControls) -> None:
    with gr.Tab("2-D lab", id="lab2d") as tab:
        gr.Markdown(texts.LAB2D_HEADLINE)
        with gr.Row():
            with gr.Column(scale=1, min_width=300):
                controls, below, drawing_box = _lab2d_controls()
                run = gr.Button("Sample", variant="primary", elem_id="lab2d-run")
                step = gr.Slider(0, 1, value=1, step=1, label="steps done", interactive=False, elem_id="lab2d-step")
                with gr.Row():
                    play = gr.Button("▶ Play", elem_id="lab2d-play")
                    pause = gr.Button("Pause", elem_id="lab2d-pause")
                message = components.message("lab2d")
            plot = gr.Plot(label="the points", show_label=False, format="png", elem_id="lab2d-plot", scale=2)
        below.render()
        drawing_box.render()
        text = gr.Markdown(elem_id="lab2d-text")
        gr.Markdown(texts.EXPLAIN_LAB2D)
        comparison = gr.Plot(label="guidance compared", show_label=False, format="png", elem_id="lab2d-comparison")
        comparison_text = gr.Markdown(elem_id="lab2d-comparison-text")
        state = gr.State(None, time_to_live=STATE_TTL_S)
        timer = gr.Timer(lab2d.PLAY_SECONDS, active=False)
    outputs = [state, step, plot, text, comparison, comparison_text, message]
    data, drawing, *settings = controls
    for key, control in zip(LAB_LINK_KEYS, settings, strict=True):  # the drawing cannot travel in a link
        links.register(key, control)
    links.on_open.append((lab2d.lab_linked, [state, *controls], outputs))
    tab.select(lab2d.lab_opened, [state, *controls], outputs, **LAB_EVENTS)
    run.click(lab2d.lab_run, controls, outputs, trigger_mode="always_last", **LAB_EVENTS)
    for control in (data, *settings):  # a run takes milliseconds: every change samples again
        trigger = control.release if isinstance(control, gr.Slider) else control.change
        trigger(lab2d.lab_run, controls, outputs, trigger_mode="always_last", **LAB_EVENTS)
    drawing.change(lab2d.drawing_changed, controls, outputs, trigger_mode="always_last", **LAB_EVENTS)
    step.release(lab2d.lab_step, [state, step], [plot, text, message], trigger_mode="always_last", **LAB_EVENTS)
    play.click(lab2d.lab_play, [state, step], [timer, step, message], **CHEAP_EVENTS)
    pause.click(lab2d.lab_pause, None, timer, **CHEAP_EVENTS)
    timer.tick(lab2d.lab_tick, [state, step], [timer, step, plot, text], trigger_mode="always_last", **LAB_EVENTS)


def _ab_tab(run_state: gr.State, links: LinkControls) -> None:
    with gr.Tab("Prompt A/B", id="ab"):
        gr.Markdown(texts.EXPLAIN_AB)
        with gr.Row():
            prompt_b = gr.Textbox(label="Prompt B", placeholder="e.g. a small blue square at the top (empty = no prompt)",
                                  scale=3, elem_id="ab-prompt")
            run = gr.Button("Run prompt B from the same noise", variant="primary", scale=1, elem_id="ab-run")
        message = components.message("ab")
        with gr.Row(equal_height=True):
            step = gr.Slider(1, 2, value=1, step=1, label="step (both runs)", interactive=False, elem_id="ab-step",
                             scale=4)
            play = gr.Button("▶ Play", size="sm", scale=0, min_width=90, elem_id="ab-play")
            pause = gr.Button("Pause", size="sm", scale=0, min_width=90, elem_id="ab-pause")
        with gr.Row():
            with gr.Column(scale=3):
                with gr.Row():
                    a_xt = picture_output("A: x_t (decode)", "ab-a-xt", height=200)
                    a_x0 = picture_output("A: x0, predicted (decode)", "ab-a-x0", height=200)
                with gr.Row():
                    b_xt = picture_output("B: x_t (decode)", "ab-b-xt", height=200)
                    b_x0 = picture_output("B: x0, predicted (decode)", "ab-b-x0", height=200)
            plot = gr.Plot(label="latent trajectories (PCA)", show_label=False, format="png", elem_id="ab-plot", scale=3)
        text = gr.Markdown(elem_id="ab-text")
        ab_state = gr.State(None, time_to_live=STATE_TTL_S)
        timer = gr.Timer(teaching.PLAY_SECONDS, active=False)
    links.register("ab_prompt", prompt_b)
    pictures = [a_xt, a_x0, b_xt, b_x0, plot]
    run.click(teaching.ab_run, [run_state, prompt_b], [ab_state, step, *pictures, text, message], **MODEL_EVENTS)
    step.release(teaching.ab_step, [ab_state, step], [*pictures, message], trigger_mode="always_last",
                 **PEEK_EVENTS)
    play.click(teaching.ab_play, [ab_state, step], [timer, step, message], **CHEAP_EVENTS)
    pause.click(teaching.ab_pause, None, timer, **CHEAP_EVENTS)
    timer.tick(teaching.ab_tick, [ab_state, step], [timer, step, *pictures], trigger_mode="always_last",
               **PEEK_EVENTS)


def _export_tab(run_state: gr.State) -> None:
    with gr.Tab("Export", id="export"):
        gr.Markdown(texts.EXPLAIN_EXPORT)
        build = gr.Button("Build the zip of my last run", variant="primary", elem_id="export-build")
        message = components.message("export")
        file = gr.File(label="the run as a zip", interactive=False, elem_id="export-file")
    build.click(teaching.export_run, [run_state], [file, message], api_visibility="private",
                concurrency_id=EXPORT_CONCURRENCY_ID, concurrency_limit=2)


def launch_kwargs() -> dict:
    """Settings for ``demo.launch``: the page's look and the security settings of a public Space
    (:func:`sdviz.app.hosting.secure_launch_settings`). Server name and port come from GRADIO_SERVER_NAME/PORT."""
    return {
        "css": texts.CSS,
        "footer_links": ["api", "gradio", "settings"],
        "state_session_capacity": hosting.capacity().max_sessions,
        # Gradio runs each event in a worker thread (40 by default): a class's streaming runs, their follow-ups and the
        # teaching tabs' events all need one at once
        "max_threads": hosting.capacity().concurrency + 4 * PEEK_CONCURRENCY + 16,
        **hosting.secure_launch_settings(),
    }
