"""The playground's event handlers: text to image, image to image, Stop, scrubbing and replaying the peek-inside
panel, and choosing a model. Plain module-level functions; :mod:`sdviz.app.layout` binds each to the page's :class:`Page`.

How a run streams (:func:`live_run`): the event iterates the one denoising loop
(:func:`sdviz.pipeline.sampler.denoise_batch`, through :class:`sdviz.app.services.RunStream`: batched with the runs
of other users who pressed Generate at the same time) and yields a live update
for a step whenever that keeps the time the loop spends waiting for updates within ``LIVE_BUDGET`` of the run (on a
slow model every step is shown, on a fast one the newest step a few times a second); every step stays in the run
for scrubbing and the timeline. Live pictures are real VAE decodes when the model's decodes are cheap
(:func:`sdviz.app.services.decodes_are_cheap`: the embedded model's), else the fast preview; decodes are kept per run
(:func:`sdviz.app.services.step_decodes`); the final picture, a step picked afterwards and the animation are always
real decodes. Slow motion shows every step. After a run the timeline (a ``gr.Timer``: :func:`play_pause`,
:func:`step_forward`, :func:`step_back`) steps the whole panel.

A lone run's loop runs in its event's own thread, not a helper thread (:mod:`sdviz.pipeline.batching`): a helper
would fight the page's rendering for Python's global lock, and on a small model that slowed a lone run several
times. A batch of several users' runs has a thread of its own (no user's live updates may hold the others up).

Many users (see docs/reliability.md): the panel always shows the session's latest run
(:class:`sdviz.app.sessions.PanelRun`); Stop ends the loop after the step in progress; the events that follow a
run (:func:`settle`, the step slider) touch the panel only while their run is still the latest.
"""

from __future__ import annotations

import functools
import inspect
import io
import threading
import time
import weakref
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass

import gradio as gr
import numpy as np
from PIL import Image

from sdviz.app import hosting, memory, services, texts
from sdviz.app.components import (
    DEFAULT_SCHEDULER,
    GenerateControls,
    PeekPanel,
    figures_html,
    live_html,
    model_label,
    model_note,
    scheduler_choices,
    waiting_latents,
    waiting_noise,
)
from sdviz.app.gradio_internals import forget_session
from sdviz.app.services import student_error
from sdviz.app.sessions import DONE, FAILED, RUNNING, STOPPED, PanelRun, SessionRuns
from sdviz.errors import SdvizError
from sdviz.lessons import peek
from sdviz.pipeline.models import FairLock, Model
from sdviz.pipeline.sampler import expected_steps
from sdviz.pipeline.settings import MAX_SEED, RunSettings, check_settings
from sdviz.pipeline.text import tokenize
from sdviz.pipeline.trace import Trace
from sdviz.toy.model import is_toy_tokenizer, known_words, unknown_words

UI_MAX_SEED = 2**32 - 1  # what the dice makes (typed seeds may go up to MAX_SEED, like the CLI's)
MAX_PROMPT_CHARS = 2000  # far beyond what the text encoder reads; longer text is refused
LIVE_BUDGET = 0.05  # live updates may hold the loop up for at most this share of a run's time
SLOW_MOTION_S = 0.4  # slow motion: each step of a run stays on screen at least this long
PLAY, PAUSE = "▶ Play", "❚❚ Pause"  # the timeline button's two labels
SETTLE_WAIT_S = 30  # after Stop: how long the follow-up waits for the loop to finish its current step


@dataclass
class Page:
    """What the playground's handlers work on: the models on offer, every session's latest run, and the
    components they update."""

    demo: gr.Blocks
    models: list[str]
    runs: SessionRuns
    panel: PeekPanel
    txt: GenerateControls
    img: GenerateControls
    strength: gr.Slider
    model_state: gr.State  # the model that loaded; the generate events use this one
    model_info: gr.Markdown
    run_state: gr.State  # the session's latest finished run, for the teaching tabs
    slow_state: gr.State | None = None  # the slow-motion box's value, an input of the generate events


