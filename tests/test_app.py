"""The Gradio app, driven through its API with gradio_client against a launched server (tiny model)."""

from __future__ import annotations

import base64
import io
import math
import re
import time
from types import SimpleNamespace

import gradio as gr
import httpx
import numpy as np
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from gradio_client.utils import Status
from PIL import Image

from sdviz.app import components, playground, texts
from sdviz.app.components import EXAMPLES_DIR
from sdviz.app.hosting import allowed_models
from sdviz.app.layout import build_demo
from sdviz.app.playground import run_settings
from sdviz.app.services import load_for_app
from sdviz.cli import main as cli
from sdviz.errors import SdvizError
from sdviz.pipeline import batching, vae
from sdviz.pipeline.models import EMBEDDED, KNOWN_HUB_MODELS
from sdviz.pipeline.sampler import denoise_batch, generate
from sdviz.pipeline.settings import RunSettings, check_settings
from sdviz.toy import model as toy_model
from sdviz.toy import world

MISSING_MODEL = "nobody/no-such-model"  # a hub id that cannot load offline


@pytest.fixture(scope="module")
def app(tiny_model_dir, launch_app):
    url = launch_app(build_demo([str(tiny_model_dir), MISSING_MODEL]))
    client = Client(url, download_files=False, verbose=False, analytics_enabled=False)
    yield url, client
    client.close()


def picture(file_data: dict) -> np.ndarray:
    """Fetch an image output the way the browser does, by its URL."""
    response = httpx.get(file_data["url"], timeout=30)
    response.raise_for_status()
    return np.asarray(Image.open(io.BytesIO(response.content)).convert("RGB"))


def is_picture(value) -> bool:
    return isinstance(value, dict) and bool(value.get("url"))


def cli_picture(tmp_path, tiny_model_dir, *args: str) -> np.ndarray:
    out = tmp_path / "cli"
    assert cli(["generate", "--model", str(tiny_model_dir), "--out", str(out), *args]) == 0
    return np.asarray(Image.open(out / "final.png").convert("RGB"))


def test_the_api_has_the_two_documented_endpoints(app):
    _, client = app
    endpoints = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    assert set(endpoints) == {"/txt2img", "/img2img"}  # helper events are private
    params = {name: [(p["parameter_name"], p["parameter_has_default"]) for p in e["parameters"]]
              for name, e in endpoints.items()}
    assert [n for n, _ in params["/txt2img"]] == ["prompt", "negative_prompt", "steps", "guidance_scale", "seed",
                                                  "scheduler"]
    assert [n for n, _ in params["/img2img"]] == ["image", "prompt", "negative_prompt", "strength", "steps",
                                                  "guidance_scale", "seed", "scheduler"]
    for name, ps in params.items():
        assert all(has for n, has in ps if n not in ("prompt", "image")), name
        assert not any(has for n, has in ps if n in ("prompt", "image")), name


def test_txt2img_streams_steps_and_ends_with_the_same_picture_as_the_cli(app, tiny_model_dir, tmp_path):
    _, client = app
    job = client.submit("a red circle", "", 30, 6.0, 7, "euler", api_name="/txt2img")
    updates = list(job)
    final = job.result()
    statuses = [u[1] for u in updates if isinstance(u[1], str)]
    assert len(updates) >= 3
    assert any(s.startswith("Step") for s in statuses) and statuses[-1].startswith("Done: 30 steps")
    assert is_picture(final[0])
    expected = cli_picture(tmp_path, tiny_model_dir, "--prompt", "a red circle", "--steps", "30", "--guidance-scale",
                           "6", "--seed", "7", "--scheduler", "euler")
    assert np.array_equal(picture(final[0]), expected)


def test_the_api_defaults_are_the_models_recommended_settings_like_the_cli(app, tiny_model_dir, tmp_path):
    _, client = app
    final = client.predict("a blue square", api_name="/txt2img")
    expected = cli_picture(tmp_path, tiny_model_dir, "--prompt", "a blue square")
    assert np.array_equal(picture(final[0]), expected)


def test_img2img_starts_from_the_picture_and_matches_the_cli(app, tiny_model_dir, tmp_path):
    _, client = app
    start = sorted(EXAMPLES_DIR.glob("*.png"))[0]
    job = client.submit(handle_file(str(start)), "a blue circle", "", 0.5, 8, 5.0, 3, "ddim", api_name="/img2img")
    updates = list(job)
    final = job.result()
    assert len(updates) >= 2 and is_picture(final[0])
    assert final[1].startswith("Done: 4 steps")  # strength 0.5 of 8 steps
    expected = cli_picture(tmp_path, tiny_model_dir, "--prompt", "a blue circle", "--init-image", str(start),
                           "--strength", "0.5", "--steps", "8", "--guidance-scale", "5", "--seed", "3",
                           "--scheduler", "ddim")
    assert np.array_equal(picture(final[0]), expected)


