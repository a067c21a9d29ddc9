"""The latent space: what the VAE makes of a picture, and how much smaller that is.

Stable Diffusion never denoises pixels. Its VAE encoder squeezes a picture into a small grid of latent
values (SD: 8x smaller per side, 4 channels instead of 3 colours, so 48x fewer numbers), the U-Net
works on that grid, and the VAE decoder turns it back into a picture. A student may ask whether
this loses information: here a student can see the 4 channels, the numbers, and how close the
round trip picture -> latents -> picture comes to the original.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from matplotlib.figure import Figure
from PIL import Image

from sdviz.pipeline import vae
from sdviz.pipeline.settings import load_init_image


def prepare_picture(model, image, height: int | None = None, width: int | None = None) -> Image.Image:
    """Any picture (path, PIL, array) as 8-bit RGB at the model's size (or the size given)."""
    return load_init_image(image, width or model.recommended.width, height or model.recommended.height)


def encode_picture(model, picture: Image.Image) -> torch.Tensor:
    """Picture -> scaled latents [1, C, h, w]: the mean of the VAE's posterior (no sampling, deterministic)."""
    return vae.encode(model, picture, generator=None)


@dataclass
class LatentReport:
    """One picture's trip through the VAE, with the numbers that explain it."""

    picture: Image.Image  # the input, at the size that was encoded
    latents: torch.Tensor  # [C, h, w] float32, scaled as the U-Net sees them
    decoded: Image.Image  # the VAE decoder's picture of those latents
    vae_scale_factor: int  # pixels per latent value, per side (from the VAE's config)
    scaling_factor: float  # the VAE config's multiplier that gives latents roughly unit variance
    pixel_values: int  # H * W * 3
    latent_values: int  # C * h * w
    mse: float  # mean squared error between input and decode, pixels in [0, 1]
    psnr: float  # peak signal-to-noise ratio of the decode, dB (inf when identical)

    @property
    def ratio(self) -> float:
        """How many times fewer numbers the latents hold than the picture (48 for SD)."""
        return self.pixel_values / self.latent_values

    @property
    def channel_ranges(self) -> list[tuple[float, float]]:
        return [(float(c.min()), float(c.max())) for c in self.latents]


@torch.no_grad()
def explore_latents(model, image, height: int | None = None, width: int | None = None) -> LatentReport:
    """Encode a picture, decode it again, and measure both sides."""
    picture = prepare_picture(model, image, height, width)
    latents = encode_picture(model, picture)
    decoded = vae.decode_to_pil(model, latents)
    mse, psnr = reconstruction_error(picture, decoded)
    return LatentReport(
        picture=picture,
        latents=latents[0].float().cpu(),
        decoded=decoded,
        vae_scale_factor=model.vae_scale_factor,
        scaling_factor=float(model.vae.config.scaling_factor),
        pixel_values=picture.width * picture.height * len(picture.getbands()),
        latent_values=int(latents[0].numel()),
        mse=mse,
        psnr=psnr,
    )


def reconstruction_error(original: Image.Image, decoded: Image.Image) -> tuple[float, float]:
    """MSE (pixels in [0, 1]) and PSNR in dB between two pictures of the same size."""
    a = np.asarray(original.convert("RGB"), dtype=np.float64) / 255
    b = np.asarray(decoded.convert("RGB"), dtype=np.float64) / 255
    mse = float(np.mean((a - b) ** 2))
    psnr = math.inf if mse == 0 else 10 * math.log10(1 / mse)
    return mse, psnr


def describe(report: LatentReport) -> str:
    """The numbers in plain words (Markdown)."""
    c, h, w = report.latents.shape
    f = report.vae_scale_factor
    lo, hi = float(report.latents.min()), float(report.latents.max())
    ranges = ", ".join(f"ch {i}: {a:+.2f} to {b:+.2f}" for i, (a, b) in enumerate(report.channel_ranges))
    psnr = "identical" if math.isinf(report.psnr) else f"{report.psnr:.1f} dB"
    return (
        f"**Picture:** {report.picture.width} x {report.picture.height} pixels x 3 colours = "
        f"**{report.pixel_values:,} numbers**, each 0-255.\n\n"
        f"**Latents:** {w} x {h} x {c} channels = **{report.latent_values:,} numbers**, from {lo:+.2f} to {hi:+.2f} "
        f"({ranges}).\n\n"
        f"The VAE shrinks each side {f}x and keeps {c} channels instead of 3 colours: "
        f"({f} x {f} x 3) / {c} = **{report.ratio:g}x fewer numbers** for the U-Net to work on.\n\n"
        f"Latents are multiplied by the VAE's scaling factor {report.scaling_factor:.5g} so that they have "
        f"roughly unit variance, like the noise they get mixed with.\n\n"
        f"**Round trip** picture -> latents -> picture: mean squared error {report.mse:.5f} "
        f"(pixels scaled to 0-1), PSNR {psnr}. Above about 25 dB the difference is hard to see."
    )


def channels_figure(latents: torch.Tensor, title: str = "latent channels") -> Figure:
    """Each latent channel as its own heat map, on one shared, symmetric colour scale (blue < 0 < red)."""
    z = latents.detach().float().cpu().numpy()
    z = z[0] if z.ndim == 4 else z
    n = z.shape[0]
    limit = float(np.abs(z).max()) or 1.0
    fig = Figure(figsize=(2.2 * n + 0.6, 2.6), layout="constrained")
    axes = fig.subplots(1, n, squeeze=False)[0]
    for i, ax in enumerate(axes):
        shown = ax.imshow(z[i], cmap="RdBu_r", vmin=-limit, vmax=limit, interpolation="nearest")
        ax.set_title(f"channel {i}\n{z[i].min():+.2f} .. {z[i].max():+.2f}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(shown, ax=list(axes), shrink=0.8)
    fig.suptitle(f"{title} ({z.shape[2]} x {z.shape[1]} x {n})", fontsize=10)
    return fig
