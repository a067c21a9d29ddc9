"""What does recording every step cost? sdviz's loop (full trace) against diffusers' own pipeline.

Both run the same SD-1.5-sized parts — UNet, VAE and CLIP text encoder built from SD 1.5's real
configs with random weights (nothing is downloaded) — at 256x256, 10 steps, CFG 7.5, on the CPU.
Runs alternate (pipeline, sdviz, pipeline, ...) so machine noise hits both alike; the figure is the
median of the per-pair ratios sdviz / pipeline.

    python benchmarks/sampler_overhead.py            # the full measurement (a few minutes)
    python benchmarks/sampler_overhead.py --quick    # a small stand-in model, seconds
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from sdviz.pipeline.models import load_model  # noqa: E402
from sdviz.pipeline.sampler import generate  # noqa: E402
from sdviz.pipeline.settings import RunSettings  # noqa: E402
from sdviz.toy import model as toy_model  # noqa: E402

# SD 1.5's configs (stable-diffusion-v1-5/stable-diffusion-v1-5, unet/vae/text_encoder config.json)
SD15_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32,
)
SD15_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, sample_size=512,
    scaling_factor=0.18215,
)
SD15_TEXT = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                 max_position_embeddings=77, vocab_size=49408, hidden_act="quick_gelu", projection_dim=768)
SD15_SCHEDULER = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", skip_prk_steps=True,
                      steps_offset=1, set_alpha_to_one=False)
QUICK_UNET = dict(SD15_UNET, block_out_channels=(32, 64, 64, 64), cross_attention_dim=64, layers_per_block=1)
QUICK_VAE = dict(SD15_VAE, block_out_channels=(16, 32, 32, 32), layers_per_block=1, norm_num_groups=16)
QUICK_TEXT = dict(SD15_TEXT, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                  projection_dim=64)


def build(folder: Path, quick: bool) -> None:
    torch.manual_seed(0)
    tokenizer = toy_model.build_tokenizer(max_length=77)
    text_config = CLIPTextConfig(**(QUICK_TEXT if quick else SD15_TEXT), bos_token_id=0, eos_token_id=1, pad_token_id=1)
    StableDiffusionPipeline(
        vae=AutoencoderKL(**(QUICK_VAE if quick else SD15_VAE)),
        text_encoder=CLIPTextModel(text_config),
        tokenizer=tokenizer,
        unet=UNet2DConditionModel(**(QUICK_UNET if quick else SD15_UNET)),
        scheduler=PNDMScheduler(**SD15_SCHEDULER),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    ).save_pretrained(folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a small stand-in model (checks the script)")
    parser.add_argument("--pairs", type=int, default=5, help="alternating pipeline/sdviz pairs")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as folder:
        build(Path(folder), args.quick)
        model = load_model(folder, device="cpu", dtype=torch.float32)
        pipe = StableDiffusionPipeline(**model.pipe.components)
        pipe.set_progress_bar_config(disable=True)
        settings = RunSettings(prompt="a big red circle on the left", steps=10, guidance_scale=7.5, seed=0,
                               height=256, width=256)

        def run_pipeline() -> float:
            start = time.perf_counter()
            pipe(settings.prompt, num_inference_steps=10, guidance_scale=7.5, height=256, width=256,
                 generator=torch.Generator().manual_seed(0))
            return time.perf_counter() - start

        def run_sdviz() -> float:
            start = time.perf_counter()
            generate(model, settings)
            return time.perf_counter() - start

        run_pipeline(), run_sdviz()  # warm-up: first calls allocate and pick kernels
        pipeline_times, sdviz_times, ratios = [], [], []
        for i in range(args.pairs):
            # alternate which goes first, so drift in machine load favours neither
            if i % 2 == 0:
                p, s = run_pipeline(), run_sdviz()
            else:
                s, p = run_sdviz(), run_pipeline()
            pipeline_times.append(p)
            sdviz_times.append(s)
            ratios.append(s / p)
            print(f"pair {i + 1}: pipeline {p:.2f} s, sdviz {s:.2f} s, ratio {s / p:.3f}", flush=True)
        trace = generate(model, settings)
    kind = "quick stand-in" if args.quick else "SD-1.5-sized (random weights)"
    print(f"\n{kind}, 256x256, 10 steps, CFG 7.5, CPU, {args.threads} threads, {args.pairs} pairs")
    print(f"median pipeline {statistics.median(pipeline_times):.2f} s, median sdviz {statistics.median(sdviz_times):.2f} s")
    print(f"median ratio sdviz/pipeline: {statistics.median(ratios):.3f} (target <= 1.03)")
    print(f"trace memory: {trace.nbytes() / 2**20:.2f} MB for {len(trace.steps)} steps")


if __name__ == "__main__":
    main()
