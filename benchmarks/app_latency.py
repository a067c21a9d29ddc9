"""How fast does the app show the loop? Latency, overhead and bytes of the live "peek inside" stream.

Starts the app in its own process (as `python app.py` would), then, from this process, with gradio_client:

- first frame: seconds from sending a /txt2img request to receiving the first update that shows a step
  (client side: queueing, the first U-Net pass, rendering, the wire);
- full run: seconds from the request to the final picture, against the CLI's own generation time for the
  same settings (`sdviz.pipeline.sampler.generate`, the loop `python -m sdviz generate` runs, warm, in this
  process while the server idles); runs alternate, the figure is the median of the per-pair ratios;
- bytes per streamed step: each update's JSON payload plus the pictures it points to that the page has
  not fetched yet (fetched here like the browser does); median and largest.
- slow motion: how many of a run's steps the generate event hands to the page (in this process, as the page's
  event; the API has no slow-motion switch), and how long the run takes;
- the timeline: server-side seconds per step when playing a finished run (one tick of the page's timer).
The animation (real decodes of every step) and the full decodes of the last step come after the final picture, in
a follow-up event (the page triggers it, the API does not); their server-side cost is timed separately.
The fast preview for big models is measured by benchmarks/preview_fit.py.

    python benchmarks/app_latency.py                      # the embedded model, 20 steps, 7 pairs
    python benchmarks/app_latency.py --model PATH --pairs 3 --steps 30

Targets (embedded model, 2 CPU cores): first frame <= 0.3 s, full run with live real decodes <= 1.5x the CLI,
<= 60 KB a step; slow motion: every step of 20 reaches the page.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import statistics
import tempfile
import time
from pathlib import Path

import httpx
import torch
from _server import Browser, free_port, opened_page, start_server


def app_run(page: Browser, http: httpx.Client, args, seed: int) -> dict:
    """One /txt2img request from a page (its updates timed as they arrive, as a browser gets them; gradio_client's
    iteration can miss a fast run's only live frame): when the first step arrived, when the final picture did, bytes
    per update."""
    fetched: set[str] = set()
    first_frame, update_bytes = None, []
    started = time.perf_counter()

    def on_update(output: list) -> None:
        nonlocal first_frame
        status = output[1] if isinstance(output[1], str) else ""
        if not status.startswith("Step"):
            return
        if first_frame is None:
            first_frame = time.perf_counter() - started
        size = len(json.dumps(output))
        for value in output:
            url = value.get("url") if isinstance(value, dict) else None
            if url and url not in fetched:
                fetched.add(url)
                size += len(http.get(url).content)
        update_bytes.append(size)

    result = page.call("/txt2img", [args.prompt, "", args.steps, args.guidance_scale, seed, "default"], on_update)
    total = time.perf_counter() - started
    assert isinstance(result[0], dict) and result[0].get("url"), "no final picture in the result"
    loop = float(re.search(r"steps in ([0-9.]+) s", result[1]).group(1))  # the server's own loop time
    return {"first_frame": first_frame if first_frame is not None else total, "total": total, "loop": loop,
            "update_bytes": update_bytes, "updates": len(update_bytes)}


def follow_up_seconds(model_name: str, trace) -> float:
    """Server-side cost of what comes after the final picture: the animation in real decodes of every step, and
    the last step's panel (its decodes, maps and the plot)."""
    from sdviz.app import playground
    from sdviz.app.sessions import PanelRun

    panel = _panel()
    run = PanelRun(model=model_name, expected_steps=len(trace.steps))
    run.finish(trace)
    run.end("done")
    started = time.perf_counter()
    playground.animation(_model(model_name), run)
    playground.frame_values(panel, _model(model_name), run, len(trace.steps) - 1, len(trace.steps))
    return time.perf_counter() - started


def timeline_seconds(model_name: str, trace) -> float:
    """Median server-side seconds of one timeline step over a finished run (decodes cached after the first pass;
    the plot drawn once)."""
    from sdviz.app import playground
    from sdviz.app.sessions import PanelRun

    panel, model = _panel(), _model(model_name)
    run = PanelRun(model=model_name, expected_steps=len(trace.steps))
    run.finish(trace)
    run.end("done")
    times = []
    for index in list(range(len(trace.steps))) * 2:
        started = time.perf_counter()
        playground.frame_values(panel, model, run, index, len(trace.steps))
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def slow_motion(model_name: str, settings) -> tuple[int, int, float]:
    """(steps handed to the page, steps in the run, seconds) for one slow-motion run of the page's event."""
    import gradio as gr

    from sdviz.app import playground

    panel = _panel()
    with gr.Blocks():
        final, state = gr.Image(), gr.State()
    started = time.perf_counter()
    updates = list(playground.live_run(panel, final, state, model_name, settings, slow=True))
    seconds = time.perf_counter() - started
    shown = {u[panel.status] for u in updates if str(u.get(panel.status, "")).startswith("Step")}
    return len(shown), len(updates[-1][state].steps), seconds


def decode_seconds(model) -> float:
    from sdviz.pipeline import vae

    f, rec = model.vae_scale_factor, model.recommended
    latents = torch.zeros(1, model.vae.config.latent_channels, rec.height // f, rec.width // f)
    times = []
    for _ in range(6):
        started = time.perf_counter()
        vae.decode_to_pil(model, latents)
        times.append(time.perf_counter() - started)
    return statistics.median(times[1:])


def _model(name: str):
    from sdviz.app import services

    return services.load_for_app(name)


def _panel():
    import gradio as gr

    from sdviz.app import components

    with gr.Blocks():
        return components.peek_panel(_model_for_panel[0])


_model_for_panel: list = [None]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="embedded", help="model name or local folder (default: embedded)")
    parser.add_argument("--pairs", type=int, default=7, help="app runs and CLI runs, alternating")
    parser.add_argument("--steps", type=int, default=None, help="default: the model's recommended")
    parser.add_argument("--guidance-scale", type=float, default=None, help="default: the model's recommended")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--prompt", default="a big red circle on the left")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()

    from sdviz.app import services
    from sdviz.pipeline.sampler import generate
    from sdviz.pipeline.settings import RunSettings

    model = services.load_for_app(args.model)  # as the app loads it (one CPU thread for a small model, as the CLI)
    _model_for_panel[0] = model
    args.steps = args.steps or model.recommended.steps
    args.guidance_scale = model.recommended.guidance_scale if args.guidance_scale is None else args.guidance_scale
    settings = RunSettings(prompt=args.prompt, steps=args.steps, guidance_scale=args.guidance_scale, seed=args.seed)

    port = free_port()
    with tempfile.TemporaryDirectory() as temp_dir:
        server = start_server(args.model, port, temp_dir)
        try:
            client = opened_page(f"http://127.0.0.1:{port}/")
            with httpx.Client(timeout=60) as http:
                app_run(client, http, args, args.seed)  # warm-up: first requests pay for connections and lazy set-up
                generate(model, settings)
                app, cli = [], []
                for i in range(1, args.pairs + 1):  # a new seed each pair: a repeated request comes from the cache
                    app.append(app_run(client, http, args, args.seed + i))
                    started = time.perf_counter()
                    trace = generate(model, dataclasses.replace(settings, seed=args.seed + i))
                    cli.append(time.perf_counter() - started)
            client.close()
        finally:
            server.terminate()
            server.wait(timeout=30)

    ratios = [a["total"] / c for a, c in zip(app, cli, strict=True)]
    all_bytes = [b for a in app for b in a["update_bytes"]]
    figures = {
        "model": args.model, "steps": len(trace.steps), "guidance_scale": args.guidance_scale, "pairs": args.pairs,
        "threads": os.environ.get("OMP_NUM_THREADS", "unset"),
        "first_frame_s": statistics.median(a["first_frame"] for a in app),
        "app_total_s": statistics.median(a["total"] for a in app),
        "app_loop_s": statistics.median(a["loop"] for a in app),
        "cli_generate_s": statistics.median(cli),
        "ratio": statistics.median(ratios),
        "updates_per_run": statistics.median(a["updates"] for a in app),
        "bytes_per_update_median": statistics.median(all_bytes),
        "bytes_per_update_max": max(all_bytes),
        "follow_up_s": follow_up_seconds(args.model, trace),
        "timeline_step_s": timeline_seconds(args.model, trace),
        "live_real_decodes": services.decodes_are_cheap(model),
        "decode_s": decode_seconds(model),
    }
    shown, total, seconds = slow_motion(args.model, settings)
    figures.update({"slow_motion_shown": shown, "slow_motion_steps": total, "slow_motion_s": seconds})
    print(f"model {figures['model']}, {figures['steps']} steps, CFG {figures['guidance_scale']}, "
          f"{figures['pairs']} pairs, OMP_NUM_THREADS={figures['threads']}; live frames: "
          f"{'real VAE decodes' if figures['live_real_decodes'] else 'preview'} "
          f"(one decode {figures['decode_s']:.3f} s, median of 5)")
    print("| measure | median | target |")
    print("|---|---|---|")
    print(f"| first peek frame after the request | {figures['first_frame_s']:.3f} s | <= 0.3 s |")
    print(f"| full run in the app (to the final picture) | {figures['app_total_s']:.3f} s | |")
    print(f"| of which the loop inside the app (denoise, start to final decode) | {figures['app_loop_s']:.3f} s | |")
    print(f"| CLI generation, same settings | {figures['cli_generate_s']:.3f} s | |")
    print(f"| app / CLI (median of pairs) | {figures['ratio']:.2f}x | <= 1.5x |")
    print(f"| live updates per run | {figures['updates_per_run']:.0f} | |")
    print(f"| bytes per streamed step (median / largest) | {figures['bytes_per_update_median'] / 1000:.1f} KB / "
          f"{figures['bytes_per_update_max'] / 1000:.1f} KB | <= 60 KB |")
    print(f"| slow motion: steps shown / steps in the run, seconds | {figures['slow_motion_shown']} / "
          f"{figures['slow_motion_steps']}, {figures['slow_motion_s']:.1f} s | every step |")
    print(f"| after the final picture: real-decode animation + last step's panel (server) | "
          f"{figures['follow_up_s']:.3f} s | |")
    print(f"| timeline: one step of the panel when playing (server) | {figures['timeline_step_s'] * 1000:.0f} ms | "
          f"<= 100 ms (10 steps/s) |")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
