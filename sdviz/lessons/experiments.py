"""Classifier-free guidance experiments, and two prompts from the same starting noise.

At every step the U-Net estimates the noise twice, once without the prompt (unconditional) and once with
it; classifier-free guidance (CFG) combines them as

    noise = uncond + g * (text - uncond)

so g = 1 is the prompt's own estimate, and g > 1 pushes further along the direction the prompt adds.
Three experiments make that concrete:

(a) a sweep: the same seed at a row of guidance scales, with a measure of what changed;
(b) a what-if: take one recorded step, recombine its stored estimates at another g, and see the clean
    picture (x0) that step would have aimed at, with no new U-Net call;
(c) prompt A/B: two prompts from the very same starting noise, and their paths through latent space.

Every run goes through :func:`sdviz.pipeline.sampler.generate`; nothing here has a denoising loop of its own.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass

import numpy as np
import torch
from matplotlib.figure import Figure
from PIL import Image

from sdviz.errors import SdvizError
from sdviz.pipeline import vae
from sdviz.pipeline.models import EMBEDDED
from sdviz.pipeline.sampler import generate
from sdviz.pipeline.schedulers import SCHEDULERS, make_scheduler, x0_from_noise
from sdviz.pipeline.settings import RunSettings
from sdviz.pipeline.trace import Trace
from sdviz.toy import world
from sdviz.toy.judge import judge

MAX_SWEEP = 10  # guidance scales per sweep: each one is a whole run
MAX_SCALE = 50.0
UNGUIDED = 1.0  # g = 1: the prompt's own estimate, no push (the sampler then skips the unconditional pass)


# (a) The sweep ---------------------------------------------------------------------------------------------


def parse_scales(text: str) -> list[float]:
    """'1, 3, 7.5' -> [1.0, 3.0, 7.5], checked."""
    parts = [p for p in re.split(r"[,\s;]+", str(text).strip()) if p]
    try:
        scales = [float(p) for p in parts]
    except ValueError as err:
        raise SdvizError(f"Guidance scales must be numbers separated by commas, like 1, 3, 7.5 (got {text!r}).") from err
    if not scales:
        raise SdvizError("Give at least one guidance scale, like 1, 3, 7.5.")
    if len(scales) > MAX_SWEEP:
        raise SdvizError(f"At most {MAX_SWEEP} guidance scales per sweep (each one is a whole run); got {len(scales)}.")
    bad = [s for s in scales if not math.isfinite(s) or not 0 <= s <= MAX_SCALE]
    if bad:
        raise SdvizError(f"Guidance scales must be from 0 to {MAX_SCALE:g} (got {bad}).")
    return scales


def prompt_attributes(prompt: str) -> dict[str, str]:
    """The toy-world attributes a prompt names, e.g. 'a big red circle on the left' ->
    {'size': 'big', 'colour': 'red', 'shape': 'circle', 'position': 'left'}."""
    words = re.findall(r"[a-z]+", prompt.lower())
    found: dict[str, str] = {}
    for kind, names in (("size", world.SIZES), ("colour", world.COLOURS), ("shape", world.SHAPES),
                        ("position", world.POSITIONS)):
        named = [w for w in words if w in names]
        if named:
            found[kind] = named[0]
    return found


def judge_accuracy(image: Image.Image, prompt: str) -> float | None:
    """The share of the prompt's toy-world attributes the pixel judge sees in the picture (None: can't tell)."""
    wanted = prompt_attributes(prompt)
    if not wanted:
        return None
    agreement = judge(image).agrees(**wanted)
    return sum(agreement.values()) / len(agreement)


def pixel_distance(a: Image.Image, b: Image.Image) -> float:
    """Root-mean-square difference of two pictures, pixels scaled to 0-1."""
    x = np.asarray(a.convert("RGB"), dtype=np.float64) / 255
    y = np.asarray(b.convert("RGB"), dtype=np.float64) / 255
    return float(np.sqrt(np.mean((x - y) ** 2)))


def quoted(prompt: str, most: int = 70) -> str:
    """A prompt for a figure's title: in quotes, cut to ``most`` characters ('(empty prompt)' when empty)."""
    if not prompt:
        return "(empty prompt)"
    return f"\"{prompt if len(prompt) <= most else prompt[: most - 1] + '…'}\""


def colour_error(image: Image.Image, prompt: str) -> float | None:
    """How far the shape's colour is from the toy colour the prompt names (RGB distance; None: no colour named, or
    no clear shape). Guidance that overshoots saturates colours: this distance grows."""
    wanted = prompt_attributes(prompt).get("colour")
    verdict = judge(image)
    if wanted is None or not verdict.clear or verdict.rgb is None:
        return None
    return float(np.linalg.norm(np.subtract(verdict.rgb, world.COLOURS[wanted])))


