"""Bad input: one exception type, a message that says what to change; odd pictures converted."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
from PIL import Image

from sdviz.errors import SdvizError
from sdviz.pipeline.models import load_model
from sdviz.pipeline.sampler import generate
from sdviz.pipeline.schedulers import make_scheduler
from sdviz.pipeline.settings import RunSettings, check_settings, load_init_image
from sdviz.pipeline.text import tokenize


@pytest.mark.parametrize(
    "changes, words",
    [
        ({"steps": 0}, "Steps"),
        ({"steps": 501}, "Steps"),
        ({"guidance_scale": math.nan}, "Guidance"),
        ({"guidance_scale": math.inf}, "Guidance"),
        ({"guidance_scale": -1.0}, "Guidance"),
        ({"height": 30}, "multiple of 8"),
        ({"width": 4096}, "multiple of 8"),
        ({"seed": -1}, "Seed"),
    ],
)
def test_bad_settings_raise_a_clear_error(changes, words):
    with pytest.raises(SdvizError, match=words):
        check_settings(RunSettings(prompt="a red circle", **changes))


@pytest.mark.parametrize("strength", [0.0, -0.5, 1.5, math.nan])
def test_bad_strength_is_rejected(strength):
    with pytest.raises(SdvizError, match="Strength"):
        check_settings(RunSettings(strength=strength), img2img=True)


def test_strength_too_small_to_run_a_step_says_how_to_fix_it():
    with pytest.raises(SdvizError, match="no step"):
        check_settings(RunSettings(steps=4, strength=0.2), img2img=True)


def test_unknown_scheduler_and_model_are_rejected(tiny_model, tmp_path):
    with pytest.raises(SdvizError, match="Unknown scheduler"):
        make_scheduler(tiny_model, "heun_fancy")
    with pytest.raises(SdvizError, match="not a diffusers pipeline folder"):
        load_model(tmp_path)
    with pytest.raises(SdvizError, match="Unknown model"):
        load_model("./no/such/folder")


def test_unreadable_init_image_is_rejected(tmp_path):
    bad = tmp_path / "notes.png"
    bad.write_text("not a picture")
    with pytest.raises(SdvizError, match="Could not read"):
        load_init_image(bad, 32, 32)


@pytest.mark.parametrize("mode", ["RGBA", "L", "P", "I;16", "LA"])
def test_odd_pictures_become_rgb(mode, tiny_model):
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 48, 3), dtype=np.uint8))
    if mode == "I;16":
        picture = Image.fromarray(np.asarray(rgb.convert("L"), dtype=np.uint16) * 257)
        assert picture.mode.startswith("I;16")
    else:
        picture = rgb.convert(mode)
    out = load_init_image(picture, 32, 32)
    assert out.mode == "RGB" and out.size == (32, 32)
    # and the run works: diffusers would treat a 4-channel picture as latents
    trace = generate(tiny_model, RunSettings(prompt="a", steps=2, height=32, width=32, strength=1.0), picture)
    assert trace.image.size == (32, 32)


def test_sixteen_bit_picture_keeps_its_brightness():
    grey = np.full((16, 16), 40000, dtype=np.uint16)
    out = load_init_image(Image.fromarray(grey), 16, 16)
    assert abs(int(np.asarray(out)[0, 0, 0]) - round(40000 / 65535 * 255)) <= 1


def test_long_prompt_is_truncated_with_a_warning_naming_the_dropped_words(tiny_model, caplog):
    words = "a big red circle on the left and a small blue square at the top near a yellow triangle"
    with caplog.at_level(logging.WARNING):
        tokens = tokenize(tiny_model.tokenizer, words)
    assert len(tokens.ids) == tiny_model.tokenizer.model_max_length
    assert tokens.dropped_words and tokens.dropped_words[-1] == "triangle"
    assert "triangle" in caplog.text


def test_unknown_words_and_non_ascii_text_do_not_crash(tiny_model):
    trace = generate(tiny_model, RunSettings(prompt="un chat rouge é 猫 🐱", steps=2, height=32, width=32))
    assert trace.image.size == (32, 32)


def test_hub_id_that_cannot_be_fetched_gives_a_clear_error():
    with pytest.raises(SdvizError, match="Could not load the Stable Diffusion model 'nobody/no-such-model'"):
        load_model("nobody/no-such-model")


def test_pndm_on_a_model_without_prk_setting_refuses_too_few_steps_plainly(tiny_model_dir, tmp_path):
    """PNDM built from another scheduler's config runs PRK warm-up steps, as diffusers does; below 4 steps they
    cannot be planned, and the message says so (diffusers' own is a numpy broadcasting error)."""
    from diffusers import DDIMScheduler

    model = load_model(tiny_model_dir)
    original = model.pipe.scheduler
    model.pipe.scheduler = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)  # no PRK key
    try:
        with pytest.raises(SdvizError, match="Runge-Kutta warm-up steps .* need at least 4 steps \\(got 2\\)"):
            generate(model, RunSettings(prompt="a", steps=2, scheduler="pndm", height=32, width=32))
        trace = generate(model, RunSettings(prompt="a", steps=4, scheduler="pndm", height=32, width=32))
    finally:
        model.pipe.scheduler = original
    assert trace.image.size == (32, 32) and len(trace.steps) == 13  # 4 steps: 3 x 4 PRK passes, then 1 PLMS
