"""The app in its own process, for the benchmarks: started as `python app.py` would, then driven by gradio_client
or by :class:`Browser` (the requests a browser's page makes, without gradio_client's polling threads).

Shared by app_latency.py, classroom.py, load_test.py and soak.py (each stays runnable as `python benchmarks/X.py`).
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the scripts import sdviz from this checkout

SERVER = """
import sys
from sdviz.app.memory import freeze_startup_objects, return_freed_memory
return_freed_memory()  # first, as app.py does
from sdviz.app.layout import build_demo, launch_kwargs
demo = build_demo([sys.argv[1]])
freeze_startup_objects()  # as app.py does
demo.launch(server_name="127.0.0.1", server_port=int(sys.argv[2]), quiet=True, **launch_kwargs())
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: str, port: int, temp_dir: str, env_extra: dict[str, str] | None = None) -> subprocess.Popen:
    """Start the app on `model` at 127.0.0.1:`port` and wait (up to 300 s) until it answers."""
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "GRADIO_TEMP_DIR": temp_dir, **(env_extra or {}),
           "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    server = subprocess.Popen([sys.executable, "-c", SERVER, model, str(port)], cwd=ROOT, env=env)
    deadline = time.perf_counter() + 300
    while time.perf_counter() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the app exited with status {server.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    server.terminate()
    raise SystemExit("the app did not start within 300 s")


def new_client(url: str):
    """One browser session's worth of gradio_client."""
    from gradio_client import Client

    return Client(url, download_files=False, verbose=False, analytics_enabled=False)



class Browser:
    """One student's page, as its browser talks to the server: Gradio's own HTTP API (``POST /gradio_api/call/NAME``,
    then the server-sent events of that call), one session per page. Unlike gradio_client it starts no threads of its
    own and polls nothing: a waiting page costs no CPU, as a browser on another machine costs the server none (30
    gradio_clients in one process on the server's two cores took a quarter of a core while they waited)."""

    def __init__(self, url: str, config: dict | None = None) -> None:
        self.session = secrets.token_hex(6)
        self.http = httpx.Client(base_url=url.rstrip("/"), timeout=httpx.Timeout(1800, connect=60))
        self.config = config if config is not None else self.http.get("/config").raise_for_status().json()

    def open_page(self) -> None:
        """What the page does when it opens: its load events, for this session (Gradio makes a session's state then,
        about 30 ms of the server's event loop for this page of ~300 components, not at the first Generate)."""
        for dep in self.config["dependencies"]:
            if not (any(target[1] == "load" for target in dep["targets"]) and dep.get("backend_fn")):
                continue
            body = {"data": [None] * len(dep["inputs"]), "fn_index": dep["id"], "session_hash": self.session,
                    "event_data": None, "trigger_id": None}
            event = self.http.post("/gradio_api/queue/join", json=body).raise_for_status().json()["event_id"]
            with self.http.stream("GET", "/gradio_api/queue/data", params={"session_hash": self.session}) as stream:
                for line in stream.iter_lines():
                    message = json.loads(line[5:]) if line.startswith("data:") else {}
                    if message.get("event_id") == event and message.get("msg") == "process_completed":
                        break

    def call(self, api_name: str, data: list, on_update=None) -> list:
        """Call a named endpoint; ``on_update(data)`` for each update streamed before the result. Raises
        ``RuntimeError`` with the server's message when the call fails."""
        path = f"/gradio_api/call/{api_name.strip('/')}"
        event = self.http.post(path, json={"data": data, "session_hash": self.session}).raise_for_status()
        kind = None
        with self.http.stream("GET", f"{path}/{event.json()['event_id']}") as stream:
            for line in stream.iter_lines():
                if line.startswith("event:"):
                    kind = line[6:].strip()
                elif line.startswith("data:") and kind in ("generating", "complete", "error"):
                    value = json.loads(line[5:])
                    if kind == "error":
                        raise RuntimeError(f"the app answered with an error: {value}")
                    if kind == "complete":
                        return value
                    if on_update is not None:
                        on_update(value)
        raise RuntimeError("the event stream ended without a result")

    def close(self) -> None:
        self.http.close()


def opened_page(url: str, config: dict | None = None) -> Browser:
    """A :class:`Browser` whose page has opened (its load events have run)."""
    page = Browser(url, config)
    page.open_page()
    return page


def all_at_once(url: str, users: int, one, browsers: bool = False) -> tuple[list, float]:
    """``users`` clients (one browser session each) call ``one(client, i)`` at the same moment, from threads; returns
    their results in order and the wall seconds from that moment (the clients are made before it, closed after).
    ``browsers``: :class:`Browser` clients, each page opened first (as a class opens the page before pressing
    Generate); else gradio_client's."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    if browsers:
        config = httpx.get(url.rstrip("/") + "/config", timeout=60).raise_for_status().json()
        clients = [opened_page(url, config) for _ in range(users)]
    else:
        clients = [new_client(url) for _ in range(users)]
    barrier = threading.Barrier(users)

    def start(i: int):
        barrier.wait()
        return one(clients[i], i)

    started = time.perf_counter()
    with ThreadPoolExecutor(users) as pool:
        results = list(pool.map(start, range(users)))
    wall = time.perf_counter() - started
    for client in clients:
        client.close()
    return results, wall