def judge_verdict(image: Image.Image, prompt: str) -> str | None:
    """The judge's verdict in a few words: "all 4 right", or what it got wrong ("shape: circle"); None: can't tell."""
    wanted = prompt_attributes(prompt)
    if not wanted:
        return None
    verdict = judge(image)
    if not verdict.clear:
        return f"unclear: {verdict.problems[0].split(' (')[0]}"
    wrong = [f"{k}: {getattr(verdict, k)}" for k, ok in verdict.agrees(**wanted).items() if not ok]
    return "; ".join(wrong) if wrong else f"all {len(wanted)} right"


@dataclass
class SweepPoint:
    guidance_scale: float
    image: Image.Image
    distance: float  # RMS pixel difference from the unguided (g = 1) picture
    accuracy: float | None  # share of the prompt's attributes the pixel judge finds (None: not measured)
    verdict: str | None = None  # the judge's verdict in words (None: not measured)
    colour_error: float | None = None  # RGB distance of the shape's colour from the one named (None: not measured)


@dataclass
class Sweep:
    settings: RunSettings  # the base settings; only the guidance scale changes
    unguided: Image.Image  # the picture at g = 1, what the distances are measured from
    points: list[SweepPoint]
    # More seeds at the same scales, for the averaged curves: seed -> its points (same scales, same order)
    more_seeds: dict[int, list[SweepPoint]] = dataclasses.field(default_factory=dict)

    @property
    def judged(self) -> bool:
        return any(p.accuracy is not None for p in self.points)

    @property
    def flat(self) -> bool:
        """The judge gives this seed the same accuracy at every scale: its curve shows no trade-off."""
        values = {p.accuracy for p in self.points}
        return self.judged and len(self.points) > 1 and len(values) == 1

    @property
    def seeds(self) -> list[int]:
        return [self.settings.seed, *self.more_seeds]

    def mean_accuracy(self) -> list[float | None]:
        """Per point: the judge's accuracy averaged over every seed swept (None: not measured)."""
        return self._mean("accuracy")

    def mean_colour_error(self) -> list[float | None]:
        """Per point: the colour error averaged over every seed swept (None: not measured)."""
        return self._mean("colour_error")

    def _mean(self, name: str) -> list[float | None]:
        rows = [[getattr(p, name) for p in points] for points in (self.points, *self.more_seeds.values())]
        means = []
        for values in zip(*rows, strict=True):
            known = [v for v in values if v is not None]
            means.append(float(np.mean(known)) if known else None)
        return means


def with_more_seeds(sweep: Sweep, others: list[Sweep]) -> Sweep:
    """The sweep, with the accuracies of the same scales at other seeds (for the averaged curve)."""
    more = dict(sweep.more_seeds)
    for other in others:
        if [p.guidance_scale for p in other.points] != [p.guidance_scale for p in sweep.points]:
            raise SdvizError("The sweeps to average must use the same guidance scales.")
        more[other.settings.seed] = other.points
    return dataclasses.replace(sweep, more_seeds=more)


def guidance_sweep(model, settings: RunSettings, scales: list[float], init_image=None,
                   use_judge: bool | None = None) -> Sweep:
    """Run the same settings (same seed: same starting noise) at each guidance scale.

    ``use_judge``: None = the pixel judge for the embedded model (trained on the toy world) only.
    """
    if use_judge is None:
        use_judge = model.name == EMBEDDED
    runs = sorted(set(scales) | {UNGUIDED})
    images: dict[float, Image.Image] = {}
    for g in runs:
        effective = g if g > 1 else UNGUIDED  # g <= 1: the sampler runs the prompt alone; the same picture
        if effective not in images:
            images[effective] = generate(model, dataclasses.replace(settings, guidance_scale=effective), init_image).image
        images[g] = images[effective]
    unguided = images[UNGUIDED]
    points = [
        SweepPoint(guidance_scale=g, image=images[g], distance=pixel_distance(images[g], unguided),
                   accuracy=judge_accuracy(images[g], settings.prompt) if use_judge else None,
                   verdict=judge_verdict(images[g], settings.prompt) if use_judge else None,
                   colour_error=colour_error(images[g], settings.prompt) if use_judge else None)
        for g in scales
    ]
    return Sweep(settings=settings, unguided=unguided, points=points)


