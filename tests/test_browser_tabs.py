"""Every tab of the app in a real browser: Playwright driving Debian's Chromium, on the tiny test model.

One page, one session: generate a picture (Text to image), then one from an example picture (Image to
image, which becomes the session's latest run), then open each teaching tab, press its main control
and check that its real content arrives (a picture, a plot, table rows, a zip to download) and that no
error toast appeared anywhere. Runs are kept to 3 steps: the whole visit takes about 20 s next to training.
A screenshot of every tab lands in pytest's tmp dir (the path is printed with ``-s``).

Without /usr/bin/chromium the test skips with a message (``.ci/run`` installs it).
"""

from __future__ import annotations

import io
import re
import time
import zipfile

from sdviz.app.components import image_examples
from sdviz.lessons import unet_diagram
from sdviz.pipeline.models import load_model
from sdviz.toy import model as toy_model

SERVED = re.compile(r"/gradio_api/file=")  # a picture or link whose file the server made
PICTURE = re.compile(r"/gradio_api/file=|^data:image/png;base64,")  # ... or a plot, inlined as PNG data
STEPS = "3"

# Installed before the page loads: remembers every toast (error, warning or info) that ever appears,
# even one that is closed again before the test looks.
WATCH_TOASTS = """
window.toastsSeen = [];
new MutationObserver(() => {
  for (const toast of document.querySelectorAll('[data-testid="toast-body"]')) {
    if (toast.dataset.seen) continue;
    toast.dataset.seen = '1';
    window.toastsSeen.push(`${toast.className}: ${toast.innerText}`);
  }
}).observe(document, {subtree: true, childList: true});
"""


