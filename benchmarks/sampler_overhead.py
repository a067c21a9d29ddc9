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
from diffusers import StableDiffusionPipeline

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.sd15 import build  # noqa: E402
from sdviz.pipeline.models import load_model  # noqa: E402
from sdviz.pipeline.sampler import generate  # noqa: E402
from sdviz.pipeline.settings import RunSettings  # noqa: E402


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
