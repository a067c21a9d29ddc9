"""Two variants of classifier-free guidance, each against plain CFG from the same seed (the same starting noise).

- **Guidance rescale** (Lin et al. 2023, diffusers' ``guidance_rescale``): at a high g the guided estimate
  ``uncond + g (text - uncond)`` has a much larger spread (std) than a noise estimate should; rescaling brings its
  std back to the text estimate's, blended with the plain one by r (0 = plain CFG, 1 = fully rescaled).
- **Guidance on an interval** of the steps: CFG only from ``start`` to ``end`` (shares of the loop's steps), the
  prompt's estimate alone elsewhere. A step without CFG needs one U-Net call instead of two: the calls saved are
  counted by the loop itself (``Trace.unet_passes``).

Every run goes through :func:`sdviz.pipeline.sampler.generate`; nothing here has a denoising loop of its own.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from PIL import Image

from sdviz.errors import SdvizError
from sdviz.lessons.experiments import judge_accuracy, judge_verdict, pixel_distance, quoted
from sdviz.pipeline.models import EMBEDDED
from sdviz.pipeline.sampler import generate
from sdviz.pipeline.settings import RunSettings, check_settings
from sdviz.pipeline.trace import Trace

DEFAULT_RESCALE = 0.7  # what Lin et al. recommend
DEFAULT_INTERVAL = (0.0, 0.5)  # CFG on the first half of the steps


@dataclass
class Variant:
    kind: str  # "plain", "rescale" or "interval"
    settings: RunSettings
    image: Image.Image
    steps: int  # loop passes: one U-Net call each for the prompt
    unet_passes: int  # every U-Net call of the run, as the loop counted them
    guided_steps: list[int]  # 0-based indexes of the steps that ran CFG (two calls there)
    guided_std: list[float]  # per step: the std of the noise estimate the scheduler used
    text_std: list[float]  # per step: the std of the prompt's own (text) estimate
    distance: float = 0.0  # RMS pixel difference from the plain-CFG picture
    accuracy: float | None = None  # share of the prompt's toy-world attributes the pixel judge finds (None: not judged)
    verdict: str | None = None

    @property
    def uncond_passes(self) -> int:
        return self.unet_passes - self.steps


@dataclass
class Variants:
    settings: RunSettings  # the base settings: plain CFG over every step
    plain: Variant
    rescale: Variant
    interval: Variant

    @property
    def all(self) -> list[Variant]:
        return [self.plain, self.rescale, self.interval]

    @property
    def judged(self) -> bool:
        return any(v.accuracy is not None for v in self.all)

    def saved(self, variant: Variant) -> int:
        """U-Net calls the variant saves against plain CFG."""
        return self.plain.unet_passes - variant.unet_passes


def _variant(kind: str, trace: Trace, plain_image: Image.Image | None, use_judge: bool) -> Variant:
    prompt = trace.settings.prompt
    return Variant(
        kind=kind, settings=trace.settings, image=trace.image, steps=len(trace.steps), unet_passes=trace.unet_passes,
        guided_steps=[r.index for r in trace.steps if r.noise_uncond is not None],
        guided_std=[float(r.noise_guided.float().std()) for r in trace.steps],
        text_std=[float(r.noise_text.float().std()) for r in trace.steps],
        distance=pixel_distance(trace.image, plain_image) if plain_image is not None else 0.0,
        accuracy=judge_accuracy(trace.image, prompt) if use_judge else None,
        verdict=judge_verdict(trace.image, prompt) if use_judge else None,
    )


def guidance_variants(model, settings: RunSettings, rescale: float = DEFAULT_RESCALE,
                      interval: tuple[float, float] = DEFAULT_INTERVAL, init_image=None,
                      use_judge: bool | None = None) -> Variants:
    """Plain CFG, guidance rescale ``rescale`` and CFG only on ``interval`` = (start, end), same seed and settings.

    ``use_judge``: None = the pixel judge for the embedded model (trained on the toy world) only.
    """
    if use_judge is None:
        use_judge = model.name == EMBEDDED
    if not settings.guidance_scale > 1:
        raise SdvizError(f"These variants change how classifier-free guidance runs, and at g = {settings.guidance_scale:g} "
                         "there is none (g <= 1 runs the prompt alone): pick a guidance scale above 1.")
    start, end = interval
    base = dataclasses.replace(settings, guidance_rescale=0.0, guidance_start=0.0, guidance_end=1.0)
    wanted = {"rescale": dataclasses.replace(base, guidance_rescale=rescale),
              "interval": dataclasses.replace(base, guidance_start=start, guidance_end=end)}
    for changed in wanted.values():  # bad numbers are refused before the first run
        check_settings(changed, img2img=init_image is not None)
    plain_trace = generate(model, base, init_image)
    if not plain_trace.guidance:
        raise SdvizError("These variants change how classifier-free guidance runs, and this model takes no guidance "
                         "(its U-Net is distilled to run without it): pick another model.")
    plain = _variant("plain", plain_trace, None, use_judge)
    made = {kind: _variant(kind, generate(model, s, init_image), plain.image, use_judge) for kind, s in wanted.items()}
    return Variants(settings=base, plain=plain, **made)


def step_span(steps: list[int], total: int) -> str:
    """0-based step indexes as the page counts steps: 'steps 1-10 of 20', 'step 4 of 20', 'no step'."""
    if not steps:
        return "no step"
    first, last = steps[0] + 1, steps[-1] + 1
    if len(steps) != last - first + 1:  # not one run of steps (never, for an interval): list them
        return f"steps {', '.join(str(i + 1) for i in steps)} of {total}"
    return f"step {first} of {total}" if first == last else f"steps {first}-{last} of {total}"


def setting_label(variant: Variant) -> str:
    """The variant's setting in a few words, e.g. 'rescale r = 0.7' or 'CFG on steps 1-10 of 20 only'."""
    s = variant.settings
    if variant.kind == "plain":
        return f"plain CFG, g = {s.guidance_scale:g}"
    if variant.kind == "rescale":
        return f"rescale r = {s.guidance_rescale:g}" + (" (= plain)" if s.guidance_rescale == 0 else "")
    if not variant.guided_steps:
        return f"CFG on no step of {variant.steps} (the interval holds none)"
    span = step_span(variant.guided_steps, variant.steps)
    return f"CFG on {span}" + (" only" if len(variant.guided_steps) < variant.steps else "")


