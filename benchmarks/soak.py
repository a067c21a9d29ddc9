"""Hundreds of runs in one server: does its memory stay put?

Starts the app in its own process (as `python app.py` would) and sends it --warmup runs, then --runs more, the
way a classroom uses it: a new browser session (a gradio_client Client) every --per-session runs, the previous
one closed; text to image with varied settings, every fifth run image to image, every seventh run stopped after
its first live step. After each run it also sends what the page sends after a run: the follow-up (full decodes
and the animation) and a move of the step slider, through the page's own (private) events.

The server's resident memory (VmRSS in /proc/<pid>/status) is read after the warm-up and every --every runs;
the check: growth from after the warm-up to the end under --limit-mb (50 MB).

    python benchmarks/soak.py                          # the embedded model, 30 warm-up + 300 runs
    python benchmarks/soak.py --warmup 5 --runs 20     # a quick check
    python benchmarks/soak.py --model PATH --json out.json

Exits with status 1 when the check fails or a run fails. Figures: docs/reliability.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _server import ROOT, free_port, new_client, start_server  # noqa: E402
from load_test import Request, finish, submit  # noqa: E402

PROMPTS = ["a big red circle on the left", "a small blue square at the top", "a green triangle",
           "a yellow circle on the right", "", "a big purple square at the bottom"]
SCHEDULERS = ["default", "ddim", "euler", "euler_a", "dpmpp_2m", "pndm"]


def rss_mb(pid: int) -> float:
    """Resident memory of a process, from /proc (no psutil needed)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def request_for(run: int, steps: int) -> Request:
    examples = sorted((ROOT / "assets" / "examples").glob("*.png"))
    picture = str(examples[run % len(examples)]) if examples and run % 5 == 4 else None
    return Request(user=run, prompt=PROMPTS[run % len(PROMPTS)], steps=steps - run % 3, seed=run,
                   guidance_scale=[5.0, 1.0, 7.5][run % 3], scheduler=SCHEDULERS[run % len(SCHEDULERS)],
                   init_image=picture)


class PageEvents:
    """The page's private events (follow-up, step slider), called the way the page calls them."""

    def __init__(self, url: str):
        self.url = url
        config = httpx.get(f"{url}config", timeout=30).json()
        self.fn_index = {d["api_name"]: d["id"] for d in config["dependencies"] if d.get("api_name")}

    def call(self, session: str, name: str, data: list) -> dict:
        join = httpx.post(f"{self.url}gradio_api/queue/join", timeout=60, json={
            "data": data, "fn_index": self.fn_index[name], "session_hash": session, "event_data": None,
            "trigger_id": None})
        join.raise_for_status()
        with httpx.stream("GET", f"{self.url}gradio_api/queue/data", params={"session_hash": session},
                          timeout=600) as stream:
            for line in stream.iter_lines():
                if line.startswith("data: "):
                    message = json.loads(line[6:])
                    if message.get("msg") == "process_completed":
                        return message
        raise RuntimeError(f"{name} never completed")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="embedded", help="model name or local folder (default: embedded)")
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--runs", type=int, default=300, help="runs after the warm-up")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--per-session", type=int, default=10, help="runs per browser session")
    parser.add_argument("--every", type=int, default=25, help="read the memory every this many runs")
    parser.add_argument("--limit-mb", type=float, default=50.0)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()

    samples: list[tuple[int, float]] = []
    failures: list[str] = []
    seconds: list[float] = []
    total = args.warmup + args.runs
    with tempfile.TemporaryDirectory() as temp_dir:
        port = free_port()
        server = start_server(args.model, port, temp_dir)
        url = f"http://127.0.0.1:{port}/"
        page = PageEvents(url)
        samples.append((0, rss_mb(server.pid)))
        client = None
        try:
            for run in range(total):
                if run % args.per_session == 0:
                    if client is not None:
                        client.close()
                    client = new_client(url)
                request = request_for(run, args.steps)
                started = time.perf_counter()
                try:
                    job = submit(client, request)
                    if run % 7 == 6:  # Stop after the first live step
                        next(iter(job))
                        job.cancel()
                    elif "Done: " not in str(job.result(timeout=600)[1]):
                        failures.append(f"run {run}: {job.result()[1]}")
                    settled = page.call(client.session_hash, "settle", [])
                    if not settled.get("success"):
                        failures.append(f"run {run}: the follow-up failed: {settled.get('output')}")
                    if run % 7 != 6:
                        shown = page.call(client.session_hash, "show_step", [1])
                        if not shown.get("success"):
                            failures.append(f"run {run}: the step slider failed: {shown.get('output')}")
                except Exception as err:
                    failures.append(f"run {run}: {type(err).__name__}: {err}")
                seconds.append(time.perf_counter() - started)
                done = run + 1
                if done == args.warmup or (done > args.warmup and (done - args.warmup) % args.every == 0):
                    samples.append((done, rss_mb(server.pid)))
                    print(f"after {done:4d} runs: {samples[-1][1]:7.1f} MB", flush=True)
            client.close()
            time.sleep(20)  # Gradio notices the last closed session at its next heartbeat (every 15 s)
            after_close = rss_mb(server.pid)
        finally:
            server.terminate()
            server.wait(30)

    warm = next(mb for n, mb in samples if n == args.warmup)
    measured = [mb for n, mb in samples if n >= args.warmup]
    growth = measured[-1] - warm
    ok = growth < args.limit_mb and not failures
    report = {
        "model": args.model, "warmup_runs": args.warmup, "runs": args.runs, "steps": args.steps,
        "per_session": args.per_session, "rss_start_mb": round(samples[0][1], 1), "rss_after_warmup_mb": round(warm, 1),
        "rss_end_mb": round(measured[-1], 1), "rss_max_mb": round(max(measured), 1),
        "rss_after_last_session_closed_mb": round(after_close, 1), "growth_mb": round(growth, 1),
        "run_seconds_median": round(statistics.median(seconds), 3), "failures": failures,
        "samples": [(n, round(mb, 1)) for n, mb in samples], "passed": ok,
    }
    print(f"resident memory: {report['rss_start_mb']} MB at start, {report['rss_after_warmup_mb']} MB after "
          f"{args.warmup} warm-up runs, {report['rss_end_mb']} MB after {args.runs} more (max "
          f"{report['rss_max_mb']}); growth {report['growth_mb']} MB (limit {args.limit_mb})")
    print(f"{len(failures)} failed runs; median {report['run_seconds_median']} s a run (with its follow-up)")
    for failure in failures[:10]:
        print("  ", failure)
    finish(report, ok, args.json)


if __name__ == "__main__":
    main()
