"""Every tab of the app in a real browser: Playwright driving Debian's Chromium, on the tiny test model.

First at 1024 and 1400 px wide: every tab's label is in view (none behind Gradio's "..." menu) and each tab opens.
Then one page, one session: generate a picture (Text to image), refuse a file that is no picture at upload (Image to
image: a toast, and the input is emptied again), then one run from an example picture (which becomes the session's
latest run), then open each teaching tab, press its main control and check that its real content arrives (a
picture, a plot, table rows, a zip to download), that a bad input leaves the previous result in place and says why
next to the input, and that no error toast appeared otherwise. Runs are kept to 3 steps.
A screenshot of every tab lands in pytest's tmp dir (the path is printed with ``-s``), copied to
$SDVIZ_SHOTS when that is set.

Without /usr/bin/chromium the test skips with a message (``.ci/run`` installs it).
"""

from __future__ import annotations

import io
import os
import re
import shutil
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


TABS = ["Text to image", "Image to image", "Forward diffusion", "Latent space", "Text & attention", "U-Net",
        "CFG experiments", "2-D lab", "Prompt A/B", "Export", "Guided lesson"]


def copy_shots(shots) -> None:
    target = os.environ.get("SDVIZ_SHOTS")
    if target:
        os.makedirs(target, exist_ok=True)
        for shot in shots.glob("*.png"):
            shutil.copy(shot, target)


def test_every_tab_is_in_view_at_1024_and_1400_px(browser_app_url, browser_page, tmp_path):
    from playwright.sync_api import expect

    page = browser_page
    shots = tmp_path / "widths"
    shots.mkdir()
    for width in (1024, 1400):
        page.set_viewport_size({"width": width, "height": 900})
        page.goto(browser_app_url)
        for name in TABS:  # each label in view, none hidden behind the overflow menu
            tab = page.get_by_role("tab", name=name, exact=True)
            expect(tab).to_be_visible()
            box = tab.bounding_box()
            assert box is not None and box["x"] + box["width"] <= width, (width, name, box)
        assert not page.locator("#tabs .overflow-menu").is_visible()
        for name in TABS:
            page.get_by_role("tab", name=name, exact=True).click()
            expect(page.get_by_role("tab", name=name, exact=True)).to_have_attribute("aria-selected", "true")
            slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
            page.screenshot(path=shots / f"{width}-{slug}.png")
    copy_shots(shots)


