"""Many users at once, Stop, closing the tab, memory, and the settings of a public Space.

Two small servers (tiny random model): one with three runs at a time for the concurrency checks, one with one
slot and a queue of one for the queue-full and tab-closing checks. The Stop/follow-up ordering is checked by
calling the page's event functions directly with a made-up session.
"""

from __future__ import annotations

import importlib.machinery
import io
import json
import re
import socket
import sys
import threading
import time
import types
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import gradio as gr
import httpx
import numpy as np
import pytest
import torch
from gradio_client import Client
from gradio_client.exceptions import AppError
from gradio_client.utils import QueueError
from PIL import Image

from sdviz.app import hosting, layout, playground, services
from sdviz.app.sessions import DONE, RUNNING, STOPPED, SessionRuns
from sdviz.errors import SdvizError
from sdviz.lessons import peek
from sdviz.pipeline import batching
from sdviz.pipeline.models import EMBEDDED, KNOWN_HUB_MODELS
from sdviz.pipeline.sampler import denoise, denoise_batch
from sdviz.pipeline.settings import RunSettings
from sdviz.pipeline.trace import StepRecord, Trace

ROOT = Path(__file__).resolve().parent.parent
SLOW = "slowly"  # prompts with this word run 0.05 s a step (see slow_loop)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(demo: gr.Blocks) -> str:
    _, url, _ = demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=free_port(), quiet=True,
                            **layout.launch_kwargs())
    return url


def client(url: str) -> Client:
    return Client(url, download_files=False, verbose=False, analytics_enabled=False)


def picture(file_data: dict) -> np.ndarray:
    response = httpx.get(file_data["url"], timeout=30)
    response.raise_for_status()
    return np.asarray(Image.open(io.BytesIO(response.content)).convert("RGB"))


def slow_loop(model, starts):
    """The real loop; 0.05 s a step when a prompt of the batch asks for it (so a run lasts long enough to stop it)."""
    slow = any(SLOW in start.settings.prompt for start in starts)
    for items in denoise_batch(model, starts):
        if slow and isinstance(items[0], StepRecord):
            time.sleep(0.05)
        yield items


