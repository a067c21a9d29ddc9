"""The GPU check, for when a CUDA machine is at hand (never run by the tests).

SD-1.5-sized parts (U-Net, VAE and CLIP text encoder from SD 1.5's real configs, random weights, nothing
downloaded: benchmarks/sd15.py) at 512x512 in float16, 25 steps, CFG 7.5, on ``cuda``:

- speed: diffusers' own StableDiffusionPipeline on the same parts, against sdviz's loop with its full trace
  (``sampler.generate``, the CLI's) and against the app's streaming path with the peek panel on
  (``playground.live_run``), in U-Net steps per second; runs alternate, medians of per-run figures
  (target: sdviz within 5% of diffusers);
- the picture: sdviz's against diffusers' (max pixel difference; 0 or 1 expected);
- float16 decode: does the VAE's float16 decode of the final latents hold NaN or inf (then sdviz's
  ``vae.decode`` falls back to a float32 copy of the VAE, which this reports too);
- attention capture (``capture.capture_run``): its cost against a plain run;
- peak GPU memory of each phase (``torch.cuda.max_memory_allocated``).

The app path loads the model as the app does (the device's default dtype: float16 on CUDA), so with other
``--device``/``--dtype`` values it holds a second copy.

    python benchmarks/gpu_check.py                        # the full check, a few minutes on a modern GPU
    python benchmarks/gpu_check.py --json gpu.json        # also write the figures
    python benchmarks/gpu_check.py --quick --device cpu --dtype float32 --side 64 --steps 3   # checks the script
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.sd15 import build  # noqa: E402
from sdviz.pipeline import capture, vae  # noqa: E402
from sdviz.pipeline.models import load_model, use_cpu_threads  # noqa: E402
from sdviz.pipeline.sampler import generate  # noqa: E402
from sdviz.pipeline.schedulers import make_scheduler  # noqa: E402
from sdviz.pipeline.settings import RunSettings  # noqa: E402

PROMPT = "a big red circle on the left"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="float16")
    parser.add_argument("--side", type=int, default=512)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--runs", type=int, default=3, help="timed runs of each kind, alternating")
    parser.add_argument("--quick", action="store_true", help="a small stand-in model (checks the script)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device here (torch.cuda.is_available() is False).")

    import gradio as gr
    from diffusers import StableDiffusionPipeline

    from sdviz.app import components, playground

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    def reset_peak() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()

    def peak_mb() -> float | None:
        return round(torch.cuda.max_memory_allocated() / 2**20) if device.type == "cuda" else None

    def timed(fn):
        sync()
        start = time.perf_counter()
        out = fn()
        sync()
        return time.perf_counter() - start, out

    with tempfile.TemporaryDirectory() as folder:
        build(Path(folder), args.quick)
        model = load_model(folder, device=device, dtype=args.dtype)
        use_cpu_threads(model)
        settings = RunSettings(prompt=PROMPT, steps=args.steps, guidance_scale=7.5, seed=0, height=args.side,
                               width=args.side)
        pipe = StableDiffusionPipeline(**{**model.pipe.components, "scheduler": make_scheduler(model)})
        pipe.set_progress_bar_config(disable=True)
        with gr.Blocks():
            panel = components.peek_panel()
            final = gr.Image()
            run_state = gr.State()

        def run_pipeline():
            return pipe(PROMPT, num_inference_steps=args.steps, guidance_scale=7.5, height=args.side, width=args.side,
                        generator=torch.Generator("cpu").manual_seed(0)).images[0]

        def run_app():
            updates = list(playground.live_run(panel, final, run_state, folder, settings))
            return updates[-1][run_state]

        kinds = {"diffusers": run_pipeline, "sdviz": lambda: generate(model, settings), "app": run_app}
        for fn in kinds.values():  # warm-up: kernels, allocator, preview colours
            fn()
        seconds = {name: [] for name in kinds}
        peaks = {}
        outputs = {}
        for i in range(args.runs):
            order = list(kinds) if i % 2 == 0 else list(reversed(kinds))
            for name in order:
                reset_peak()
                s, outputs[name] = timed(kinds[name])
                seconds[name].append(s)
                peaks[name] = max(peaks.get(name) or 0, peak_mb() or 0) or None
        passes = len(outputs["sdviz"].steps)
        its = {name: round(passes / statistics.median(times), 3) for name, times in seconds.items()}

        trace = outputs["sdviz"]
        ours = np.asarray(trace.image, dtype=int)
        theirs = np.asarray(outputs["diffusers"], dtype=int)
        latents = trace.final_latents[None].to(device=device, dtype=model.dtype)
        with torch.no_grad():
            raw = model.vae.decode(latents / model.vae.config.scaling_factor, return_dict=False)[0]
        decoded = vae.decode(model, trace.final_latents[None])

        reset_peak()
        plain_s, _ = timed(lambda: generate(model, settings))
        capture_s, (_, maps) = timed(lambda: capture.capture_run(model, settings))
        capture_peak = peak_mb()

    result = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "model": "quick stand-in" if args.quick else "SD-1.5-sized (random weights)",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "dtype": str(model.dtype).replace("torch.", ""), "side": args.side, "steps": args.steps,
        "unet_passes": passes, "runs": args.runs, "torch": torch.__version__,
        "steps_per_s": its,
        "sdviz_vs_diffusers": round(its["sdviz"] / its["diffusers"], 3),
        "app_vs_diffusers": round(its["app"] / its["diffusers"], 3),
        "max_pixel_difference_sdviz_diffusers": int(np.abs(ours - theirs).max()),
        "trace_finite": all(bool(torch.isfinite(s.pred_x0.float()).all()) for s in trace.steps),
        "fp16_decode_has_nan_or_inf": not bool(torch.isfinite(raw).all()),
        "float32_vae_fallback_used": "vae_float32" in model.derived,
        "decode_finite": bool(torch.isfinite(decoded).all()),
        "capture_cost": round(capture_s / plain_s, 3), "capture_layers": len(maps.layers),
        "peak_gpu_mb": {**peaks, "capture": capture_peak},
    }
    print(json.dumps(result, indent=2))
    print(f"\nsdviz {its['sdviz']:.2f} steps/s, app {its['app']:.2f}, diffusers {its['diffusers']:.2f}: sdviz at "
          f"{result['sdviz_vs_diffusers']:.1%} of diffusers (target >= 95%)")
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
