"""A run as one zip file, for slides and notebooks: the app's Export tab and ``generate --bundle`` write it.

    final.png, settings.json, trace.npz (and init.png)   what Trace.save writes: the picture, how to
                                                         reproduce it, and every step's tensors
    animation.gif                                        x_t and the predicted x0 at every step (VAE decodes)
    schedule.png                                         the noise level and the latents' statistics per step
    steps/step_NNN_tTTTT/                                each step's real VAE decodes of x_t and x0, large, and
                                                         its panels as the app's peek panel shows them
    README.txt                                           what each file is, and how to load trace.npz

The decodes are the VAE decoder's full pictures (enlarged with sharp pixels to at least :data:`SLIDE_SIDE`
pixels when the model's pictures are smaller); the panels come from :mod:`sdviz.lessons.peek` (latent channels
in signed colours, noise estimates, and the fast approximate RGB previews, labelled approximate).
"""

from __future__ import annotations

import io
import math
import tempfile
import zipfile
from pathlib import Path

from PIL import Image

from sdviz.errors import SdvizError
from sdviz.lessons import peek
from sdviz.pipeline import vae
from sdviz.pipeline.trace import Trace

SLIDE_SIDE = 512  # decodes smaller than this are enlarged (sharp pixels) for slides

README = """\
sdviz run bundle
================
prompt:  {prompt}
model:   {model}   scheduler: {scheduler}   steps: {steps}   guidance scale: {guidance}   seed: {seed}
{steps_note}
final.png        the picture (full VAE decode of the final latents)
init.png         the starting picture (image to image only)
settings.json    everything needed to reproduce the run (python -m sdviz generate ... with these values)
trace.npz        every step's tensors (numpy.load): timesteps [N], sigmas [N], latents [N+1, C, h, w]
                 (each step's input x_t, then the final latents), noise_uncond, noise_text, noise_guided,
                 pred_x0 [N, C, h, w] (noise_uncond is NaN when guidance was off)
animation.gif    x_t (left) and the predicted clean latents x0 (right) at every step: real VAE decodes
schedule.png     the noise level sigma per step, and the latents' statistics
steps/           one folder per step (NNN = the step, TTTT = its timestep):
  x_t_decode.png          the latents entering the step, VAE decode{enlarged}
  x0_decode.png           the clean picture this step aims at (predicted x0), VAE decode{enlarged}
  x_t.png                 the latents entering the step, channel by channel (red > 0 > blue)
  x_t_rgb.png             the same latents in approximate colours (a linear map, not the VAE decoder)
  pred_x0_rgb.png         the clean latents this step aims at, approximate colours
  noise_uncond.png        the U-Net's noise estimate without the prompt (with guidance only)
  noise_text.png          the U-Net's noise estimate with the prompt
  guidance_direction.png  text - uncond: the direction classifier-free guidance pushes along
  noise_guided.png        uncond + g * (text - uncond): what the scheduler used
  numbers.md              the step's numbers (timestep, sigma, statistics, colour scales)

In a notebook:
    import numpy as np; t = np.load("trace.npz"); t["latents"].shape
"""

NOISE_FILES = {"uncond": "noise_uncond.png", "text": "noise_text.png", "direction": "guidance_direction.png",
               "guided": "noise_guided.png"}


def _png(picture: Image.Image) -> bytes:
    out = io.BytesIO()
    picture.save(out, format="PNG")
    return out.getvalue()


def step_folder(index: int, timestep: float) -> str:
    return f"steps/step_{index + 1:03d}_t{timestep:04.0f}"


def step_decodes(model, trace: Trace) -> list[tuple[Image.Image, Image.Image]]:
    """Every step's x_t and predicted x0 through the VAE decoder, at the model's own size."""
    return [(vae.decode_to_pil(model, r.latents), vae.decode_to_pil(model, r.pred_x0)) for r in trace.steps]


def for_slides(picture: Image.Image, side: int = SLIDE_SIDE) -> Image.Image:
    """A picture enlarged by a whole factor (sharp pixels) to at least ``side`` pixels; larger ones as they are."""
    factor = math.ceil(side / max(picture.size))
    if factor <= 1:
        return picture
    return picture.resize((picture.width * factor, picture.height * factor), Image.Resampling.NEAREST)