@pytest.fixture(scope="module")
def temp_dir(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("GRADIO_TEMP_DIR", str(tmp_path_factory.mktemp("gradio")))
    mp.setattr(batching, "denoise_batch", slow_loop)
    # Gradio notices a closed tab when its heartbeat (every 15 s) fails to write; this makes it every 0.25 s
    mp.setenv("GRADIO_IS_E2E_TEST", "1")
    yield
    mp.undo()


@pytest.fixture(scope="module")
def busy_app(tiny_model_dir, temp_dir):
    """Three runs at a time."""
    demo = layout.build_demo([str(tiny_model_dir)], concurrency_limit=3)
    yield launch(demo), demo
    demo.close()


@pytest.fixture(scope="module")
def one_slot_app(tiny_model_dir, temp_dir):
    """One run at a time, one more may wait."""
    demo = layout.build_demo([str(tiny_model_dir)], concurrency_limit=1, queue_size=1)
    yield launch(demo), demo
    demo.close()


# --- Concurrency ---------------------------------------------------------------------------------------

USERS = [  # prompt, steps, guidance, seed, scheduler
    ("a red circle", 6, 5.0, 1, "ddim"),
    ("a blue square on the left", 5, 7.5, 2, "euler"),
    ("a green triangle", 4, 1.0, 3, "euler_a"),
    ("a yellow circle at the top", 6, 3.0, 4, "dpmpp_2m"),
    ("", 5, 5.0, 5, "pndm"),
    ("a big purple square", 4, 9.0, 6, "default"),
]


def test_simultaneous_users_get_exactly_the_pictures_of_runs_made_one_by_one(busy_app):
    url, _ = busy_app
    users = [client(url) for _ in USERS]
    try:
        jobs = [c.submit(p, "", n, g, s, sch, api_name="/txt2img") for c, (p, n, g, s, sch) in zip(users, USERS, strict=True)]
        together = [picture(job.result(timeout=120)[0]) for job in jobs]
        alone = [picture(users[0].predict(p, "", n, g, s, sch, api_name="/txt2img")[0]) for p, n, g, s, sch in USERS]
    finally:
        for c in users:
            c.close()
    for (settings, a), b in zip(zip(USERS, together, strict=True), alone, strict=True):
        assert np.array_equal(a, b), settings
    assert len({a.tobytes() for a in together}) == len(USERS)  # and they are six different pictures


class Tab:
    """A browser tab, as the server sees it: a session with a heartbeat stream, one event and its data stream.
    :meth:`close` drops both connections at once, like closing the tab (a gradio_client Client keeps its
    job's stream open when closed, so it cannot stand in for a tab)."""

    def __init__(self, url: str, demo: gr.Blocks):
        self.url, self.session = url, uuid.uuid4().hex
        self.fn_index = {fn.name: i for i, fn in demo.fns.items()}
        self.messages: list[dict] = []
        self.streams: list[httpx.Response] = []
        self._data_reader: threading.Thread | None = None
        self.http = httpx.Client(timeout=None)
        self._follow(f"{url}gradio_api/heartbeat/{self.session}")

    def generate(self, prompt: str, steps: int, until: str) -> str:
        """Start a run and wait for its first message of kind ``until`` (process_generating, process_completed)."""
        data = [prompt, "", steps, 5.0, 0, "default", None, None]  # the last two: States (kept by the server)
        return self.join(self.fn_index["txt2img"], data, until)

    def join(self, fn_index: int, data: list, until: str | None = None) -> str:
        """Queue an event as the page does; wait for its first message of kind ``until``. Returns its event id."""
        response = self.http.post(f"{self.url}gradio_api/queue/join", json={
            "data": data, "fn_index": fn_index, "session_hash": self.session, "event_data": None, "trigger_id": None})
        response.raise_for_status()
        event_id = response.json()["event_id"]
        if self._data_reader is None or not self._data_reader.is_alive():  # the server ends it when nothing is left
            self._data_reader = self._follow(f"{self.url}gradio_api/queue/data?session_hash={self.session}",
                                             self.messages)
        if until is not None:
            self.wait(event_id, until)
        return event_id

    def run(self, fn_index: int, data: list) -> dict:
        """An event that is not queued (``queue=False``), as the page calls it."""
        response = self.http.post(f"{self.url}gradio_api/run/predict", json={
            "data": data, "fn_index": fn_index, "session_hash": self.session, "event_data": None, "trigger_id": None})
        response.raise_for_status()
        return response.json()

    def wait(self, event_id: str, until: str, timeout: float = 30) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [m for m in self.of(event_id) if m.get("msg") == until]
            if found:
                return found[0]
            time.sleep(0.05)
        raise AssertionError(f"no {until} for {event_id}: {self.of(event_id)[-3:]}")

    def of(self, event_id: str) -> list[dict]:
        return [m for m in list(self.messages) if m.get("event_id") == event_id]

    def _follow(self, url: str, into: list | None = None) -> threading.Thread:
        response = self.http.send(self.http.build_request("GET", url), stream=True)
        self.streams.append(response)

        def read():
            try:
                for line in response.iter_lines():
                    if into is not None and line.startswith("data: "):
                        into.append(json.loads(line[6:]))
            except (httpx.HTTPError, RuntimeError, ValueError):
                pass  # closed

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        return reader

    def close(self) -> None:
        for response in self.streams:
            response.close()
        self.http.close()


def test_a_full_queue_says_so_and_closing_a_tab_frees_its_slot(one_slot_app):
    url, demo = one_slot_app
    tab = Tab(url, demo)
    second, third = client(url), client(url)
    try:
        tab.generate("a blue square", 3, until="process_completed")  # the tab has a finished run...
        stored = demo.state_holder.session_data[tab.session].state_data
        assert any(isinstance(value, Trace) for value in stored.values())
        tab.generate(f"a red circle {SLOW}", 100, until="process_generating")  # ...and a run going
        run = demo.sdviz_page.runs.latest(tab.session)  # it holds the one slot
        waiting = second.submit("a blue square", steps=3, api_name="/txt2img")  # the one place in the queue
        time.sleep(0.5)
        with pytest.raises(QueueError, match="Queue is full"):
            third.predict("a green circle", steps=3, api_name="/txt2img")

        tab.close()  # the tab closes mid-run
        assert run.ended.wait(10) and run.outcome == STOPPED and len(run.steps) < 100
        assert waiting.result(timeout=30)[1].startswith("Done")  # the slot went to the next in line
        assert third.predict("a green circle", steps=3, api_name="/txt2img")[1].startswith("Done")
        deadline = time.monotonic() + 10  # the closed session's run and stored values are gone
        while demo.sdviz_page.runs.latest(tab.session) is not None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert demo.sdviz_page.runs.latest(tab.session) is None
        assert not any(isinstance(value, Trace) for value in stored.values())
    finally:
        for c in (second, third):
            c.close()


@pytest.fixture(scope="module")
def cpu_app(tiny_model_dir, temp_dir):
    """The settings of a CPU server: one run at a time, the default queue."""
    demo = layout.build_demo([str(tiny_model_dir)], concurrency_limit=1)
    yield launch(demo), demo
    demo.close()


def follow_up_of(demo: gr.Blocks, event: str) -> int:
    """The fn index of the event the page runs after ``event`` (its ``.then``)."""
    index = {fn.name: i for i, fn in demo.fns.items()}[event]
    return next(i for i, fn in demo.fns.items() if fn.get_config().get("trigger_after") == index)


def test_generate_in_the_other_tab_replaces_the_run_going_and_every_follow_up_answers(cpu_app):
    """The bug of issue 13: Image to image pressed while a Text to image run went on (one slot) waited for it to
    finish, was then cancelled by the first tab's late cancel ("Stopped at step 1 / 16"), and the follow-up of the
    first run failed ("didn't return enough output values")."""
    url, demo = cpu_app
    tab = Tab(url, demo)
    try:
        txt = tab.generate(f"a red circle {SLOW}", 100, until="process_generating")
        first = demo.sdviz_page.runs.latest(tab.session)
        # Image to image's Generate, as the page sends it: first the replacing listener, then the run
        upload = tab.http.post(f"{url}gradio_api/upload", files={"files": open(sorted(
            (ROOT / "assets" / "examples").glob("*.png"))[0], "rb")})
        image = {"path": upload.json()[0], "meta": {"_type": "gradio.FileData"}}
        tab.run(tab.fn_index["replace_run"], [])
        started = time.monotonic()
        img = tab.join(tab.fn_index["img2img"], [image, "a blue circle", "", 0.8, 10, 5.0, 0, "default", None,
                                                       None])
        assert tab.wait(txt, "process_completed")["success"]
        assert first.outcome == STOPPED and len(first.steps) < 100
        tab.wait(img, "process_starts")
        assert time.monotonic() - started < 5  # the new run did not wait for the old one to finish
        # the old run's follow-up, while the new one runs: it leaves the panel alone, without an error
        settled = tab.wait(tab.join(follow_up_of(demo, "txt2img"), []), "process_completed")
        assert settled["success"], settled
        assert tab.wait(img, "process_completed")["success"]
        second = demo.sdviz_page.runs.latest(tab.session)
        assert second is not first and second.outcome == DONE and second.trace is not None
        settled = tab.wait(tab.join(follow_up_of(demo, "img2img"), []), "process_completed")
        assert settled["success"], settled
        shown = tab.wait(tab.join(tab.fn_index["show_step"], [2]), "process_completed")
        assert shown["success"], shown
    finally:
        tab.close()


def test_an_unexpected_error_is_not_shown_raw_but_the_app_keeps_serving(one_slot_app, monkeypatch):
    url, _ = one_slot_app

    def broken_loop(*args, **kwargs):
        raise RuntimeError("secret detail from /root/.cache")
        yield

    monkeypatch.setattr(batching, "denoise_batch", broken_loop)
    user = client(url)
    try:
        with pytest.raises(AppError) as err:
            user.predict("a red circle", steps=3, api_name="/txt2img")
        assert "secret" not in str(err.value) and "/root" not in str(err.value)
        monkeypatch.setattr(batching, "denoise_batch", slow_loop)
        assert user.predict("a red circle", steps=3, api_name="/txt2img")[1].startswith("Done")
    finally:
        user.close()


# --- Stop, and events that follow a run (called like the page calls them) ------------------------------

class Session:
    """The playground's handlers, called directly (as the page calls them) for one made-up browser session."""

    def __init__(self, demo: gr.Blocks, session: str = "session-1"):
        self.page = demo.sdviz_page
        self.request = types.SimpleNamespace(session_hash=session)

    def generate(self, prompt: str, steps: int, scheduler: str = "ddim"):
        return playground.txt2img(self.page, prompt, "", steps, 5.0, 0, scheduler, self.demo_model,
                                  request=self.request)

    @property
    def demo_model(self) -> str:
        return self.page.models[0]

    def call(self, name: str, *args):
        return getattr(playground, name)(self.page, *args, request=self.request)

    def value(self, update: dict, elem_id: str):
        return next(v for k, v in update.items() if getattr(k, "elem_id", None) == elem_id)


@pytest.fixture(scope="module")
def page_demo(tiny_model_dir):
    return layout.build_demo([str(tiny_model_dir)])


def test_stop_ends_the_loop_within_one_step_and_its_last_update_shows_the_stopped_run(page_demo):
    page = Session(page_demo)
    event = page.generate("a red circle", 100)
    next(event)  # Starting
    first = next(event)  # step 1 on screen
    assert page.value(first, "peek-status").startswith("Step **1 / 100**")
    page.call("request_stop")  # the Stop button
    last = next(event)
    with pytest.raises(StopIteration):
        next(event)
    run = page_demo.sdviz_page.runs.latest("session-1")
    assert run.outcome == STOPPED and len(run.steps) <= 2  # the step in progress, no more
    status = page.value(last, "peek-status")
    assert status.startswith(f"Stopped at step **{len(run.steps)} / 100**")
    slider = page.value(last, "peek-step")
    assert slider.maximum == max(len(run.steps), 2) and slider.value == len(run.steps)


def test_after_stop_the_follow_up_and_the_slider_show_the_stopped_run_not_an_older_one(page_demo):
    page = Session(page_demo, "session-2")
    list(page.generate("a blue square", 4))  # a finished run, then a stopped one
    event = page.generate("a red circle", 300)
    next(event), next(event), next(event)
    event.close()  # Gradio's cancel closes the event between updates: its last update never arrives
    settled = page.call("settle")  # the page runs this after the cancel
    run = page_demo.sdviz_page.runs.latest("session-2")
    assert run.outcome == STOPPED and 0 < len(run.steps) < 300
    assert page.value(settled, "peek-status").startswith(f"Stopped at step **{len(run.steps)} / 300**")
    assert page.value(settled, "peek-step").maximum == max(len(run.steps), 2)
    shown = page.call("show_step", 1)
    assert page.value(shown, "peek-status") == f"Showing step **1 / {len(run.steps)}** of the stopped run."
    assert page.value(shown, "peek-live").count("data:image/png;base64,") == 3  # x_t, x0 decoded, guided noise


def test_a_finished_runs_follow_up_never_lands_on_a_newer_run(page_demo, monkeypatch):
    page = Session(page_demo, "session-3")
    list(page.generate("a blue square", 4))
    assert isinstance(page.value(page.call("settle"), "peek-live"), str)  # normally: the last step's panel...
    assert isinstance(page.call("settle_animation"), Image.Image)  # ...then the animation
    newer = page.generate("a red circle", 100)
    next(newer)  # the newer run has started
    for follow_up in ("settle", "settle_animation", "step_forward", "step_back"):
        args = (2, True) if follow_up.startswith("step") else ()
        assert page.call(follow_up, *args) == playground.unchanged(), follow_up
    assert page.call("show_step", 2) == playground.unchanged()
    newer.close()

    list(page.generate("a blue square", 4))  # a newer run starts while the follow-up is being made
    real_animation = peek.decode_animation

    def animation_then_new_run(frames, final):
        gif = real_animation(frames, final)
        page_demo.sdviz_page.runs.start("session-3", page.demo_model, 100)
        return gif

    monkeypatch.setattr(peek, "decode_animation", animation_then_new_run)
    assert page.call("settle_animation") == playground.unchanged()


def test_the_timeline_plays_steps_pauses_at_the_end_or_loops(page_demo):
    page = Session(page_demo, "session-4")
    timer, button = page.call("play_pause", playground.PLAY, 5, 1)
    assert not timer.active and button.value == playground.PLAY  # nothing to play yet
    list(page.generate("a blue square", 4))
    run = page_demo.sdviz_page.runs.latest("session-4")
    n = len(run.steps)
    timer, button = page.call("play_pause", playground.PLAY, 5, n)
    assert timer.active and timer.value == pytest.approx(0.2) and button.value == playground.PAUSE
    timer, button = page.call("play_pause", playground.PAUSE, 5, 3)
    assert not timer.active and button.value == playground.PLAY
    ticked = page.call("step_forward", 1, False)  # one tick: step 1 -> 2, the whole panel
    assert page.value(ticked, "peek-status") == f"Showing step **2 / {n}** of the last run."
    assert page.value(ticked, "peek-step") == 2
    assert page.value(ticked, "peek-numbers").count(f"2 of {n}") == 1
    assert isinstance(page.value(ticked, "peek-plot"), Image.Image)
    at_end = page.call("step_forward", n, False)  # at the end without loop: it stays and pauses
    assert page.value(at_end, "peek-step") == n and page.value(at_end, "peek-play").value == playground.PLAY
    assert page.call("step_forward", n, True)[page_demo.sdviz_page.panel.step] == 1  # loop: round again
    assert page.call("step_back", 1, True)[page_demo.sdviz_page.panel.step] == n
    assert playground.pace_s(0) == 1.0 and playground.pace_s(50) == pytest.approx(0.1)


def test_during_a_run_the_timeline_replays_what_has_arrived(page_demo):
    page = Session(page_demo, "session-5")
    event = page.generate("a red circle", 300)
    next(event), next(event), next(event)  # Starting, then two live frames: at least two steps have arrived
    run = page_demo.sdviz_page.runs.latest("session-5")
    arrived = len(run.steps)
    assert page.call("step_forward", 1, True) == playground.unchanged()  # not playing: the live frames rule
    timer, button = page.call("play_pause", playground.PLAY, 10, 1)
    assert timer.active and button.value == playground.PAUSE and playground.replaying(run)
    ticked = page.call("step_forward", 1, True)
    assert page.value(ticked, "peek-status").startswith("Showing step **2 / ")
    assert "of the run going" in page.value(ticked, "peek-status") and page.value(ticked, "peek-step") == 2
    assert len(run.steps) >= arrived and run.outcome == RUNNING
    page.call("play_pause", playground.PAUSE, 10, 2)  # Pause: the live frames come back
    assert not playground.replaying(run)
    event.close()


# --- Memory --------------------------------------------------------------------------------------------

def fake_run(runs: SessionRuns, session: str, steps: int = 3):
    run = runs.start(session, "m", steps)
    zeros = torch.zeros(4, 8, 8, dtype=torch.float16)
    run.steps.extend(StepRecord(i, 999.0 - i, 1.0, zeros, None, zeros, zeros, zeros) for i in range(steps))
    run.end(STOPPED)
    return run


def test_session_runs_are_bounded_in_number_and_time_and_freed_when_the_tab_closes():
    runs = SessionRuns(max_sessions=10, ttl_s=60)
    for i in range(300):  # 300 sessions, many runs each: memory stays at 10 sessions' latest runs
        for _ in range(3):
            fake_run(runs, f"s{i}")
    assert len(runs) == 10 and runs.latest("s0") is None and runs.latest("s299") is not None
    assert runs.nbytes() == 10 * fake_run(SessionRuns(), "x").nbytes()
    runs.end_session("s299")
    assert runs.latest("s299") is None and len(runs) == 9
    runs.ttl_s = 0
    time.sleep(0.01)
    runs.forget_expired()
    assert len(runs) == 0


def sd15_sized_run(runs: SessionRuns, session: str, steps: int = 50) -> None:
    """A finished run the size of SD 1.5's at 512x512: 50 steps of five [4, 64, 64] float16 tensors, 4 decodes."""
    run = runs.start(session, "sd-1.5", steps)
    run.steps.extend(StepRecord(i, 999.0 - i, 1.0, *(torch.zeros(4, 64, 64, dtype=torch.float16) for _ in range(5)))
                     for i in range(steps))
    for i in range(4):
        run.decodes.put((i, "x_t"), Image.new("RGB", (512, 512)))
    run.end(STOPPED)


def test_the_sessions_runs_are_bounded_in_bytes_with_sd15_sized_runs():
    alone = SessionRuns()
    sd15_sized_run(alone, "x")
    one = alone.nbytes()
    assert 10e6 < one < 12e6  # 8.2 MB of steps + 3.1 MB of decodes
    runs = SessionRuns(max_sessions=500, max_bytes=int(5.5 * one))
    for i in range(40):  # a class, each student's latest run
        sd15_sized_run(runs, f"s{i}")
    assert runs.latest("s39") is not None  # the newest always stays
    assert len(runs) == 5 and runs.nbytes() <= runs.max_bytes
    assert runs.latest("s0") is None and runs.latest("s35") is not None
    tiny = SessionRuns(max_bytes=one // 2)  # a budget smaller than one run still keeps the newest run
    sd15_sized_run(tiny, "a")
    sd15_sized_run(tiny, "b")
    assert tiny.latest("b") is not None and tiny.latest("a") is None and len(tiny) == 1


def test_the_memory_budget_comes_from_the_environment():
    cpu = torch.device("cpu")
    assert hosting.capacity(cpu, {}).session_bytes == hosting.DEFAULT_SESSION_MB * 2**20
    assert hosting.capacity(cpu, {"SDVIZ_SESSION_MB": "512"}).session_bytes == 512 * 2**20
    with pytest.raises(SdvizError, match="SDVIZ_SESSION_MB must be a whole number of 1 or more"):
        hosting.capacity(cpu, {"SDVIZ_SESSION_MB": "lots"})


def test_a_new_run_replaces_the_sessions_previous_one_and_a_closed_tab_stops_its_run():
    runs = SessionRuns()
    old = fake_run(runs, "s")
    new = runs.start("s", "m", 5)
    assert runs.latest("s") is new and runs.is_latest("s", new) and not runs.is_latest("s", old)
    assert new.outcome == RUNNING
    runs.end_session("s")
    assert new.stop_requested.is_set()


def test_decodes_of_a_run_are_cached_and_bounded(tiny_model):
    runs = SessionRuns()
    run = runs.start("s", tiny_model.name, 4)
    for item in denoise(tiny_model, RunSettings(prompt="a red circle", steps=4, guidance_scale=5.0)):
        if isinstance(item, StepRecord):
            run.steps.append(item)
        else:
            run.finish(item)
    first = services.step_decodes(tiny_model, run, 0)
    again = services.step_decodes(tiny_model, run, 0)
    assert all(a is b for a, b in zip(first, again, strict=True)) and len(run.decodes) == 2  # decoded once
    assert run.decodes.max_bytes == 8 * 2**20 and run.outcome == DONE


# --- Settings for a public Space -------------------------------------------------------------------------

def test_launch_settings_are_those_of_a_public_space():
    settings = layout.launch_kwargs()
    assert settings["max_file_size"] == "10mb" and settings["show_error"] is False
    assert settings["enable_monitoring"] is False and settings["strict_cors"] is True
    assert not settings["allowed_paths"] and "blocked_paths" not in settings
    assert settings["state_session_capacity"] == hosting.DEFAULT_MAX_SESSIONS


def test_the_running_server_has_monitoring_off_a_bounded_queue_and_cache_clean_up(busy_app):
    url, demo = busy_app
    for path in ("monitoring", "gradio_api/monitoring", "monitoring/summary", "gradio_api/monitoring/summary"):
        assert httpx.get(url + path, timeout=10).status_code in (403, 404), path
    assert demo._queue.max_size == hosting.DEFAULT_QUEUE_SIZE and demo.delete_cache == (600, 3600)
    assert demo.show_error is False and demo.max_file_size == 10 * 2**20


def test_gradio_is_pinned_past_its_security_fixes_and_the_space_uses_the_same_version():
    requirements = (ROOT / "requirements.txt").read_text()
    assert "gradio==6.31.0" in requirements and "safetensors" in requirements
    front_matter = (ROOT / "README.md").read_text().split("---")[1]
    assert "sdk: gradio" in front_matter and "sdk_version: 6.31.0" in front_matter
    assert "app_file: app.py" in front_matter and "python_version:" in front_matter


# --- Hosting helpers -----------------------------------------------------------------------------------

def test_models_come_from_an_allow_list_and_nothing_else_is_accepted():
    assert hosting.allowed_models({}) == [EMBEDDED, *KNOWN_HUB_MODELS]
    allowed = hosting.allowed_models({"SDVIZ_MODELS": " embedded, a/b ,"})
    assert allowed == ["embedded", "a/b"]
    assert hosting.check_allowed("a/b", allowed) == "a/b"
    for bad in ("/etc", "../assets/tiny-sd", "c/d", None, 3):
        with pytest.raises(SdvizError, match="not offered"):
            hosting.check_allowed(bad, allowed)


def test_capacity_comes_from_the_environment_with_defaults_per_device():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert hosting.capacity(cpu, {}) == hosting.Capacity(32, 64, 500, lesson_concurrency=1)  # a class at once
    assert hosting.capacity(cuda, {}).lesson_concurrency == 2
    env = {"SDVIZ_CONCURRENCY": "3", "SDVIZ_QUEUE_SIZE": "10", "SDVIZ_MAX_SESSIONS": "50",
           "SDVIZ_LESSON_CONCURRENCY": "4"}
    assert hosting.capacity(cpu, env) == hosting.Capacity(3, 10, 50, lesson_concurrency=4)
    for bad in ("0", "-2", "many"):
        with pytest.raises(SdvizError, match="SDVIZ_QUEUE_SIZE must be a whole number of 1 or more"):
            hosting.capacity(cpu, {"SDVIZ_QUEUE_SIZE": bad})


def test_batch_size_by_model_size_and_device_and_batching_can_be_turned_off(tiny_model):
    big = types.SimpleNamespace(unet=torch.nn.Linear(8000, 8000), device=torch.device("cpu"))  # 64 M parameters
    assert hosting.batch_size(tiny_model, {}) == 32  # a small U-Net: a class in one batch, even on a CPU
    assert hosting.batch_size(big, {}) == 1  # a big one on a CPU: one run fills the machine
    assert hosting.batch_size(types.SimpleNamespace(unet=big.unet, device=torch.device("cuda")), {}) == 8
    assert hosting.batch_size(tiny_model, {"SDVIZ_BATCH": "5"}) == 5
    assert hosting.batching({}) and not hosting.batching({"SDVIZ_BATCH": "1"})


def test_gpu_is_a_no_op_without_the_spaces_package_and_spaces_gpu_with_it(monkeypatch):
    def work(x):
        return x + 1

    if "spaces" not in sys.modules:
        assert hosting.gpu(work) is work and hosting.gpu(duration=5)(work) is work
    calls = []
    fake = types.ModuleType("spaces")
    fake.__spec__ = importlib.machinery.ModuleSpec("spaces", None)
    fake.GPU = lambda fn, duration=None: calls.append(duration) or (lambda *a: ("on a GPU", fn(*a)))
    monkeypatch.setitem(sys.modules, "spaces", fake)
    assert hosting.gpu(work, duration=hosting.loop_seconds)(1) == ("on a GPU", 2)
    assert calls == [hosting.loop_seconds]
    assert hosting.loop_seconds("m", RunSettings(steps=50)) == 40
    monkeypatch.setenv("SPACES_ZERO_GPU", "true")
    assert hosting.zero_gpu()


def test_concurrent_calls_of_the_loop_share_no_state(tiny_model):
    """The same settings on four threads at once: the same latents as one run alone (a scheduler per run)."""
    settings = RunSettings(prompt="a red circle", steps=5, guidance_scale=5.0, scheduler="dpmpp_2m", seed=9)

    def final_latents():
        return [item for item in denoise(tiny_model, settings)][-1].final_latents

    alone = final_latents()
    barrier = threading.Barrier(4)

    def together():
        barrier.wait()
        return final_latents()

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: together(), range(4)))
    assert all(torch.equal(alone, r) for r in results)