def calls_caption(variants: Variants, variant: Variant) -> str:
    """The U-Net calls of a run: '20 + 10 = 30 calls, 10 saved' (prompt calls + unconditional calls)."""
    text = f"{variant.steps} + {variant.uncond_passes} = {variant.unet_passes} calls"
    saved = variants.saved(variant)
    return text + (f", {saved} saved" if saved > 0 else "")


def variants_figure(variants: Variants) -> Figure:
    """The three pictures side by side, each titled with its setting, its U-Net calls and the judge's verdict."""
    fig = Figure(figsize=(9.6, 5.0 if variants.judged else 4.7), dpi=100, layout="constrained")
    axes = fig.subplots(1, 3)
    for ax, v in zip(axes, variants.all, strict=True):
        ax.imshow(np.asarray(v.image.convert("RGB")), interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"{setting_label(v)}\n{calls_caption(variants, v)}", fontsize=13)
        below = "" if v.kind == "plain" else f"differs from plain: {v.distance:.3f}"
        if v.verdict is not None:
            below = f"judge: {v.verdict}" + (f"\n{below}" if below else "")
        if below:
            ax.set_xlabel(below, fontsize=11, color=("#b42318" if v.accuracy is not None and v.accuracy < 1
                                                     else "#1a7f37" if v.accuracy == 1 else "black"))
    fig.suptitle(f"same seed ({variants.settings.seed}), same starting noise: {quoted(variants.settings.prompt)}",
                 fontsize=12)
    return fig


def spread_ratio(variant: Variant) -> list[float]:
    """Per step: the spread (std) of the estimate the scheduler used over that of the prompt's own estimate in the
    same run (1 = the same spread: a step without CFG, or a fully rescaled one)."""
    return [g / t if t > 0 else float("nan") for g, t in zip(variant.guided_std, variant.text_std, strict=True)]


def spread_figure(variants: Variants) -> Figure:
    """Per step and run, the spread of the noise estimate the scheduler used relative to the prompt's own estimate:
    what rescale pulls back towards 1. The interval run's CFG steps are shaded."""
    fig = Figure(figsize=(9.6, 3.6), dpi=100, layout="constrained")
    ax = fig.subplots()
    steps = np.arange(1, variants.plain.steps + 1)
    guided = variants.interval.guided_steps
    if guided:
        ax.axvspan(guided[0] + 0.5, guided[-1] + 1.5, color="tab:green", alpha=0.1, label="the interval's CFG steps")
    ax.axhline(1.0, color="grey", linestyle=":", linewidth=2, label="1 = the prompt's own spread")
    for v, style, colour in ((variants.plain, "o-", "tab:blue"), (variants.rescale, "s-", "tab:orange"),
                             (variants.interval, "^--", "tab:green")):
        ax.plot(steps, spread_ratio(v), style, color=colour, linewidth=2, label=setting_label(v))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("step", fontsize=12)
    ax.set_ylabel("std(used) / std(text)", fontsize=12)
    ax.set_title("what rescale fixes: the guided estimate's spread, relative to the prompt's own estimate", fontsize=12)
    ax.tick_params(labelsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=10, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    return fig


def describe_variants(variants: Variants) -> str:
    """What changed in this comparison, in its own numbers."""
    plain, rescale, interval = variants.all
    g = variants.settings.guidance_scale
    text = (f"All three runs start from the same noise (seed {variants.settings.seed}) at g = {g:g}. Plain CFG makes "
            f"{plain.unet_passes} U-Net calls: one with the prompt and one without at each of {plain.steps} steps.")
    ratios = spread_ratio(plain)
    worst = int(np.nanargmax(ratios))
    text += (f" **Rescale r = {rescale.settings.guidance_rescale:g}**: plain CFG's estimate has the most spread at step "
             f"{worst + 1}, {ratios[worst]:.2f} times that of the prompt's own estimate; rescaled, "
             f"{spread_ratio(rescale)[worst]:.2f} times. The picture moves by {rescale.distance:.3f} "
             "(RMS pixel difference from plain; 0 = the same picture).")
    saved = variants.saved(interval)
    share = saved / plain.unet_passes if plain.unet_passes else 0.0
    text += (f" **{setting_label(interval)}**: {interval.unet_passes} calls, {saved} saved ({share:.0%}); "
             f"the picture moves by {interval.distance:.3f}.")
    if variants.judged:
        text += " The pixel judge: " + "; ".join(f"{setting_label(v)}: {v.verdict}" for v in variants.all) + "."
    return text
