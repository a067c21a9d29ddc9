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


DECODE_CALL_BYTES = 8 << 20  # a batch of decodes goes a few pictures per call, each call's tensors under this size


def decode_batch_to_pil(model, latents: torch.Tensor) -> list[Image.Image]:
    """Several pictures' latents [B, C, h, w] decoded (a batch of users' pictures), a few per VAE call.

    As many per call as keep the decoder's largest tensor (its widest level at full size) under
    ``DECODE_CALL_BYTES``: the server gives every block over 8 MiB a fresh memory map (:mod:`sdviz.app.memory`),
    zeroed page by page. Measured on 2 cores, a class's 60 first-step decodes of the embedded model, alternating in one
    process with that setting: 0.258 s in one call, 0.175 s eight at a time (medians; without it 0.18 s and 0.16 s)."""
    f = model.vae_scale_factor
    widest = max(model.vae.config.block_out_channels) * latents.shape[-2] * f * latents.shape[-1] * f
    per_call = max(1, DECODE_CALL_BYTES // (widest * latents.element_size()))
    pictures = []
    for i in range(0, len(latents), per_call):
        pictures += model.pipe.image_processor.postprocess(decode(model, latents[i : i + per_call]).float(),
                                                           output_type="pil")
    return pictures


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
    """A fast preview: each latent pixel's colour as a function of its channels (``rgb_map``, fitted by
    :func:`preview_map`: linear in the channels, their squares and their products). Returns uint8 [h, w, 3] at
    latent resolution (upscale for display); no decoder."""
    weights, bias = rgb_map
    z = latents.detach().float().cpu().numpy()
    z = z[0] if z.ndim == 4 else z
    rgb = np.einsum("chw,cd->hwd", preview_features(z)[: len(weights)], weights) + bias
    return (np.clip(rgb, 0, 1) * 255).round().astype(np.uint8)


def preview_features(z: np.ndarray) -> np.ndarray:
    """[C, h, w] latents -> [C + C(C+1)/2, h, w]: the channels, then every product of two (squares included)."""
    c = z.shape[0]
    products = [z[i] * z[j] for i in range(c) for j in range(i, c)]
    return np.concatenate([z, np.stack(products)]) if products else z


def preview_map(model, cards: list[Image.Image] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Fit RGB ~ features(latents) @ W + b by least squares on the model's own VAE (cached in ``model.derived``):
    the features are the channels, their squares and their products (:func:`preview_features`).

    The data are *real* latents, the encodes of pictures like the ones the model makes (flat shapes on plain
    backgrounds, and gradients; ``cards``, when the caller knows better, e.g. the embedded model's own world), and
    the target is what the VAE's decoder makes of them (averaged over each latent
    pixel's block): the map imitates the decoder, not the encoder's input. (Fitting on random colour cards put the
    toy world's white background at about (255, 124, 109).) Its error against the full decode is measured by
    ``benchmarks/preview_fit.py`` (docs/app.md)."""
    with model.lock:
        if "rgb_map" in model.derived:
            return model.derived["rgb_map"]
    f = model.vae_scale_factor
    zs, colours = [], []
    for card in cards or preview_cards(size=16 * f):
        z = encode(model, card, generator=None)  # [1, C, 16, 16]
        decoded = (decode(model, z)[0].float().clamp(-1, 1).cpu().numpy() + 1) / 2  # [3, H, W] in [0, 1]
        c, h, w = z.shape[1:]
        pooled = decoded.reshape(3, h, f, w, f).mean(axis=(2, 4))  # [3, h, w]
        features = preview_features(z[0].float().cpu().numpy())
        zs.append(features.reshape(len(features), -1).T)
        colours.append(pooled.reshape(3, -1).T)
    z_all, c_all = np.concatenate(zs), np.concatenate(colours)
    design = np.concatenate([z_all, np.ones((len(z_all), 1))], axis=1)
    solution, *_ = np.linalg.lstsq(design, c_all, rcond=None)
    result = (solution[:-1].astype(np.float32), solution[-1].astype(np.float32))
    with model.lock:
        model.derived["rgb_map"] = result
    return result


def preview_cards(size: int, n: int = 16, seed: int = 0) -> list[Image.Image]:
    """Pictures to fit the preview on: one to three flat shapes on a plain light background (the embedded model's
    world and any simple drawing), and smooth colour gradients."""
    from PIL import ImageDraw

    rng = np.random.default_rng(seed)
    cards = []
    for i in range(n):
        if i % 4 == 3:  # a gradient between two random colours
            a, b = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
            t = np.linspace(0, 1, size)[None, :, None] * np.ones((size, 1, 1))
            t = t if i % 8 == 3 else t.transpose(1, 0, 2)
            cards.append(Image.fromarray((a + t * (b - a)).astype(np.uint8)))
            continue
        card = Image.new("RGB", (size, size), tuple(int(v) for v in rng.uniform(120, 250, 3)))
        pen = ImageDraw.Draw(card)
        for _ in range(int(rng.integers(1, 4))):
            x0, y0 = rng.uniform(0, 0.7, 2) * size
            side = rng.uniform(0.2, 0.5) * size
            box = [x0, y0, x0 + side, y0 + side]
            colour = tuple(int(v) for v in rng.uniform(0, 255, 3))
            kind = int(rng.integers(3))
            if kind == 0:
                pen.ellipse(box, fill=colour)
            elif kind == 1:
                pen.rectangle(box, fill=colour)
            else:
                pen.polygon([(x0 + side / 2, y0), (x0, y0 + side), (x0 + side, y0 + side)], fill=colour)
        cards.append(card)
    return cards