def bind(handler: Callable, page: Page) -> Callable:
    """``handler(page, ...)`` as an event function of the page. Gradio reads an event function's signature and
    type hints (for its ``gr.Request`` parameter) and whether it is a generator (to stream), so the bound function
    keeps the handler's name, parameters after ``page``, annotations, and generator-ness."""
    if inspect.isgeneratorfunction(handler):
        def event(*args, **kwargs):
            return (yield from handler(page, *args, **kwargs))
    else:
        def event(*args, **kwargs):
            return handler(page, *args, **kwargs)
    functools.update_wrapper(event, handler)
    event.__signature__ = inspect.Signature(list(inspect.signature(handler).parameters.values())[1:])
    return event


# --- Settings from the page (or the API) -----------------------------------------------------------------------


def run_settings(prompt, negative_prompt, steps, guidance_scale, seed, scheduler, strength=0.8) -> RunSettings:
    """The page's values as :class:`RunSettings` (width and height: the model's own, like the CLI).
    Raises :class:`SdvizError` for values that are not even the right kind (the ranges are checked by
    :func:`sdviz.pipeline.settings.check_settings`)."""
    return RunSettings(
        prompt=_text(prompt, "The prompt"),
        negative_prompt=_text(negative_prompt, "The negative prompt"),
        steps=whole(steps, "Steps"),
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
        raise SdvizError(f"{what} is {len(text)} characters long, far more than the text encoder reads: "
                         f"shorten it to at most {MAX_PROMPT_CHARS} characters.")
    return text


def whole(value, what: str) -> int:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return int(value)
    raise SdvizError(f"{what} must be a whole number (got {value!r}).")


def _seed(value) -> int:
    if value is None or value == "":
        raise SdvizError(f"The seed is empty: type a whole number from 0 to {UI_MAX_SEED}, or press Random seed.")
    seed = whole(value, "The seed")
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
    unconditional generation) and warnings: the words a too-long prompt loses, and, for a model with a toy
    tokenizer (the embedded one), the words it never learned."""
    note = ("Empty prompt: **unconditional generation** (the model draws without any text to follow). "
            if not settings.prompt.strip() else "")
    warnings = []
    for what, text in (("prompt", settings.prompt), ("negative prompt", settings.negative_prompt)):
        if not text:
            continue
        dropped = tokenize(model.tokenizer, text).dropped_words
        if is_toy_tokenizer(model.tokenizer):  # the words it reads (the dropped ones have their own warning)
            words = text.split()
            read = " ".join(words[: len(words) - len(dropped)]) if dropped else text
            warnings.extend(texts.unknown_word(what, w.word, w.pieces, known_words(model.tokenizer))
                            for w in unknown_words(model.tokenizer, read))
        if dropped:
            warnings.append(texts.too_long(what, model.tokenizer.model_max_length, dropped))
    return note, warnings


def _session(request: gr.Request | None) -> str | None:
    return getattr(request, "session_hash", None)


# --- The two generate events -------------------------------------------------------------------------------------


def txt2img(page: Page, prompt, negative_prompt, steps, guidance_scale, seed, scheduler, model_name, slow=False,
            request: gr.Request = None) -> Iterator[dict]:
    try:
        settings = run_settings(prompt, negative_prompt, steps, guidance_scale, seed, scheduler)
        check_settings(settings)
    except SdvizError as err:
        raise student_error(err) from err
    run, current = _start_run(page, request, model_name, expected_steps(settings, img2img=False))
    yield from live_run(page.panel, page.txt.final, page.run_state, model_name, settings, run=run, current=current,
                        slow=bool(slow))


def img2img(page: Page, image, prompt, negative_prompt, strength, steps, guidance_scale, seed, scheduler, model_name,
            slow=False, request: gr.Request = None) -> Iterator[dict]:
    if image is None:
        raise student_error("Image to image needs a starting picture: upload one or pick an example.")
    try:
        settings = run_settings(prompt, negative_prompt, steps, guidance_scale, seed, scheduler, strength)
        check_settings(settings, img2img=True)
    except SdvizError as err:
        raise student_error(err) from err
    run, current = _start_run(page, request, model_name, expected_steps(settings, img2img=True))
    yield from live_run(page.panel, page.img.final, page.run_state, model_name, settings, init_image=image, run=run,
                        current=current, slow=bool(slow))


def replace_run(page: Page, request: gr.Request = None) -> tuple:
    """Generate was pressed (in either tab): the session's run still going is asked to stop now, before the new
    run's event joins the queue. It ends after the step it is on and frees its slot, so the new run starts at once
    (the page runs this before the generate event; see :func:`sdviz.app.layout._wire_playground`). A timeline
    playing stops. Outputs: the timer and the play button."""
    _stop(page.runs.latest(_session(request)))
    return _paused()


def _stop(run: PanelRun | None) -> None:
    if run is not None and not run.ended.is_set():
        run.stop_requested.set()


def _start_run(page: Page, request: gr.Request | None, model_name: str,
               expected: int) -> tuple[PanelRun, Callable[[], bool]]:
    """The session's new run, replacing its previous one (asked to stop if it is still going, whichever tab or API
    call started it), and a check that it is still the session's latest."""
    session = _session(request)
    _stop(page.runs.latest(session))
    run = page.runs.start(session, model_name, expected)
    if session is None:  # called outside a server: no session, nothing can replace it
        return run, lambda: True
    return run, lambda: page.runs.is_latest(session, run)