@pytest.mark.parametrize("bad", [
    {"guidance_scale": 25.0},  # beyond the slider
    {"guidance_scale": -1.0},
    {"steps": 0},
    {"scheduler": "no-such-scheduler"},
])
def test_bad_input_gives_an_error_and_the_app_keeps_answering(app, bad):
    _, client = app
    args = {"prompt": "a red circle", "steps": 3, "guidance_scale": 5.0} | bad
    with pytest.raises(AppError):
        client.predict(**args, api_name="/txt2img")
    assert client.predict("a red circle", steps=2, api_name="/txt2img")[1].startswith("Done")


def test_img2img_without_a_picture_says_what_to_do(app):
    _, client = app
    with pytest.raises(AppError, match="starting picture"):
        client.predict(None, "a red circle", api_name="/img2img")


def test_a_cancelled_run_frees_its_slot(app):
    _, client = app
    job = client.submit("a red circle", steps=100, api_name="/txt2img")
    for _ in job:  # wait for the first live step, then press Stop
        break
    job.cancel()
    assert client.predict("a red circle", steps=2, api_name="/txt2img")[1].startswith("Done")
    assert job.status().code == Status.CANCELLED
    assert not any(str(u[1]).startswith("Done") for u in job.outputs())  # the long run never finished


def test_the_page_opens(app):
    url, _ = app
    page = httpx.get(url, timeout=30)
    assert page.status_code == 200 and "sdviz" in page.text


# --- Without a server ----------------------------------------------------------------------------

def test_page_values_become_run_settings():
    s = run_settings("a cat", None, 4.0, 5, 7.0, "default", 0.5)
    assert s == RunSettings(prompt="a cat", negative_prompt="", steps=4, guidance_scale=5.0, seed=7, scheduler=None,
                            strength=0.5)
    assert run_settings("", "", 4, 5, 7, "euler").scheduler == "euler"
    for bad in ({"steps": 2.5}, {"seed": None}, {"guidance_scale": "a lot"}, {"steps": True}):  # caught here
        args = {"prompt": "x", "negative_prompt": "", "steps": 4, "guidance_scale": 5, "seed": 0,
                "scheduler": "default"} | bad
        with pytest.raises(SdvizError):
            run_settings(**args)
    for bad in ({"guidance_scale": math.nan}, {"guidance_scale": math.inf}):  # JSON cannot carry these; the
        # browser cannot make them either, but the core check still stops them
        args = {"prompt": "x", "negative_prompt": "", "steps": 4, "guidance_scale": 5, "seed": 0,
                "scheduler": "default"} | bad
        with pytest.raises(SdvizError, match="Guidance"):
            check_settings(run_settings(**args))


def test_the_dropdown_says_which_models_need_internet(tiny_model_dir):
    for hub in KNOWN_HUB_MODELS:
        assert components.model_label(hub) == f"{hub} (hub: needs internet)"
    assert "offline" in components.model_label(EMBEDDED)
    assert components.model_label(str(tiny_model_dir)) == str(tiny_model_dir)  # a folder here needs nothing


def test_the_model_allow_list_comes_from_the_environment():
    assert allowed_models({}) == [EMBEDDED, *KNOWN_HUB_MODELS]
    assert allowed_models({"SDVIZ_MODELS": " embedded, a/b ,"}) == ["embedded", "a/b"]


def test_a_model_that_cannot_load_is_a_clear_error_and_the_app_still_builds():
    with pytest.raises(gr.Error, match="Could not load") as err:
        load_for_app(MISSING_MODEL)  # offline (the tests set HF_HUB_OFFLINE): one plain sentence that says so
    assert "no internet" in err.value.message and "stacktrace" not in err.value.message
    assert err.value.message.count(". ") == 0 and len(err.value.message) < 200
    demo = build_demo([MISSING_MODEL])
    assert isinstance(demo, gr.Blocks)


@pytest.fixture
def panel_and_states():
    with gr.Blocks():
        panel = components.peek_panel(None)
        final = gr.Image()
        run_state = gr.State()
    return panel, final, run_state


