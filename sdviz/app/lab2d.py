"""The 2-D diffusion lab's event handlers: sample points in the plane, scrub and play their steps.

The math and the figures live in :mod:`sdviz.lessons.diffusion_2d`; no model is loaded and nothing runs on a GPU
(the noise predictor is exact and closed form: a run of 1000 points takes milliseconds on a CPU). Like the teaching
tabs' handlers, a student's mistake leaves the tab as it was and says why next to the controls
(:func:`sdviz.app.teaching.keep_results`).
"""

from __future__ import annotations

import math

import gradio as gr

from sdviz.app.teaching import keep_results, warning
from sdviz.errors import SdvizError
from sdviz.lessons import diffusion_2d as lab

PLAY_SECONDS = 0.5  # one step per tick while the lab plays
PRESS_RUN = "Press **Sample** first."


def lab_data(data_choice, drawing) -> lab.Mixture:
    """The data: the three Gaussians, or the drawing (the Sketchpad's value: its composite picture)."""
    if data_choice == lab.DATA_CHOICES[0]:
        return lab.MIXTURE
    if data_choice != lab.DATA_CHOICES[1]:
        raise SdvizError(f"Pick the data: {' or '.join(lab.DATA_CHOICES)}.")
    picture = drawing.get("composite") if isinstance(drawing, dict) else drawing
    if picture is None:
        raise SdvizError(lab.NOTHING_DRAWN)
    return lab.drawn_mixture(picture)


def lab_settings(class_choice, guidance_scale, steps, scheduler, samples, seed) -> lab.LabSettings:
    """The controls' values as the lab's settings (Gradio hands numbers over as floats), checked."""
    if class_choice == lab.ALL_CLASSES:
        label = None
    elif class_choice in lab.CLASSES:
        label = lab.CLASSES.index(class_choice)
    else:
        raise SdvizError(f"Pick a class: {lab.ALL_CLASSES}, {', '.join(lab.CLASSES)}.")
    settings = lab.LabSettings(label=label, guidance_scale=_number(guidance_scale, "guidance scale"),
                               steps=_whole(steps, "number of steps"), scheduler=str(scheduler),
                               samples=_whole(samples, "number of samples"), seed=_whole(seed, "seed"))
    lab.check_lab_settings(settings)
    return settings


def _number(value, name: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise SdvizError(f"The {name} must be a number (got {value!r}).") from None
    if not math.isfinite(number):
        raise SdvizError(f"The {name} must be a number (got {value!r}).")
    return number


def _whole(value, name: str) -> int:
    number = _number(value, name)
    if not number.is_integer():
        raise SdvizError(f"The {name} must be a whole number (got {value!r}).")
    return int(number)


def step_slider(trace: lab.Lab2DTrace, value: int) -> gr.Slider:
    return gr.Slider(minimum=0, maximum=trace.steps, value=value, step=1, interactive=True,
                     label=f"steps done (0 = pure noise, {trace.steps} = the samples)")


def _frame(run: lab.Lab2DTrace, step) -> tuple:
    step = min(max(int(step), 0), run.steps)
    return lab.lab_figure(run, step), lab.describe_step(run, step)


@keep_results(6)
def lab_run(data_choice, drawing, class_choice, guidance_scale, steps, scheduler, samples, seed):
    """Sample: the chosen data and settings, and the same starting noise at the comparison's guidance scales.
    Shows the samples (the last step). The session keeps only the chosen run (the comparison is drawn once)."""
    settings = lab_settings(class_choice, guidance_scale, steps, scheduler, samples, seed)
    comparison = lab.compare_guidance(settings, mixture=lab_data(data_choice, drawing))
    trace = next(t for t in comparison if t.settings.guidance_scale == settings.guidance_scale)
    return (trace, step_slider(trace, trace.steps), *_frame(trace, trace.steps), lab.comparison_figure(comparison),
            lab.describe_comparison(comparison), "")


def lab_linked(tab, run, *controls):
    """A lesson link opened the page: if it shows the lab, sample with the link's settings (drawn once, as when the
    tab is opened by hand); otherwise nothing."""
    if tab != "lab2d":
        return tuple([gr.skip()] * 7)
    return lab_run(*controls)


def lab_opened(run, *controls):
    """The tab opened: sample with the controls' values the first time, so the lab never shows an empty plot."""
    if isinstance(run, lab.Lab2DTrace):
        return tuple([gr.skip()] * 7)
    return lab_run(*controls)


def drawing_changed(data_choice, *controls):
    """A stroke drawn: sample again when the drawing is the data (else the drawing waits, and nothing changes)."""
    if data_choice != lab.DATA_CHOICES[1]:
        return tuple([gr.skip()] * 7)
    return lab_run(data_choice, *controls)


@keep_results(2)
def lab_step(run, step):
    if not isinstance(run, lab.Lab2DTrace):
        raise SdvizError(PRESS_RUN)
    return (*_frame(run, step), "")


def lab_play(run, step):
    """Play from the step shown (from the pure noise when at the samples)."""
    if not isinstance(run, lab.Lab2DTrace):
        return gr.Timer(active=False), gr.skip(), warning(PRESS_RUN)
    start = 0 if int(step) >= run.steps else int(step)
    return gr.Timer(active=True), start, ""


def lab_pause():
    return gr.Timer(active=False)


def lab_tick(run, step):
    """One tick of the play: the next step, or stop at the samples."""
    if not isinstance(run, lab.Lab2DTrace) or int(step) >= run.steps:
        return gr.Timer(active=False), *[gr.skip()] * 3
    nxt = int(step) + 1
    return gr.skip(), nxt, *_frame(run, nxt)
