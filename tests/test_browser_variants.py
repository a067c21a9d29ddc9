"""Diffusion Lens (Text & attention tab) and the guidance variants (CFG tab) in a real browser, on the tiny test model.

One session: a 3-step run, then the lens (one picture per text-encoder layer, and the sentence under it), then the
variants with the default rescale and interval (the figure's titles count the U-Net calls), then a bad interval: the
message says why next to the controls and the pictures stay. Screenshots at 1280x720 and 1400x900 of both sections
land in pytest's tmp dir (printed with ``-s``), copied to $SDVIZ_SHOTS when that is set.

Without /usr/bin/chromium the test skips with a message (``.ci/run`` installs it).
"""

from __future__ import annotations

import re

from test_browser_tabs import copy_shots  # pytest puts tests/ on the path (no __init__.py there)

from sdviz.pipeline.models import load_model

PICTURE = re.compile(r"/gradio_api/file=|^data:image/png;base64,")
SIZES = ((1280, 720), (1400, 900))


def test_the_lens_and_the_guidance_variants_on_the_page(browser_app_url, browser_page, tiny_model_dir, tmp_path):
    from playwright.sync_api import expect

    page = browser_page
    page_errors: list[str] = []
    page.on("pageerror", lambda err: page_errors.append(str(err)))
    page.goto(browser_app_url)
    shots = tmp_path / "variants"
    shots.mkdir()
    print(f"\nscreenshots of Diffusion Lens and the guidance variants: {shots}")

    def open_tab(name: str) -> None:
        tab = page.get_by_role("tab", name=name, exact=True)
        tab.click()
        expect(tab).to_have_attribute("aria-selected", "true")

    def picture(elem_id: str):
        return page.locator(f"#{elem_id} img").first

    def shoot(name: str, anchor: str) -> None:
        for width, height in SIZES:
            page.set_viewport_size({"width": width, "height": height})
            page.locator(f"#{anchor}").scroll_into_view_if_needed()
            page.evaluate(f"document.getElementById('{anchor}').scrollIntoView({{block: 'start'}})")
            page.screenshot(path=shots / f"{name}-{width}x{height}.png")

    # A 3-step run: the session's latest run, whose seed and settings both sections use.
    page.locator("#txt2img-prompt textarea").fill("a big red circle on the left")
    steps = page.locator("#txt2img-steps input[type=number]")
    steps.fill("3")
    steps.press("Enter")
    page.locator("#txt2img-generate").click()
    expect(page.locator("#peek-status")).to_contain_text("Done: ")

    # --- Diffusion Lens: one picture per layer of the tiny model's text encoder.
    layers = load_model(str(tiny_model_dir)).text_encoder.config.num_hidden_layers
    open_tab("Text & attention")
    page.locator("#lens-run").click()
    expect(picture("lens-pictures")).to_have_attribute("src", PICTURE)
    expect(page.locator("#lens-text")).to_contain_text(f"all {layers} layers")
    expect(page.locator("#lens-text")).to_contain_text("The last layer's picture is the usual run")
    expect(page.locator("#lens-message")).to_have_text("")
    box = picture("lens-pictures").bounding_box()
    assert box is not None and box["width"] > 300, box  # the figure is drawn at a readable size
    shoot("lens", "lens-run")

    # --- Guidance variants: plain CFG, rescale 0.7 and CFG on the first half, from the run's seed.
    open_tab("CFG experiments")
    expect(page.locator("#cfg-variants-scale input[type=number]")).to_have_value("7.5")  # the run's g
    page.locator("#cfg-variants-run").click()
    expect(picture("cfg-variants-pictures")).to_have_attribute("src", PICTURE)
    expect(picture("cfg-variants-spread")).to_have_attribute("src", PICTURE)
    text = page.locator("#cfg-variants-text")
    expect(text).to_contain_text("calls, ")  # "... 3 + 2 = 5 calls ..." as counted by the loop
    expect(text).to_contain_text("Rescale r = 0.7")
    expect(text).to_contain_text("saved")
    expect(page.locator("#cfg-variants-message")).to_have_text("")
    shoot("variants", "cfg-variants-scale")
    shoot("variants-figures", "cfg-variants-pictures")

    # A bad interval (start after end): the message says why, the pictures stay as they were.
    before = picture("cfg-variants-pictures").get_attribute("src")
    start = page.locator("#cfg-variants-start input[type=number]")
    start.fill("0.8")
    start.press("Enter")
    page.locator("#cfg-variants-run").click()
    expect(page.locator("#cfg-variants-message")).to_contain_text("the start must be below the end")
    expect(picture("cfg-variants-pictures")).to_have_attribute("src", before)
    assert page_errors == [], page_errors
    assert len(list(shots.glob("*.png"))) == 6
    copy_shots(shots)
