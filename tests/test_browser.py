"""The app in a real browser: Playwright driving Debian's Chromium (``apt-get install chromium``).

Without /usr/bin/chromium the test skips with a message (``.ci/run`` installs it).
"""

from __future__ import annotations

import re

# Installed before the click: remembers every x_t picture and status line the panel shows, and whether
# the final picture was already there at the time (proof that the panel changed *while* the loop ran).
WATCH_PANEL = """() => {
  window.peekSeen = [];
  const look = () => {
    const src = document.querySelector('#peek-latents img')?.src;
    const status = document.querySelector('#peek-status')?.innerText;
    const final = document.querySelector('#txt2img-final img')?.src || null;
    const last = window.peekSeen[window.peekSeen.length - 1];
    if (!last || last.src !== src || last.status !== status) window.peekSeen.push({src, status, final});
  };
  new MutationObserver(look).observe(document.body, {subtree: true, childList: true, attributes: true,
                                                     characterData: true});
}"""


def test_generate_watch_the_loop_live_then_scrub(browser_app_url, browser_page, tmp_path):
    from playwright.sync_api import expect

    page = browser_page
    page.goto(browser_app_url)
    page.locator("#txt2img-prompt textarea").fill("a big red circle on the left")
    steps = page.locator("#txt2img-steps input[type=number]")
    steps.fill("60")  # a long enough run (about a second on the tiny model) to watch it stream
    steps.press("Enter")
    page.evaluate(WATCH_PANEL)

    page.get_by_role("button", name="Generate").first.click()
    final = page.locator("#txt2img-final img")
    expect(final).to_have_attribute("src", re.compile(r"/gradio_api/file="))
    expect(page.locator("#peek-status")).to_contain_text("Done: ")
    total = int(re.search(r"Done: (\d+) steps", page.locator("#peek-status").inner_text()).group(1))
    assert total in (60, 61)  # PNDM, the tiny model's scheduler, adds one warm-up step

    seen = page.evaluate("window.peekSeen")
    live = [s for s in seen if s["final"] is None and s["src"] and s["status"].startswith("Step")]
    assert len({s["src"] for s in live}) >= 2, seen  # several different steps shown before the end
    page.screenshot(path=tmp_path / "after-run.png", full_page=True)

    # The full decodes of the last step arrive after the final picture; then scrub to the first step.
    expect(page.locator("#peek-x0-decode img")).to_have_attribute("src", re.compile(r"/gradio_api/file="))
    expect(page.locator("#peek-animation img")).to_have_attribute("src", re.compile(r"/gradio_api/file="))
    decode_before = page.locator("#peek-xt-decode img").get_attribute("src")
    slider = page.locator("#peek-step input[type=range]")
    expect(slider).to_be_enabled()
    slider.focus()
    page.keyboard.press("Home")
    expect(page.locator("#peek-status")).to_contain_text(f"Showing step 1 / {total}")
    expect(page.locator("#peek-xt-decode img")).not_to_have_attribute("src", decode_before)
    expect(page.locator("#peek-numbers")).to_contain_text(f"1 of {total}")
    page.screenshot(path=tmp_path / "scrubbed.png", full_page=True)
    assert (tmp_path / "scrubbed.png").stat().st_size > 10_000
