"""Forward diffusion: noise a picture's latents up to any timestep t, with the model's own schedule.

Picture a drop of ink spreading on tissue paper: step by step the picture is
mixed with Gaussian noise until nothing of it is left. In latent space, at timestep t,

    x_t = sqrt(alpha_bar_t) * x0 + sqrt(1 - alpha_bar_t) * noise

where alpha_bar_t falls from almost 1 (t = 0: almost all picture) to almost 0 (t = 999: almost all
noise). No network is involved in this direction; it is what training does to every picture, and the
U-Net learns to undo it. Here the scheduler's own ``add_noise`` does the mixing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from diffusers.utils.torch_utils import randn_tensor
from matplotlib.figure import Figure
from PIL import Image

from sdviz.errors import SdvizError
from sdviz.lessons.latent_space import encode_picture, prepare_picture
from sdviz.pipeline import vae
from sdviz.pipeline.schedulers import current_sigma, make_scheduler, variance_preserving


@dataclass
class NoisedPicture:
    """A picture's latents at one point of the forward process."""

    timestep: int  # the t used (the nearest one the scheduler has, for schedulers with a timestep table)
    signal_level: float  # sqrt(alpha_bar_t): how much of the picture is left
    noise_level: float  # sqrt(1 - alpha_bar_t): how much noise is mixed in
    sigma: float  # noise std relative to the signal, sqrt((1 - alpha_bar_t) / alpha_bar_t)
    picture: Image.Image  # the input at the size that was encoded
    clean_latents: torch.Tensor  # x0, [C, h, w] float32
    noisy_latents: torch.Tensor  # x_t as the U-Net sees it (variance preserving), [C, h, w] float32
    image: Image.Image  # the VAE's decode of the noisy latents


@dataclass
class ScheduleLevels:
    """The whole noise schedule: signal and noise level at every training timestep."""

    timesteps: np.ndarray  # 0 .. T-1
    signal: np.ndarray  # sqrt(alpha_bar_t)
    noise: np.ndarray  # sqrt(1 - alpha_bar_t)


def schedule_levels(model, scheduler: str | None = None) -> ScheduleLevels:
    alphas_cumprod = make_scheduler(model, scheduler).alphas_cumprod.double().numpy()
    return ScheduleLevels(
        timesteps=np.arange(len(alphas_cumprod)),
        signal=np.sqrt(alphas_cumprod),
        noise=np.sqrt(1 - alphas_cumprod),
    )


@torch.no_grad()
def noise_picture(model, image, t: int, seed: int = 0, scheduler: str | None = None) -> NoisedPicture:
    """Encode a picture and add the noise of timestep ``t`` to its latents, then decode what is left."""
    picture = prepare_picture(model, image)
    clean = encode_picture(model, picture)
    noisy, t_used, sigma = add_noise(model, clean, t, seed, scheduler)
    alpha_bar = 1 / (1 + sigma**2)
    return NoisedPicture(
        timestep=t_used,
        signal_level=alpha_bar**0.5,
        noise_level=(1 - alpha_bar) ** 0.5,
        sigma=sigma,
        picture=picture,
        clean_latents=clean[0].float().cpu(),
        noisy_latents=noisy[0].float().cpu(),
        image=vae.decode_to_pil(model, noisy),
    )


def add_noise(model, clean: torch.Tensor, t: int, seed: int = 0,
              scheduler: str | None = None) -> tuple[torch.Tensor, int, float]:
    """x0 [1, C, h, w] -> (x_t in the variance-preserving form, the t used, sigma), by the scheduler's add_noise."""
    s = make_scheduler(model, scheduler)
    n_train = s.config.num_train_timesteps
    if isinstance(t, bool) or not isinstance(t, (int, np.integer)) or not 0 <= t < n_train:
        raise SdvizError(f"The timestep must be a whole number from 0 to {n_train - 1} (got {t!r}).")
    # Euler- and DPM-type schedulers look t up in their table of inference timesteps, so the table must
    # exist: ask for every training timestep and take the nearest one there is.
    s.set_timesteps(n_train, device=clean.device)
    table = s.timesteps.float().cpu()
    timestep = s.timesteps[int(torch.argmin((table - t).abs()))].reshape(1)
    generator = torch.Generator("cpu").manual_seed(seed)
    noise = randn_tensor(clean.shape, generator=generator, device=clean.device, dtype=clean.dtype)
    noisy = s.add_noise(clean, noise, timestep)
    # Euler-type schedulers keep x0 + sigma * noise; as their scale_model_input does, divide by sqrt(sigma^2 + 1),
    # which gives the variance-preserving mix above, the same for every scheduler (and as the peek panel shows x_t).
    s.scale_model_input(noisy, timestep[0])  # only to set the step index that current_sigma reads
    sigma = current_sigma(s, timestep[0])
    return variance_preserving(s, noisy, sigma), int(round(float(timestep[0]))), sigma


def schedule_figure(levels: ScheduleLevels, t: int | None = None) -> Figure:
    """Signal and noise level against t, with the chosen t marked: the ink spreading."""
    fig = Figure(figsize=(6, 3.2), layout="constrained")
    ax = fig.subplots()
    ax.plot(levels.timesteps, levels.signal, color="tab:blue", label="signal  sqrt(alpha_bar_t)")
    ax.plot(levels.timesteps, levels.noise, color="tab:red", label="noise  sqrt(1 - alpha_bar_t)")
    if t is not None:
        t = int(np.clip(t, 0, len(levels.timesteps) - 1))
        ax.axvline(t, color="black", linestyle="--", linewidth=1)
        ax.plot([t, t], [levels.signal[t], levels.noise[t]], "o", color="black")
        ax.annotate(f"t = {t}\nsignal {levels.signal[t]:.2f}\nnoise {levels.noise[t]:.2f}", (t, 0.5),
                    xytext=(6, 0), textcoords="offset points", fontsize=8, va="center")
    ax.set_xlabel("timestep t (0 = clean picture, right = pure noise)")
    ax.set_ylabel("level")
    ax.set_ylim(0, 1.05)
    ax.set_xlim(0, len(levels.timesteps) - 1)
    ax.legend(loc="lower left", fontsize=8)
    ax.set_title("the noise schedule", fontsize=10)
    return fig


def describe(result: NoisedPicture) -> str:
    share = result.noise_level**2  # the noise's share of the variance
    return (
        f"**t = {result.timestep}**: the latents are {result.signal_level:.3f} x picture + "
        f"{result.noise_level:.3f} x noise (noise is {share:.0%} of the variance; sigma = {result.sigma:.3g}). "
        "Move t to the right and the picture dissolves, like ink spreading through tissue paper; the "
        "U-Net is trained to look at such a mix and say which part is noise."
    )
