"""Hostile and careless input through the API: every case is a clear message, and the app keeps serving.

One app (tiny random model) for the whole module; after every test the app must still answer a normal request.
Values that JSON cannot carry (NaN, infinity) are sent as raw REST bodies, the way a script could.
"""

from __future__ import annotations

import json
import shutil
import struct
import uuid
import zlib

import httpx
import numpy as np
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from sdviz.app.layout import build_demo
from sdviz.app.playground import run_settings
from sdviz.pipeline import models
from sdviz.pipeline.settings import MAX_INIT_PIXELS, RunSettings, check_settings

NOT_ALLOWED = "nobody/not-on-the-list"


@pytest.fixture(scope="module")
def app(tiny_model_dir, launch_app):
    demo = build_demo([str(tiny_model_dir)])
    url = launch_app(demo)
    client = Client(url, download_files=False, verbose=False, analytics_enabled=False)
    yield url, client, demo
    client.close()


@pytest.fixture(autouse=True)
def still_serving(app):
    """After every bad input, the app answers a normal request normally."""
    yield
    _, client, _ = app
    assert client.predict("a red circle", steps=2, api_name="/txt2img")[1].startswith("Done: ")


def rest_call(url: str, api_name: str, body: str) -> tuple[str, dict]:
    """POST a raw JSON body to Gradio's REST API and read the answer: ("complete" or "error", payload)."""
    response = httpx.post(f"{url}gradio_api/call/{api_name}", content=body,
                          headers={"content-type": "application/json"}, timeout=30)
    response.raise_for_status()
    event_id = response.json()["event_id"]
    with httpx.stream("GET", f"{url}gradio_api/call/{api_name}/{event_id}", timeout=60) as stream:
        lines = list(stream.iter_lines())
    kind = [line.split(": ", 1)[1] for line in lines if line.startswith("event: ")][-1]
    data = [line.split(": ", 1)[1] for line in lines if line.startswith("data: ")][-1]
    return kind, json.loads(data) if data != "null" else {}


def queue_call(url: str, fn_index: int, data: list) -> dict:
    """Call any event, private ones included, the way the page does (join the queue, read the stream)."""
    session = uuid.uuid4().hex
    join = httpx.post(f"{url}gradio_api/queue/join", timeout=30,
                      json={"data": data, "fn_index": fn_index, "session_hash": session, "event_data": None,
                            "trigger_id": None})
    join.raise_for_status()
    with httpx.stream("GET", f"{url}gradio_api/queue/data", params={"session_hash": session}, timeout=60) as stream:
        for line in stream.iter_lines():
            if line.startswith("data: "):
                message = json.loads(line[6:])
                if message.get("msg") == "process_completed":
                    return message
    raise AssertionError("the event never completed")


def warnings_of(job) -> list[str]:
    """The gr.Warning messages an API job received."""
    found = []
    while not job.communicator.updates.empty():
        update = job.communicator.updates.get_nowait()
        log = getattr(update, "log", None)
        if log and log[1] == "warning":
            found.append(log[0])
    return found


# --- Prompts -----------------------------------------------------------------------------------------

def test_an_empty_prompt_is_unconditional_generation_and_the_status_says_so(app):
    _, client, _ = app
    result = client.predict("", steps=2, api_name="/txt2img")
    assert "unconditional generation" in result[1] and "Done: " in result[1]


def test_an_over_long_prompt_is_cut_with_a_warning_naming_the_dropped_words(app):
    _, client, _ = app
    prompt = "a big red circle on the left " * 2 + "and a small blue square"  # the tiny model reads 14 tokens
    job = client.submit(prompt, steps=2, api_name="/txt2img")
    assert job.result()[1].startswith("Done")
    assert warnings_of(job) == ["The prompt is longer than the 16 tokens this model's text encoder reads (start and "
                                "end tokens included), so it was cut. Dropped (5 words): and a small blue square"]


def test_a_prompt_of_thousands_of_characters_is_refused_before_any_work(app):
    _, client, _ = app
    with pytest.raises(AppError, match="characters long.*shorten it"):
        client.predict("red " * 1000, steps=2, api_name="/txt2img")


# --- Numbers -----------------------------------------------------------------------------------------

@pytest.mark.parametrize(("bad", "message"), [
    ({"steps": 0}, "Steps: Value 0 is less than minimum value 1"),
    ({"steps": 101}, "Steps: Value 101 is greater than maximum value 100"),
    ({"steps": 2.5}, "Steps must be a whole number"),
    ({"guidance_scale": -1.0}, "CFG scale: Value -1.0 is less than minimum value 0"),
    ({"guidance_scale": 25.0}, "CFG scale: Value 25.0 is greater than maximum value 20"),
    ({"seed": -1}, "seed must be 0 or more"),
    ({"seed": 2**70}, "too large"),
    ({"seed": 3.5}, "seed must be a whole number"),
    ({"seed": None}, "seed is empty"),
    ({"scheduler": "no-such-scheduler"}, "not in the list of choices"),
])
def test_bad_numbers_and_names_give_a_message_naming_the_fix(app, bad, message):
    _, client, _ = app
    args = {"prompt": "a red circle", "steps": 3, "guidance_scale": 5.0} | bad
    with pytest.raises(AppError, match=message):
        client.predict(**args, api_name="/txt2img")