def live_run(panel: PeekPanel, final: gr.Image, run_state: gr.State, model_name: str, settings: RunSettings,
             init_image=None, run: PanelRun | None = None, current: Callable[[], bool] = lambda: True,
             slow: bool = False) -> Iterator[dict]:
    """The generate event: run the loop, showing its steps in the panel as they are computed, then the
    final picture and the trace (into ``run_state``, the session's latest finished run).

    ``run`` is the session's :class:`PanelRun` (made here when not given): the loop appends every step to it,
    so follow-up events and the step slider see the same run as the pictures, also after a Stop.

    Each live update makes the loop wait while the page's pictures are made and sent (Gradio asks for
    the next step only after that). So a step is shown when the waiting so far stays within
    ``LIVE_BUDGET`` of the run's time; ``slow`` (slow motion) shows every step instead, each at least
    ``SLOW_MOTION_S`` long. The loop ends at the step it is on when this generator is closed
    (Gradio's cancel, or the tab closing) or when ``run.stop_requested`` is set (the Stop button, or a newer run):
    then the last update shows the stopped run, unless ``current()`` says a newer run of the session replaced it
    (then the newer run owns the panel, and this one's end is not shown).
    """
    img2img = init_image is not None
    try:
        check_settings(settings, img2img=img2img)
    except SdvizError as err:
        raise student_error(err) from err
    model = services.load_for_app(model_name)
    note, warnings = prompt_notes(model, settings)
    for warning in warnings:
        gr.Warning(warning)
    expected = expected_steps(settings, img2img)
    run = run if run is not None else PanelRun(model=model.name, expected_steps=expected)
    # Joins the other users' runs at once (batched where it can be), while the page shows that it is starting.
    steps = services.RunStream(model_name, settings, init_image)
    try:
        yield {  # nothing of the previous run stays on screen (and every output has a value: see _stream_steps)
            final: None, panel.animation: None, **_no_plot(panel),
            panel.live: live_html({}, services.decodes_are_cheap(model), waiting=texts.STARTING),
            panel.latents: waiting_latents(texts.STARTING), panel.noise: waiting_noise(texts.STARTING),
            panel.numbers: "",
            panel.status: f"{note}Starting: {expected} steps on **{model_label(model.name)}**…",
            panel.step: gr.Slider(minimum=1, maximum=max(expected, 2), value=1, interactive=False),
        }
        plot_drawn = yield from _stream_steps(panel, final, model, run, steps, expected, note, slow)
    except GeneratorExit:
        raise  # closed by Gradio (Stop, or the tab closed): the finally below records it
    except Exception as err:
        run.end(FAILED, err.message if isinstance(err, gr.Error) else "an unexpected error")
        raise
    finally:
        steps.close()  # ends the loop here (it may be mid-run)
        run.end(STOPPED)  # unless it already ended as DONE or FAILED
        memory.trim_freed_memory()  # the run's freed blocks back to the system (at most every few seconds)
    if run.outcome == STOPPED:
        if current():
            yield _stopped_view(panel, model, run)
        return
    trace = run.trace
    if not current():  # finished just as a newer run replaced it: only its own tab's picture
        yield {final: trace.image}
        return
    n = len(trace.steps)
    # Only the picture and the status: the last step's panel (its decodes, the final plot) and the animation come
    # from the page's follow-up (settle), so the final picture is not held up by them. What stays empty says so.
    done = {
        final: trace.image,
        panel.step: gr.Slider(maximum=max(n, 2), value=n, interactive=True),
        panel.status: (f"{note}Done: {n} steps in {trace.seconds:.2f} s ({trace.scheduler}, "
                       f"CFG {'on' if trace.guidance else 'off'}). Press ▶ Play or move the step slider."),
        run_state: trace,
        panel.animation: None,
    }
    if not plot_drawn:
        done |= _no_plot(panel)
    yield done


