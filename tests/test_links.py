"""Lesson links without Gradio: every key survives make_query -> parse_query; hostile queries give notices, never
values; the guided lesson's stations are valid links in the story's order."""

from __future__ import annotations

from pathlib import Path

import pytest

from sdviz.lessons import guided, links
from sdviz.pipeline.schedulers import SCHEDULERS
from sdviz.pipeline.settings import MAX_SEED

EXAMPLES = sorted(p.stem for p in (Path(__file__).resolve().parents[1] / "assets" / "examples").glob("*.png"))
CHOICES = {"model": ["embedded", "/models/tiny"], "example": EXAMPLES, "forward_picture": [*EXAMPLES, "last"],
           "latent_picture": [*EXAMPLES, "last"]}

# One value per key, each different from its default, at the edges of the ranges where there are edges.
EVERY_KEY = {"tab": "img2img", "model": "/models/tiny", "prompt": "a small blue square, at the top",
             "negative": "green", "seed": MAX_SEED, "steps": 100, "cfg": 7.5, "scheduler": list(SCHEDULERS)[-1],
             "strength": 0.35, "example": "big_red_circle_in_the_center", "slow": True, "run": True, "step": 13,
             "forward_picture": "last", "forward_t": 999, "forward_seed": 0, "latent_picture": "last",
             "attention_prompt": "a red circle", "attention_special": False, "cfg_scales": "1, 2.5, 7.5",
             "cfg_step": 4, "cfg_g": 12.5, "variants_g": 4.5, "variants_rescale": 1.0, "variants_from": 0.25,
             "variants_until": 0.6, "lab_class": "blue", "lab_g": 7.25, "lab_steps": 100, "lab_scheduler": "euler",
             "lab_samples": 750.0, "lab_seed": 12, "ab_prompt": "", "station": 8}


def round_trip(values: dict) -> links.Parsed:
    return links.parse_query(links.parse_pairs(links.make_query(values)), CHOICES)


def test_the_round_trip_covers_every_key_of_the_table():
    assert set(EVERY_KEY) == set(links.KEYS)


def test_the_guidance_variant_keys_have_their_sliders_ranges():
    from sdviz.app import layout

    for key, elem_id in layout.VARIANT_LINK_KEYS.items():
        _, low, high, step, _ = layout.VARIANT_SLIDERS[elem_id]
        assert (links.KEYS[key].low, links.KEYS[key].high, links.KEYS[key].step) == (low, high, step), key


def test_every_key_survives_a_round_trip_through_the_query():
    parsed = round_trip(EVERY_KEY)
    assert parsed.notices == []
    assert parsed.values == EVERY_KEY
    assert all(type(parsed.values[k]) is type(v) for k, v in EVERY_KEY.items())


@pytest.mark.parametrize("name", list(links.KEYS))
def test_each_key_alone_survives_a_round_trip(name):
    assert round_trip({name: EVERY_KEY[name]}).values == {name: EVERY_KEY[name]}


def test_the_query_is_url_encoded_and_in_the_tables_order():
    query = links.make_query({"seed": 3, "prompt": "a red circle & more", "tab": "txt2img"})
    assert query == "tab=txt2img&prompt=a+red+circle+%26+more&seed=3"
    with pytest.raises(ValueError):
        links.make_query({"nonsense": 1})


@pytest.mark.parametrize("name, raw", [
    ("steps", "0"), ("steps", "101"), ("steps", "2.5"), ("steps", "-3"), ("steps", "1_0"), ("steps", " 5"),
    ("seed", str(MAX_SEED + 1)), ("seed", "9" * 400), ("cfg", "nan"), ("cfg", "inf"), ("cfg", "1e309"),
    ("cfg", "7.3"), ("cfg", "20.5"), ("strength", "0"), ("strength", "1.05"), ("scheduler", "ddim; rm -rf"),
    ("tab", "settings"), ("model", "evil/model"), ("example", "../../etc/passwd"), ("slow", "yes"),
    ("station", "9"), ("forward_t", "1000"), ("cfg_scales", "1, lots"), ("cfg_scales", "1,2,3,4,5,6,7,8,9,10,11"),
    ("prompt", "<script>alert(1)</script>"), ("prompt", "a red\x00circle"), ("prompt", "x" * 301),
    ("prompt", "a red circle\u202e"),
])
def test_a_bad_value_is_ignored_with_a_notice_that_never_repeats_it(name, raw):
    parsed = links.parse_query({name: raw}, CHOICES)
    assert parsed.values == {}
    assert len(parsed.notices) == 1 and links.KEYS[name].label in parsed.notices[0]
    assert raw not in parsed.notices[0] or raw.isdigit() and len(raw) < 3