@pytest.mark.parametrize("keyed", [True, False])
def test_the_fair_lock_serves_its_waiters_one_at_a_time_in_turn(keyed):
    """Live frames are drawn in turn, those of the runs that started first before the others' (keyed: drawn at once,
    thirty threads fight for Python's global lock); the torch work of the batch and the live views in the order it
    came (compute_lock)."""
    from sdviz.pipeline.models import FairLock

    lock = FairLock()
    order, inside = [], []
    holding, release = threading.Event(), threading.Event()

    def hold():
        with lock.turn(0.0) if keyed else lock:
            holding.set()
            release.wait(10)

    def work(key):
        with lock.turn(key) if keyed else lock:
            inside.append(key)
            time.sleep(0.01)
            order.append((key, len(inside)))
            inside.remove(key)

    threads = [threading.Thread(target=hold)]
    threads[0].start()
    holding.wait(10)
    for key in (3.0, 1.0, 2.0):  # they arrive in this order
        threads.append(threading.Thread(target=work, args=(key,)))
        threads[-1].start()
        deadline = time.monotonic() + 10
        while len(lock._waiting) < len(threads) - 1 and time.monotonic() < deadline:
            time.sleep(0.005)
    release.set()
    for thread in threads:
        thread.join(10)
    expected = [1.0, 2.0, 3.0] if keyed else [3.0, 1.0, 2.0]  # by key, or by arrival
    assert order == [(key, 1) for key in expected]  # one at a time
    with lock.turn(5.0) if keyed else lock:  # free again: taken at once
        pass


