"""Lesson links on the page, handler by handler (no browser): a link sets every registered control and selects its
tab; ``run=1`` gives the very picture :func:`sdviz.pipeline.sampler.generate` makes with those settings; a hostile
query only ever reaches the page as an escaped notice; Copy link gives back the link that made the view; each
station's button opens its tab with its presets."""

from __future__ import annotations

from types import SimpleNamespace

import gradio as gr
import numpy as np
import pytest

from sdviz.app import lesson_links
from sdviz.app.components import EXAMPLES_DIR
from sdviz.lessons import guided, links
from sdviz.pipeline.sampler import generate
from sdviz.pipeline.settings import RunSettings

EXAMPLE = "big_yellow_triangle_at_the_top"


@pytest.fixture(scope="module")
def demo(tiny_model_dir):
    from sdviz.app.layout import build_demo

    return build_demo([str(tiny_model_dir)])


@pytest.fixture
def ln(demo):
    return demo.sdviz_links


def request(query: dict, session: str | None = None):
    return SimpleNamespace(query_params=query, session_hash=session)


def value_of(update):
    """What an update sets a component to (a plain value, or a component update's value)."""
    return update.value if isinstance(update, gr.components.Component) else update


def link_for(tab: str, model: str) -> dict:
    """A link holding every key a view of ``tab`` has (values unlike the defaults)."""
    every = {"model": model, "prompt": "a small blue square at the top", "negative": "red", "seed": 11,
             "steps": 4, "cfg": 3.5, "scheduler": "euler", "strength": 0.75, "example": EXAMPLE, "slow": True,
             "forward_picture": EXAMPLE, "forward_t": 650, "forward_seed": 9, "latent_picture": EXAMPLE,
             "attention_prompt": "a green triangle", "attention_special": False, "cfg_scales": "1, 5",
             "ab_prompt": "a purple circle", "station": 4}
    return {"tab": tab, **{k: v for k, v in every.items() if k in links.keys_of(tab)}}


@pytest.mark.parametrize("tab", [t for t in links.TABS if t != "lesson"])
def test_a_link_sets_every_control_of_its_view_and_selects_its_tab(ln, tiny_model_name, tab):
    values = link_for(tab, tiny_model_name)
    updates = lesson_links.restore(ln, tiny_model_name, request({k: links.format_value(links.KEYS[k], v)
                                                                  for k, v in values.items()}))
    assert updates[ln.tabs].selected == tab and updates[ln.tab_state] == tab
    assert value_of(updates[ln.notice]) == ""
    assert updates[ln.pending] == values
    generate_tab = ln.generate_tab(tab)
    for key, value in values.items():
        component = ln.controls.component(key, generate_tab if key in lesson_links.SETTINGS else None)
        if component is None:
            continue
        expected = str(EXAMPLES_DIR / f"{value}.png") if key.endswith(("example", "picture")) else value
        assert value_of(updates[component]) == expected, key
    assert updates[ln.query] == "?" + links.make_query(values)  # the address bar gets the checked link back


def test_the_lesson_tab_link_shows_its_station(ln, tiny_model_name):
    updates = lesson_links.restore(ln, tiny_model_name, request({"tab": "lesson", "station": "3"}))
    assert updates[ln.tabs].selected == "lesson" and updates[ln.lesson.station] == 3
    assert guided.STATIONS[2].title in updates[ln.lesson.title]
    assert updates[ln.lesson.back].interactive and updates[ln.lesson.next].interactive


def test_no_query_changes_nothing(ln, tiny_model_name):
    assert lesson_links.restore(ln, tiny_model_name, request({"__theme": "dark"})) == {ln.pending: {}}


def test_a_hostile_query_reaches_the_page_only_as_an_escaped_notice(ln, tiny_model_name):
    query = {"<script>alert(1)</script>": "x", "prompt": "<img src=x onerror=alert(1)>", "seed": "9" * 5000,
             "tab": "javascript:alert(1)", "model": "../../secrets", "[click](javascript:alert(1))": "1"}
    updates = lesson_links.restore(ln, tiny_model_name, request(query))
    assert updates[ln.pending] == {}
    notice = value_of(updates[ln.notice])
    assert notice.count("⚠️") == len(query)
    assert "<" not in notice and "onerror" not in notice and "9999999999" not in notice and "secrets" not in notice
    assert "'&lt;script&gt;alert\\(1\\)&lt;/script…'" in notice  # named, shortened and escaped
    assert "'\\[click\\]\\(javascript:alert…'" in notice  # no Markdown link
    assert updates[ln.query] == "?"  # the address bar loses it all
    for component in ln.controls.components():
        assert component not in updates