def sweep_pictures_figure(sweep: Sweep) -> Figure:
    """Every picture of the sweep in one row, each titled with its scale and, below it, the judge's verdict."""
    n = len(sweep.points)
    fig = Figure(figsize=(max(1.9 * n, 4.0), 2.9), dpi=100, layout="constrained")
    axes = fig.subplots(1, n, squeeze=False)[0]
    for ax, p in zip(axes, sweep.points, strict=True):
        ax.imshow(np.asarray(p.image.convert("RGB")), interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"g = {p.guidance_scale:g}" + (" (no CFG)" if p.guidance_scale <= UNGUIDED else ""), fontsize=13)
        if p.verdict is not None:
            right = p.accuracy == 1
            ax.set_xlabel(f"judge: {p.accuracy:.0%}\n{p.verdict}", fontsize=10,
                          color="#1a7f37" if right else "#b42318")
    fig.suptitle(f"same seed ({sweep.settings.seed}), same starting noise, only g changes: \"{sweep.settings.prompt}\"",
                 fontsize=11)
    return fig


def sweep_figure(sweep: Sweep) -> Figure:
    """The measures against the guidance scale. Any model: how far each picture moved from g = 1. The embedded model
    (the judge knows its world): the trade-off instead, what guidance buys (the prompt's accuracy) beside what it
    costs (the colour overshooting the named toy colour), each averaged over every seed swept."""
    scales = [p.guidance_scale for p in sweep.points]
    if not sweep.judged:
        fig = Figure(figsize=(6.5, 3.6), dpi=100, layout="constrained")
        ax = fig.subplots()
        ax.plot(scales, [p.distance for p in sweep.points], "o-", color="tab:blue")
        ax.set_xlabel("guidance scale g", fontsize=11)
        ax.set_ylabel("RMS pixel difference from g = 1", fontsize=11)
        ax.set_title(f"\"{sweep.settings.prompt}\", seed {sweep.settings.seed}", fontsize=10)
        ax.grid(alpha=0.3)
        return fig
    fig = Figure(figsize=(9.5, 3.8), dpi=100, layout="constrained")
    buys, costs = fig.subplots(1, 2)
    for ax, name, mean, label, colour in (
        (buys, "accuracy", sweep.mean_accuracy(), "prompt accuracy (pixel judge)", "tab:green"),
        (costs, "colour_error", sweep.mean_colour_error(), "colour error (RGB distance)", "tab:red"),
    ):
        own = [np.nan if getattr(p, name) is None else getattr(p, name) for p in sweep.points]
        if sweep.more_seeds:
            ax.plot(scales, [np.nan if m is None else m for m in mean], "s-", color=colour, linewidth=2,
                    label=f"mean of {len(sweep.seeds)} seeds")
            ax.plot(scales, own, "x:", color=colour, alpha=0.6, label=f"seed {sweep.settings.seed}")
        else:
            ax.plot(scales, own, "s-", color=colour, label=f"seed {sweep.settings.seed}")
        ax.set_xlabel("guidance scale g", fontsize=11)
        ax.set_ylabel(label, fontsize=11)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=9)
    buys.set_ylim(-0.05, 1.05)
    buys.set_title("what guidance buys: the prompt followed", fontsize=11)
    costs.set_ylim(bottom=0)
    costs.set_title("what it costs: the colour strays from the toy colour", fontsize=11)
    fig.suptitle(f"\"{sweep.settings.prompt}\"" + (f", averaged over seeds {', '.join(map(str, sweep.seeds))}"
                                                 if sweep.more_seeds else f", seed {sweep.settings.seed}"),
                 fontsize=11)
    return fig