def steps_note(trace: Trace, short: bool = False) -> str:
    """Why the run made one step more than its settings ask for (PNDM visits its first noise level twice), or ''.
    ``short``: a few words for a slider's label."""
    asked, ran = trace.settings.steps, len(trace.steps)
    img2img = trace.init_image is not None
    expected = int(asked * trace.settings.strength) if img2img else asked
    if ran != expected + 1:
        return ""
    if short:
        return "PNDM makes one more than asked"
    asked_words = (f"{asked} steps at strength {trace.settings.strength:g} make {expected}" if img2img
                   else f"{asked} steps were asked for")
    return (f"{asked_words} and {ran} ran: the PNDM scheduler visits its first noise level twice "
            "(a warm-up step for its multistep formula), so it asks the U-Net one more time.")


def write_bundle(model, trace: Trace, path: str | Path,
                 decodes: list[tuple[Image.Image, Image.Image]] | None = None) -> Path:
    """Write the run's zip to ``path`` (parent folders are created) and return the path. ``decodes``: every step's
    (x_t, x0) VAE decodes when the caller made them already (:func:`step_decodes`); else they are made here."""
    path = Path(path)
    if path.suffix.lower() != ".zip":
        raise SdvizError(f"The bundle must be a .zip file (got {str(path)!r}).")
    if not trace.steps:
        raise SdvizError("This run has no steps to export.")
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb_map = vae.preview_map(model)  # the approximate colours' map, fitted once per model
    decodes = step_decodes(model, trace) if decodes is None else decodes
    if len(decodes) != len(trace.steps):
        raise SdvizError(f"{len(decodes)} decodes for a run of {len(trace.steps)} steps.")
    enlarged = for_slides(trace.image).size != trace.image.size
    with tempfile.TemporaryDirectory() as tmp, zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        saved = trace.save(tmp)  # final.png, settings.json, trace.npz (and init.png): exactly the CLI's files
        for file in sorted(saved.iterdir()):
            zf.write(file, file.name)
        zf.writestr("animation.gif", peek.decoded_animation(trace, decodes))
        figure = peek.schedule_figure(trace.steps, current=len(trace.steps) - 1, total=len(trace.steps))
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=150)
        zf.writestr("schedule.png", buffer.getvalue())
        total = len(trace.steps)
        for record, (x_t, x0) in zip(trace.steps, decodes, strict=True):
            folder = step_folder(record.index, record.timestep)
            zf.writestr(f"{folder}/x_t_decode.png", _png(for_slides(x_t)))
            zf.writestr(f"{folder}/x0_decode.png", _png(for_slides(x0)))
            frame = peek.peek_frame(rgb_map, record, total)
            zf.writestr(f"{folder}/x_t.png", _png(frame.latents))
            zf.writestr(f"{folder}/x_t_rgb.png", _png(frame.latents_rgb))
            zf.writestr(f"{folder}/pred_x0_rgb.png", _png(frame.pred_x0_rgb))
            for kind, picture in frame.noise.items():
                if picture is not None:
                    zf.writestr(f"{folder}/{NOISE_FILES[kind]}", _png(picture))
            zf.writestr(f"{folder}/numbers.md", peek.numbers_markdown(frame.numbers) + "\n")
        s = trace.settings
        note = steps_note(trace)
        factor = math.ceil(SLIDE_SIDE / max(trace.image.size))
        zf.writestr("README.txt", README.format(
            prompt=s.prompt, model=trace.model, scheduler=trace.scheduler, steps=len(trace.steps),
            guidance=s.guidance_scale, seed=s.seed, steps_note=f"{note}\n" if note else "",
            enlarged=(f", enlarged {factor}x from {trace.image.width}x{trace.image.height} (sharp pixels)"
                      if enlarged else "")))
    return path


def bundle_name(trace: Trace) -> str:
    """A file name that says what the run was: sdviz-seed3-g7.5-20steps.zip."""
    return f"sdviz-seed{trace.settings.seed}-g{trace.settings.guidance_scale:g}-{len(trace.steps)}steps.zip"
