"""A classroom at once: many simultaneous users of the app, then a queue that is too small.

Starts the app in its own process (as `python app.py` would) and drives it with gradio_client, one Client (one
browser session) per user, from threads:

1. burst: every user sends one request at the same moment, each with its own settings (prompt, steps,
   guidance, seed, scheduler; every fourth user does image to image from an example picture). All must
   finish without an error.
2. one by one: the same requests again, sequentially, from one client. Every final picture of the burst
   must match its sequential twin: identical, or within 1/255 where the burst computed it in a batch with other
   users' runs (sums over a batch round differently in the last bit; see docs/reliability.md).
3. queue full: a second server with one slot and a queue of --small-queue places receives --users requests
   at once. The ones that do not fit must get Gradio's "queue is full" answer (the page shows "This
   application is currently busy. Please try again."), every accepted one must finish, and afterwards the
   server must answer normally.

    python benchmarks/load_test.py                       # the embedded model, 16 users
    python benchmarks/load_test.py --users 4 --steps 8   # a quick check
    python benchmarks/load_test.py --model PATH --concurrency 2 --json out.json

Exits with status 1 when any check fails. Figures: docs/reliability.md.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
import numpy as np
from _server import ROOT, all_at_once, free_port, new_client, start_server
from PIL import Image

SCHEDULERS = ["default", "ddim", "pndm", "euler", "euler_a", "dpmpp_2m"]
PROMPTS = ["a big red circle on the left", "a small blue square at the top", "a green triangle in the center",
           "a yellow circle on the right", "a big purple square at the bottom", "", "an orange triangle",
           "a small red square on the left"]


@dataclass(frozen=True)
class Request:
    user: int
    prompt: str
    steps: int
    guidance_scale: float
    seed: int
    scheduler: str
    init_image: str | None = None  # image to image from this picture
    strength: float = 0.6


def requests_for(users: int, steps: int) -> list[Request]:
    """Different settings for every user (schedulers, guidance on and off, image to image for every fourth)."""
    examples = sorted((ROOT / "assets" / "examples").glob("*.png"))
    requests = []
    for user in range(users):
        picture = str(examples[user % len(examples)]) if examples and user % 4 == 3 else None
        requests.append(Request(user=user, prompt=PROMPTS[user % len(PROMPTS)], steps=max(4, steps - user % 3 * 2),
                                guidance_scale=[5.0, 1.0, 7.5, 3.0][user % 4], seed=1000 + user,
                                scheduler=SCHEDULERS[user % len(SCHEDULERS)], init_image=picture))
    return requests


def submit(client, request: Request):
    from gradio_client import handle_file

    if request.init_image is None:
        return client.submit(request.prompt, "", request.steps, request.guidance_scale, request.seed,
                             request.scheduler, api_name="/txt2img")
    return client.submit(handle_file(request.init_image), request.prompt, "", request.strength, request.steps,
                         request.guidance_scale, request.seed, request.scheduler, api_name="/img2img")


def final_picture(result) -> np.ndarray:
    """The final picture of a result, fetched by its URL like the page does."""
    response = httpx.get(result[0]["url"], timeout=60)
    response.raise_for_status()
    return np.asarray(Image.open(io.BytesIO(response.content)).convert("RGB"))


def burst(url: str, requests: list[Request]) -> tuple[list, list[float], list[str], float]:
    """Every user at the same moment; returns results, seconds per user, errors, wall seconds."""
    def one(client, i: int):
        started = time.perf_counter()
        try:
            result = submit(client, requests[i]).result(timeout=1800)
            return result, time.perf_counter() - started, None
        except Exception as err:  # reported, not raised: the point is to count them
            return None, time.perf_counter() - started, f"user {i}: {type(err).__name__}: {err}"

    outcomes, wall = all_at_once(url, len(requests), one)
    return [o[0] for o in outcomes], [o[1] for o in outcomes], [o[2] for o in outcomes if o[2]], wall


def queue_full(url: str, requests: list[Request]) -> dict:
    """More users than one slot and a small queue hold: who got in, who was told the app is busy."""
    from gradio_client.utils import QueueError

    def one(client, i: int):
        try:
            result = submit(client, requests[i]).result(timeout=1800)
            return "done" if "Done: " in str(result[1]) else f"odd status: {result[1]}"
        except QueueError as err:
            return f"full: {err}"
        except Exception as err:
            return f"error: {type(err).__name__}: {err}"

    outcomes, _ = all_at_once(url, len(requests), one)
    client = new_client(url)  # afterwards, the server answers as usual
    after = submit(client, requests[0]).result(timeout=600)
    client.close()
    full = [o for o in outcomes if o.startswith("full")]
    return {"done": outcomes.count("done"), "queue_full": len(full), "message": full[0][6:] if full else None,
            "other": [o for o in outcomes if o != "done" and not o.startswith("full")],
            "answers_afterwards": "Done: " in str(after[1])}


def finish(report: dict, ok: bool, json_path: Path | None) -> None:
    """The verdict: print it, write the report where --json asks, exit with status 1 when a check failed."""
    print("PASSED" if ok else "FAILED")
    if json_path:
        json_path.write_text(json.dumps(report, indent=2))
    sys.exit(0 if ok else 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="embedded", help="model name or local folder (default: embedded)")
    parser.add_argument("--users", type=int, default=16)
    parser.add_argument("--steps", type=int, default=20, help="most users' steps (some get 2 or 4 fewer, at least 4)")
    parser.add_argument("--concurrency", type=int, default=None, help="SDVIZ_CONCURRENCY (default: the app's)")
    parser.add_argument("--small-queue", type=int, default=4, help="queue places in the queue-full part")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()

    requests = requests_for(args.users, args.steps)
    env = {"SDVIZ_CONCURRENCY": str(args.concurrency)} if args.concurrency else {}
    env["SDVIZ_RUN_CACHE_MB"] = "0"  # the sequential twins must be computed again, not replayed from the cache
    report: dict = {"model": args.model, "users": args.users, "steps": args.steps,
                    "concurrency": args.concurrency or "app default", "requests": [asdict(r) for r in requests]}
    ok = True
    with tempfile.TemporaryDirectory() as temp_dir:
        port = free_port()
        server = start_server(args.model, port, temp_dir, env)
        url = f"http://127.0.0.1:{port}/"
        try:
            warm = new_client(url)  # load and warm the model before timing
            submit(warm, requests[0]).result(timeout=600)
            warm.close()

            results, seconds, errors, wall = burst(url, requests)
            together = {i: final_picture(r) for i, r in enumerate(results) if r is not None}
            alone_client = new_client(url)
            started = time.perf_counter()
            alone = [final_picture(submit(alone_client, r).result(timeout=1800)) for r in requests]
            sequential_wall = time.perf_counter() - started
            alone_client.close()
        finally:
            server.terminate()
            server.wait(30)
        identical = sum(np.array_equal(together[i], alone[i]) for i in together)
        differences = [int(np.abs(together[i].astype(int) - alone[i].astype(int)).max()) for i in together]
        report["burst"] = {
            "completed": len(together), "errors": errors, "identical_to_sequential": identical,
            "max_difference": max(differences, default=None),
            "wall_s": round(wall, 2), "sequential_wall_s": round(sequential_wall, 2),
            "latency_median_s": round(statistics.median(seconds), 2), "latency_max_s": round(max(seconds), 2),
        }
        ok &= not errors and len(together) == args.users and max(differences, default=99) <= 1

        port = free_port()
        server = start_server(args.model, port, temp_dir,
                              {**env, "SDVIZ_CONCURRENCY": "1", "SDVIZ_QUEUE_SIZE": str(args.small_queue)})
        try:
            report["queue_full"] = queue_full(f"http://127.0.0.1:{port}/", requests)
        finally:
            server.terminate()
            server.wait(30)
        full = report["queue_full"]
        # one runs, small_queue wait: the rest are told the queue is full (at most that many; a fast first run
        # may free places while the burst arrives)
        ok &= (full["queue_full"] >= 1 and full["done"] + full["queue_full"] == args.users and not full["other"]
               and full["answers_afterwards"])

    report["passed"] = bool(ok)
    b = report["burst"]
    print(f"burst: {b['completed']}/{args.users} users done, {len(b['errors'])} errors, "
          f"{b['identical_to_sequential']}/{args.users} pictures identical to their sequential run, the others "
          f"within {b['max_difference']}/255")
    print(f"       wall {b['wall_s']} s (the same requests one by one: {b['sequential_wall_s']} s); "
          f"latency median {b['latency_median_s']} s, max {b['latency_max_s']} s")
    q = report["queue_full"]
    print(f"queue full (1 slot, {args.small_queue} places, {args.users} users): {q['done']} done, "
          f"{q['queue_full']} told \"{q['message']}\", other outcomes: {q['other'] or 'none'}; "
          f"answers afterwards: {q['answers_afterwards']}")
    for error in b["errors"]:
        print("  ", error)
    finish(report, ok, args.json)


if __name__ == "__main__":
    main()
