"""The shipped embedded model in a real browser, as a class sees it (Playwright driving Debian's Chromium): at a
projector's 1280x720 a student picks an example prompt (a two-shape one when the model reads them), watches it drawn
at the model's own size, and captures where each word's attention lands; at 1400x900 the same page. Screenshots go to the test's temporary folder (copied to $SDVIZ_SHOTS
when that is set). Without /usr/bin/chromium the test skips with a message."""

from __future__ import annotations

import re

import pytest

from sdviz.pipeline.models import EMBEDDED, load_model
from sdviz.toy import model as toy_model
from sdviz.toy import world
from tests.test_browser import ON_SCREEN, inside_viewport, shot

PAIR_PROMPT = world.pair_caption(world.PAIR_HELD_OUT[0][0], "left", world.PAIR_HELD_OUT[0][1])  # never seen together
ONE_SHAPE_PROMPT = world.caption("red", "circle", "big", "left")


@pytest.fixture(scope="module")
def embedded_app_url(chromium, launch_app) -> str:
    from sdviz.app.layout import build_demo

    return launch_app(build_demo([EMBEDDED]))


def test_a_student_draws_an_example_and_sees_where_each_word_lands(embedded_app_url, browser_page, tmp_path):
    from playwright.sync_api import expect

    model = load_model(device="cpu")
    side = model.recommended.width
    page = browser_page
    page.set_viewport_size({"width": 1280, "height": 720})
    page.goto(embedded_app_url)
    expect(page.locator("#model-info")).to_contain_text(f"pictures {side} x {side}")
    prompt = PAIR_PROMPT if toy_model.reads_pairs(model.tokenizer) else ONE_SHAPE_PROMPT
    page.locator("#prompt-examples").get_by_text("Prompts to try").click()
    page.get_by_text(prompt, exact=True).click()
    expect(page.locator("#txt2img-prompt textarea")).to_have_value(prompt)
    page.evaluate("window.scrollTo(0, 0)")
    page.locator("#txt2img-generate").click()
    expect(page.locator("#peek-status")).to_contain_text("Done: ")
    final = page.locator("#final img")
    expect(final).to_have_attribute("src", re.compile(r"/gradio_api/file="))
    assert page.evaluate("() => document.querySelector('#final img').naturalWidth") == side
    for selector in ON_SCREEN:
        assert inside_viewport(page, selector), selector
    shot(page, tmp_path / "embedded-run-1280x720.png")

    page.get_by_role("tab", name="Text & attention", exact=True).click()
    page.locator("#attention-prompt textarea").fill(prompt)
    page.locator("#attention-run").click()
    expect(page.locator("#attention-maps img")).to_be_visible()
    expect(page.locator("#attention-text")).to_contain_text("red")
    page.locator("#attention-maps").scroll_into_view_if_needed()
    shot(page, tmp_path / "embedded-attention-1280x720.png")

    page.set_viewport_size({"width": 1400, "height": 900})
    page.get_by_role("tab", name="Text to image", exact=True).click()
    page.evaluate("window.scrollTo(0, 0)")
    for selector in ON_SCREEN:
        assert inside_viewport(page, selector), selector
    shot(page, tmp_path / "embedded-run-1400x900.png")
