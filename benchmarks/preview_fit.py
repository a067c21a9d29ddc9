"""The fast preview for big models: how close it is to the full VAE decode, and how much faster.

- error: mean absolute difference (0-255) between the preview (enlarged with nearest neighbour) and the full
  decode of the same latents: the predicted x0 at a quarter of the run and at the last step, and the final latents,
  of four prompts (red, blue, green, yellow), on the embedded model's VAE. For comparison the same error of the map
  fitted the old way (RGB of random colour cards against their encodes), and the floor: the full decode against its
  own 8x8 block means (what any per-latent-pixel preview at best reaches);
- speed: seconds of one full decode against one preview for an SD-1.5-sized VAE (its real config, random weights,
  512x512 pictures: 64x64x4 latents); random weights make its error meaningless, so it is measured on the embedded
  model's VAE, whose weights are trained.

    python benchmarks/preview_fit.py [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

PROMPTS = [f"a big {colour} circle on the left" for colour in ("red", "blue", "green", "yellow")]


def old_map(model):
    """The map as sdviz fitted it before issue 13: RGB of random colour cards ~ their encodes."""
    from PIL import Image

    from sdviz.pipeline import vae

    f, cells = model.vae_scale_factor, 8
    rng = np.random.default_rng(0)
    cards = rng.uniform(0, 255, size=(12, cells, cells, 3)).astype(np.uint8)
    zs, colours = [], []
    for c in cards:
        img = Image.fromarray(c).resize((cells * f * 2, cells * f * 2), Image.Resampling.NEAREST)
        z = vae.encode(model, img, generator=None)[0].float().cpu().numpy()
        pooled = np.asarray(img, dtype=np.float32).reshape(z.shape[1], f, z.shape[2], f, 3).mean(axis=(1, 3)) / 255
        zs.append(z.reshape(z.shape[0], -1).T)
        colours.append(pooled.reshape(-1, 3))
    z_all, c_all = np.concatenate(zs), np.concatenate(colours)
    design = np.concatenate([z_all, np.ones((len(z_all), 1))], axis=1)
    solution, *_ = np.linalg.lstsq(design, c_all, rcond=None)
    return solution[:-1].astype(np.float32), solution[-1].astype(np.float32)


def errors(model, rgb_maps: dict) -> dict:
    from sdviz.lessons import peek
    from sdviz.pipeline import vae
    from sdviz.pipeline.sampler import generate
    from sdviz.pipeline.settings import RunSettings

    f = model.vae_scale_factor
    found: dict[str, list[float]] = {name: [] for name in [*rgb_maps, "floor (block means of the decode)"]}
    for prompt in PROMPTS:
        trace = generate(model, RunSettings(prompt=prompt, steps=20, guidance_scale=model.recommended.guidance_scale,
                                            seed=0))
        n = len(trace.steps)
        for latents in (trace.steps[n // 4].pred_x0, trace.steps[-1].pred_x0, trace.final_latents):
            full = np.asarray(vae.decode_to_pil(model, latents).convert("RGB"), dtype=np.float32)
            for name, rgb_map in rgb_maps.items():
                preview = np.asarray(peek.enlarge(vae.approx_rgb(rgb_map, latents), f), dtype=np.float32)
                found[name].append(float(np.abs(full - preview).mean()))
            h, w = full.shape[0] // f, full.shape[1] // f
            blocks = full.reshape(h, f, w, f, 3).mean(axis=(1, 3))
            found["floor (block means of the decode)"].append(
                float(np.abs(full - np.repeat(np.repeat(blocks, f, 0), f, 1)).mean()))
    return {name: statistics.mean(v) for name, v in found.items()}


def sd_timing(repeats: int = 2, threads: int = 2) -> dict:
    """On ``threads`` threads: what a real checkpoint gets on the CPU (torch's default on 2 cores)."""
    from diffusers import AutoencoderKL

    from sdviz.pipeline import vae as vae_module

    torch.manual_seed(0)
    sd_vae = AutoencoderKL(  # stable-diffusion-v1-5's vae/config.json
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=[128, 256, 512, 512], layers_per_block=2,
        down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4, norm_num_groups=32,
        sample_size=512, scaling_factor=0.18215,
    ).eval()
    latents = torch.randn(1, 4, 64, 64)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    rgb_map = (np.random.default_rng(0).normal(size=(14, 3)).astype(np.float32), np.zeros(3, np.float32))
    decode, preview = [], []
    with torch.no_grad():
        for _ in range(repeats):
            started = time.perf_counter()
            sd_vae.decode(latents / 0.18215)
            decode.append(time.perf_counter() - started)
            started = time.perf_counter()
            vae_module.approx_rgb(rgb_map, latents)
            preview.append(time.perf_counter() - started)
    torch.set_num_threads(before)
    return {"decode_s": statistics.median(decode), "preview_s": statistics.median(preview), "threads": threads}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    from sdviz.app import services
    from sdviz.pipeline import vae

    model = services.load_for_app("embedded")
    started = time.perf_counter()
    model.derived.pop("rgb_map", None)
    new_map = services.preview_map(model)
    fit_s = time.perf_counter() - started
    model.derived.pop("rgb_map", None)
    generic_map = vae.preview_map(model)  # the generic cards (what a model of another kind gets)
    model.derived["rgb_map"] = new_map
    figures = {"fit_s": fit_s, "error": errors(model, {
        "preview fitted on decodes of the toy world's latents (shipped, embedded model)": new_map,
        "preview fitted on decodes of generic cards' latents (shipped, other models)": generic_map,
        "old preview (random cards' RGB against their encodes)": old_map(model),
    }), "sd15_vae": sd_timing()}
    print("| preview | mean abs error vs the full decode (0-255) |")
    print("|---|---|")
    for name, value in figures["error"].items():
        print(f"| {name} | {value:.1f} |")
    t = figures["sd15_vae"]
    print(f"\nSD-1.5-sized VAE, 512x512, {t['threads']} threads: full decode {t['decode_s']:.2f} s, preview "
          f"{t['preview_s'] * 1000:.2f} ms ({t['decode_s'] / t['preview_s']:.0f}x faster); fitting the embedded "
          f"model's preview {figures['fit_s']:.2f} s")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
