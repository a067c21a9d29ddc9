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

TABS = ["Forward diffusion", "Latent space", "Text & attention", "U-Net", "CFG experiments", "Prompt A/B", "Export"]


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
    heavy = {"forward_view", "latent_view", "tokens_view", "attention_run", "cfg_sweep", "cfg_what_if", "ab_run"}
    for fn in fns:
        if fn.name in heavy:  # model work shares the app's generation slots without lowering their limit
            assert fn.concurrency_id == "generate" and fn.concurrency_limit is None, fn.name
    assert heavy <= {fn.name for fn in fns}


def test_without_a_run_the_panels_ask_for_one(tiny_model_name):
    for call in (lambda: ui.last_picture(None), lambda: ui.cfg_sweep(None, "1, 2"),
                 lambda: ui.cfg_what_if(None, 1, 3.0), lambda: ui.ab_run(None, "a blue square"),
                 lambda: ui.export_run(None)):
        with pytest.raises(gr.Error, match="Generate an image first"):
            call()
    assert ui.cfg_tab_opened(None)[2] == texts.NO_RUN


def test_forward_and_latent_tabs(tiny_model_name, tiny_run):
    picture = ui.toy_picture(tiny_model_name, seed=3)
    assert picture.size == (32, 32)
    noisy, latents_fig, schedule_fig, text = ui.forward_view(tiny_model_name, picture, 250, 0)
    assert noisy.size == (32, 32) and "t = 250" in text
    assert len([ax for ax in latents_fig.axes if ax.get_images()]) == 4
    assert ui.forward_view(tiny_model_name, None, 250, 0)[3] == texts.PICK_PICTURE
    decoded, channels_fig, text = ui.latent_view(tiny_model_name, ui.last_picture(tiny_run))
    assert decoded.size == (32, 32) and "3x fewer numbers" in text
    with pytest.raises(gr.Error, match="timestep"):  # SdvizError reaches the student as gr.Error
        ui.forward_view(tiny_model_name, picture, 5000, 0)


def test_text_and_attention_tab(tiny_model_name, tiny_run):
    rows, text, fig = ui.tokens_view(tiny_model_name, "", tiny_run)  # empty: the last run's prompt
    assert [r[1] for r in rows[1:5]] == ["a", "big", "red", "circle"]
    image, gallery, slider, text, captured = ui.attention_run(tiny_model_name, "a red circle", tiny_run)
    assert image.size == (32, 32)
    assert [caption.split(":")[0] for _, caption in gallery] == ["<start>", "a", "red", "circle", "<end>", "padding (11)"]
    assert slider.maximum == len(tiny_run.steps)  # the same settings as the last run
    step_gallery, step_text = ui.attention_step(2, False, captured)
    assert [c.split(":")[0] for _, c in step_gallery] == ["a", "red", "circle"] and "step 2 (t =" in step_text
    with pytest.raises(gr.Error, match="capture"):
        ui.attention_step(1, True, None)


def test_unet_tab(tiny_model_name, tiny_model):
    fig, rows, text = ui.unet_view(tiny_model_name)
    assert [r[0] for r in rows][:3] == ["conv_in", "time_embedding", "down_blocks.0"]
    assert sum(r[-1] for r in rows) == sum(p.numel() for p in tiny_model.unet.parameters())


def test_cfg_tab(tiny_run):
    step, scale, info = ui.cfg_tab_opened(tiny_run)
    assert step.maximum == len(tiny_run.steps) and scale.value == 5.0 and "a big red circle" in info
    gallery, fig, table = ui.cfg_sweep(tiny_run, "1, 5")
    assert [c for _, c in gallery] == ["g = 1", "g = 5"]
    assert np.array_equal(np.asarray(gallery[1][0]), np.asarray(tiny_run.image))  # g = 5 is the run itself
    recorded, changed, text = ui.cfg_what_if(tiny_run, 1, 10.0)
    assert recorded.size == changed.size == (32, 32) and "g = 10" in text
    with pytest.raises(gr.Error, match="At most 10"):
        ui.cfg_sweep(tiny_run, ",".join(["2"] * 11))


def test_prompt_ab_tab(tiny_run):
    a, b, fig, text = ui.ab_run(tiny_run, "a small blue square")
    assert a is tiny_run.image and b.size == a.size and "same noise" in text


def test_export_tab_writes_the_zip_and_forgets_old_ones(tiny_run, tmp_path, monkeypatch):
    monkeypatch.setattr(ui, "EXPORT_DIR", tmp_path / "exports")
    first = Path(ui.export_run(tiny_run))
    with zipfile.ZipFile(first) as zf:
        assert "final.png" in zf.namelist()
    assert first.name == "sdviz-seed1-g5-4steps.zip"
    os.utime(first.parent, (0, 0))  # an export from long ago
    second = Path(ui.export_run(tiny_run))
    assert second.exists() and not first.exists()
