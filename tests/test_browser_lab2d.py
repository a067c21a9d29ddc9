"""The 2-D diffusion lab in a real browser (Playwright driving Debian's Chromium), at a projector's 1280x720 and at
1400x900: opening the tab samples at once; the figure, the step slider and Play are on the first screen; more guidance
moves the samples (the text's numbers change); one class; scrub to the noise; Play runs to the samples; a stroke
drawn with the mouse becomes the data.

Screenshots land in pytest's tmp dir (copied to $SDVIZ_SHOTS when that is set). Without /usr/bin/chromium the test
skips with a message.
"""

from __future__ import annotations

import re
import time

from test_browser import inside_viewport, shot

PICTURE = re.compile(r"^data:image/png;base64,")
ON_SCREEN = ["#lab2d-class", "#lab2d-guidance", "#lab2d-run", "#lab2d-play", "#lab2d-step"]


def test_a_teacher_plays_the_2d_lab_and_turns_up_guidance(browser_app_url, browser_page, tmp_path):
    from playwright.sync_api import expect

    page = browser_page
    errors: list[str] = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    plot = page.locator("#lab2d-plot img").first
    text = page.locator("#lab2d-text")

    def release(slider_id: str, value) -> None:
        handle = page.locator(f"#{slider_id} input[type=range]")
        expect(handle).to_be_enabled()
        handle.fill(str(value))
        handle.dispatch_event("pointerup")

    for width, height in ((1280, 720), (1400, 900)):
        page.set_viewport_size({"width": width, "height": height})
        page.goto(browser_app_url)
        started = time.perf_counter()
        page.get_by_role("tab", name="2-D lab", exact=True).click()
        expect(plot).to_have_attribute("src", PICTURE)  # opening the tab samples with the default settings
        expect(text).to_contain_text("The samples after 30 steps (ddim, g = 3)")
        print(f"\n{width}x{height}: the lab's first figure {time.perf_counter() - started:.1f} s after the click")
        expect(page.locator("#lab2d-comparison img").first).to_have_attribute("src", PICTURE)
        shot(page, tmp_path / f"lab2d-{width}-samples.png")
        for selector in ON_SCREEN:
            assert inside_viewport(page, selector), (width, selector)
        box = page.locator("#lab2d-plot").bounding_box()
        assert box["y"] + 0.6 * box["height"] <= height, (width, box)  # most of the figure on the first screen

    # More guidance: the samples move (another figure, other numbers), the table compares g = 8 too.
    first = plot.get_attribute("src")
    release("lab2d-guidance", 8)
    expect(text).to_contain_text("g = 8)")
    expect(plot).not_to_have_attribute("src", first)
    expect(page.locator("#lab2d-comparison-text")).to_contain_text("g = 8 (guided)")
    # One class: only red points.
    page.locator("#lab2d-class").get_by_label("red", exact=True).check()
    expect(text).to_contain_text("Points most likely to come from their own class: red 100%.")
    shot(page, tmp_path / "lab2d-1400-red-g8.png")
    # Scrub back to the noise, then play to the samples.
    release("lab2d-step", 0)
    expect(text).to_contain_text("The start")
    shot(page, tmp_path / "lab2d-1400-start.png")
    release("lab2d-steps", 8)  # a short run plays in a few seconds
    expect(text).to_contain_text("The samples after 8 steps")
    release("lab2d-step", 0)
    expect(text).to_contain_text("The start")
    page.locator("#lab2d-play").click()
    expect(text).to_contain_text(re.compile(r"After [1-7] of 8 steps"))  # on its way ...
    shot(page, tmp_path / "lab2d-1400-playing.png")
    expect(text).to_contain_text("The samples after 8 steps")  # ... and it stops at the samples
    expect(page.locator("#lab2d-step input[type=number]")).to_have_value("8")
    page.screenshot(path=tmp_path / "lab2d-1400-full.png", full_page=True)

    # A drawing as the data: open the drawing, draw a stroke in red (the brush's first colour), pick my drawing.
    page.locator("#lab2d-drawing").get_by_text("Draw your own data").click()
    canvas = page.locator("#lab2d-sketch canvas").first
    expect(canvas).to_be_visible()
    page.locator("#lab2d-sketch").scroll_into_view_if_needed()
    page.locator("#lab2d-sketch").locator("[aria-label*='rush' i], [title*='rush' i]").first.click()  # the brush
    shot(page, tmp_path / "lab2d-1400-brush.png")
    box = canvas.bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2  # the drawing area sits in the middle
    page.mouse.move(x - 80, y - 60)
    page.mouse.down()
    for i in range(1, 33):
        page.mouse.move(x - 80 + 5 * i, y - 60 + 2 * i, steps=2)
    page.mouse.up()
    shot(page, tmp_path / "lab2d-1400-drawn.png")
    gaussians = plot.get_attribute("src")
    page.locator("#lab2d-data").get_by_label("my drawing", exact=True).check()
    expect(text).to_contain_text("Points most likely to come from their own class: red")
    expect(page.locator("#lab2d-message")).to_have_text("")
    shot(page, tmp_path / "lab2d-1400-drawing.png")
    expect(plot).not_to_have_attribute("src", gaussians)  # the figure shows the drawing's samples
    page.locator("#lab2d-plot").scroll_into_view_if_needed()
    shot(page, tmp_path / "lab2d-1400-drawing-samples.png")
    assert errors == [], errors
    assert not page.get_by_test_id("toast-body").count()
    print(f"screenshots: {tmp_path}")