def test_every_tab_shows_its_content(browser_app_url, browser_page, tiny_model_dir, tmp_path):
    from playwright.sync_api import expect

    page = browser_page
    shots = tmp_path / "tabs"
    shots.mkdir()
    print(f"\nscreenshots of every tab: {shots}")
    page_errors: list[str] = []
    lap = [time.perf_counter()]  # when the current tab's visit began
    fake = tmp_path / "holiday.png"
    fake.write_text("this is not a picture")

    page.on("pageerror", lambda err: page_errors.append(str(err)))
    page.add_init_script(WATCH_TOASTS)
    page.goto(browser_app_url)

    def open_tab(name: str) -> None:
        page.get_by_role("tab", name=name, exact=True).click()
        expect(page.get_by_role("tab", name=name, exact=True)).to_have_attribute("aria-selected", "true")

    def has_picture(elem_id: str) -> None:
        expect(page.locator(f"#{elem_id} img").first).to_have_attribute("src", PICTURE)

    def src(elem_id: str) -> str:
        return page.locator(f"#{elem_id} img").first.get_attribute("src")

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

    def kept(message_id: str, says: str, pictures: dict[str, str]) -> None:
        """After a bad input: the message next to the input says why, and every picture is the one from before."""
        expect(page.locator(f"#{message_id}")).to_contain_text(says)
        for elem_id, before in pictures.items():
            expect(page.locator(f"#{elem_id} img").first).to_have_attribute("src", before)
        assert not page.locator(".error").filter(has_text="Error").count()  # no red "Error" badge anywhere

    def done(tab: str) -> None:
        """No toast so far, no JavaScript error; then the tab's screenshot."""
        toasts = page.evaluate("window.toastsSeen")
        assert toasts == [], f"{tab}: toasts appeared: {toasts}"
        assert page_errors == [], f"{tab}: JavaScript errors: {page_errors}"
        slug = re.sub(r"[^a-z0-9]+", "-", tab.lower()).strip("-")
        page.locator("#tabs").screenshot(path=shots / f"{slug}.png")
        print(f"{tab}: {time.perf_counter() - lap[0]:.1f} s")  # shown with pytest -s
        lap[0] = time.perf_counter()

    # --- Before any run, Export says what to do first, next to its button (no toast, nothing wiped).
    open_tab("Export")
    page.locator("#export-build").click()
    expect(page.locator("#export-message")).to_contain_text("Generate an image first")
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

    # --- Image to image: a file that is no picture is refused at upload (a toast: proof that the watcher sees
    # one), and taken out of the input; then an example fills the picture and the prompt; this run becomes the latest.
    open_tab("Image to image")
    page.locator("#img2img-init input[type=file]").set_input_files(str(fake))
    expect(page.get_by_test_id("toast-body")).to_contain_text("Could not read")
    assert len(page.evaluate("window.toastsSeen")) == 1
    page.get_by_test_id("toast-close").click()
    expect(page.get_by_test_id("toast-body")).to_have_count(0)
    expect(page.locator("#img2img-init img")).to_have_count(0)
    page.evaluate("window.toastsSeen = []")
    img2img_prompt = image_examples()[0][1]
    page.get_by_text("Pictures to try (image to image)").click()  # the examples wait, closed, below the panel
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

    # --- Forward diffusion: the last picture, noised at t = 400, then at t = 900 by the slider; then a file that
    # is no picture: the message says so, and the noised picture stays.
    open_tab("Forward diffusion")
    page.locator("#forward-last").click()
    expect(page.locator("#forward-text")).to_contain_text("t = 400")
    for elem_id in ("forward-picture", "forward-noisy", "forward-schedule", "forward-latents"):
        has_picture(elem_id)
    noisy_at_400 = src("forward-noisy")
    release("forward-t", 900)
    expect(page.locator("#forward-text")).to_contain_text("t = 900")
    expect(page.locator("#forward-noisy img")).not_to_have_attribute("src", noisy_at_400)
    before = {elem_id: src(elem_id) for elem_id in ("forward-noisy", "forward-schedule", "forward-latents")}
    page.locator("#forward-picture input[type=file]").set_input_files(str(fake))
    kept("forward-message", "not a picture", before)
    expect(page.locator("#forward-text")).to_contain_text("t = 900")
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
    page.locator("#attention-special input").uncheck()  # honoured by the capture that follows
    page.locator("#attention-run").click()
    has_picture("attention-image")
    has_picture("attention-maps")
    expect(page.locator("#attention-text")).to_contain_text("the whole run")
    expect(page.locator("#attention-text")).to_contain_text("not drawn")
    expect(page.locator("#attention-text")).to_contain_text("<start>")  # escaped, not swallowed as a tag
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

    # --- CFG experiments: opening the tab fits it to the latest run; a 2-point sweep; a what-if; then a bad list
    # of scales: the message says why, the sweep's pictures and plot stay.
    open_tab("CFG experiments")
    expect(page.locator("#cfg-info")).to_contain_text(f"Latest run: \"{img2img_prompt}\"")
    page.locator("#cfg-scales textarea").fill("1, 3")
    page.locator("#cfg-sweep").click()
    has_picture("cfg-plot")
    has_picture("cfg-pictures")
    expect(page.locator("#cfg-table")).to_contain_text("difference from g = 1")
    release("cfg-scale", 12)
    has_picture("cfg-recorded")
    has_picture("cfg-what-if")
    expect(page.locator("#cfg-text")).to_contain_text("g = 12")
    expect(page.locator("#cfg-text")).to_contain_text("not a run")
    before = {elem_id: src(elem_id) for elem_id in ("cfg-pictures", "cfg-plot")}
    page.locator("#cfg-scales textarea").fill("1, lots")
    page.locator("#cfg-sweep").click()
    kept("cfg-sweep-message", "must be numbers", before)
    expect(page.locator("#cfg-table")).to_contain_text("difference from g = 1")
    done("CFG experiments")

    # --- Prompt A/B: prompt B from the same noise as the latest run, both runs step by step on one slider.
    open_tab("Prompt A/B")
    page.locator("#ab-prompt textarea").fill("a small blue square at the top")
    press("ab-run", ("ab-a-xt", "ab-a-x0", "ab-b-xt", "ab-b-x0", "ab-plot"), "ab-text", "same noise")
    last_step = src("ab-a-xt")
    release("ab-step", 1)
    expect(page.locator("#ab-a-xt img")).not_to_have_attribute("src", last_step)
    page.locator("#ab-play").click()  # plays on to the last step, then stops
    number = page.locator("#ab-step input[type=number]")
    expect(number).to_have_value(number.get_attribute("max"))
    has_picture("ab-a-xt")
    page.locator("#ab-prompt textarea").fill("")  # empty prompt B is allowed: unconditional
    page.locator("#ab-run").click()
    expect(page.locator("#ab-plot")).to_contain_text("", timeout=5_000)
    expect(page.locator("#ab-message")).to_have_text("")
    done("Prompt A/B")

    # --- Export: the zip of the latest run, downloaded by its link.
    open_tab("Export")
    expect(page.locator("#export-message")).to_contain_text("Generate an image first")  # from before the run
    page.locator("#export-build").click()
    link = page.locator("#export-file a[href]").first
    expect(link).to_have_attribute("href", SERVED)
    expect(link).to_have_attribute("download", re.compile(r"^sdviz-seed\d+-g[\d.]+-\d+steps\.zip$"))
    expect(page.locator("#export-message")).to_have_text("")
    response = page.request.get(link.get_attribute("href"))
    assert response.ok, response.status
    names = set(zipfile.ZipFile(io.BytesIO(response.body())).namelist())
    assert {"final.png", "settings.json", "trace.npz", "animation.gif", "init.png", "README.txt"} <= names, names
    assert any(n.endswith("/x0_decode.png") for n in names) and any(n.endswith("/x_t_decode.png") for n in names)
    done("Export")
    assert len(list(shots.glob("*.png"))) == 9
    copy_shots(shots)