def run_updates(ln, pending: dict, session: str | None = None) -> list[dict]:
    """The link's run, with the controls as the link set them (the others at the page's defaults)."""
    page = ln.page
    txt, img = page.txt, page.img
    got = lambda key, controls: pending.get(key, getattr(controls, lesson_links.SETTINGS[key]).value)  # noqa: E731
    order = ("prompt", "negative", "steps", "cfg", "seed", "scheduler")  # the generate handlers' order
    args = [got(k, txt) for k in order]
    picture = str(EXAMPLES_DIR / f"{pending['example']}.png") if "example" in pending else None
    img_args = [got(k, img) for k in order]
    img_args.insert(2, pending.get("strength", page.strength.value))
    return list(lesson_links.run_link(ln, pending, *args, picture, *img_args, page.model_state.value,
                                      pending.get("slow", False), request=request({}, session)))


def final_picture(ln, updates: list[dict]):
    return next(u[ln.page.panel.final] for u in reversed(updates) if u.get(ln.page.panel.final) is not None)


def test_run_1_gives_the_picture_generate_makes_with_those_settings(ln, tiny_model, tiny_model_name):
    pending = links.parse_query({"tab": "txt2img", "prompt": "a big red circle", "seed": "5", "steps": "3",
                                 "cfg": "4.5", "scheduler": "ddim", "run": "1"}).values
    picture = final_picture(ln, run_updates(ln, pending))
    direct = generate(tiny_model, RunSettings(prompt="a big red circle", steps=3, guidance_scale=4.5, seed=5,
                                              scheduler="ddim"))
    assert np.array_equal(np.asarray(picture), np.asarray(direct.image))


def test_run_1_in_image_to_image_starts_from_the_example_picture(ln, tiny_model, tiny_model_name):
    pending = links.parse_query({"tab": "img2img", "prompt": "a purple triangle", "seed": "2", "steps": "4",
                                 "cfg": "2", "strength": "0.5", "example": EXAMPLE, "run": "1"},
                                lesson_links.page_choices(ln.page)).values
    picture = final_picture(ln, run_updates(ln, pending))
    direct = generate(tiny_model, RunSettings(prompt="a purple triangle", steps=4, guidance_scale=2.0, seed=2,
                                              strength=0.5), init_image=EXAMPLES_DIR / f"{EXAMPLE}.png")
    assert np.array_equal(np.asarray(picture), np.asarray(direct.image))


def test_without_run_the_link_runs_nothing(ln):
    assert run_updates(ln, {"tab": "txt2img", "seed": 3}) == [gr.skip()]
    assert lesson_links.after_run(ln, {}, None) == gr.skip()


def test_the_step_shown_and_the_what_if_step_come_back_after_the_run(ln, tiny_model_name):
    pending = {"tab": "cfg", "prompt": "a red circle", "steps": 3, "seed": 1, "run": True, "step": 2, "cfg_step": 3,
               "cfg_g": 9.5}
    updates = run_updates(ln, pending, session="after-run")
    trace = next(u[ln.page.run_state] for u in updates if ln.page.run_state in u)
    after = lesson_links.after_run(ln, pending, trace, request=request({}, "after-run"))
    assert after[ln.page.panel.step] == 2 and "Showing step **2 /" in after[ln.page.panel.status]
    step = after[ln.controls.component("cfg_step", None)]
    assert (step.value, step.maximum, step.interactive) == (3, len(trace.steps), True)
    assert after[ln.controls.component("cfg_g", None)].value == 9.5
    assert "a red circle" in after[ln.cfg_info]


def test_copy_link_gives_back_the_link_that_made_the_view(ln, tiny_model_name):
    values = {**link_for("forward", tiny_model_name), "slow": False}
    updates = lesson_links.restore(ln, tiny_model_name, request({k: links.format_value(links.KEYS[k], v)
                                                                  for k, v in values.items()}))
    page = ln.page
    data = {component: getattr(component, "value", None) for component in ln.controls.components()}
    data |= {c: value_of(u) for c, u in updates.items() if c in data}
    data |= {ln.tab_state: "forward", page.model_state: tiny_model_name, page.run_state: None,
             page.panel.slow: False, page.panel.step: 1}
    copied = lesson_links.copy_link(ln, data, request({}))
    assert value_of(copied[ln.notice]) == "" and not copied[ln.notice].visible
    back = links.parse_query(links.parse_pairs(copied[ln.query]), lesson_links.page_choices(page))
    assert back.values == values  # no run=1: the session has no run to reproduce


def test_copy_link_leaves_an_uploaded_picture_out_and_says_so(ln, tiny_model_name, tmp_path):
    from PIL import Image

    upload = tmp_path / "mine.png"
    Image.new("RGB", (64, 64), (10, 200, 30)).save(upload)
    page = ln.page
    data = {ln.tab_state: "latent", ln.controls.component("latent_picture", None): str(upload),
            page.model_state: tiny_model_name, page.run_state: None}
    copied = lesson_links.copy_link(ln, data, request({}))
    assert "latent_picture" not in copied[ln.query] and "cannot go into a link" in value_of(copied[ln.notice])


