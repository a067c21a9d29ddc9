"""A real-size run on the CPU: the app's own streaming path, peek panel on, against the CLI's loop.

SD-1.5-sized parts (U-Net, VAE and CLIP text encoder from SD 1.5's real configs, random weights, nothing
downloaded: benchmarks/sd15.py) at 256x256. The app side is ``sdviz.app.playground.live_run`` with the peek
panel's components made inside ``gr.Blocks()`` (as tests/test_app.py does), consumed the way Gradio consumes it:
every live update's pictures and numbers are made. The CLI side is ``sdviz.pipeline.sampler.generate``, the loop
``python -m sdviz generate`` runs. Runs alternate (CLI, app, app, CLI, ...) so machine noise hits both alike; the
figure is the median of the per-pair ratios app / CLI (target <= 1.15). Peak memory is the process's peak RSS.

    python benchmarks/real_size.py                   # 4 steps, 3 pairs: about 5 minutes on 2 cores
    python benchmarks/real_size.py --steps 10 --pairs 5
    python benchmarks/real_size.py --quick           # a small stand-in model: checks the script in seconds
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.sd15 import build  # noqa: E402
from sdviz.pipeline.models import load_model, use_cpu_threads  # noqa: E402
from sdviz.pipeline.sampler import generate  # noqa: E402
from sdviz.pipeline.settings import RunSettings  # noqa: E402


def peak_rss_mb() -> float:
    """The process's peak resident memory so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a small stand-in model (checks the script)")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--pairs", type=int, default=3, help="alternating CLI/app pairs")
    parser.add_argument("--side", type=int, default=256, help="picture height and width")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()

    import gradio as gr

    from sdviz.app import components, playground

    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        build(Path(folder), args.quick)
        model = load_model(folder, device="cpu", dtype=torch.float32)
        threads = use_cpu_threads(model)  # what the CLI and the app do
        build_s = time.perf_counter() - started
        rss_loaded = peak_rss_mb()
        print(f"built and loaded in {build_s:.0f} s, peak RSS {rss_loaded:.0f} MB", flush=True)
        with gr.Blocks():
            panel = components.peek_panel()
            final = gr.Image()
            run_state = gr.State()
        settings = RunSettings(prompt="a big red circle on the left", steps=args.steps, guidance_scale=7.5, seed=0,
                               height=args.side, width=args.side)

        traces = []

        def run_cli() -> float:
            start = time.perf_counter()
            traces.append(generate(model, settings))
            return time.perf_counter() - start

        def run_app() -> tuple[float, int]:
            start = time.perf_counter()
            updates = list(playground.live_run(panel, final, run_state, folder, settings))
            seconds = time.perf_counter() - start
            assert updates[-1][final] is not None, "the app run ended without a picture"
            return seconds, len(updates)

        run_cli(), run_app()  # warm-up: first calls allocate, pick kernels, fit the preview colours
        cli_times, app_times, ratios, updates = [], [], [], 0
        for i in range(args.pairs):
            if i % 2 == 0:  # alternate which goes first, so drift in machine load favours neither
                c = run_cli()
                a, updates = run_app()
            else:
                a, updates = run_app()
                c = run_cli()
            cli_times.append(c)
            app_times.append(a)
            ratios.append(a / c)
            print(f"pair {i + 1}: CLI {c:.2f} s, app {a:.2f} s, ratio {a / c:.3f}, peak RSS so far {peak_rss_mb():.0f} MB",
                  flush=True)
        trace = traces[-1]

    kind = "quick stand-in" if args.quick else "SD-1.5-sized (random weights)"
    result = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "model": kind, "side": args.side, "steps": args.steps, "unet_passes": len(trace.steps), "cfg": 7.5,
        "pairs": args.pairs, "device": "cpu", "dtype": "float32", "torch_threads": threads,
        "cpu_cores": os.cpu_count(), "machine": platform.machine(), "torch": torch.__version__,
        "build_and_load_s": round(build_s, 1),
        "median_cli_s": round(statistics.median(cli_times), 2), "median_app_s": round(statistics.median(app_times), 2),
        "median_ratio_app_cli": round(statistics.median(ratios), 3), "ratios": [round(r, 3) for r in ratios],
        "app_updates_per_run": updates, "trace_mb": round(trace.nbytes() / 2**20, 2),
        "peak_rss_after_load_mb": round(rss_loaded), "peak_rss_mb": round(peak_rss_mb()),
    }
    print(f"\n{kind}, {args.side}x{args.side}, {args.steps} steps ({len(trace.steps)} U-Net passes), CFG 7.5, CPU, "
          f"{threads} torch threads, {args.pairs} pairs")
    print(f"median CLI {result['median_cli_s']:.2f} s, median app (live stream, peek panel) {result['median_app_s']:.2f} s")
    print(f"median ratio app/CLI: {result['median_ratio_app_cli']:.3f} (target <= 1.15)")
    print(f"peak RSS: {result['peak_rss_after_load_mb']} MB after loading, {result['peak_rss_mb']} MB at the end; "
          f"trace {result['trace_mb']} MB")
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