def describe_sweep(sweep: Sweep) -> str:
    means = sweep.mean_accuracy()
    header = "| g | difference from g = 1 | judge (this seed) |"
    rule = "|---|---|---|"
    if sweep.more_seeds:
        header += f" mean of {len(sweep.seeds)} seeds |"
        rule += "---|"
    lines = [header, rule]
    for p, mean in zip(sweep.points, means, strict=True):
        acc = "-" if p.accuracy is None else f"{p.accuracy:.0%} ({p.verdict})"
        row = f"| {p.guidance_scale:g} | {p.distance:.3f} | {acc} |"
        if sweep.more_seeds:
            row += " - |" if mean is None else f" {mean:.0%} |"
        lines.append(row)
    text = ("Every picture starts from the same noise (same seed); only g changes. At g <= 1 there is no guidance "
            "(the prompt's estimate alone); larger g pushes harder towards the prompt.")
    far = max(sweep.points, key=lambda p: p.distance)
    text += f" The picture moves furthest from g = 1 at g = {far.guidance_scale:g} (RMS {far.distance:.3f})."
    if sweep.judged:
        if sweep.more_seeds:
            if sweep.flat:
                text += (f" For seed {sweep.settings.seed} the judge gives {sweep.points[0].accuracy:.0%} at every g, "
                         "a flat line that shows no trade-off, so the curve also averages")
            else:
                text += " The curve also averages"
            text += f" seeds {', '.join(map(str, sweep.seeds[1:]))} ({len(sweep.seeds)} pictures per g)."
        errors = [(e, p.guidance_scale) for e, p in zip(sweep.mean_colour_error(), sweep.points, strict=True)
                  if e is not None]
        if len(errors) > 1:
            best, g_best = min(errors)
            first, g_first = errors[0]
            last, g_last = errors[-1]
            mean = ", mean of the seeds" if sweep.more_seeds else ""
            text += f" The shape's colour comes closest to the toy colour at g = {g_best:g} ({best:.0f}, RGB distance{mean})"
            if first > best:
                text += f"; at g = {g_first:g} it strays {first:.0f}, too little guidance to get the colour right"
            if last > best:
                text += f"; at g = {g_last:g} it strays {last:.0f}: too much guidance over-saturates it"
            text += "."
        known = [(m, p.guidance_scale) for m, p in zip(means, sweep.points, strict=True) if m is not None]
        if known:
            best = max(m for m, _ in known)
            best_scales = [g for m, g in known if m == best]
            text += (f" The judge's {'mean ' if sweep.more_seeds else ''}accuracy is highest, {best:.0%}, at "
                     f"g = {', '.join(f'{g:g}' for g in best_scales)}.")
    return text + "\n\n" + "\n".join(lines)


# (b) The what-if -----------------------------------------------------------------------------------------


def trace_scheduler(model, trace: Trace):
    """A fresh scheduler of the kind the run used (for its noise-level formulas only)."""
    return make_scheduler(model, trace.scheduler if trace.scheduler in SCHEDULERS else None)


def what_if_x0(model, trace: Trace, step: int, guidance_scale: float) -> torch.Tensor:
    """The clean latents that step ``step`` would have aimed at with another guidance scale, [C, h, w].

    Uses only what the trace stored (the step's unconditional and text estimates): no U-Net call.
    """
    if not trace.guidance:
        raise SdvizError("This run had no classifier-free guidance (g <= 1), so it stored no unconditional "
                         "estimate to recombine: generate with a guidance scale above 1 first.")
    if not 0 <= step < len(trace.steps):
        raise SdvizError(f"Step {step + 1} does not exist: this run has steps 1 to {len(trace.steps)}.")
    if not math.isfinite(guidance_scale) or not 0 <= guidance_scale <= MAX_SCALE:
        raise SdvizError(f"The guidance scale must be from 0 to {MAX_SCALE:g} (got {guidance_scale}).")
    record = trace.steps[step]
    uncond, text = record.noise_uncond.float(), record.noise_text.float()
    noise = uncond + guidance_scale * (text - uncond)  # the CFG formula, at the new scale
    scheduler = trace_scheduler(model, trace)
    return x0_from_noise(scheduler, record.latents.float(), noise, record.timestep, record.sigma)


@dataclass
class WhatIf:
    step: int
    timestep: float
    recorded_scale: float
    guidance_scale: float
    recorded_x0: torch.Tensor  # [C, h, w], what the run itself computed at this step
    x0: torch.Tensor  # [C, h, w], at the new scale
    recorded_image: Image.Image
    image: Image.Image


def what_if(model, trace: Trace, step: int, guidance_scale: float) -> WhatIf:
    """The what-if x0 and the recorded one, both decoded by the VAE."""
    x0 = what_if_x0(model, trace, step, guidance_scale)
    recorded = trace.steps[step].pred_x0.float()
    return WhatIf(
        step=step, timestep=trace.steps[step].timestep, recorded_scale=trace.settings.guidance_scale,
        guidance_scale=guidance_scale, recorded_x0=recorded, x0=x0,
        recorded_image=vae.decode_to_pil(model, recorded), image=vae.decode_to_pil(model, x0),
    )


def describe_what_if(result: WhatIf) -> str:
    change = float((result.x0 - result.recorded_x0).pow(2).mean().sqrt())
    return (
        f"Step {result.step + 1} (t = {result.timestep:.0f}) ran at g = {result.recorded_scale:g}. Recombining its two "
        f"stored noise estimates at g = {result.guidance_scale:g} moves the predicted clean latents x0 by "
        f"{change:.3f} (RMS): that is where this one step would have aimed, had the slider been there. "
        "**A one-step extrapolation, not a run**: no later step corrects it, so a large g can show a blob where a "
        "whole run at that g (the sweep) ends fine. Early steps (high t) decide the layout, so g matters most there; "
        "late steps only polish details."
    )