def test_an_unknown_key_is_named_only_shortened_and_without_control_characters():
    hostile = "<script>alert('x')</script>" + "A" * 500 + "\x00\n"
    parsed = links.parse_query({hostile: "1", "seed": "5"}, CHOICES)
    assert parsed.values == {"seed": 5}
    (notice,) = parsed.notices
    assert "not a setting" in notice and "\x00" not in notice and "\n" not in notice
    assert "<script>alert('x')</scri…" in notice and len(notice) < 100


def test_a_huge_query_is_read_only_up_to_its_limit():
    pairs = [(f"key{i}", "1") for i in range(10_000)]
    parsed = links.parse_query(pairs, CHOICES)
    assert parsed.values == {}
    assert len(parsed.notices) == links.MAX_KEYS + 1  # the limit, then one notice per key read
    assert len(links.parse_pairs("&".join(f"k{i}=1" for i in range(10_000)))) == links.MAX_KEYS + 1


def test_a_key_given_twice_counts_once():
    parsed = links.parse_query([("seed", "1"), ("seed", "2")], CHOICES)
    assert parsed.values == {"seed": 1} and "twice" in parsed.notices[0]


def test_a_link_that_cannot_run_does_not_try_to_with_the_pipelines_own_message():
    parsed = links.parse_query({"tab": "img2img", "steps": "2", "strength": "0.3", "run": "1"}, CHOICES)
    assert parsed.values == {"tab": "img2img", "steps": 2, "strength": 0.3}
    assert "steps x strength < 1" in parsed.notices[0]


def test_a_choice_the_page_decides_is_refused_where_the_page_gives_none():
    assert links.parse_query({"model": "embedded"}).values == {}
    assert links.parse_query({"model": "embedded"}, CHOICES).values == {"model": "embedded"}


def test_keys_of_a_tab_are_the_views_and_the_tabs_own():
    forward = links.keys_of("forward")
    assert {"tab", "prompt", "seed", "forward_t", "forward_picture"} <= set(forward)
    assert "strength" not in forward and "cfg_g" not in forward
    assert {k.tab for k in links.KEYS.values()} <= {None, *links.TABS}


# --- The guided lesson --------------------------------------------------------------------------------------


def test_the_lesson_has_eight_stations_in_the_order_of_the_story():
    assert len(guided.STATIONS) == links.KEYS["station"].high == 8
    assert [s.tab for s in guided.STATIONS] == ["txt2img", "forward", "txt2img", "latent", "attention", "cfg",
                                                 "img2img", "unet"]
    titles = " | ".join(s.title for s in guided.STATIONS).lower()
    for words in ("text to image", "ink on tissue paper", "noise predictor", "latent space", "48x",
                  "cross-attention", "classifier-free guidance", "image to image", "u-net"):
        assert words in titles


@pytest.mark.parametrize("number", range(1, 9))
def test_each_stations_presets_are_a_valid_link_of_its_own_tab(number):
    station = guided.station(number)
    assert all([station.title, station.do, station.look, station.question, station.answer])
    parsed = round_trip(station.link)
    assert parsed.notices == [] and parsed.values == station.link
    assert all(links.KEYS[k].tab in (None, station.tab) for k in station.presets)


def test_station_numbers_are_clamped():
    assert guided.station(0) is guided.STATIONS[0] and guided.station(99) is guided.STATIONS[-1]