# Live frames are drawn one at a time, the earliest run's first. Thirty users' first frames drawn at once, each in its
# own thread, fight for Python's global lock: measured on 2 cores, 30 frames took 0.27-0.31 s drawn together (the
# median user's at 0.26 s) and 0.15 s drawn one after another (the median user's at 0.08 s). In the order the users
# pressed Generate, those who waited longest are served first. A lone user never waits for it.
_drawing = FairLock()


def _no_plot(panel: PeekPanel) -> dict:
    """The plot's place while a run has none: empty, under the plot's generic explanation."""
    return {panel.plot: None, panel.plot_text: texts.explain_plot()}


def _stream_steps(panel: PeekPanel, final: gr.Image, model: Model, run: PanelRun, steps: services.RunStream,
                  expected: int, note: str, slow: bool = False) -> Generator[dict, None, bool]:
    """Collect the loop's steps into ``run`` and yield a live update when the budget allows (see :func:`live_run`);
    return whether a plot was drawn.

    In a batch of n users the budget is each user's n-th share (their updates are drawn on the same cores as the
    loop), and a step is not drawn at all when a newer one is already computed: the browser would never show it.

    A live update gives a value to every output it can, also to those that stay as they are (the final picture and
    the animation stay empty; the plot, until one is drawn): Gradio rebuilds the component and its config for every
    output left out, on its one event loop, at each update. Measured on 2 cores: a live update with four outputs
    left out and the slider sent as a new component cost Gradio 5.3 ms, with plain values only 1.7 ms."""
    started = time.perf_counter()
    waited = 0.0  # seconds the loop has spent waiting for live updates
    plot_cost = 0.2  # what the next live plot may cost (drawn here, encoded by Gradio); measured as we go
    plot_drawn = False  # the plot cleared at the start stays empty until the first one drawn
    slider_max = max(expected, 2)  # as set by the start's update
    how = "real VAE decodes" if services.decodes_are_cheap(model) else "fast previews (not the decoder)"
    for item in steps:
        if isinstance(item, Trace):
            run.finish(item)
            return plot_drawn
        run.steps.append(item)
        for key, picture in steps.decoded(item.index):  # a class's first step, decoded for all in one call
            run.decodes.put(key, picture)
        if run.stop_requested.is_set():
            return plot_drawn  # Stop: the loop ends at this step
        update_started = time.perf_counter()
        budget = LIVE_BUDGET / max(1, steps.batch_size) * (update_started - started)
        if not slow and ((item.index > 0 and waited > budget) or steps.behind()):
            continue  # keep the loop going; the run keeps this step for scrubbing
        if replaying(run):
            continue  # the timeline replays the steps so far: the live frames wait (the run goes on)
        total = max(expected, len(run.steps))
        draw_plot = slow or waited + plot_cost <= budget
        plot_started = time.perf_counter()
        with _drawing.turn(started):
            values = frame_values(panel, model, run, item.index, total, live=True, plot=draw_plot)
        if draw_plot:
            plot_cost = 2 * (time.perf_counter() - plot_started)
            plot_drawn = True
        elif not plot_drawn:
            values |= _no_plot(panel)
        values[final], values[panel.animation] = None, None
        if max(total, 2) == slider_max:
            values[panel.step] = item.index + 1
        else:  # more steps than expected (the scheduler's own count)
            slider_max = max(total, 2)
            values[panel.step] = gr.Slider(maximum=slider_max, value=item.index + 1)
        values[panel.status] = (f"{note}Step **{item.index + 1} / {total}** (t = {item.timestep:.0f}), "
                                f"{update_started - started:.1f} s{', slow motion' if slow else ''}: {how}.")
        yield values
        if slow:
            time.sleep(max(0.0, SLOW_MOTION_S - (time.perf_counter() - update_started)))
        waited += time.perf_counter() - update_started