# (c) Prompt A/B ------------------------------------------------------------------------------------------


@dataclass
class Projection:
    """Latent trajectories flattened and projected onto their two main directions (PCA)."""

    paths: list[np.ndarray]  # per trajectory: [steps + 1, 2]
    explained: np.ndarray  # share of the variance along each of the 2 directions


def trajectory(trace: Trace) -> np.ndarray:
    """The latents a run passed through: each step's input, then the final latents, [steps + 1, C*h*w]."""
    points = [s.latents.float() for s in trace.steps] + [trace.final_latents.float()]
    return torch.stack(points).reshape(len(points), -1).double().numpy()


def project_trajectories(traces: list[Trace]) -> Projection:
    """PCA (with numpy's SVD) of all the latents of all the runs together, so the paths share one map."""
    paths = [trajectory(t) for t in traces]
    if len({p.shape[1] for p in paths}) != 1:
        raise SdvizError("The runs have different latent sizes, so their paths cannot share one map.")
    stacked = np.concatenate(paths)
    centre = stacked.mean(axis=0)
    _, singular, directions = np.linalg.svd(stacked - centre, full_matrices=False)
    k = min(2, len(singular))
    variance = singular**2
    explained = variance[:k] / variance.sum() if variance.sum() > 0 else np.zeros(k)
    projected = [(p - centre) @ directions[:k].T for p in paths]
    if k < 2:  # a single point: pad the missing axis
        projected = [np.pad(p, ((0, 0), (0, 2 - k))) for p in projected]
        explained = np.pad(explained, (0, 2 - k))
    return Projection(paths=projected, explained=explained)


def trajectories_figure(projection: Projection, labels: list[str], step: int | None = None) -> Figure:
    """Both runs' latent paths on one PCA map; ``step`` (1-based, like the slider) marks each run's x_t there."""
    fig = Figure(figsize=(6.4, 5.4), dpi=100, layout="constrained")
    ax = fig.subplots()
    colours = ["tab:blue", "tab:orange", "tab:green", "tab:red"]
    for i, (path, label) in enumerate(zip(projection.paths, labels, strict=True)):
        c = colours[i % len(colours)]
        ax.plot(path[:, 0], path[:, 1], "o-", color=c, markersize=4, linewidth=2, label=label)
        ax.plot(*path[-1], "*", color=c, markersize=16)
        if step is not None and 1 <= step <= len(path):
            ax.plot(*path[step - 1], "o", markersize=15, markerfacecolor="none", markeredgecolor=c, markeredgewidth=2.5)
    ax.plot(*projection.paths[0][0], "ks", markersize=9, label="shared starting noise")
    if step is not None:
        ax.plot([], [], "o", markersize=12, markerfacecolor="none", markeredgecolor="black", markeredgewidth=2,
                label=f"x_t at step {step}")
    ax.set_xlabel(f"direction 1 ({projection.explained[0]:.0%} of the variance)", fontsize=12)
    ax.set_ylabel(f"direction 2 ({projection.explained[1]:.0%} of the variance)", fontsize=12)
    ax.tick_params(labelsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=11, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=1, frameon=False)
    ax.set_title("latent trajectories (PCA); star = final latents", fontsize=13)
    return fig


@dataclass
class PromptAB:
    a: Trace
    b: Trace
    projection: Projection

    @property
    def divergence(self) -> np.ndarray:
        """Distance between the two runs' latents at each step (0 at the start: same noise)."""
        return np.linalg.norm(trajectory(self.a) - trajectory(self.b), axis=1)


def prompt_ab(model, settings: RunSettings, prompt_b: str, init_image=None, trace_a: Trace | None = None) -> PromptAB:
    """Prompt A (``settings.prompt``, or an existing run of it) and prompt B from the same seed and settings."""
    if trace_a is None:
        trace_a = generate(model, settings, init_image)
    trace_b = generate(model, dataclasses.replace(settings, prompt=prompt_b), init_image)
    return PromptAB(a=trace_a, b=trace_b, projection=project_trajectories([trace_a, trace_b]))


def describe_ab(ab: PromptAB) -> str:
    d = ab.divergence
    half = int(np.argmax(d >= d[-1] / 2)) if d[-1] > 0 else 0
    return (
        f"Both runs start from exactly the same noise (distance {d[0]:.3g}); only the prompt differs. Their latents "
        f"drift apart as the U-Net follows different text: half of the final distance ({d[-1]:.2f}) is reached "
        f"after step {half} of {len(d) - 1}. The two main directions of the plot hold "
        f"{ab.projection.explained.sum():.0%} of the variation of both paths."
    )