@pytest.mark.parametrize("number", range(1, len(guided.STATIONS) + 1))
def test_each_stations_button_opens_its_tab_with_its_presets(ln, tiny_model_name, number):
    station = guided.station(number)
    updates = lesson_links.open_station(ln, number, tiny_model_name)
    assert updates[ln.tabs].selected == station.tab and value_of(updates[ln.notice]) == ""
    assert updates[ln.pending] == station.link
    for key, value in station.presets.items():
        component = ln.controls.component(key, ln.generate_tab(station.tab) if key in lesson_links.SETTINGS else None)
        if key in lesson_links.AFTER_RUN or key == "run":
            continue
        expected = str(EXAMPLES_DIR / f"{value}.png") if key.endswith(("example", "picture")) else value
        assert value_of(updates[component]) == expected, key


def test_back_and_next_walk_the_stations_and_write_the_station_into_the_address(ln):
    view = ln.lesson
    assert lesson_links.station_next(ln, 1)[view.station] == 2
    assert lesson_links.station_next(ln, 8)[view.station] == 8
    back = lesson_links.station_back(ln, 2)
    assert back[view.station] == 1 and not back[view.back].interactive and back[ln.query] == "?tab=lesson&station=1"
    assert back[view.answer_box].open is False  # the answer hides again


def test_every_key_with_a_control_is_registered_on_the_page(ln):
    handled_apart = {"tab", "model", "run"}  # the tabs, the model dropdown, the run itself
    assert set(links.KEYS) - handled_apart == set(ln.controls.controls)


def test_a_link_to_another_model_of_the_allow_list_loads_it_with_its_own_defaults(tiny_model_dir, tmp_path_factory):
    from sdviz.app.layout import build_demo
    from tests.conftest import build_tiny_pipeline

    other = tmp_path_factory.mktemp("tiny-sd-other")
    build_tiny_pipeline(max_tokens=12).save_pretrained(other)
    ln = build_demo([str(tiny_model_dir), str(other)]).sdviz_links
    updates = lesson_links.restore(ln, str(tiny_model_dir), request({"model": str(other), "seed": "4"}))
    assert value_of(updates[ln.notice]) == ""
    assert updates[ln.page.model_state] == str(other) and updates[ln.model_choice] == str(other)
    assert "reads 12 tokens" in updates[ln.page.model_info]
    assert updates[ln.controls.component("seed", "txt2img")] == 4
    refused = lesson_links.restore(ln, str(tiny_model_dir), request({"model": "stabilityai/sd-turbo"}))
    assert ln.page.model_state not in refused and "the model was ignored" in value_of(refused[ln.notice])


def test_copy_link_runs_and_shows_the_step_only_when_the_last_run_is_the_one_it_describes(ln, tiny_model_name):
    pending = {"tab": "txt2img", "prompt": "a red circle", "negative": "", "steps": 3, "cfg": 5.0, "seed": 8,
               "scheduler": "default", "run": True}
    updates = run_updates(ln, pending, session="copy")
    trace = next(u[ln.page.run_state] for u in updates if ln.page.run_state in u)
    page = ln.page
    data = {ln.controls.component(k, "txt2img"): pending[k] for k in lesson_links.SETTINGS}
    data |= {ln.tab_state: "txt2img", page.model_state: tiny_model_name, page.run_state: trace,
             page.panel.slow: False, page.panel.step: 2.0}
    copied = links.parse_query(links.parse_pairs(lesson_links.copy_link(ln, data, request({}))[ln.query]),
                               lesson_links.page_choices(page)).values
    assert copied == {**pending, "model": tiny_model_name, "slow": False, "step": 2}
    data[ln.controls.component("seed", "txt2img")] = 9  # the controls no longer describe the last run
    copied = lesson_links.copy_link(ln, data, request({}))[ln.query]
    assert "seed=9" in copied and "run=" not in copied and "step=" not in copied


def test_a_link_that_opens_the_2d_lab_samples_with_the_links_settings_and_no_other_tab_does():
    from sdviz.app import lab2d

    controls = ("three Gaussians", None, "blue", 7.0, 10, "ddim", 200, 3)
    trace = lab2d.lab_linked("lab2d", None, *controls)[0]
    assert (trace.settings.label, trace.settings.guidance_scale, trace.settings.steps, trace.settings.samples,
            trace.settings.seed) == (1, 7.0, 10, 200, 3)
    assert all(out == gr.skip() for out in lab2d.lab_linked("txt2img", None, *controls))