@pytest.mark.parametrize(("position", "literal", "message"), [
    (3, "NaN", "Guidance scale must be a finite number"),
    (3, "Infinity", "CFG scale: Value inf is greater than maximum value 20"),
    (3, "-Infinity", "CFG scale: Value -inf is less than minimum value 0"),
    (2, "NaN", "Steps must be a whole number"),
    (4, "NaN", "seed must be a whole number"),
])
def test_nan_and_infinity_sent_as_raw_json_are_refused(app, position, literal, message):
    url, _, _ = app
    values = ['"a red circle"', '""', "3", "5.0", "0", '"default"']
    values[position] = literal
    kind, payload = rest_call(url, "txt2img", '{"data": [' + ", ".join(values) + "]}")
    assert kind == "error" and message in payload["error"]


def test_nan_strength_is_stopped_by_the_settings_check():
    """The page's slider cannot make NaN and the API needs a picture with it: checked where the value lands."""
    settings = run_settings("a cat", "", 4, 5.0, 0, "default", float("nan"))
    with pytest.raises(ValueError, match="Strength must be more than 0"):
        check_settings(settings, img2img=True)
    with pytest.raises(ValueError, match="Strength must be more than 0"):
        check_settings(RunSettings(strength=float("inf")), img2img=True)


# --- Image to image ----------------------------------------------------------------------------------

def png_header(width: int, height: int) -> bytes:
    """A PNG that claims a size but holds no pixels: what a decompression bomb looks like before decoding."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grey
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pictures")
    Image.new("RGBA", (40, 30), (255, 0, 0, 0)).save(folder / "transparent.png")
    Image.new("L", (50, 50), 128).save(folder / "grey.png")
    Image.fromarray(np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 16).save(folder / "sixteen-bit.png")
    Image.new("RGB", (1, 1), (0, 255, 0)).save(folder / "tiny.png")
    Image.new("RGB", (3000, 2000), (0, 0, 255)).save(folder / "big.jpg", quality=80)
    (folder / "too-many-pixels.png").write_bytes(png_header(8000, 8000))  # 64 megapixels: over sdviz's limit
    (folder / "decompression-bomb.png").write_bytes(png_header(15000, 15000))  # 225: over PIL's own limit too
    (folder / "notes.txt").write_text("not a picture")
    (folder / "fake.png").write_text("not a picture either")
    return folder


def test_strength_zero_and_above_one_are_refused(app, pictures):
    _, client, _ = app
    for strength, message in ((0.0, "Strength: Value 0.0 is less than minimum value 0.05"),
                              (1.5, "Strength: Value 1.5 is greater than maximum value 1")):
        with pytest.raises(AppError, match=message):
            client.predict(handle_file(str(pictures / "grey.png")), "a red circle", strength=strength, steps=4,
                           api_name="/img2img")


def test_image_to_image_without_a_picture_says_what_to_do(app):
    _, client, _ = app
    with pytest.raises(AppError, match="needs a starting picture"):
        client.predict(None, "a red circle", api_name="/img2img")


@pytest.mark.parametrize("name", ["notes.txt", "fake.png"])
def test_a_file_that_is_not_a_picture_is_refused(app, pictures, name):
    _, client, _ = app
    with pytest.raises(AppError, match="Could not read the starting picture: upload a PNG, JPEG or WebP"):
        client.predict(handle_file(str(pictures / name)), "a red circle", steps=4, api_name="/img2img")


@pytest.mark.parametrize("name", ["transparent.png", "grey.png", "sixteen-bit.png", "tiny.png", "big.jpg"])
def test_odd_pictures_are_converted_and_resized(app, pictures, name):
    _, client, _ = app
    result = client.predict(handle_file(str(pictures / name)), "a blue circle", strength=0.5, steps=4,
                            api_name="/img2img")
    assert result[1].startswith("Done: ")


@pytest.mark.parametrize("name", ["too-many-pixels.png", "decompression-bomb.png"])
def test_pictures_with_too_many_pixels_are_refused_before_decoding(app, pictures, name):
    _, client, _ = app
    assert 8000 * 8000 > MAX_INIT_PIXELS
    with pytest.raises(AppError, match="megapixels: shrink it first"):
        client.predict(handle_file(str(pictures / name)), "a blue circle", steps=4, api_name="/img2img")


def test_uploads_over_the_size_limit_are_refused_by_the_server(app, tmp_path):
    url, client, _ = app
    big = tmp_path / "big.png"
    big.write_bytes(b"\x89PNG" + bytes(11 * 2**20))
    with big.open("rb") as f:
        response = httpx.post(f"{url}gradio_api/upload", files={"files": ("big.png", f, "image/png")}, timeout=60)
    assert response.status_code == 413
    with pytest.raises(ValueError, match="exceeds the maximum file size"):  # the client checks it too
        client.predict(handle_file(str(big)), "a red circle", api_name="/img2img")


# --- Models ------------------------------------------------------------------------------------------

def test_the_api_has_no_way_to_name_a_model(app):
    _, client, _ = app
    endpoints = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    assert all("model" not in p["parameter_name"] for e in endpoints.values() for p in e["parameters"])


def test_a_model_outside_the_allow_list_is_never_loaded_even_through_the_private_event(app, tiny_model_dir,
                                                                                       tmp_path):
    url, _, demo = app
    copy = tmp_path / "copy-of-the-model"  # a perfectly loadable pipeline, just not on the list
    shutil.copytree(tiny_model_dir, copy)
    choose_model = next(i for i, fn in demo.fns.items() if fn.name == "choose_model")
    for name in (str(copy), NOT_ALLOWED, "../../etc/passwd"):
        message = queue_call(url, choose_model, [name, str(tiny_model_dir)])
        assert message["success"] is False and "not in the list of choices" in message["output"]["error"]
    assert not any(str(copy) in key[0] or NOT_ALLOWED in key[0] for key in models._cache)