def test_stopping_the_event_ends_the_loop_at_the_step_it_is_on(tiny_model_dir, panel_and_states, monkeypatch):
    computed, closed = [], []

    def watched_denoise(*args, **kwargs):  # the real loop, watched
        try:
            for item in denoise_batch(*args, **kwargs):
                computed.append(item)
                yield item
        finally:
            closed.append(True)

    monkeypatch.setattr(batching, "denoise_batch", watched_denoise)
    settings = RunSettings(prompt="a red circle", steps=200, guidance_scale=5.0)
    event = playground.live_run(*panel_and_states, str(tiny_model_dir), settings)
    next(event)  # "Starting"
    first = next(event)  # the first step, on screen
    panel = panel_and_states[0]
    assert first[panel.status].startswith("Step **1 / 200**")
    event.close()  # what Gradio does on Stop or when the tab closes
    assert closed == [True] and len(computed) == 1


def test_the_event_shows_steps_live_then_hands_over_the_trace(tiny_model_dir, panel_and_states):
    panel, final, run_state = panel_and_states
    settings = RunSettings(prompt="a red circle", steps=6, guidance_scale=5.0, scheduler="ddim")
    updates = list(playground.live_run(panel, final, run_state, str(tiny_model_dir), settings))
    live = [u for u in updates if str(u.get(panel.status, "")).startswith("Step")]
    assert live and all(u[panel.latents].count("data:image/png;base64,") == 1 for u in live)
    assert all(u[panel.live].count("data:image/png;base64,") == 3 for u in live)  # x_t, x0, the guided noise
    assert all(u[panel.noise].count("data:image/png;base64,") == 4 for u in live)
    trace = updates[-1][run_state]
    assert [s.index for s in trace.steps] == list(range(6))
    assert updates[-1][final] is trace.image


def test_live_updates_leave_out_no_output_they_can_fill(tiny_model_dir, panel_and_states):
    """Gradio rebuilds every output an update leaves out (a component and its config, on its one event loop): the
    start and the live frames give each output a value, the plot and its text only once a plot is on screen (they keep
    it). The start also clears every picture of the previous run."""
    panel, final, run_state = panel_and_states
    outputs = [final, *panel.all_outputs()]
    settings = RunSettings(prompt="a red circle", steps=12, guidance_scale=5.0, scheduler="ddim")
    updates = list(playground.live_run(panel, final, run_state, str(tiny_model_dir), settings, slow=False))
    start, live = updates[0], [u for u in updates if str(u.get(panel.status, "")).startswith("Step")]
    assert set(start) == set(outputs) and start[panel.latents] == components.waiting_latents(texts.STARTING)
    assert start[panel.noise] == components.waiting_noise(texts.STARTING) and texts.STARTING in start[panel.live]
    assert start[final] is None and start[panel.plot] is None and start[panel.numbers] == ""
    assert live
    plot_shown = False
    for update in live:
        plot_shown = plot_shown or update.get(panel.plot) is not None
        assert set(outputs) - set(update) <= ({panel.plot, panel.plot_text} if plot_shown else set())
        assert update[final] is None and update[panel.animation] is None
        assert isinstance(update[panel.step], int)  # a plain value: the slider's range was set at the start
    assert [u[panel.step] for u in live] == sorted({u[panel.step] for u in live})
    done = updates[-1]
    assert done[final] is done[run_state].image and done[panel.animation] is None  # the animation follows (settle)
    assert plot_shown or (done[panel.plot] is None and done[panel.plot_text] == texts.explain_plot())


def test_without_cfg_the_panel_says_why_two_estimates_are_missing(tiny_model_dir, panel_and_states):
    panel = panel_and_states[0]
    settings = RunSettings(prompt="a red circle", steps=2, guidance_scale=1.0)
    last = [u for u in playground.live_run(*panel_and_states, str(tiny_model_dir), settings) if panel.noise in u][-1]
    assert last[panel.noise].count("data:image/png;base64,") == 2 and "CFG ≤ 1" in last[panel.noise]


def test_an_error_in_the_loop_reaches_the_page_as_a_gr_error(tiny_model_dir, panel_and_states):
    with pytest.raises(gr.Error, match="Unknown scheduler"):
        list(playground.live_run(*panel_and_states, str(tiny_model_dir), RunSettings(prompt="x", steps=4, scheduler="nope")))