# --- In a real browser (skips without Debian's Chromium) -------------------------------------------------

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]


def test_in_the_browser_stop_leaves_the_stopped_run_on_screen_and_on_the_slider(busy_app):
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: install Debian's Chromium (apt-get install chromium) to run this test")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is missing")
    url, _ = busy_app
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(60_000)
        sync_api.expect.set_options(timeout=60_000)
        page.goto(url)
        page.locator("#txt2img-prompt textarea").fill(f"a red circle {SLOW}")
        steps = page.locator("#txt2img-steps input[type=number]")
        steps.fill("80")
        steps.press("Enter")
        page.locator("#txt2img-generate").click()
        status = page.locator("#peek-status")
        sync_api.expect(status).to_contain_text("Step ")
        page.locator("#txt2img-stop").click()
        sync_api.expect(status).to_contain_text("Stopped at step")
        page.wait_for_timeout(1500)  # any update of the loop still on its way would have landed by now
        text = status.inner_text()
        stopped_at = int(re.search(r"Stopped at step (\d+) / 80", text).group(1))
        assert 1 <= stopped_at < 80
        slider = page.locator("#peek-step input[type=range]")
        assert int(slider.get_attribute("max")) == max(stopped_at, 2)
        assert int(slider.input_value()) == stopped_at

        page.get_by_role("tab", name="Image to image").click()  # the upload widget is Gradio's own
        sync_api.expect(page.locator("#img2img-init input[type=file]")).to_have_count(1)
        browser.close()


