"""Command line: ``python -m sdviz generate --prompt "a big red circle" --out out/``.

Writes ``final.png``, ``settings.json`` and ``trace.npz`` (see :meth:`sdviz.pipeline.trace.Trace.save`).
Bad input prints one clear line and exits with status 2; no traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from sdviz.errors import SdvizError
from sdviz.pipeline.schedulers import SCHEDULERS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m sdviz", description="Watch Stable Diffusion, step by step.")
    commands = parser.add_subparsers(dest="command", required=True)
    gen = commands.add_parser("generate", help="run text to image (or image to image) and save the trace")
    gen.add_argument("--prompt", default="", help='what to draw; "" draws unconditionally')
    gen.add_argument("--negative-prompt", default="", help="what to steer away from (used when guidance > 1)")
    gen.add_argument("--model", default=None, help="local pipeline folder or hub id (default: the embedded model)")
    gen.add_argument("--scheduler", default=None, choices=sorted(SCHEDULERS), help="default: the model's own")
    gen.add_argument("--steps", type=int, default=None, help="default: the model's recommended number")
    gen.add_argument("--guidance-scale", type=float, default=None, help="CFG scale; 1 or less means no guidance")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--height", type=int, default=None, help="a multiple of 8 (default: the model's size)")
    gen.add_argument("--width", type=int, default=None, help="a multiple of 8 (default: the model's size)")
    gen.add_argument("--init-image", type=Path, default=None, help="a picture to start from: image to image")
    gen.add_argument("--strength", type=float, default=None, help="image to image: 1 = ignore most of the picture")
    gen.add_argument("--device", default=None, help="cpu, cuda or mps (default: the best available)")
    gen.add_argument("--dtype", default=None, help="float32 or float16 (default: float16 on CUDA, else float32)")
    gen.add_argument("--out", type=Path, required=True, help="folder for final.png, settings.json, trace.npz")
    gen.add_argument("--bundle", type=Path, default=None,
                     help="also write the run as one zip (pictures of every step, animation, trace): PATH.zip")
    return parser


def generate_command(args: argparse.Namespace) -> Path:
    from tqdm import tqdm

    from sdviz.pipeline.models import load_model, use_cpu_threads
    from sdviz.pipeline.sampler import denoise
    from sdviz.pipeline.settings import RunSettings
    from sdviz.pipeline.trace import Trace

    if args.bundle is not None and args.bundle.suffix.lower() != ".zip":
        raise SdvizError(f"--bundle must name a .zip file (got {str(args.bundle)!r}).")
    model = load_model(args.model, device=args.device, dtype=args.dtype)
    use_cpu_threads(model)  # the same thread count as the app: the same pixels
    rec = model.recommended
    settings = RunSettings(
        prompt=args.prompt,
        negative_prompt=args.negative_prompt,
        steps=args.steps if args.steps is not None else rec.steps_for(img2img=args.init_image is not None),
        guidance_scale=args.guidance_scale if args.guidance_scale is not None else rec.guidance_scale,
        seed=args.seed,
        scheduler=args.scheduler,
        height=args.height,
        width=args.width,
        strength=args.strength if args.strength is not None else rec.strength,
    )
    with tqdm(desc="denoising", unit="step", file=sys.stderr) as bar:
        for item in denoise(model, settings, init_image=args.init_image):
            if isinstance(item, Trace):
                trace = item
            else:
                bar.update(1)
                bar.set_postfix(t=f"{item.timestep:.0f}")
    out = trace.save(args.out)
    print(f"saved {out / 'final.png'}, {out / 'settings.json'} and {out / 'trace.npz'} ({trace.seconds:.2f} s)")
    if args.bundle is not None:
        from sdviz.lessons.export import write_bundle

        print(f"saved the bundle {write_bundle(model, trace, args.bundle)}")
    return out


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="warning: %(message)s")
    args = build_parser().parse_args(argv)
    import torch

    threads = torch.get_num_threads()
    try:
        if args.command == "generate":
            generate_command(args)
    except SdvizError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    finally:
        torch.set_num_threads(threads)  # for callers in the same process (tests)
    return 0