def test_words_the_embedded_kind_of_model_never_learned_are_named_as_a_warning(tiny_model):
    note, warnings = playground.prompt_notes(tiny_model, RunSettings(prompt="a big dog on the left", steps=2))
    assert note == "" and len(warnings) == 1
    assert warnings[0].startswith("'dog' is not in this model's vocabulary: it became d·o·g and is ignored")
    assert "red" in warnings[0] and "circle" in warnings[0]  # the words it knows
    _, warnings = playground.prompt_notes(tiny_model, RunSettings(prompt="a big red circle, 2!", steps=2))
    assert warnings == []  # punctuation and numbers are no words
    _, warnings = playground.prompt_notes(tiny_model, RunSettings(prompt="a dog", negative_prompt="cat dog"))
    assert [w.split(":")[0] for w in warnings] == ["'dog' is not in this model's vocabulary"] + [
        f"'{w}' is not in this model's vocabulary" for w in ("cat", "dog")]
    assert "(the negative prompt still runs)" in warnings[-1]


def test_only_a_toy_tokenizer_gets_the_unknown_word_warning(tiny_model, monkeypatch):
    from sdviz.toy import model as toy_model

    assert toy_model.is_toy_tokenizer(tiny_model.tokenizer)
    big = toy_model.build_tokenizer(tuple(f"w{i:04d}x" for i in range(1500)))  # the size of a real vocabulary
    assert not toy_model.is_toy_tokenizer(big)
    monkeypatch.setattr(playground, "is_toy_tokenizer", lambda tokenizer: False)  # e.g. SD's CLIP tokenizer
    assert playground.prompt_notes(tiny_model, RunSettings(prompt="a dog"))[1] == []


def data_pictures(html: str) -> list[np.ndarray]:
    """The pictures inlined in a panel's HTML, in order."""
    found = re.findall(r'src="data:image/(?:png|jpeg);base64,([^"]+)"', html)
    return [np.asarray(Image.open(io.BytesIO(base64.b64decode(b))).convert("RGB")) for b in found]


def test_live_frames_show_real_decodes_of_that_steps_latents(app, tiny_model):
    """Through the server: each streamed x_t and predicted-x0 picture equals the full VAE decode of that step's
    recorded latents, pixel for pixel (the run recomputed here: same settings, same pixels)."""
    _, client = app
    job = client.submit("a red circle", "", 12, 5.0, 3, "ddim", api_name="/txt2img")
    updates = list(job)
    trace = generate(tiny_model, RunSettings(prompt="a red circle", steps=12, guidance_scale=5.0, seed=3,
                                             scheduler="ddim"))
    live = [(u[1], u[3]) for u in updates if isinstance(u[1], str) and u[1].startswith("Step")]
    assert live
    for status, html in live:
        index = int(re.search(r"Step \*\*(\d+) /", status).group(1)) - 1
        x_t, x0, guided = data_pictures(html)
        record = trace.steps[index]
        assert np.array_equal(x0, np.asarray(vae.decode_to_pil(tiny_model, record.pred_x0).convert("RGB")))
        assert np.array_equal(x_t, np.asarray(vae.decode_to_pil(tiny_model, record.latents).convert("RGB")))
        assert "real VAE decodes" in status