MAPPED_AFTER_FREE = """
import ctypes, sys
from sdviz.app.memory import return_freed_memory
if sys.argv[1] == "call" and not return_freed_memory():  # first thing, as app.py does
    print("no glibc"); raise SystemExit
from sdviz.app import hosting  # then torch, diffusers and the rest, as the server imports them
class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
                                                "uordblks", "fordblks", "keepcost")]
mallinfo2 = ctypes.CDLL("libc.so.6").mallinfo2
mallinfo2.restype = MallInfo2
before = mallinfo2().hblkhd
block = bytearray(16 << 20)  # over the 8 MiB threshold sdviz fixes, under the 32 MiB cap of a raised one
del block
block = bytearray(16 << 20)  # after a free: mapped on its own again, or taken from a heap glibc keeps?
print(mallinfo2().hblkhd - before >= 16 << 20)
"""


def test_large_freed_blocks_go_back_to_the_system_after_return_freed_memory():
    """glibc's own bookkeeping (mallinfo2) is the oracle, in a fresh process like a server's: a 16 MB block
    allocated after another was freed still gets its own memory map (which free() hands back) after the call,
    and does not without it."""
    import subprocess

    def mapped(mode: str) -> str:
        return subprocess.run([sys.executable, "-c", MAPPED_AFTER_FREE, mode], capture_output=True, text=True,
                              check=True, cwd=Path(__file__).resolve().parent.parent).stdout.strip()

    with_call = mapped("call")
    if with_call == "no glibc":
        pytest.skip("no glibc here: nothing to tune")
    assert with_call == "True"
    assert mapped("no-call") == "False"


