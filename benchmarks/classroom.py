"""A class of 30 at once: every student presses Generate at the same moment, through the public API.

Two servers run side by side on the same model, each in its own process as `python app.py` would run it:

- batched: the app's defaults (runs that share a schedule are computed as one batch: sdviz.pipeline.batching);
- one by one: SDVIZ_BATCH=1 SDVIZ_CONCURRENCY=1, how the app served a class before batching (each run its own loop,
  one at a time).

Each user is a page (benchmarks/_server.Browser): opened first, as a class opens the page before pressing Generate,
then its Generate is a call of the app's HTTP API whose updates stream in as they are sent (no polling), the way a
browser gets them. Browsers run on the students' own machines; 30 gradio_clients polling on the server's two cores
took a quarter of a core from it (``--client gradio`` measures that way, as the figures before 2026-12-02 did).

Measured, in one run of this script:
1. a lone user (one client, distinct seeds, alternating between the servers, --lone runs each): the median time
   from pressing Generate to the final picture, and to the first live frame; the batched server against the one-by-one
   server as the median of the pairs' ratios (each pair run one after the other: the machine's drift cancels);
2. the burst: --users clients (one browser session each) submit at the same moment, each with its own prompt and
   seed (and guidance scale); for each user the time to its first live frame and to its final picture; errors;
3. pictures: every burst picture against the same request run alone (max difference in 0-255 levels);
4. identical requests: --same users press the same example at once, then once more (served from the cache).

    python benchmarks/classroom.py                    # embedded model, 30 users, 20 steps
    python benchmarks/classroom.py --users 8 --lone 3 # a quick check
    python benchmarks/classroom.py --json out.json

During each burst the other server is paused (SIGSTOP, then SIGCONT): a class's machine runs one server, and an idle
one is not free (Gradio's queue loop wakes it many times a second: 0.045 s of CPU per second measured, and a 30-user
burst's first frames came 0.1-0.5 s later beside it). The lone runs alternate with both servers running.

Targets (issue: a class of 30 at once): the last user done within 8x a lone run's time, every first live frame
within 3x, a lone run within 5% of the one-by-one server's. Figures: docs/reliability.md.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from _server import Browser, all_at_once, free_port, new_client, opened_page, start_server
from PIL import Image

COLOURS = ["red", "blue", "green", "yellow", "purple", "orange"]
SHAPES = ["circle", "square", "triangle"]
PLACES = ["on the left", "on the right", "at the top", "at the bottom", "in the center"]


def prompt(i: int) -> str:
    return f"a {COLOURS[i % 6]} {SHAPES[i // 6 % 3]} {PLACES[i % 5]}"


def timed_run(client, text: str, seed: int, guidance: float, steps: int) -> dict:
    """One Generate: seconds to the first live frame ("Step ..." status) and to the final picture."""
    if isinstance(client, Browser):
        return browser_run(client, text, seed, guidance, steps)
    started = time.perf_counter()
    job = client.submit(text, "", steps, guidance, seed, "default", api_name="/txt2img")
    first = None
    while not job.done():
        if first is None and any(str(o[1]).startswith("Step") for o in job.outputs()):
            first = time.perf_counter() - started
        time.sleep(0.05)  # the clients share the server's cores: polling costs them
    result = job.result(timeout=1800)
    total = time.perf_counter() - started
    if first is None:  # the run was over before a poll saw a live frame
        first = total
    return {"first_frame_s": first, "total_s": total, "status": str(result[1]), "picture_url": result[0]["url"],
            "live_frames": sum(str(o[1]).startswith("Step") for o in job.outputs())}


def browser_run(browser: Browser, text: str, seed: int, guidance: float, steps: int) -> dict:
    """timed_run for a :class:`Browser`: each update is timed as it arrives (no polling)."""
    started = time.perf_counter()
    frames: list[float] = []

    def on_update(data: list) -> None:
        if str(data[1]).startswith("Step"):
            frames.append(time.perf_counter() - started)

    result = browser.call("/txt2img", [text, "", steps, guidance, seed, "default"], on_update)
    total = time.perf_counter() - started
    return {"first_frame_s": frames[0] if frames else total, "total_s": total, "status": str(result[1]),
            "picture_url": result[0]["url"], "live_frames": len(frames)}


def new_page(url: str, browsers: bool):
    """One user's client: an opened :class:`Browser` page, or gradio_client's."""
    return opened_page(url) if browsers else new_client(url)


def lone_pairs(pages: dict, runs: int, guidance: float, steps: int, seed0: int) -> dict[str, list[dict]]:
    """A lone user on each of the two servers' ``pages``: one warm-up run each (first runs pay for lazy set-up), then
    ``runs`` pairs, alternating which goes first, with distinct seeds (never from the cache)."""
    names = list(pages)
    for name in names:
        timed_run(pages[name], "a red circle", 999_000, guidance, steps)
    lone: dict[str, list[dict]] = {name: [] for name in names}
    for k in range(runs):
        for name in (names if k % 2 == 0 else names[::-1]):
            lone[name].append(timed_run(pages[name], prompt(k), seed0 + k, guidance, steps))
    return lone


def pair_ratios(lone: dict[str, list[dict]]) -> list[float]:
    """Each pair's batched / one-by-one time. A pair ran one after the other, so the machine's drift cancels."""
    return [b["total_s"] / o["total_s"] for b, o in zip(lone["batched"], lone["one_by_one"], strict=True)]


def quartiles(values: list[float]) -> list[float]:
    return [round(q, 3) for q in (statistics.quantiles(values, n=4) if len(values) > 1 else values)]


def fetch(url: str) -> np.ndarray:
    response = httpx.get(url, timeout=60)
    response.raise_for_status()
    return np.asarray(Image.open(io.BytesIO(response.content)).convert("RGB"), dtype=int)


def burst(url: str, requests: list[tuple[str, int, float]], steps: int, browsers: bool) -> tuple[list[dict], float]:
    def one(client, i: int) -> dict:
        try:
            return timed_run(client, *requests[i], steps)
        except Exception as err:  # counted, not raised
            return {"error": f"user {i}: {type(err).__name__}: {err}"}

    return all_at_once(url, len(requests), one, browsers)


@contextlib.contextmanager
def paused(server):
    """The server's process stopped (it takes no CPU at all) until the block ends; nothing to do off POSIX."""
    if not hasattr(signal, "SIGSTOP"):
        yield
        return
    server.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        server.send_signal(signal.SIGCONT)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--users", type=int, default=30)
    parser.add_argument("--same", type=int, default=10)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=2.0)
    parser.add_argument("--lone", type=int, default=30, help="lone runs on each server")
    parser.add_argument("--client", choices=["browser", "gradio"], default="browser",
                        help="browser (default): each user a page speaking Gradio's HTTP API with no polling, opened "
                             "before the burst; gradio: gradio_client (its threads poll, on the server's cores)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--batched-env", action="append", default=[], metavar="NAME=VALUE",
                        help="an environment variable for the batched server only, e.g. OMP_NUM_THREADS=1")
    args = parser.parse_args()

    temp = tempfile.mkdtemp(prefix="sdviz-classroom-")
    ports = {"batched": free_port(), "one_by_one": free_port()}
    env = {"batched": dict(kv.split("=", 1) for kv in args.batched_env),
           "one_by_one": {"SDVIZ_BATCH": "1", "SDVIZ_CONCURRENCY": "1"}}
    report_env = env["batched"]
    servers = {name: start_server(args.model, port, temp, env[name]) for name, port in ports.items()}
    urls = {name: f"http://127.0.0.1:{port}/" for name, port in ports.items()}
    report: dict = {"model": args.model, "users": args.users, "steps": args.steps, "guidance": args.guidance,
                    "batched_env": report_env, "client": args.client}
    browsers = args.client == "browser"
    try:
        lone_client = {name: new_page(url, browsers) for name, url in urls.items()}
        lone = lone_pairs(lone_client, args.lone, args.guidance, args.steps, 500_000)
        for name, runs in lone.items():
            report[f"lone_{name}_s"] = statistics.median(r["total_s"] for r in runs)
            report[f"lone_{name}_first_frame_s"] = statistics.median(r["first_frame_s"] for r in runs)
        report["lone_ratio_of_medians"] = report["lone_batched_s"] / report["lone_one_by_one_s"]
        ratios = pair_ratios(lone)
        report["lone_batched_vs_one_by_one"] = statistics.median(ratios)
        report["lone_pair_ratios_quartiles"] = quartiles(ratios)
        lone_s = report["lone_batched_s"]
        print(f"lone run: batched server {lone_s:.3f} s, one-by-one server {report['lone_one_by_one_s']:.3f} s; "
              f"batched / one by one, median of {len(ratios)} pairs {report['lone_batched_vs_one_by_one']:.3f} "
              f"(quartiles {report['lone_pair_ratios_quartiles']}), ratio of medians "
              f"{report['lone_ratio_of_medians']:.3f}", flush=True)

        requests = [(prompt(i), 1000 + i, [args.guidance, 1.0, 4.0, 7.5][i % 4]) for i in range(args.users)]
        for name in ("batched", "one_by_one"):
            with paused(servers["one_by_one" if name == "batched" else "batched"]):
                results, wall = burst(urls[name], requests, args.steps, browsers)
            errors = [r["error"] for r in results if "error" in r]
            done = [r for r in results if "error" not in r]
            report[name] = {
                "wall_s": wall, "errors": errors, "done": len(done),
                "last_done_s": max(r["total_s"] for r in done) if done else None,
                "first_frame_max_s": max(r["first_frame_s"] for r in done) if done else None,
                "first_frame_median_s": statistics.median(r["first_frame_s"] for r in done) if done else None,
                "live_frames_median": statistics.median(r["live_frames"] for r in done) if done else None,
                "done_s": sorted(round(r["total_s"], 3) for r in done),  # every user's, to tell one late user from all
                "first_frames_s": sorted(round(r["first_frame_s"], 3) for r in done),
            }
            if done:
                report[name]["last_vs_lone"] = report[name]["last_done_s"] / lone_s
                report[name]["first_frame_max_vs_lone"] = report[name]["first_frame_max_s"] / lone_s
            print(f"{name}: {len(done)}/{args.users} done, last {report[name]['last_done_s']:.2f} s "
                  f"({report[name].get('last_vs_lone', 0):.1f}x lone), first frames by "
                  f"{report[name]['first_frame_max_s']:.2f} s, live frames per user (median) "
                  f"{report[name]['live_frames_median']}, errors {len(errors)}", flush=True)
            if name == "batched":
                burst_pictures = [fetch(r["picture_url"]) if "error" not in r else None for r in results]

        # Pictures: each burst picture against the same request alone (on the one-by-one server).
        diffs = []
        for (text, seed, guidance), picture in zip(requests, burst_pictures, strict=True):
            if picture is not None:
                alone = timed_run(lone_client["one_by_one"], text, seed, guidance, args.steps)
                diffs.append(int(np.abs(fetch(alone["picture_url"]) - picture).max()))
        report["picture_max_difference"] = max(diffs) if diffs else None
        report["pictures_identical"] = sum(d == 0 for d in diffs)
        print(f"pictures: max difference {report['picture_max_difference']}/255, "
              f"{report['pictures_identical']}/{len(diffs)} identical", flush=True)

        same = [(prompt(0), 424242, args.guidance)] * args.same
        with paused(servers["one_by_one"]):
            results, wall = burst(urls["batched"], same, args.steps, browsers)
        again = timed_run(lone_client["batched"], *same[0], args.steps)
        report["same_example"] = {"users": args.same, "wall_s": wall,
                                  "errors": [r["error"] for r in results if "error" in r],
                                  "repeat_s": again["total_s"]}
        print(f"{args.same} users, one example: all done in {wall:.2f} s; pressed again: {again['total_s']:.3f} s",
              flush=True)
    finally:
        for server in servers.values():
            server.terminate()
    targets = {
        "last_within_8x": (report["batched"].get("last_vs_lone") or 99) <= 8,
        "first_frames_within_3x": (report["batched"].get("first_frame_max_vs_lone") or 99) <= 3,
        "lone_within_5pct": report["lone_batched_vs_one_by_one"] <= 1.05,
        "no_errors": not report["batched"]["errors"],
        "pictures_within_1": report["picture_max_difference"] is not None and report["picture_max_difference"] <= 1,
    }
    report["targets"] = targets
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    sys.exit(0 if all(targets.values()) else 1)


if __name__ == "__main__":
    main()
