"""The teaching tabs build inside a Blocks, and their callbacks work (called directly, no browser)."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import gradio as gr
import numpy as np
import pytest

from sdviz.app import layout, texts
from sdviz.app import teaching as ui

TABS = ["Forward diffusion", "Latent space", "Text & attention", "U-Net", "CFG experiments", "2-D lab", "Prompt A/B",
        "Export"]


def test_the_tabs_build_with_private_events(tiny_model_name):
    with gr.Blocks() as demo:
        model_choice = gr.Dropdown([tiny_model_name], value=tiny_model_name)
        run_state = gr.State(None)
        with gr.Tabs():
            layout.teaching_tabs(model_choice, run_state)
    tabs = [b.label for b in demo.blocks.values() if isinstance(b, gr.Tab)]
    assert tabs == TABS
    fns = list(demo.fns.values())
    assert len(fns) >= 15
    assert all(fn.api_visibility == "private" for fn in fns)
    heavy = {"forward_view", "latent_view", "tokens_view", "attention_run", "lens_run", "cfg_sweep", "cfg_what_if",
             "cfg_variants", "ab_run"}
    for fn in fns:
        if fn.name in heavy:  # model work shares the lesson slots (their limit is set once, by build_demo)
            assert fn.concurrency_id == layout.LESSON_CONCURRENCY_ID and fn.concurrency_limit is None, fn.name
    assert heavy <= {fn.name for fn in fns}
    by_id = {b.elem_id: b for b in demo.blocks.values() if getattr(b, "elem_id", None)}
    for elem_id, spec in layout.VARIANT_SLIDERS.items():  # the guidance variants' controls, from their one table
        slider = by_id[elem_id]
        assert (slider.label, slider.minimum, slider.maximum, slider.step, slider.value) == spec, elem_id
    assert {"lens-run", "lens-pictures", "cfg-variants-run", "cfg-variants-pictures", "cfg-variants-spread"} <= set(by_id)


SKIP = gr.skip()


def kept(result, says: str) -> bool:
    """Every output left as it was (gr.skip()), and the message, the last output, says ``says``."""
    *outputs, message = result
    return all(o == SKIP for o in outputs) and message.startswith("⚠️") and says in message


def test_without_a_run_the_panels_keep_what_they_show_and_ask_for_one(tiny_model_name):
    for result in (ui.last_picture(None), ui.cfg_sweep(None, "1, 2"), ui.cfg_what_if(None, 1, 3.0),
                   ui.ab_run(None, "a blue square"), ui.export_run(None)):
        assert kept(result, "Generate an image first"), result
    assert ui.cfg_tab_opened(None)[2] == texts.NO_RUN


def test_bad_input_keeps_the_last_result_and_says_why_in_one_sentence(tiny_model_name, tiny_run, tmp_path):
    assert kept(ui.cfg_sweep(tiny_run, "1, two"), "Guidance scales must be numbers")
    assert kept(ui.cfg_sweep(tiny_run, ",".join(["2"] * 11)), "At most 10")
    assert kept(ui.cfg_what_if(tiny_run, 99, 3.0), "Step 99 does not exist")
    assert kept(ui.attention_step(1, True, None), "capture")
    fake = tmp_path / "photo.png"
    fake.write_text("not a picture")
    for result in (ui.forward_view(tiny_model_name, str(fake), 250, 0), ui.latent_view(tiny_model_name, str(fake))):
        assert kept(result, "Could not read")
    unreadable = ui.services.UnreadablePicture(texts.UNREADABLE_UPLOAD)
    assert kept(ui.forward_view(tiny_model_name, unreadable, 250, 0), "not a picture")
    assert ui.picture_uploaded(unreadable) is None and ui.picture_uploaded(str(fake)) is None  # taken out again
    assert ui.forward_view(tiny_model_name, None, 250, 0) == (SKIP,) * 5  # an emptied input: nothing changes
    with pytest.raises(gr.Error, match="Could not read"):  # Image to image: refused at upload, with the reason
        ui.check_upload(str(fake))


def test_a_resized_upload_says_what_was_done_and_an_out_of_world_picture_why_it_is_poor(tiny_model_name, tmp_path):
    photo = tmp_path / "photo.png"
    rng = np.random.default_rng(0)
    from PIL import Image
    Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(photo)
    *_, text, message = ui.latent_view(tiny_model_name, str(photo))
    assert message == "Your 64x48 picture was cropped to its middle 48x48 and resized to 32x32, the size this model works at."
    assert ui.fitted_note((32, 32), (32, 32)) == ""
    report = type("Report", (), {"psnr": 12.8})()
    assert "trained only on toy pictures" in ui.out_of_world("embedded", report) and "12.8 dB" in ui.out_of_world(
        "embedded", report)
    assert ui.out_of_world("some/other-model", report) == ""


def test_forward_and_latent_tabs(tiny_model_name, tiny_run):
    picture, message = ui.toy_picture(tiny_model_name, seed=3)
    assert picture.size == (32, 32) and message == ""
    noisy, latents_fig, schedule_fig, text, message = ui.forward_view(tiny_model_name, picture, 250, 0)
    assert noisy.size == (32, 32) and "t = 250" in text and message == ""
    assert len([ax for ax in latents_fig.axes if ax.get_images()]) == 4
    decoded, channels_fig, text, message = ui.latent_view(tiny_model_name, ui.last_picture(tiny_run)[0])
    assert decoded.size == (32, 32) and "3x fewer numbers" in text
    assert kept(ui.forward_view(tiny_model_name, picture, 5000, 0), "timestep")  # SdvizError: said, nothing wiped


def test_text_and_attention_tab(tiny_model_name, tiny_run):
    rows, text, fig, message = ui.tokens_view(tiny_model_name, "", tiny_run)  # empty: the last run's prompt
    assert [r[1] for r in rows[1:5]] == ["a", "big", "red", "circle"]
    image, figure, slider, text, captured, message = ui.attention_run(tiny_model_name, "a red circle", tiny_run, True)
    assert image.size == (32, 32)
    titles = [ax.get_title().split(":")[0] for ax in figure.axes if ax.get_visible() and ax.get_title()]
    assert titles == ["the picture", "<start>", "a", "red", "circle", "<end>", "padding (11)"]
    assert slider.maximum == len(tiny_run.steps)  # the same settings as the last run
    assert "&lt;start&gt;" in text  # Markdown would swallow <start> as an HTML tag
    # The box unticked: a new capture leaves the special tokens out too, and so does each step.
    _, figure, _, text, _, _ = ui.attention_run(tiny_model_name, "a red circle", tiny_run, False)
    titles = [ax.get_title().split(":")[0] for ax in figure.axes if ax.get_visible() and ax.get_title()]
    assert titles == ["the picture", "a", "red", "circle"] and "not drawn" in text
    step_figure, step_text, _ = ui.attention_step(2, False, captured)
    titles = [ax.get_title().split(":")[0] for ax in step_figure.axes if ax.get_visible() and ax.get_title()]
    assert titles == ["the picture", "a", "red", "circle"] and "step 2 (t =" in step_text


def test_unet_tab(tiny_model_name, tiny_model):
    fig, rows, text, message = ui.unet_view(tiny_model_name)
    assert [r[0] for r in rows][:3] == ["conv_in", "time_embedding", "down_blocks.0"]
    assert sum(r[-1] for r in rows) == sum(p.numel() for p in tiny_model.unet.parameters())


def test_cfg_tab(tiny_run):
    step, scale, info, variants_scale = ui.cfg_tab_opened(tiny_run)
    assert step.maximum == len(tiny_run.steps) and "a big red circle" in info
    assert scale.value == variants_scale.value == 5.0  # the what-if's and the guidance variants' g: the run's
    assert "4 steps (3 steps were asked for and 4 ran: the PNDM scheduler visits its first noise level twice" in info
    pictures, fig, table, message = ui.cfg_sweep(tiny_run, "1, 5")
    titles = [ax.get_title() for ax in pictures.axes]
    assert titles == ["g = 1 (no CFG)", "g = 5"]  # every scale in one row, each labelled
    shown = pictures.axes[1].get_images()[0].get_array()
    assert np.array_equal(np.asarray(shown), np.asarray(tiny_run.image))  # g = 5 is the run itself
    recorded, changed, text, message = ui.cfg_what_if(tiny_run, 1, 10.0)
    assert recorded.size == changed.size == (32, 32) and "g = 10" in text and "not a run" in text


def test_prompt_ab_tab_steps_both_runs_side_by_side(tiny_run):
    ab, slider, a_xt, a_x0, b_xt, b_x0, fig, text, message = ui.ab_run(tiny_run, "a small blue square")
    n = len(tiny_run.steps)
    assert slider.maximum == n and slider.value == n and "same noise" in text
    assert all(p.size == tiny_run.image.size for p in (a_xt, a_x0, b_xt, b_x0))
    assert fig.axes[0].get_legend() is not None and "x_t at step 4" in [t.get_text() for t in
                                                                      fig.axes[0].get_legend().get_texts()]
    a_xt1, *_ , fig1, message = ui.ab_step(ab, 1)
    assert not np.array_equal(np.asarray(a_xt1), np.asarray(a_xt))  # step 1's x_t is noise, the last one is not
    # Play: from the end it starts again at step 1; each tick moves one step; at the last step it stops.
    timer, start, _ = ui.ab_play(ab, n)
    assert timer.active and start == 1
    assert ui.ab_tick(ab, 1)[1] == 2
    assert ui.ab_tick(ab, n)[0].active is False
    empty = ui.ab_run(tiny_run, "")  # an empty prompt B is allowed (unconditional), as everywhere else
    assert empty[-1] == "" and "(empty prompt: unconditional)" in ui.ab_labels(empty[0])[1]


def test_export_tab_writes_the_zip_and_forgets_old_ones(tiny_run, tmp_path, monkeypatch):
    monkeypatch.setattr(ui, "EXPORT_DIR", tmp_path / "exports")
    first = Path(ui.export_run(tiny_run)[0])
    with zipfile.ZipFile(first) as zf:
        assert {"final.png", "trace.npz", "settings.json", "README.txt", "animation.gif", "schedule.png"} <= set(
            zf.namelist())
        assert any(n.endswith("/x0_decode.png") for n in zf.namelist())
    assert first.name == "sdviz-seed1-g5-4steps.zip"
    os.utime(first.parent, (0, 0))  # an export from long ago
    second = Path(ui.export_run(tiny_run)[0])
    assert second.exists() and not first.exists()


def test_the_extra_pndm_step_is_explained_for_image_to_image_too(tiny_run):
    from types import SimpleNamespace

    from sdviz.lessons.export import steps_note

    settings = SimpleNamespace(steps=10, strength=0.5)
    run = SimpleNamespace(settings=settings, steps=[None] * 6, init_image=object())
    assert steps_note(run).startswith("10 steps at strength 0.5 make 5 and 6 ran: the PNDM scheduler")
    assert steps_note(run, short=True) == "PNDM makes one more than asked"
    assert steps_note(SimpleNamespace(settings=settings, steps=[None] * 5, init_image=object())) == ""
