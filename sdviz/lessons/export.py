"""A run as one zip file, for slides and notebooks: the app's Export tab and ``generate --bundle`` write it.

    final.png, settings.json, trace.npz (and init.png)   what Trace.save writes: the picture, how to
                                                         reproduce it, and every step's tensors
    animation.gif                                        x_t and the predicted x0 at every step
    schedule.png                                         the noise level and the latents' statistics per step
    steps/step_NN_tTTT/                                  each step's panels, as the app's peek panel shows them
    README.txt                                           what each file is, and how to load trace.npz

The per-step pictures come from :mod:`sdviz.lessons.peek` (the peek panel's own renderers): latent channels in
signed colours, and the fast approximate RGB previews (labelled approximate; no VAE decoder).
"""

from __future__ import annotations

import io
import tempfile
import zipfile
from pathlib import Path

from PIL import Image

from sdviz.errors import SdvizError
from sdviz.lessons import peek
from sdviz.pipeline import vae
from sdviz.pipeline.trace import Trace

README = """\
sdviz run bundle
================
prompt:  {prompt}
model:   {model}   scheduler: {scheduler}   steps: {steps}   guidance scale: {guidance}   seed: {seed}

final.png        the picture (full VAE decode of the final latents)
init.png         the starting picture (image to image only)
settings.json    everything needed to reproduce the run (python -m sdviz generate ... with these values)
trace.npz        every step's tensors (numpy.load): timesteps [N], sigmas [N], latents [N+1, C, h, w]
                 (each step's input x_t, then the final latents), noise_uncond, noise_text, noise_guided,
                 pred_x0 [N, C, h, w] (noise_uncond is NaN when guidance was off)
animation.gif    x_t (left) and the predicted clean latents x0 (right) at every step, approximate colours
schedule.png     the noise level sigma per step, and the latents' statistics
steps/           one folder per step:
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


def write_bundle(model, trace: Trace, path: str | Path) -> Path:
    """Write the run's zip to ``path`` (parent folders are created) and return the path."""
    path = Path(path)
    if path.suffix.lower() != ".zip":
        raise SdvizError(f"The bundle must be a .zip file (got {str(path)!r}).")
    if not trace.steps:
        raise SdvizError("This run has no steps to export.")
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb_map = vae.preview_map(model)  # the approximate colours' map, fitted once per model
    with tempfile.TemporaryDirectory() as tmp, zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        saved = trace.save(tmp)  # final.png, settings.json, trace.npz (and init.png): exactly the CLI's files
        for file in sorted(saved.iterdir()):
            zf.write(file, file.name)
        zf.writestr("animation.gif", peek.run_animation(rgb_map, trace))
        figure = peek.schedule_figure(trace.steps, current=len(trace.steps) - 1, total=len(trace.steps))
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=100)
        zf.writestr("schedule.png", buffer.getvalue())
        total = len(trace.steps)
        for record in trace.steps:
            folder = step_folder(record.index, record.timestep)
            frame = peek.peek_frame(rgb_map, record, total)
            zf.writestr(f"{folder}/x_t.png", _png(frame.latents))
            zf.writestr(f"{folder}/x_t_rgb.png", _png(frame.latents_rgb))
            zf.writestr(f"{folder}/pred_x0_rgb.png", _png(frame.pred_x0_rgb))
            for kind, picture in frame.noise.items():
                if picture is not None:
                    zf.writestr(f"{folder}/{NOISE_FILES[kind]}", _png(picture))
            zf.writestr(f"{folder}/numbers.md", peek.numbers_markdown(frame.numbers) + "\n")
        s = trace.settings
        zf.writestr("README.txt", README.format(prompt=s.prompt, model=trace.model, scheduler=trace.scheduler,
                                                steps=len(trace.steps), guidance=s.guidance_scale, seed=s.seed))
    return path


def bundle_name(trace: Trace) -> str:
    """A file name that says what the run was: sdviz-seed3-g7.5-20steps.zip."""
    return f"sdviz-seed{trace.settings.seed}-g{trace.settings.guidance_scale:g}-{len(trace.steps)}steps.zip"
