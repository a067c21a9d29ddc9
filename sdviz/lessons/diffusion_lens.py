"""Diffusion Lens (Toker et al. 2024): what the text "means" after each layer of the text encoder.

The U-Net normally reads the text encoder's last hidden state. Diffusion Lens hands it the hidden state after an
earlier layer instead (through the encoder's final layer norm, as the last one is), so the picture shows what the
prompt has become by that layer: the text encoder as if it ended there. One run per layer, all from the same seed
(the same starting noise), so only the text conditioning changes from picture to picture; the last layer's picture
is the usual run's.

Every run goes through :func:`sdviz.pipeline.sampler.generate` (``RunSettings.text_layer``); nothing here has a
denoising loop of its own.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from matplotlib.figure import Figure
from PIL import Image

from sdviz.errors import SdvizError
from sdviz.lessons.experiments import judge_accuracy, judge_verdict, pixel_distance, quoted
from sdviz.pipeline.models import EMBEDDED
from sdviz.pipeline.sampler import generate
from sdviz.pipeline.settings import RunSettings

MAX_PICTURES = 12  # a text encoder with more layers shows this many of them, evenly spread, the last one included
PER_ROW = 6


def text_layers(model) -> int:
    """How many layers the model's text encoder has (SD 1.5: 12; the embedded model: 3)."""
    return int(model.text_encoder.config.num_hidden_layers)


def lens_layers(n_layers: int, most: int = MAX_PICTURES) -> list[int]:
    """The layers the lens shows: all of 1..n_layers, or ``most`` of them evenly spread, always with 1 and the last."""
    if n_layers < 1:
        raise SdvizError("This model's text encoder has no layers to look through.")
    if n_layers <= most:
        return list(range(1, n_layers + 1))
    return sorted({round(1 + i * (n_layers - 1) / (most - 1)) for i in range(most)})


@dataclass
class LensPicture:
    layer: int  # 1..layers: the text encoder's hidden state after this layer
    image: Image.Image
    distance: float  # RMS pixel difference from the last layer's picture (the usual run's)
    accuracy: float | None = None  # share of the prompt's toy-world attributes the pixel judge finds (None: not judged)
    verdict: str | None = None  # the judge's verdict in words (None: not judged)


@dataclass
class LensResult:
    settings: RunSettings  # the run's settings; only text_layer changes from picture to picture
    layers: int  # how many layers the text encoder has
    pictures: list[LensPicture]  # in layer order; the last is layer ``layers``

    @property
    def judged(self) -> bool:
        return any(p.accuracy is not None for p in self.pictures)

    @property
    def final(self) -> LensPicture:
        return self.pictures[-1]


def diffusion_lens(model, settings: RunSettings, init_image=None, layers: Sequence[int] | None = None,
                   use_judge: bool | None = None) -> LensResult:
    """One run per text-encoder layer (``layers``: which ones, default :func:`lens_layers`), same seed and settings.

    ``use_judge``: None = the pixel judge for the embedded model (trained on the toy world) only.
    """
    n = text_layers(model)
    chosen = sorted(set(layers)) if layers is not None else lens_layers(n)
    if not chosen or chosen[-1] != n:
        chosen = sorted({*chosen, n})  # the last layer's picture, the usual run's, is what the others are compared with
    if chosen[0] < 1:
        raise SdvizError(f"Text layers are numbered from 1 to {n} (got {chosen[0]}).")
    if use_judge is None:
        use_judge = model.name == EMBEDDED
    images = {k: generate(model, dataclasses.replace(settings, text_layer=k), init_image).image for k in chosen}
    final = images[n]
    pictures = [
        LensPicture(layer=k, image=images[k], distance=pixel_distance(images[k], final),
                    accuracy=judge_accuracy(images[k], settings.prompt) if use_judge else None,
                    verdict=judge_verdict(images[k], settings.prompt) if use_judge else None)
        for k in chosen
    ]
    return LensResult(settings=settings, layers=n, pictures=pictures)


def layer_label(picture: LensPicture, layers: int) -> str:
    """'layer 2 of 3', and for the last one that it is the usual run."""
    return f"layer {picture.layer} of {layers}" + (" (the usual run)" if picture.layer == layers else "")


def lens_figure(result: LensResult) -> Figure:
    """One picture per layer, up to 6 to a row, each titled "layer k of N", with the judge's verdict or the
    difference from the last layer's picture below it."""
    n = len(result.pictures)
    cols = min(n, PER_ROW)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(max(2.3 * cols, 6.6), 2.75 * rows + 0.5), dpi=100, layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes[n:]:
        ax.set_axis_off()
    for ax, p in zip(axes, result.pictures, strict=False):
        ax.imshow(np.asarray(p.image.convert("RGB")), interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        last = p.layer == result.layers
        ax.set_title(f"layer {p.layer} of {result.layers}", fontsize=14, fontweight="bold" if last else "normal")
        if p.verdict is not None:
            ax.set_xlabel(f"judge: {p.verdict}", fontsize=11, color="#1a7f37" if p.accuracy == 1 else "#b42318")
        else:
            ax.set_xlabel("the usual run" if last else f"differs from it: {p.distance:.3f}", fontsize=11)
    fig.suptitle(f"Diffusion Lens: {quoted(result.settings.prompt)}, seed {result.settings.seed}\n"
                 "the U-Net reads the text as it is after layer k of the text encoder", fontsize=12)
    return fig


def describe_lens(result: LensResult) -> str:
    """What this run's pictures show, in its own numbers."""
    shown = len(result.pictures)
    which = (f"all {result.layers} layers" if shown == result.layers
             else f"{shown} of its {result.layers} layers, evenly spread")
    text = (f"The text encoder of this model has {result.layers} layers; the lens shows {which}, each a whole run "
            f"from the same seed ({result.settings.seed}), so only the text the U-Net reads changes. The last "
            f"layer's picture is the usual run.")
    earlier = result.pictures[:-1]
    if earlier:
        far = max(earlier, key=lambda p: p.distance)
        text += (f" The picture differs most from the usual one at layer {far.layer} (RMS pixel difference "
                 f"{far.distance:.3f}; 0 = the same picture).")
    if result.judged:
        right = [p.layer for p in result.pictures if p.accuracy == 1]
        if right:
            from_layer = next((p.layer for i, p in enumerate(result.pictures)
                               if all(q.accuracy == 1 for q in result.pictures[i:])), None)
            if from_layer is not None:
                text += f" The pixel judge finds everything the prompt asks for from layer {from_layer} on."
            else:
                text += (f" The pixel judge finds everything the prompt asks for at layer"
                         f"{'s' if len(right) > 1 else ''} {', '.join(map(str, right))}.")
        else:
            text += " The pixel judge finds the prompt fully drawn at no layer."
        wrong = [f"layer {p.layer}: {p.verdict}" for p in result.pictures if p.accuracy is not None and p.accuracy < 1]
        if wrong:
            text += f" What it gets wrong: {'; '.join(wrong)}."
    return text
