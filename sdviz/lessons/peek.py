"""What the peek-inside panel shows, made from a run's records: pictures, numbers, a plot, an animation.

Data flows one way: the sampler yields :class:`~sdviz.pipeline.trace.StepRecord` s and a :class:`~sdviz.pipeline.trace.Trace`;
the functions here turn them into small pictures and numbers; the app puts those on screen. This module only
draws: it never calls the model (the approximate colours use a map the caller fitted with
:func:`sdviz.pipeline.vae.preview_map`). Nothing here knows about Gradio, and nothing here keeps global state
(matplotlib figures are built per call, without pyplot), so many runs can be drawn at once from different threads.

How signed tensors (latents, noise estimates) become colours: 0 is white, positive values red, negative
values blue, and one scale per picture maps +-scale to full colour. The scale is the 99.5th percentile of
|value| over all the picture's channels (so channels can be compared with each other, and a few
outliers do not wash the rest out); values beyond it are clipped. Each picture's scale is printed in
the step's numbers. Latent pixels are enlarged with nearest-neighbour, so each one stays a visible block.
"""

from __future__ import annotations

import io
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from PIL import Image, ImageDraw, ImageFont

from sdviz.pipeline import vae
from sdviz.pipeline.trace import StepRecord, Trace

TILE = 128  # about how many screen pixels one latent picture gets per side
GUTTER = 2  # pixels between channel tiles
PERCENTILE = 99.5  # the |value| shown at full colour (see the module docstring)


def _diverging_colours(half: int = 127) -> np.ndarray:
    """A blue-white-red lookup table with 2 * half + 1 entries; the middle one is exactly white."""
    blue, white, red = np.array([33, 102, 172]), np.array([255, 255, 255]), np.array([178, 24, 43])
    t = np.linspace(-1, 1, 2 * half + 1)[:, None]
    colours = np.where(t < 0, white + (-t) * (blue - white), white + t * (red - white))
    return colours.round().astype(np.uint8)


_DIVERGING = _diverging_colours()

NOISE_KINDS = ("uncond", "text", "direction", "guided")
NOISE_TITLES = {  # short: they label the pictures
    "uncond": "noise: unconditional",
    "text": "noise: with the prompt",
    "direction": "CFG direction: text − uncond",
    "guided": "noise: guided (used)",
}


# --- Signed tensors as pictures -------------------------------------------------------------------

def signed_scale(values: torch.Tensor | np.ndarray) -> float:
    """The magnitude shown at full colour: the 99.5th percentile of |value| (never 0)."""
    a = np.abs(_numpy(values)).ravel()
    a = a[np.isfinite(a)]
    if a.size == 0:
        return 1.0
    scale = float(np.percentile(a, PERCENTILE))
    return scale if scale > 0 else 1.0


def signed_to_rgb(values: np.ndarray, scale: float) -> np.ndarray:
    """[h, w] values -> uint8 [h, w, 3]: -scale blue, 0 white, +scale red (clipped beyond)."""
    position = np.clip(np.nan_to_num(values) / scale, -1, 1)
    half = len(_DIVERGING) // 2
    return _DIVERGING[np.round((position + 1) * half).astype(np.int64)]


def upscale_factor(height: int, width: int, target: int = TILE) -> int:
    """How many screen pixels per latent pixel, so the picture is about ``target`` pixels per side."""
    return max(1, round(target / max(height, width)))


def enlarge(rgb: np.ndarray | Image.Image, factor: int) -> Image.Image:
    """Nearest-neighbour enlargement: every latent pixel becomes a crisp factor x factor block."""
    img = rgb if isinstance(rgb, Image.Image) else Image.fromarray(rgb)
    return img.resize((img.width * factor, img.height * factor), Image.Resampling.NEAREST)