MAP_PIXELS = 64  # latent and noise grids are sent this small (a few hundred bytes) and enlarged by the page with
# sharp pixels (CSS image-rendering: pixelated), so they stay crisp at any size on a projector


def frame_values(panel: PeekPanel, model: Model, run: PanelRun, index: int, total: int, *, live: bool = False,
                 plot: bool = True) -> dict:
    """Everything the panel shows for step ``index`` of ``run``: the live view (x_t and x0 decoded, the guided
    noise), the latents and noise estimates, the numbers, and (``plot``) the schedule plot marked at this step.
    Real VAE decodes, except for ``live`` frames of a model whose decodes are not cheap (then the fast preview)."""
    record = run.steps[index]
    real = not live or services.decodes_are_cheap(model)
    if real:
        x_t, x0 = services.step_decodes(model, run, index)
    else:
        rgb_map = services.preview_map(model)
        x_t, x0 = peek.rgb_preview(rgb_map, record.latents, MAP_PIXELS), peek.rgb_preview(rgb_map, record.pred_x0,
                                                                                        MAP_PIXELS)
    scales = peek.noise_scales(record)
    pictures = peek.noise_pictures(record, MAP_PIXELS)
    latents_scale = peek.signed_scale(record.latents)
    values = {
        panel.live: live_html({"x_t": x_t, "x0": x0, "guided": pictures["guided"]}, real, at_start=index == 0),
        panel.latents: figures_html([(texts.LATENTS_CAPTION, peek.channel_grid(record.latents, latents_scale, MAP_PIXELS))],
                                    scales=[latents_scale]),
        panel.noise: figures_html([(peek.NOISE_TITLES[k], pictures[k]) for k in peek.NOISE_KINDS],
                                  scales=[scales[k] for k in peek.NOISE_KINDS]),
        panel.numbers: peek.numbers_markdown(peek.step_numbers(record, total)),
    }
    if plot:
        values[panel.plot] = _schedule(run, total).at(index)
        values[panel.plot_text] = texts.explain_plot(run.steps)
    return values


_schedules: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # PanelRun -> its finished run's plot
_schedules_lock = threading.Lock()


def _schedule(run: PanelRun, total: int) -> peek.SchedulePicture:
    """The run's schedule plot: drawn once for a run that ended (the timeline only moves its marker), afresh while
    it runs (it grows)."""
    if not run.ended.is_set():
        return peek.schedule_picture(list(run.steps), total)
    with _schedules_lock:
        cached = _schedules.get(run)
    if cached is None or len(cached.x) != total:
        cached = peek.schedule_picture(run.steps, total)
        with _schedules_lock:
            _schedules[run] = cached
    return cached


def _stopped_view(panel: PeekPanel, model: Model, run: PanelRun) -> dict:
    """The panel after Stop: the step the run stopped at, and a slider over the steps it computed."""
    n = len(run.steps)
    if n == 0:
        return {panel.status: "Stopped before the first step.",
                panel.step: gr.Slider(maximum=2, value=1, interactive=False)}
    values = frame_values(panel, model, run, n - 1, n)
    values[panel.status] = (f"Stopped at step **{n} / {run.expected_steps}** (no final picture). Move the slider "
                            f"to look at the {n} step{'s' if n > 1 else ''} computed.")
    values[panel.step] = gr.Slider(maximum=max(n, 2), value=n, interactive=n > 1)
    return values


# --- What follows a run: Stop, the end state, scrubbing ----------------------------------------------------------


def request_stop(page: Page, request: gr.Request = None) -> None:
    """The Stop button: the loop ends after the step it is on (Gradio's cancel also closes the event)."""
    run = page.runs.latest(_session(request))
    if run is not None:
        run.stop_requested.set()


