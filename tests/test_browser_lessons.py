"""Lesson links and the guided lesson in a real browser (Playwright driving Debian's Chromium, the tiny test model).

A lesson link with ``&run=1`` restores its controls, runs, and shows the step it names; a hostile link shows escaped
notices and runs no script; a teacher walks the guided lesson's 8 stations forward and back (the station in the
address bar, the answer behind a click, all of a station on a 1280x720 screen), opens one station's tab with its
presets, and copies the link to that view. Screenshots at 1280x720 and 1400x900 land in the test's temporary folder
(copies in $SDVIZ_SHOTS when that is set). Without /usr/bin/chromium the test skips with a message.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qs, urlsplit

from sdviz.lessons import guided
from tests.test_browser import inside_viewport, shot

SERVED = re.compile(r"/gradio_api/file=")


def address(page) -> dict:
    """The address bar's query (Playwright's page.url does not follow history.replaceState)."""
    return {k: v[0] for k, v in parse_qs(urlsplit(page.evaluate("location.href")).query,
                                         keep_blank_values=True).items()}


def test_a_lesson_link_restores_its_controls_and_runs(browser_app_url, browser_page, tmp_path):
    from playwright.sync_api import expect

    page = browser_page
    page.set_viewport_size({"width": 1280, "height": 720})
    errors: list[str] = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    link = "?tab=txt2img&prompt=a+big+red+circle+on+the+left&negative=blue&seed=5&steps=3&cfg=4.5&step=2&run=1"
    page.goto(browser_app_url + link)
    expect(page.locator("#txt2img-prompt textarea")).to_have_value("a big red circle on the left")
    expect(page.locator("#txt2img-negative textarea")).to_have_value("blue")
    expect(page.locator("#txt2img-steps input[type=number]")).to_have_value("3")
    expect(page.locator("#txt2img-cfg input[type=number]")).to_have_value("4.5")
    expect(page.locator("#txt2img-seed input")).to_have_value("5")
    expect(page.locator("#final img")).to_have_attribute("src", SERVED)  # the run happened
    # the step the link names (of 4: PNDM, the tiny model's scheduler, adds a warm-up step)
    expect(page.locator("#peek-status")).to_contain_text(re.compile(r"Showing step 2 / [34] "))
    expect(page.locator("#peek-step input[type=number]")).to_have_value("2")
    assert address(page) == {"tab": "txt2img", "prompt": "a big red circle on the left", "negative": "blue",
                             "seed": "5", "steps": "3", "cfg": "4.5", "step": "2", "run": "1"}
    expect(page.locator("#link-notice")).not_to_be_visible()  # no notice: it takes no room
    shot(page, tmp_path / "lesson-link-run-1280x720.png")
    assert errors == []


def test_a_hostile_link_shows_escaped_notices_and_runs_nothing(browser_app_url, browser_page, tmp_path):
    from playwright.sync_api import expect

    page = browser_page
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    hostile = ("?%3Cscript%3Ealert(1)%3C/script%3E=1&prompt=%3Cimg%20src=x%20onerror=alert(2)%3E"
               f"&steps={'9' * 3000}&tab=%3Cb%3Ebold%3C/b%3E")
    page.goto(browser_app_url + hostile)
    notice = page.locator("#link-notice")
    expect(notice).to_contain_text("'<script>alert(1)</script…' is not a setting")  # shown as text
    expect(notice).to_contain_text("prompt was ignored")
    assert notice.locator("script, img, b").count() == 0  # nothing of the query became an element
    expect(page.locator("#txt2img-prompt textarea")).to_have_value("")
    expect(page.get_by_role("tab", name="Text to image", exact=True)).to_have_attribute("aria-selected", "true")
    assert address(page) == {}  # nothing of it stays in the address bar
    shot(page, tmp_path / "hostile-link-1280x720.png")
    assert dialogs == []  # no script ran


def test_a_teacher_walks_the_guided_lesson_and_opens_a_station(browser_app_url, browser_page, tmp_path):
    from playwright.sync_api import expect

    page = browser_page
    n = len(guided.STATIONS)
    for width, height in ((1280, 720), (1400, 900)):
        page.set_viewport_size({"width": width, "height": height})
        page.goto(browser_app_url + "?tab=lesson")
        title = page.locator("#lesson-title")
        expect(title).to_contain_text(f"Station 1 / {n}: {guided.STATIONS[0].title}")
        expect(page.locator("#lesson-back")).to_be_disabled()
        for number in range(1, n + 1):  # forward to the end
            station = guided.station(number)
            expect(title).to_contain_text(f"Station {number} / {n}: {station.title}")
            expect(page.locator("#lesson-open")).to_have_text(f"Open this in the {station.tab_label} tab ▶")
            expect(page.locator("#lesson-answer")).not_to_be_visible()
            for selector in ("#lesson-title", "#lesson-question", "#lesson-answer-box", "#lesson-next",
                             "#lesson-open"):  # all of a station on one screen
                assert inside_viewport(page, selector), (width, number, selector)
            if number > 1:
                assert address(page) == {"tab": "lesson", "station": str(number)}
            if number == 3:
                page.get_by_text("Show the answer").click()
                expect(page.locator("#lesson-answer")).to_contain_text(station.answer[:40])
                shot(page, tmp_path / f"station-3-answer-{width}x{height}.png")
            if number < n:
                page.locator("#lesson-next").click()
        expect(page.locator("#lesson-next")).to_be_disabled()
        shot(page, tmp_path / f"station-{n}-{width}x{height}.png")
        for number in range(n - 1, 0, -1):  # and back to the start
            page.locator("#lesson-back").click()
            expect(title).to_contain_text(f"Station {number} / {n}:")
        assert address(page) == {"tab": "lesson", "station": "1"}

    # Station 2's button: the Forward diffusion tab, its example picture noised at its t
    page.locator("#lesson-next").click()
    expect(title).to_contain_text("Station 2 /")
    page.locator("#lesson-open").click()
    expect(page.get_by_role("tab", name="Forward diffusion", exact=True)).to_have_attribute("aria-selected", "true")
    expect(page.locator("#forward-t input[type=number]")).to_have_value("400")
    expect(page.locator("#forward-text")).to_contain_text("t = 400")
    expect(page.locator("#forward-noisy img")).to_have_attribute("src", re.compile(r"/gradio_api/file=|^data:"))
    assert address(page)["forward_picture"] == "big_red_circle_in_the_center"
    shot(page, tmp_path / "station-2-opened-1400x900.png")

    # ... and the link to that view, in the box and on the clipboard, which opens the same view in a fresh page
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=browser_app_url.rstrip("/"))
    page.locator("#copy-link").click()
    box = page.locator("#link-box textarea")
    expect(box).to_have_value(re.compile(r"\?tab=forward&"))
    copied = box.input_value()
    assert page.evaluate("navigator.clipboard.readText()") == copied
    assert {"forward_t": "400", "forward_seed": "0", "forward_picture": "big_red_circle_in_the_center"}.items() \
        <= dict(address(page)).items()
    shot(page, tmp_path / "copied-link-1400x900.png")
    page.get_by_role("tab", name="Latent space", exact=True).click()  # another view: the old link goes away
    expect(page.locator("#link-box")).not_to_be_visible()
    page.goto(copied)
    expect(page.get_by_role("tab", name="Forward diffusion", exact=True)).to_have_attribute("aria-selected", "true")
    expect(page.locator("#forward-text")).to_contain_text("t = 400")


def test_a_station_that_needs_a_run_runs_its_prompt(browser_app_url, browser_page, tmp_path):
    from playwright.sync_api import expect

    page = browser_page
    page.set_viewport_size({"width": 1280, "height": 720})
    page.goto(browser_app_url + "?tab=lesson&station=6")
    expect(page.locator("#lesson-title")).to_contain_text("Classifier-free guidance")
    page.locator("#lesson-open").click()
    expect(page.get_by_role("tab", name="CFG experiments", exact=True)).to_have_attribute("aria-selected", "true")
    expect(page.locator("#cfg-scales textarea")).to_have_value("1, 2, 4, 8")
    expect(page.locator("#cfg-info")).to_contain_text('Latest run: "a purple triangle at the top"')  # it ran
    expect(page.locator("#cfg-step input[type=range]")).to_be_enabled()  # the what-if fits the run
    assert address(page)["run"] == "1" and address(page)["tab"] == "cfg"
    shot(page, tmp_path / "station-6-opened-1280x720.png")