def channel_grid(tensor: torch.Tensor, scale: float | None = None, target: int = TILE) -> Image.Image:
    """The channels of a [C, h, w] tensor as tiles in a near-square grid (4 channels: 2 x 2).

    One colour scale for all channels (``scale``, by default :func:`signed_scale` of the tensor).
    The grid is about ``target`` pixels per side.
    """
    values = _numpy(tensor)
    channels, h, w = values.shape
    scale = signed_scale(values) if scale is None else scale
    columns = math.ceil(math.sqrt(channels))
    rows = math.ceil(channels / columns)
    factor = upscale_factor(h * rows, w * columns, target)
    tile_h, tile_w = h * factor, w * factor
    grid = Image.new("RGB", (columns * tile_w + (columns - 1) * GUTTER, rows * tile_h + (rows - 1) * GUTTER), "white")
    for c in range(channels):
        tile = enlarge(signed_to_rgb(values[c], scale), factor)
        grid.paste(tile, ((c % columns) * (tile_w + GUTTER), (c // columns) * (tile_h + GUTTER)))
    return grid


RgbMap = tuple[np.ndarray, np.ndarray]  # the linear latent -> RGB map of sdviz.pipeline.vae.preview_map


def rgb_preview(rgb_map: RgbMap, latents: torch.Tensor, target: int = TILE) -> Image.Image:
    """The fast, approximate colours of a latent (:func:`sdviz.pipeline.vae.approx_rgb`: a linear map, no decoder)."""
    rgb = vae.approx_rgb(rgb_map, latents)
    return enlarge(rgb, upscale_factor(rgb.shape[0], rgb.shape[1], target))


# --- One step: the four noise estimates and the numbers -------------------------------------------

def noise_estimates(record: StepRecord) -> dict[str, torch.Tensor | None]:
    """The U-Net's estimates at this step; ``uncond`` and ``direction`` are None when CFG was off."""
    return {
        "uncond": record.noise_uncond,
        "text": record.noise_text,
        "direction": record.guidance_direction,
        "guided": record.noise_guided,
    }


def noise_scales(record: StepRecord) -> dict[str, float]:
    """Colour scales: unconditional, text and guided share one (to compare them); the direction,
    usually much smaller, gets its own (its pictures are amplified, and the numbers say by how much)."""
    estimates = noise_estimates(record)
    shared = max(signed_scale(estimates[k]) for k in ("uncond", "text", "guided") if estimates[k] is not None)
    scales = {k: shared for k in ("uncond", "text", "guided")}
    scales["direction"] = signed_scale(estimates["direction"]) if estimates["direction"] is not None else shared
    return scales


def noise_pictures(record: StepRecord, target: int = TILE) -> dict[str, Image.Image | None]:
    """Each noise estimate's channels as a grid (None for the estimates a run without CFG has not)."""
    scales = noise_scales(record)
    return {
        kind: None if tensor is None else channel_grid(tensor, scales[kind], target)
        for kind, tensor in noise_estimates(record).items()
    }


def rms(tensor: torch.Tensor | None) -> float:
    """Root mean square: about 1.0 for pure unit noise, whatever the tensor's size."""
    if tensor is None:
        return float("nan")
    return float(tensor.float().pow(2).mean().sqrt())


@dataclass(frozen=True)
class StepNumbers:
    index: int
    total: int
    timestep: float
    sigma: float
    latents_std: float
    pred_x0_std: float
    noise_rms: dict[str, float]  # by NOISE_KINDS; NaN where the estimate does not exist
    latents_scale: float  # the colour scales of the pictures
    noise_scales: dict[str, float]


def step_numbers(record: StepRecord, total: int) -> StepNumbers:
    return StepNumbers(
        index=record.index,
        total=total,
        timestep=record.timestep,
        sigma=record.sigma,
        latents_std=float(record.x_t.float().std()),
        pred_x0_std=float(record.pred_x0.float().std()),
        noise_rms={kind: rms(t) for kind, t in noise_estimates(record).items()},
        latents_scale=signed_scale(record.x_t),
        noise_scales=noise_scales(record),
    )


def numbers_markdown(n: StepNumbers) -> str:
    """The step's numbers as a small Markdown table."""
    def fmt(x: float) -> str:
        return "—" if math.isnan(x) else f"{x:.3g}"

    rows = [
        ("step", f"{n.index + 1} of {n.total}"),
        ("timestep t", f"{n.timestep:.0f}  (999 = pure noise, 0 = clean)"),
        ("sigma (noise level of x_t)", fmt(n.sigma)),
        ("std of x_t / of predicted x0", f"{fmt(n.latents_std)} / {fmt(n.pred_x0_std)}"),
        ("noise RMS: uncond / text / guided", " / ".join(fmt(n.noise_rms[k]) for k in ("uncond", "text", "guided"))),
        ("guidance direction RMS", fmt(n.noise_rms["direction"])),
        ("colour scale ±: x_t / noise / direction",
         f"{fmt(n.latents_scale)} / {fmt(n.noise_scales['guided'])} / {fmt(n.noise_scales['direction'])}"),
    ]
    return "| this step | |\n|---|---|\n" + "\n".join(f"| {name} | {value} |" for name, value in rows)


# --- The plot: the noise schedule and the latents' statistics over the run -------------------------

CURRENT_STEP_GID = "current-step"  # the gid of the vertical line that marks the selected step


def schedule_figure(records: Sequence[StepRecord], current: int | None, total: int) -> Figure:
    """Sigma per step (top) and the latents' statistics per step (bottom), the ``current`` step marked
    (``current`` is a 0-based index; the x axis numbers steps from 1, like the step slider; None: no marker).

    ``records`` may be the steps computed so far (while the run streams); the x axis always spans
    all ``total`` steps. Built as a bare ``Figure`` (no pyplot), so it is safe in any thread. Sized for a projector:
    large fonts, the legend beside the curves (not on them), at most about 10 step numbers on the axis.
    """
    steps = [r.index + 1 for r in records]  # numbered from 1, like the step slider
    fig = Figure(figsize=(10, 4.6), dpi=80, layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True)
    top.plot(steps, [r.sigma for r in records], "o-", color="#6b4fbb", markersize=4, linewidth=2, label="sigma")
    top.set_yscale("log")
    top.set_ylabel("noise level σ", fontsize=13)
    top.set_title("How much noise is left at each step", fontsize=15)
    bottom.plot(steps, [float(r.x_t.float().std()) for r in records], "o-", markersize=4, linewidth=2,
                label="std of x_t")
    bottom.plot(steps, [float(r.pred_x0.float().std()) for r in records], "s-", markersize=4, linewidth=2,
                label="std of predicted x0")
    bottom.plot(steps, [rms(r.noise_guided) for r in records], "^-", markersize=4, linewidth=2,
                label="RMS of guided noise")
    bottom.set_xlabel("step", fontsize=13)
    bottom.set_ylabel("value", fontsize=13)
    bottom.legend(fontsize=12, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    bottom.set_xlim(0.5, max(total, 1) + 0.5)
    bottom.xaxis.set_major_locator(MaxNLocator(nbins=10, integer=True))
    for ax in (top, bottom):
        if current is not None:
            ax.axvline(current + 1, color="#e4572e", linewidth=2.5, gid=CURRENT_STEP_GID)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=12)
    bottom.yaxis.set_major_locator(MaxNLocator(nbins=5))
    return fig


@dataclass
class SchedulePicture:
    """The schedule plot drawn once (no marker) as a picture, and where each step's marker goes: marking a step is
    then a line drawn on a copy (about a millisecond), so the timeline can play at 10 steps a second."""

    base: Image.Image
    x: list[float]  # the marker's x pixel, per step index 0 .. total - 1
    spans: list[tuple[float, float]]  # each axes' top and bottom pixel rows

    def at(self, index: int) -> Image.Image:
        picture = self.base.copy()
        if 0 <= index < len(self.x):
            pen = ImageDraw.Draw(picture)
            for top, bottom in self.spans:
                pen.line([(self.x[index], top), (self.x[index], bottom)], fill=(228, 87, 46), width=3)
        return picture


def schedule_picture(records: Sequence[StepRecord], total: int) -> SchedulePicture:
    """:func:`schedule_figure` without a marker, rendered, with the marker positions of every step."""
    fig = schedule_figure(records, None, total)
    out = io.BytesIO()
    fig.savefig(out, format="png")  # draws the figure: the transforms below are those of the saved picture
    base = Image.open(out).convert("RGB")
    height = fig.bbox.height
    bottom_ax = fig.axes[1]
    x = [float(bottom_ax.transData.transform((i + 1, 0))[0]) for i in range(max(total, 1))]
    spans = [(height - ax.bbox.y1, height - ax.bbox.y0) for ax in fig.axes]
    return SchedulePicture(base, x, spans)


# --- The whole run as an animation -----------------------------------------------------------------

def run_animation(rgb_map: RgbMap, trace: Trace, target: int = TILE, frame_ms: int = 150) -> bytes:
    """A GIF of the run: x_t (left) and the predicted x0 (right) at every step, in approximate colours,
    then one last frame holding the final latents' preview and the final picture (the full VAE decode).

    ``len(trace.steps) + 1`` frames.
    """
    frames = [
        _side_by_side(rgb_preview(rgb_map, r.x_t, target), rgb_preview(rgb_map, r.pred_x0, target),
                      f"step {r.index + 1}/{len(trace.steps)}", ("x_t (approx.)", "x0 (approx.)"))
        for r in trace.steps
    ]
    side = frames[0].height - 2 * _CAPTION_H if frames else target
    final = trace.image.convert("RGB").resize((side, side * trace.image.height // trace.image.width),
                                              Image.Resampling.NEAREST)
    frames.append(_side_by_side(rgb_preview(rgb_map, trace.final_latents, target), final, "done",
                                ("latents (approx.)", "final picture")))
    durations = [frame_ms] * (len(frames) - 1) + [frame_ms * 10]
    out = io.BytesIO()
    frames[0].save(out, format="GIF", save_all=True, append_images=frames[1:], duration=durations, loop=0)
    return out.getvalue()


def decoded_animation(trace: Trace, decodes: Sequence[tuple[Image.Image, Image.Image]], target: int = 256,
                      frame_ms: int = 200) -> bytes:
    """A GIF of the run from real VAE decodes: x_t (left) and the predicted x0 (right) at every step, enlarged
    to about ``target`` pixels with sharp pixels, then the final picture. ``decodes``: one (x_t, x0) per step."""
    if len(decodes) != len(trace.steps):
        raise ValueError(f"{len(decodes)} decodes for {len(trace.steps)} steps")

    def big(picture: Image.Image) -> Image.Image:
        factor = max(1, round(target / max(picture.size)))
        return picture.convert("RGB").resize((picture.width * factor, picture.height * factor),
                                             Image.Resampling.NEAREST)

    total = len(trace.steps)
    frames = [_side_by_side(big(x_t), big(x0), f"step {r.index + 1}/{total}", ("x_t (VAE decode)", "x0 (VAE decode)"))
              for r, (x_t, x0) in zip(trace.steps, decodes, strict=True)]
    final = big(trace.image)
    frames.append(_side_by_side(final, final, "done", ("final picture", "final picture")))
    durations = [frame_ms] * (len(frames) - 1) + [frame_ms * 8]
    out = io.BytesIO()
    frames[0].save(out, format="GIF", save_all=True, append_images=frames[1:], duration=durations, loop=0)
    return out.getvalue()


_CAPTION_H = 14


def decode_animation(frames: Sequence[tuple[str, Image.Image, Image.Image]], final: Image.Image,
                     side: int = 256, frame_ms: int = 250) -> bytes:
    """A GIF of the run in real VAE decodes: for each ``(title, x_t decoded, predicted x0 decoded)`` the two pictures
    side by side, ``side`` pixels each (small pictures enlarged with nearest neighbour, large ones shrunk), then the
    final picture on its own; large enough to project. Captions in a font that reads at that size."""
    font = _font(18)
    caption_h = 26

    def fit(picture: Image.Image) -> Image.Image:
        picture = picture.convert("RGB")
        scale = side / max(picture.size)
        size = (round(picture.width * scale), round(picture.height * scale))
        method = Image.Resampling.NEAREST if scale >= 1 else Image.Resampling.LANCZOS
        return picture.resize(size, method)

    def frame(left: Image.Image, right: Image.Image | None, captions: tuple[str, str], title: str) -> Image.Image:
        width = 2 * side + 3 * GUTTER * 4
        canvas = Image.new("RGB", (width, side + 2 * caption_h), "white")
        pen = ImageDraw.Draw(canvas)
        for i, (picture, caption) in enumerate(((left, captions[0]), (right, captions[1]))):
            if picture is None:
                continue
            x = GUTTER * 4 + i * (side + GUTTER * 4)
            canvas.paste(fit(picture), (x, caption_h))
            pen.text((x, 2), caption, fill=(40, 40, 40), font=font)
        pen.text((width // 2, side + 2 * caption_h - 2), title, fill=(60, 60, 60), font=font, anchor="md")
        return canvas

    pictures = [frame(x_t, x0, ("x_t (VAE decode)", "predicted x0 (VAE decode)"), title) for title, x_t, x0 in frames]
    pictures.append(frame(final, None, ("the final picture", ""), "done"))
    durations = [frame_ms] * (len(pictures) - 1) + [frame_ms * 8]
    out = io.BytesIO()
    pictures[0].save(out, format="GIF", save_all=True, append_images=pictures[1:], duration=durations, loop=0)
    return out.getvalue()


def _side_by_side(left: Image.Image, right: Image.Image, title: str, captions: tuple[str, str]) -> Image.Image:
    """Two pictures side by side, a caption above each and ``title`` in a strip below."""
    font = _font()
    width = left.width + right.width + 3 * GUTTER
    height = max(left.height, right.height) + 2 * _CAPTION_H
    frame = Image.new("RGB", (width, height), "white")
    frame.paste(left, (GUTTER, _CAPTION_H))
    frame.paste(right, (2 * GUTTER + left.width, _CAPTION_H))
    pen = ImageDraw.Draw(frame)
    pen.text((GUTTER, 1), captions[0], fill=(40, 40, 40), font=font)
    pen.text((2 * GUTTER + left.width, 1), captions[1], fill=(40, 40, 40), font=font)
    pen.text((width // 2, height - 2), title, fill=(90, 90, 90), font=font, anchor="md")
    return frame


_font_lock = threading.Lock()
_font_cache: dict = {}


def _font(size: int = 10):
    with _font_lock:
        if size not in _font_cache:
            try:
                _font_cache[size] = ImageFont.load_default(size=size)
            except (OSError, TypeError):  # Pillow without FreeType: the bitmap font
                _font_cache[size] = ImageFont.load_default()
        return _font_cache[size]


def _numpy(values: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        return values.detach().float().cpu().numpy()
    return np.asarray(values, dtype=np.float32)


# --- Everything the panel shows for one step --------------------------------------------------------

@dataclass
class PeekFrame:
    """The peek panel's pictures and numbers for one step (the plot is made separately: it costs more)."""

    latents: Image.Image  # x_t's channels
    latents_rgb: Image.Image  # x_t in approximate colours
    pred_x0_rgb: Image.Image  # the predicted x0 in approximate colours
    noise: dict[str, Image.Image | None]  # by NOISE_KINDS
    numbers: StepNumbers


def peek_frame(rgb_map: RgbMap, record: StepRecord, total: int, target: int = TILE) -> PeekFrame:
    return PeekFrame(
        latents=channel_grid(record.x_t, target=target),
        latents_rgb=rgb_preview(rgb_map, record.x_t, target),
        pred_x0_rgb=rgb_preview(rgb_map, record.pred_x0, target),
        noise=noise_pictures(record, target),
        numbers=step_numbers(record, total),
    )