def unchanged() -> dict:
    """What a follow-up handler returns to leave all its outputs as they are. Not ``{}``: Gradio reads an empty dict
    as *one* output value, and an event with several outputs then fails ("didn't return enough output values")."""
    return gr.skip()


def settle(page: Page, request: gr.Request = None) -> dict:
    """After a generate event ended (finished, stopped or failed): bring the panel to the run's end state.
    Finished: the last step's real decodes, maps and numbers, the final plot (the animation follows:
    :func:`settle_animation`). Stopped: the step it
    stopped at and a slider over the steps computed (the event's own last update may have been cut off by the
    cancel, or arrive after a Stop message). Changes nothing when a newer run is already going."""
    session = _session(request)
    run = page.runs.latest(session)
    if run is None:
        return unchanged()
    if run.outcome == RUNNING and run.stop_requested.is_set():
        run.ended.wait(SETTLE_WAIT_S)  # the step in progress finishes first
    if not run.ended.is_set():
        return unchanged()  # a new run is going: it updates the panel itself
    panel = page.panel
    if run.outcome == FAILED:
        return {panel.status: f"The run failed: {run.error}"} if page.runs.is_latest(session, run) else unchanged()
    if not run.steps:
        return {panel.status: "Stopped before the first step."}
    model = services.load_for_app(run.model)
    if run.outcome == DONE:
        n = len(run.steps)
        values = frame_values(panel, model, run, n - 1, n)
    else:
        values = _stopped_view(panel, model, run)
    return values if page.runs.is_latest(session, run) else unchanged()


def settle_animation(page: Page, request: gr.Request = None):
    """After :func:`settle`: the finished run's animation (it takes longer than the rest: every step decoded)."""
    session = _session(request)
    run = page.runs.latest(session)
    if run is None or run.outcome != DONE:
        return gr.skip()
    gif = Image.open(io.BytesIO(animation(services.load_for_app(run.model), run)))
    return gif if page.runs.is_latest(session, run) else gr.skip()


ANIMATION_MAX_DECODED_STEPS = 12  # a model whose decodes are not cheap: the animation shows this many steps


def animation(model: Model, run: PanelRun) -> bytes:
    """The finished run as a GIF of real VAE decodes (x_t and predicted x0): every step when decodes are cheap,
    else about ``ANIMATION_MAX_DECODED_STEPS`` steps evenly spread; then the final picture."""
    n = len(run.steps)
    if services.decodes_are_cheap(model) or n <= ANIMATION_MAX_DECODED_STEPS:
        indices = list(range(n))
    else:
        indices = sorted({round(i * (n - 1) / (ANIMATION_MAX_DECODED_STEPS - 1))
                          for i in range(ANIMATION_MAX_DECODED_STEPS)})
    frames = [(f"step {i + 1} / {n}", *services.step_decodes(model, run, i)) for i in indices]
    return peek.decode_animation(frames, run.trace.image)


def show_step(page: Page, step, request: gr.Request = None) -> dict:
    """Scrubbing: everything the panel shows for the chosen step of the session's latest run."""
    session = _session(request)
    run = page.runs.latest(session)
    if run is not None and not run.ended.is_set():
        return unchanged()  # a run is going: the slider follows it
    if run is None or not run.steps:
        raise student_error("There is no run to look at in this session yet (or it expired): press Generate.")
    n = len(run.steps)
    index = min(max(whole(step, "Step") - 1, 0), n - 1)
    values = _step_view(page, run, index)
    return values if page.runs.is_latest(session, run) else unchanged()


def _step_view(page: Page, run: PanelRun, index: int) -> dict:
    model = services.load_for_app(run.model)
    n = len(run.steps)
    if not run.ended.is_set():  # replaying a run that goes on: no plot (it would be redrawn at every tick)
        values = frame_values(page.panel, model, run, index, max(n, run.expected_steps), plot=False)
        values[page.panel.status] = (f"Showing step **{index + 1} / {n}** of the run going ({n} of "
                                     f"{run.expected_steps} steps so far; press ❚❚ Pause to follow it live).")
    else:
        values = frame_values(page.panel, model, run, index, n)
        what = "the last run" if run.outcome == DONE else "the stopped run"
        values[page.panel.status] = f"Showing step **{index + 1} / {n}** of {what}."
    values[page.panel.step] = index + 1  # a plain value: cheaper for Gradio than a new Slider (see _stream_steps)
    return values