def test_users_in_one_batch_get_their_first_frame_from_one_decode_of_the_whole_batch(tiny_model_dir, panel_and_states,
                                                                                   monkeypatch):
    """Two users press together: the batch decodes both first steps in one VAE call, and each live frame shows its
    own run's x_t and predicted x0 (within 1/255 of decoding them alone)."""
    import threading

    calls = []
    real = batching.vae.decode_batch_to_pil
    monkeypatch.setattr(batching.vae, "decode_batch_to_pil", lambda model, latents: calls.append(len(latents)) or
                        real(model, latents))
    panel = panel_and_states[0]
    requests = [RunSettings(prompt=p, steps=6, guidance_scale=3.0, seed=s, scheduler="euler")
                for p, s in (("a red circle", 1), ("a blue square", 2))]
    runs = [playground.PanelRun(model=str(tiny_model_dir), expected_steps=6) for _ in requests]
    updates: list = [None, None]
    barrier = threading.Barrier(2)

    def user(i):
        barrier.wait()
        updates[i] = list(playground.live_run(*panel_and_states, str(tiny_model_dir), requests[i], run=runs[i]))

    threads = [threading.Thread(target=user, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert 4 in calls  # the batch of two: x_t and x0 of both first steps, one call
    model = load_for_app(str(tiny_model_dir))
    for run, events in zip(runs, updates, strict=True):
        first = next(u for u in events if str(u.get(panel.status, "")).startswith("Step **1 /"))
        x_t, x0, _ = data_pictures(first[panel.live])
        record = run.steps[0]
        for shown, latents in ((x_t, record.x_t), (x0, record.pred_x0)):
            alone = np.asarray(vae.decode_to_pil(model, latents).convert("RGB"), dtype=int)
            assert np.abs(shown.astype(int) - alone).max() <= 1


def test_slow_motion_shows_every_step(tiny_model_dir, panel_and_states):
    panel = panel_and_states[0]
    settings = RunSettings(prompt="a red circle", steps=20, guidance_scale=5.0, scheduler="ddim")
    started = time.perf_counter()
    updates = list(playground.live_run(*panel_and_states, str(tiny_model_dir), settings, slow=True))
    steps = [re.search(r"Step \*\*(\d+) /", u[panel.status]).group(1) for u in updates
             if str(u.get(panel.status, "")).startswith("Step")]
    assert steps == [str(i) for i in range(1, 21)]  # every step, in order
    assert time.perf_counter() - started >= 20 * playground.SLOW_MOTION_S * 0.9
    assert all(panel.plot in u for u in updates if str(u.get(panel.status, "")).startswith("Step"))  # plot live


@pytest.fixture(scope="module")
def other_model_dir(tmp_path_factory):
    """A model whose numbers differ from the embedded one's: 24 tokens, 3 latent channels, a VAE that shrinks 2x."""
    from conftest import build_tiny_pipeline

    path = tmp_path_factory.mktemp("other-sd")
    build_tiny_pipeline(max_tokens=24, latent_channels=3).save_pretrained(path)
    return path


def test_every_text_that_quotes_a_number_reads_it_from_the_model(other_model_dir, tiny_model_dir):
    from sdviz.pipeline.models import load_model

    model = load_model(other_model_dir, device="cpu")
    assert model.tokenizer.model_max_length == 24 and model.vae.config.latent_channels == 3
    f, side = model.vae_scale_factor, model.recommended.width // model.vae_scale_factor
    shape, ratio = f"{side} x {side} x 3", f"{f * f * 3 / 3:g}x fewer numbers"
    latents_text = texts.explain_latents(model)
    assert shape in latents_text and ratio in latents_text and f"3 numbers for every {f} x {f} block" in latents_text
    assert "3 channels" in latents_text and "48x" not in latents_text and "4 channels" not in latents_text
    note = components.model_note(model)
    assert shape in note and ratio in note and "reads 24 tokens" in note
    _, warnings = playground.prompt_notes(model, RunSettings(prompt=" ".join(["a red circle"] * 12)))
    assert len(warnings) == 1 and "the 24 tokens" in warnings[0] and "77" not in warnings[0]
    # the page changes them with the model
    demo = build_demo([str(tiny_model_dir), str(other_model_dir)])
    page = demo.sdviz_page
    updates = playground.choose_model(page, str(other_model_dir), str(tiny_model_dir))
    assert updates[page.panel.latents_text] == latents_text and updates[page.model_info] == note
    back = playground.choose_model(page, str(tiny_model_dir), str(other_model_dir))
    assert "4 numbers for every" in back[page.panel.latents_text]


@pytest.mark.parametrize("scheduler", ["euler", "ddim"])
def test_the_plots_text_says_what_the_plotted_spread_of_x_t_did(tiny_model, scheduler):
    trace = generate(tiny_model, RunSettings(prompt="a red circle", steps=6, guidance_scale=5.0, scheduler=scheduler))
    first, last = (float(r.latents.float().std()) for r in (trace.steps[0], trace.steps[-1]))
    text = texts.explain_plot(trace.steps)
    assert f"{first:.2f} to {last:.2f}" in text  # the numbers the plot's curve starts and ends at
    went = "stays near" if abs(last - first) <= 0.15 * max(first, last) else "rises" if last > first else "falls"
    assert f"x_t {went}" in text
    assert ("at the scale of sigma" in text) == (scheduler == "euler")


def test_prompt_examples_offer_two_shape_scenes_only_to_a_model_that_reads_them(tiny_model):
    """The tiny test model's tokenizer has the one-shape words only; a model trained on pairs gets pair prompts too,
    every word of them one token, and one held-out pair (never seen together in training)."""
    one_shape = components.prompt_examples(tiny_model)
    assert one_shape == components.prompt_examples() and not any(" of " in p or " and " in p for p in one_shape)
    pairs_tokenizer = toy_model.build_tokenizer(world.PAIR_VOCABULARY, max_length=24)
    with_pairs = components.prompt_examples(SimpleNamespace(tokenizer=pairs_tokenizer))
    extra = with_pairs[len(one_shape):]
    assert with_pairs[: len(one_shape)] == one_shape and len(extra) == 3
    assert all(not toy_model.unknown_words(pairs_tokenizer, p) for p in extra)
    first, second = world.PAIR_HELD_OUT[0]
    assert world.pair_caption(first, "left", second) in extra