def test_every_tab_shows_its_content(browser_app_url, browser_page, tiny_model_dir, tmp_path):
    from playwright.sync_api import expect

    page = browser_page
    shots = tmp_path / "tabs"
    shots.mkdir()
    print(f"\nscreenshots of every tab: {shots}")
    page_errors: list[str] = []
    lap = [time.perf_counter()]  # when the current tab's visit began

    page.on("pageerror", lambda err: page_errors.append(str(err)))
    page.add_init_script(WATCH_TOASTS)
    page.goto(browser_app_url)

    def open_tab(name: str) -> None:
        page.get_by_role("tab", name=name, exact=True).click()
        expect(page.get_by_role("tab", name=name, exact=True)).to_have_attribute("aria-selected", "true")

    def has_picture(elem_id: str) -> None:
        expect(page.locator(f"#{elem_id} img").first).to_have_attribute("src", PICTURE)

    def press(button_id: str, pictures: tuple[str, ...], text_id: str, says: str) -> None:
        """Press a tab's main button: each of its pictures arrives, and its explanation says `says`."""
        page.locator(f"#{button_id}").click()
        for elem_id in pictures:
            has_picture(elem_id)
        expect(page.locator(f"#{text_id}")).to_contain_text(says)

    def release(slider_id: str, value: int | float) -> None:
        """Move a slider the way a student does: Gradio's release event fires on pointerup."""
        handle = page.locator(f"#{slider_id} input[type=range]")
        expect(handle).to_be_enabled()
        handle.fill(str(value))
        handle.dispatch_event("pointerup")

    def done(tab: str) -> None:
        """No toast so far, no JavaScript error; then the tab's screenshot."""
        toasts = page.evaluate("window.toastsSeen")
        assert toasts == [], f"{tab}: toasts appeared: {toasts}"
        assert page_errors == [], f"{tab}: JavaScript errors: {page_errors}"
        slug = re.sub(r"[^a-z0-9]+", "-", tab.lower()).strip("-")
        page.locator("#tabs").screenshot(path=shots / f"{slug}.png")
        print(f"{tab}: {time.perf_counter() - lap[0]:.1f} s")  # shown with pytest -s
        lap[0] = time.perf_counter()

    # --- Before any run, Export says what to do first: proof that the toast watcher sees an error.
    open_tab("Export")
    page.locator("#export-build").click()
    expect(page.get_by_test_id("toast-body")).to_contain_text("Generate an image first")
    assert len(page.evaluate("window.toastsSeen")) == 1
    page.get_by_test_id("toast-close").click()
    expect(page.get_by_test_id("toast-body")).to_have_count(0)
    page.evaluate("window.toastsSeen = []")
    lap[0] = time.perf_counter()

    # --- Text to image: a 3-step run fills the final picture and the peek panel.
    open_tab("Text to image")
    page.locator("#txt2img-prompt textarea").fill("a big red circle on the left")
    steps = page.locator("#txt2img-steps input[type=number]")
    steps.fill(STEPS)
    steps.press("Enter")
    page.locator("#txt2img-generate").click()
    has_picture("final")  # one final picture for both tabs: the latest run's
    expect(page.locator("#peek-status")).to_contain_text("Done: ")
    has_picture("peek-animation")  # the after-run decodes have arrived
    done("Text to image")

    # --- Image to image: an example fills the picture and the prompt; this run becomes the latest.
    open_tab("Image to image")
    img2img_prompt = image_examples()[0][1]
    page.get_by_text(img2img_prompt, exact=True).click()  # the first row of "Try a picture"
    has_picture("img2img-init")
    expect(page.locator("#img2img-prompt textarea")).to_have_value(img2img_prompt)
    steps = page.locator("#img2img-steps input[type=number]")
    steps.fill(STEPS)
    steps.press("Enter")
    animation = page.locator("#peek-animation img")
    txt2img_animation = animation.get_attribute("src")
    final = page.locator("#final img").get_attribute("src")
    page.locator("#img2img-generate").click()
    expect(page.locator("#final img")).not_to_have_attribute("src", final)
    has_picture("final")
    expect(animation).to_have_attribute("src", SERVED)
    expect(animation).not_to_have_attribute("src", txt2img_animation)  # the peek panel shows this run
    done("Image to image")

    # --- Forward diffusion: the last picture, noised at t = 400, then at t = 900 by the slider.
    open_tab("Forward diffusion")
    page.locator("#forward-last").click()
    expect(page.locator("#forward-text")).to_contain_text("t = 400")
    for elem_id in ("forward-picture", "forward-noisy", "forward-schedule", "forward-latents"):
        has_picture(elem_id)
    noisy_at_400 = page.locator("#forward-noisy img").get_attribute("src")
    release("forward-t", 900)
    expect(page.locator("#forward-text")).to_contain_text("t = 900")
    expect(page.locator("#forward-noisy img")).not_to_have_attribute("src", noisy_at_400)
    done("Forward diffusion")

    # --- Latent space: a toy picture through the VAE and back.
    open_tab("Latent space")
    press("latent-toy", ("latent-picture", "latent-decoded", "latent-channels"), "latent-text", "fewer numbers")
    done("Latent space")

    # --- Text & attention: tokens of the last run's prompt, then a run that captures attention.
    open_tab("Text & attention")
    page.locator("#attention-tokenize").click()
    tokens = page.locator("#attention-tokens")  # the table draws only the rows in view; the grid counts all
    expect(tokens.locator("[role=grid]")).to_have_attribute("aria-rowcount", str(1 + toy_model.MAX_TOKENS))
    expect(tokens.get_by_test_id("cell-0-3")).to_have_text("start")
    expect(tokens.get_by_test_id("cell-1-1")).to_have_text(img2img_prompt.split()[0])
    has_picture("attention-embeddings")
    expect(page.locator("#attention-token-text")).to_contain_text("padding tokens")
    page.locator("#attention-run").click()
    has_picture("attention-image")
    expect(page.locator("#attention-gallery img").nth(2)).to_be_visible()  # one map per token
    expect(page.locator("#attention-text")).to_contain_text("the whole run")
    expect(page.locator("#attention-step input[type=range]")).to_be_enabled()
    done("Text & attention")

    # --- U-Net: the diagram and one table row per block.
    open_tab("U-Net")
    page.locator("#unet-draw").click()
    has_picture("unet-plot")
    blocks = unet_diagram.describe_unet(load_model(str(tiny_model_dir))).blocks
    expect(page.locator("#unet-table [role=grid]")).to_have_attribute("aria-rowcount", str(1 + len(blocks)))
    expect(page.locator("#unet-table").get_by_test_id("cell-0-0")).to_have_text(blocks[0].name)
    expect(page.locator("#unet-text")).to_contain_text("parameters")
    done("U-Net")

    # --- CFG experiments: opening the tab fits it to the latest run; a 2-point sweep; a what-if.
    open_tab("CFG experiments")
    expect(page.locator("#cfg-info")).to_contain_text(f"Latest run: \"{img2img_prompt}\"")
    page.locator("#cfg-scales textarea").fill("1, 3")
    page.locator("#cfg-sweep").click()
    has_picture("cfg-plot")
    expect(page.locator("#cfg-gallery img")).to_have_count(2)
    expect(page.locator("#cfg-table")).to_contain_text("difference from g = 1")
    release("cfg-scale", 12)
    has_picture("cfg-recorded")
    has_picture("cfg-what-if")
    expect(page.locator("#cfg-text")).to_contain_text("g = 12")
    done("CFG experiments")

    # --- Prompt A/B: prompt B from the same noise as the latest run.
    open_tab("Prompt A/B")
    page.locator("#ab-prompt textarea").fill("a small blue square at the top")
    press("ab-run", ("ab-a", "ab-b", "ab-plot"), "ab-text", "same noise")
    done("Prompt A/B")

    # --- Export: the zip of the latest run, downloaded by its link.
    open_tab("Export")
    page.locator("#export-build").click()
    link = page.locator("#export-file a[href]").first
    expect(link).to_have_attribute("href", SERVED)
    expect(link).to_have_attribute("download", re.compile(r"^sdviz-seed\d+-g[\d.]+-\d+steps\.zip$"))
    response = page.request.get(link.get_attribute("href"))
    assert response.ok, response.status
    names = set(zipfile.ZipFile(io.BytesIO(response.body())).namelist())
    assert {"final.png", "settings.json", "trace.npz", "animation.gif", "init.png"} <= names, names
    done("Export")
    assert len(list(shots.glob("*.png"))) == 9