# --- The timeline: play, pause, a step back or forward ------------------------------------------------------


def _paused() -> tuple:
    return gr.Timer(active=False), gr.Button(PLAY)


_replaying: weakref.WeakSet = weakref.WeakSet()  # runs still going that the timeline replays (what has arrived)
_replaying_lock = threading.Lock()


def replaying(run: PanelRun) -> bool:
    with _replaying_lock:
        return run in _replaying


def play_pause(page: Page, label, speed, step, request: gr.Request = None) -> tuple:
    """The play/pause button (outputs: the timer and the button). Nothing to play (no run, or one step): it stays
    paused. During a run it replays the steps that have arrived (the live frames pause meanwhile; the run goes on)."""
    run = page.runs.latest(_session(request))
    playing = label == PLAY and run is not None and len(run.steps) >= (1 if not run.ended.is_set() else 2)
    if run is not None and not run.ended.is_set():
        with _replaying_lock:
            (_replaying.add if playing else _replaying.discard)(run)
    if not playing:
        return _paused()
    return gr.Timer(value=pace_s(speed), active=True), gr.Button(PAUSE)


def pace_s(speed) -> float:
    """Seconds between two steps when playing at ``speed`` steps a second (1 to 10)."""
    return 1 / min(max(float(speed or 1), 1.0), 10.0)


def pace(speed) -> gr.Timer:
    return gr.Timer(value=pace_s(speed))


def advance(page: Page, step, loop, delta: int = 1, request: gr.Request = None) -> dict:
    """One tick of the timeline (or the step buttons): the panel moves ``delta`` steps. At the end it goes round
    when ``loop`` is on, else it stays there and the timeline pauses."""
    session = _session(request)
    run = page.runs.latest(session)
    if run is None or not run.steps or (not run.ended.is_set() and not replaying(run)):
        return unchanged()
    n = len(run.steps)  # while the run goes on: the steps that have arrived
    current = min(max(whole(step, "Step") - 1, 0), n - 1)
    index = current + delta
    values: dict = {}
    if index >= n or index < 0:
        if loop:
            index %= n
        else:
            index = min(max(index, 0), n - 1)
            values[page.panel.timer], values[page.panel.play] = _paused()
    values.update(_step_view(page, run, index))
    return values if page.runs.is_latest(session, run) else unchanged()


def step_forward(page: Page, step, loop, request: gr.Request = None) -> dict:
    return advance(page, step, loop, 1, request=request)


def step_back(page: Page, step, loop, request: gr.Request = None) -> dict:
    return advance(page, step, loop, -1, request=request)


# --- The model, and the session's end -----------------------------------------------------------------------


def choose_model(page: Page, name, current) -> dict:
    """The dropdown changed: load the model and use its recommended settings. A model that fails
    keeps the previous one in use (and the dropdown goes back to it)."""
    if name == current:  # e.g. the dropdown going back after a failure
        return {page.model_state: current}
    try:
        hosting.check_allowed(name, page.models)  # Gradio checks the choices too; never load anything else
    except SdvizError as err:
        raise student_error(err) from err
    model = services.load_for_app(name)
    rec = model.recommended
    updates = {page.model_state: name, page.model_info: model_note(model), page.strength: gr.Slider(value=rec.strength),
               page.panel.latents_text: texts.explain_latents(model),
               page.panel.live_text: texts.explain_live(services.decodes_are_cheap(model))}
    for controls in (page.txt, page.img):
        updates[controls.steps] = gr.Slider(value=rec.steps_for(img2img=controls is page.img))
        updates[controls.guidance_scale] = gr.Slider(value=rec.guidance_scale)
        updates[controls.scheduler] = gr.Dropdown(choices=scheduler_choices(model), value=DEFAULT_SCHEDULER)
    return updates


def end_session(page: Page, request: gr.Request = None) -> None:
    """The tab closed: free its run and its stored values now, not an hour later."""
    session = _session(request)
    if session is not None:
        forget_session(page.demo, session)
    page.runs.end_session(session)
    page.runs.forget_expired()
