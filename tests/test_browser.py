"""The app in a real browser: Playwright driving Debian's Chromium (``apt-get install chromium``), at a projector's
1280x720.

Without /usr/bin/chromium the test skips with a message (``.ci/run`` installs it). Screenshots go to the test's
temporary folder (and, when SDVIZ_SHOTS names a folder, copies there).
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent / "assets" / "examples"

# Installed before the click: remembers every predicted-x0 picture and status line the live view shows, and whether
# the final picture was already there at the time (proof that the view changed *while* the loop ran).
WATCH_LIVE = """() => {
  window.peekSeen = [];
  const look = () => {
    const src = document.querySelectorAll('#peek-live img')[1]?.src;
    const status = document.querySelector('#peek-status')?.innerText;
    const final = document.querySelector('#final img')?.src || null;
    const last = window.peekSeen[window.peekSeen.length - 1];
    if (!last || last.src !== src || last.status !== status) window.peekSeen.push({src, status, final});
  };
  new MutationObserver(look).observe(document.body, {subtree: true, childList: true, attributes: true,
                                                     characterData: true});
}"""

ON_SCREEN = ["#txt2img-generate", "#final", "#peek-live", "#peek-status"]


def shot(page, path: Path, **kwargs) -> None:
    page.screenshot(path=path, **kwargs)
    if os.environ.get("SDVIZ_SHOTS"):
        Path(os.environ["SDVIZ_SHOTS"]).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(os.environ["SDVIZ_SHOTS"]) / path.name)


def inside_viewport(page, selector: str) -> bool:
    box = page.locator(selector).bounding_box()
    size = page.viewport_size
    return box is not None and box["y"] >= 0 and box["y"] + box["height"] <= size["height"] and \
        box["x"] + box["width"] <= size["width"]


def done_line(page, status) -> str:
    """The status's "Done: ..." line. While a follow-up event runs, Gradio may show the component's loading state
    instead of its text for a moment: read again a little later."""
    for _ in range(40):
        found = re.search(r"Done: .*", status.inner_text())
        if found:
            return found.group(0)
        page.wait_for_timeout(250)
    raise AssertionError(f"no 'Done:' line in {status.inner_text()!r}")


def shown_step(page) -> int:
    return int(re.search(r"Showing step (\d+) /", page.locator("#peek-status").inner_text()).group(1))


def test_a_class_watches_the_loop_live_then_replays_it(browser_app_url, browser_page, tmp_path):
    from playwright.sync_api import expect

    page = browser_page
    page.set_viewport_size({"width": 1280, "height": 720})
    page.goto(browser_app_url)
    for selector in ON_SCREEN:  # a projector: Generate, the final picture and the live view on one screen
        assert inside_viewport(page, selector), selector
    page.locator("#txt2img-prompt textarea").fill("a big red circle on the left")
    steps = page.locator("#txt2img-steps input[type=number]")
    steps.fill("12")
    steps.press("Enter")
    page.locator("#peek-slow input").check()  # slow motion: every step reaches the page
    page.evaluate(WATCH_LIVE)

    page.locator("#txt2img-generate").click()
    # any step from the third on (each shows ~0.4 s in slow motion; expect's polls grow to 1 s apart under load)
    expect(page.locator("#peek-status")).to_contain_text(re.compile(r"Step ([3-9]|1\d) /"))
    shot(page, tmp_path / "during-run-1280x720.png")
    final = page.locator("#final img")
    expect(final).to_have_attribute("src", re.compile(r"/gradio_api/file="))
    expect(page.locator("#peek-status")).to_contain_text("Done: ")
    total = int(re.search(r"Done: (\d+) steps", page.locator("#peek-status").inner_text()).group(1))
    assert total in (12, 13)  # PNDM, the tiny model's scheduler, adds one warm-up step
    seen = page.evaluate("window.peekSeen")
    live = [s for s in seen if s["final"] is None and s["src"] and s["status"].startswith("Step")]
    assert len({s["status"].split(" (")[0] for s in live}) == total, [s["status"] for s in live]  # every step
    assert len({s["src"] for s in live}) >= 3  # the live x0 picture changed while the loop ran
    for selector in ON_SCREEN:
        assert inside_viewport(page, selector), selector
    expect(page.locator("#peek-animation img")).to_have_attribute("src", re.compile(r"/gradio_api/file="))
    shot(page, tmp_path / "after-run-1280x720.png")

    # The timeline: Play steps the panel, Pause stops it
    page.locator("#peek-back").click()
    expect(page.locator("#peek-status")).to_contain_text(f"Showing step {total - 1} / {total}")
    page.locator("#peek-play").click()
    expect(page.locator("#peek-play")).to_have_text(re.compile("Pause"))
    expect(page.locator("#peek-status")).to_contain_text("Showing step 2 /")  # it went round (loop) and on
    page.locator("#peek-play").click()
    expect(page.locator("#peek-play")).to_have_text(re.compile("Play"))
    page.wait_for_timeout(1000)  # a tick on its way lands by now
    paused_at = shown_step(page)
    page.wait_for_timeout(1500)
    assert shown_step(page) == paused_at
    expect(page.locator("#peek-numbers")).to_contain_text(f"{paused_at} of {total}")
    shot(page, tmp_path / "paused-full-1280.png", full_page=True)

    page.set_viewport_size({"width": 1400, "height": 900})
    page.evaluate("window.scrollTo(0, 0)")
    for selector in ON_SCREEN:
        assert inside_viewport(page, selector), selector
    shot(page, tmp_path / "after-run-1400x900.png")
    assert (tmp_path / "after-run-1280x720.png").stat().st_size > 10_000


def test_generate_in_the_other_tab_leaves_one_clean_run(browser_app_url, browser_page, tmp_path):
    from playwright.sync_api import expect

    page = browser_page
    page.set_viewport_size({"width": 1280, "height": 720})
    page.goto(browser_app_url)
    page.locator("#txt2img-prompt textarea").fill("a red circle")
    steps = page.locator("#txt2img-steps input[type=number]")
    steps.fill("40")
    steps.press("Enter")
    page.locator("#peek-slow input").check()  # a text-to-image run of about 16 s
    page.locator("#txt2img-generate").click()
    expect(page.locator("#peek-status")).to_contain_text(re.compile(r"Step \d+ /"))  # the run is going

    page.get_by_role("tab", name="Image to image").click()
    page.locator("#img2img-init input[type=file]").set_input_files(str(sorted(EXAMPLES.glob("*.png"))[0]))
    page.locator("#img2img-prompt textarea").fill("a blue circle")
    img_steps = page.locator("#img2img-steps input[type=number]")
    img_steps.fill("5")
    img_steps.press("Enter")
    page.locator("#peek-slow input").uncheck()
    page.wait_for_timeout(500)
    page.locator("#img2img-generate").click()
    status = page.locator("#peek-status")
    # long before the first run could have finished: the image-to-image run's (strength 0.8 of 5 steps)
    expect(status).to_contain_text(re.compile(r"Done: \d steps"), timeout=15_000)
    done = done_line(page, status)  # (Gradio may add a progress line above it)
    page.wait_for_timeout(2000)  # the first run's end and both follow-ups have landed by now
    assert done_line(page, status) == done
    assert "Stopped" not in status.inner_text()
    expect(page.locator("#final img")).to_have_attribute("src", re.compile(r"/gradio_api/file="))
    page.evaluate("window.scrollTo(0, 0)")
    for selector in ("#img2img-generate", "#final", "#img2img-init"):  # Image to image fits a projector too
        assert inside_viewport(page, selector), selector
    shot(page, tmp_path / "cross-tab-1280x720.png", full_page=True)


def test_two_students_at_once_each_see_their_own_run(browser_app_url, chromium, tiny_model, tmp_path):
    """Two browsers press Generate together: the server may batch their runs; each page must show its own run, live
    and final, and its final picture must be the one its settings give alone (within 1/255)."""
    import io

    import httpx
    import numpy as np
    from conftest import CHROMIUM_ARGS
    from PIL import Image
    from playwright.sync_api import expect, sync_playwright

    from sdviz.pipeline.sampler import generate
    from sdviz.pipeline.settings import RunSettings

    students = [("a big red circle on the left", 11), ("a small blue square at the top", 22)]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(chromium), args=CHROMIUM_ARGS)
        pages = []
        for prompt, seed in students:
            page = browser.new_context(viewport={"width": 1280, "height": 720}).new_page()
            page.set_default_timeout(60_000)
            page.goto(browser_app_url)
            page.locator("#txt2img-prompt textarea").fill(prompt)
            for field, value in (("#txt2img-steps", "10"), ("#txt2img-seed", str(seed)), ("#txt2img-cfg", "4")):
                box = page.locator(f"{field} input[type=number]")
                box.fill(value)
                box.press("Enter")
            pages.append(page)
        for page in pages:  # as close together as two clicks get
            page.locator("#txt2img-generate").click()
        for i, page in enumerate(pages):
            expect(page.locator("#peek-status")).to_contain_text("Done: ", timeout=60_000)
            shot(page, tmp_path / f"student-{i + 1}-1280x720.png")
        for page, (prompt, seed) in zip(pages, students, strict=True):
            src = page.locator("#final img").get_attribute("src")
            shown = np.asarray(Image.open(io.BytesIO(httpx.get(src, timeout=30).content)).convert("RGB"), dtype=int)
            settings = RunSettings(prompt=prompt, steps=10, guidance_scale=4.0, seed=seed)
            alone = np.asarray(generate(tiny_model, settings).image, dtype=int)
            assert shown.shape == alone.shape and np.abs(shown - alone).max() <= 1, prompt
        browser.close()
