"""The settings of one run, checked at the edge (CLI, app, API) before any model work starts."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from sdviz.errors import SdvizError

MAX_STEPS = 500
MIN_SIDE, MAX_SIDE = 8, 2048
MAX_SEED = 2**63 - 1  # what torch.Generator.manual_seed accepts
MAX_INIT_PIXELS = 50_000_000  # larger init images are refused before decoding (a small PNG can hold a huge one)


@dataclass(frozen=True)
class RunSettings:
    """Everything that decides a run's result (with the model and, for img2img, the init image)."""

    prompt: str = ""
    negative_prompt: str = ""
    steps: int = 20
    guidance_scale: float = 7.5
    seed: int = 0
    scheduler: str | None = None  # None: the model's own scheduler
    height: int | None = None  # None: the model's recommended size
    width: int | None = None
    strength: float = 0.8  # image to image: how much of the schedule to run (1 = all of it)
    guidance_rescale: float = 0.0  # 0..1: pull the guided estimate's spread back to the text one's (Lin et al. 2023)
    guidance_start: float = 0.0  # CFG only on this share of the loop's steps: from start (0 = the first step) ...
    guidance_end: float = 1.0  # ... to end (1 = the last); elsewhere one U-Net pass, the prompt's
    text_layer: int | None = None  # Diffusion Lens: the text encoder's hidden state after this layer (None: the last)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def check_settings(s: RunSettings, img2img: bool = False) -> RunSettings:
    """Raise :class:`SdvizError` for settings that cannot run; return them unchanged otherwise."""
    if not isinstance(s.prompt, str) or not isinstance(s.negative_prompt, str):
        raise SdvizError("The prompt and the negative prompt must be text.")
    if isinstance(s.steps, bool) or not isinstance(s.steps, (int, np.integer)) or not 1 <= s.steps <= MAX_STEPS:
        raise SdvizError(f"Steps must be a whole number from 1 to {MAX_STEPS} (got {s.steps!r}).")
    g = s.guidance_scale
    if isinstance(g, bool) or not isinstance(g, (int, float, np.number)) or not math.isfinite(g) or g < 0:
        raise SdvizError(f"Guidance scale must be a finite number of 0 or more (got {g!r}); 1 or less means no guidance.")
    if isinstance(s.seed, bool) or not isinstance(s.seed, (int, np.integer)) or not 0 <= s.seed <= MAX_SEED:
        raise SdvizError(f"Seed must be a whole number from 0 to {MAX_SEED} (got {s.seed!r}).")
    r = s.guidance_rescale
    if isinstance(r, bool) or not isinstance(r, (int, float, np.number)) or not math.isfinite(r) or not 0 <= r <= 1:
        raise SdvizError(f"Guidance rescale must be a number from 0 to 1 (got {r!r}).")
    a, b = s.guidance_start, s.guidance_end
    if any(isinstance(v, bool) or not isinstance(v, (int, float, np.number)) or not math.isfinite(v) for v in (a, b)) \
            or not 0 <= a < b <= 1:
        raise SdvizError(f"The guidance interval must satisfy 0 <= start < end <= 1 (got {a!r} to {b!r}).")
    layer = s.text_layer
    if layer is not None and (isinstance(layer, bool) or not isinstance(layer, (int, np.integer)) or layer < 1):
        raise SdvizError(f"The text layer must be a whole number from 1 (got {layer!r}).")
    for name in ("height", "width"):
        side = getattr(s, name)
        if side is None:
            continue
        if isinstance(side, bool) or not isinstance(side, (int, np.integer)) or not MIN_SIDE <= side <= MAX_SIDE or side % 8:
            raise SdvizError(f"{name.capitalize()} must be a multiple of 8 from {MIN_SIDE} to {MAX_SIDE} (got {side!r}).")
    if img2img:
        st = s.strength
        if isinstance(st, bool) or not isinstance(st, (int, float, np.number)) or not math.isfinite(st) or not 0 < st <= 1:
            raise SdvizError(f"Strength must be more than 0 and at most 1 (got {st!r}).")
        if int(s.steps * st) < 1:
            need = math.ceil(1 / st)
            raise SdvizError(
                f"Strength {st} of {s.steps} steps runs no step at all (steps x strength < 1): "
                f"raise the strength or use at least {need} steps."
            )
    return s


def load_init_image(source: str | Path | Image.Image | np.ndarray, width: int, height: int) -> Image.Image:
    """Open an init image as 8-bit RGB, centre-cropped to the run's aspect ratio and resized to it.

    RGBA, grey, palette and 16-bit pictures are converted: diffusers would take a 4-channel image
    for latents and skip the VAE.
    """
    try:
        if isinstance(source, Image.Image):
            img = source
        elif isinstance(source, np.ndarray):
            img = Image.fromarray(_to_uint8(source))
        else:
            img = Image.open(source)  # reads the header only: the size is known before decoding
    except (OSError, UnidentifiedImageError, ValueError, TypeError) as err:
        raise SdvizError(f"Could not read the init image ({err}); use a PNG, JPEG or WebP picture.") from err
    except Image.DecompressionBombError as err:
        raise SdvizError(f"The init image is far too large ({err}).") from err
    if img.width < 1 or img.height < 1:
        raise SdvizError("The init image is empty.")
    _check_pixels(img)
    try:
        img.load()
    except (OSError, ValueError) as err:
        raise SdvizError(f"Could not read the init image ({err}); use a PNG, JPEG or WebP picture.") from err
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16/32-bit grey: scale to 8 bits before converting
        img = Image.fromarray(_to_uint8(np.asarray(img)))
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
        flat = Image.new("RGBA", img.size, (255, 255, 255, 255))  # transparent areas become white
        img = Image.alpha_composite(flat, img)
    img = img.convert("RGB")
    # Crop the middle to the target aspect ratio, then resize.
    scale = max(width / img.width, height / img.height)
    cw, ch = round(width / scale), round(height / scale)
    left, top = (img.width - cw) // 2, (img.height - ch) // 2
    img = img.crop((left, top, left + cw, top + ch))
    return img.resize((width, height), Image.Resampling.LANCZOS)


def _check_pixels(img: Image.Image) -> None:
    if img.width * img.height > MAX_INIT_PIXELS:
        raise SdvizError(
            f"The init image is {img.width}x{img.height} pixels ({img.width * img.height / 1e6:.0f} megapixels); "
            f"the most sdviz takes is {MAX_INIT_PIXELS // 1_000_000} megapixels: shrink it first."
        )


def _to_uint8(a: np.ndarray) -> np.ndarray:
    if a.dtype == np.uint8:
        return a
    if a.dtype == np.bool_:
        return a.astype(np.uint8) * 255
    if np.issubdtype(a.dtype, np.floating):
        top = 1.0 if np.nanmax(a) <= 1.0 else 255.0
        return np.clip(np.nan_to_num(a) / top * 255, 0, 255).round().astype(np.uint8)
    top = 65535 if a.max() > 255 else 255
    return np.clip(a.astype(np.float64) / top * 255, 0, 255).round().astype(np.uint8)