HOLES_GIVEN_BACK = """
import sys
from sdviz.app import memory
if not memory.return_freed_memory():
    print("no glibc"); raise SystemExit
def resident():
    return int(open("/proc/self/status").read().split("VmRSS:")[1].split()[0]) * 1024
blocks = [bytearray(b"\\1") * (2 << 20) for _ in range(60)]  # 120 MB in 2 MB blocks written to: from the heap
keep = blocks[-1::-1][::6]  # every sixth stays: the freed ones are holes between kept blocks, not the heap's top
del blocks
held = resident()
first, second = memory.trim_freed_memory(), memory.trim_freed_memory()
print(first, second, (held - resident()) >> 20)
"""


def test_a_finished_run_hands_the_heaps_holes_back_at_most_every_few_seconds():
    """The kernel's count of the process's resident memory is the oracle: 100 MB of freed 2 MB blocks between kept
    ones stay resident until the trim, which gives them back; a second call right after does nothing."""
    import subprocess

    out = subprocess.run([sys.executable, "-c", HOLES_GIVEN_BACK], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parent.parent).stdout.split()
    if out == ["no", "glibc"]:
        pytest.skip("no glibc here: nothing to trim")
    first, second, given_back_mb = out
    assert (first, second) == ("True", "False") and int(given_back_mb) >= 80


