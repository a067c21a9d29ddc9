"""The app in its own process, for the benchmarks: started as `python app.py` would, then driven by gradio_client.

Shared by app_latency.py, load_test.py and soak.py (each stays runnable as `python benchmarks/X.py`).
"""

from __future__ import annotations

import os
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
from sdviz.app.memory import return_freed_memory
return_freed_memory()  # first, as app.py does
from sdviz.app.layout import build_demo, launch_kwargs
demo = build_demo([sys.argv[1]])
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



def all_at_once(url: str, users: int, one) -> tuple[list, float]:
    """``users`` clients (one browser session each) call ``one(client, i)`` at the same moment, from threads; returns
    their results in order and the wall seconds from that moment (the clients are made before it, closed after)."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

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
