"""The VAE: pictures <-> latents. SD's VAE shrinks 8x per side and keeps 4 channels: 48x fewer numbers.

The denoising loop works entirely on latents; only the start of image-to-image (encode) and the end of
every run (decode) touch pixels. For live previews there is also a cheap linear latent -> RGB
approximation, fitted once per model; it is labelled as an approximation wherever it is shown.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from PIL import Image


def compression_ratio(model) -> float:
    """Numbers in a picture / numbers in its latents: (8 * 8 * 3) / 4 = 48 for SD's VAE."""
    f = model.vae_scale_factor
    return f * f * model.vae.config.in_channels / model.vae.config.latent_channels


@torch.no_grad()
def encode(model, image: Image.Image, generator: torch.Generator | None) -> torch.Tensor:
    """Picture -> scaled latents, sampled from the VAE's posterior as diffusers' img2img does."""
    pixels = model.pipe.image_processor.preprocess(image).to(device=model.device, dtype=model.dtype)
    posterior = model.vae.encode(pixels).latent_dist
    latents = posterior.sample(generator) if generator is not None else posterior.mode()
    return latents * model.vae.config.scaling_factor


@torch.no_grad()
def decode(model, latents: torch.Tensor) -> torch.Tensor:
    """Scaled latents -> picture tensor in [-1, 1], [B, 3, H, W]. Kept free of float16 overflow."""
    latents = latents.to(device=model.device, dtype=model.dtype)
    image = model.vae.decode(latents / model.vae.config.scaling_factor, return_dict=False)[0]
    if model.dtype != torch.float32 and not torch.isfinite(image).all():
        image = _float32_vae(model).decode(latents.float() / model.vae.config.scaling_factor, return_dict=False)[0]
    return image


def to_pil(model, image: torch.Tensor) -> Image.Image:
    """The same conversion as the diffusers pipeline's output (so final images match it exactly)."""
    return model.pipe.image_processor.postprocess(image.float(), output_type="pil")[0]


def decode_to_pil(model, latents: torch.Tensor) -> Image.Image:
    if latents.dim() == 3:
        latents = latents[None]
    return to_pil(model, decode(model, latents))


def _float32_vae(model):
    with model.lock:
        if "vae_float32" not in model.derived:
            model.derived["vae_float32"] = copy.deepcopy(model.vae).float()
        return model.derived["vae_float32"]


def approx_rgb(rgb_map: tuple[np.ndarray, np.ndarray], latents: torch.Tensor) -> np.ndarray:
    """A fast preview: each latent pixel's colour as a linear function of its channels (``rgb_map``, fitted
    by :func:`preview_map`). Returns uint8 [h, w, 3] at latent resolution (upscale for display); no decoder."""
    weights, bias = rgb_map
    z = latents.detach().float().cpu().numpy()
    z = z[0] if z.ndim == 4 else z
    rgb = np.einsum("chw,cd->hwd", z, weights) + bias
    return (np.clip(rgb, 0, 1) * 255).round().astype(np.uint8)


def preview_map(model) -> tuple[np.ndarray, np.ndarray]:
    """Fit RGB ~ latents @ W + b on colourful test cards encoded by the model's own VAE (cached)."""
    with model.lock:
        if "rgb_map" in model.derived:
            return model.derived["rgb_map"]
    f = model.vae_scale_factor
    rng = np.random.default_rng(0)
    cells = 8
    cards = rng.uniform(0, 255, size=(12, cells, cells, 3)).astype(np.uint8)
    images = [Image.fromarray(c).resize((cells * f * 2, cells * f * 2), Image.Resampling.NEAREST) for c in cards]
    zs, colours = [], []
    for img in images:
        z = encode(model, img, generator=None)[0].float().cpu().numpy()  # [C, 16, 16]
        pooled = np.asarray(img, dtype=np.float32).reshape(z.shape[1], f, z.shape[2], f, 3).mean(axis=(1, 3)) / 255
        zs.append(z.reshape(z.shape[0], -1).T)
        colours.append(pooled.reshape(-1, 3))
    z_all, c_all = np.concatenate(zs), np.concatenate(colours)
    design = np.concatenate([z_all, np.ones((len(z_all), 1))], axis=1)
    solution, *_ = np.linalg.lstsq(design, c_all, rcond=None)
    result = (solution[:-1].astype(np.float32), solution[-1].astype(np.float32))
    with model.lock:
        model.derived["rgb_map"] = result
    return result