def test_the_teaching_tabs_have_their_own_slots_apart_from_the_class_batches(tiny_model_dir):
    demo = layout.build_demo([str(tiny_model_dir)])
    fns = list(demo.fns.values())
    generate = {fn.concurrency_limit for fn in fns if fn.concurrency_id == layout.GENERATE_CONCURRENCY_ID}
    lessons = [fn for fn in fns if fn.concurrency_id == layout.LESSON_CONCURRENCY_ID]
    assert generate == {hosting.capacity().concurrency}  # a class's runs, batched
    assert len(lessons) >= 8 and {fn.concurrency_limit for fn in lessons} == {None, hosting.capacity().lesson_concurrency}
    demo.close()


def test_the_run_cache_size_comes_from_the_environment():
    assert hosting.run_cache_mb({}) == 4 and hosting.run_cache_mb({"SDVIZ_RUN_CACHE_MB": "0"}) == 0
    assert hosting.run_cache_mb({"SDVIZ_RUN_CACHE_MB": "64"}) == 64
    with pytest.raises(SdvizError, match="SDVIZ_RUN_CACHE_MB"):
        hosting.run_cache_mb({"SDVIZ_RUN_CACHE_MB": "lots"})


FROZEN_AT_START = """
import gc, weakref
from sdviz.app import memory
class Cycle:
    pass
garbage = Cycle()
garbage.me = garbage  # garbage in a reference cycle: collected first, not frozen for good
gone = weakref.ref(garbage)
del garbage
kept = [Cycle() for _ in range(1000)]
frozen = memory.freeze_startup_objects()
print(frozen == gc.get_freeze_count() and frozen > 1000, gone() is None,
      sum(isinstance(o, Cycle) for o in gc.get_objects()))
"""


def test_startup_objects_are_frozen_out_of_full_garbage_collections():
    """The interpreter's own view (gc.get_objects lists only what the collector still walks) is the oracle, in a fresh
    process like a server's: after the call the startup objects are frozen, and the garbage made before was collected."""
    import subprocess

    out = subprocess.run([sys.executable, "-c", FROZEN_AT_START], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parent.parent).stdout.split()
    assert out == ["True", "True", "0"]  # frozen, the garbage collected, the kept ones no longer walked
    assert "freeze_startup_objects()" in (Path(__file__).resolve().parent.parent / "app.py").read_text()
