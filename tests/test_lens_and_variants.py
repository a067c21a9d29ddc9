"""Diffusion Lens and the guidance variants as lessons and as the page's handlers, against their oracles: the plain
run (the lens's last layer, the variants' plain CFG), diffusers' pipeline (guidance rescale) and the loop's own count
of U-Net calls (the interval)."""

from __future__ import annotations

import dataclasses

import gradio as gr
import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline

from sdviz.app import teaching as ui
from sdviz.errors import SdvizError
from sdviz.lessons import diffusion_lens as lens
from sdviz.lessons import experiments
from sdviz.lessons import guidance_variants as gv
from sdviz.pipeline.models import load_model
from sdviz.pipeline.sampler import generate
from sdviz.pipeline.schedulers import make_scheduler
from sdviz.pipeline.settings import RunSettings

BASE = RunSettings(prompt="a big red circle on the left", negative_prompt="blue", steps=6, guidance_scale=9.0,
                   seed=5, height=32, width=32, scheduler="euler")


def pixels(image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=int)


# --- Diffusion Lens ---------------------------------------------------------------------------------------------


def test_the_lens_shows_one_picture_per_layer_and_its_last_is_the_usual_run(tiny_model):
    result = lens.diffusion_lens(tiny_model, BASE)
    layers = tiny_model.text_encoder.config.num_hidden_layers
    assert result.layers == layers == 2
    assert [p.layer for p in result.pictures] == [1, 2]
    usual = generate(tiny_model, BASE)  # text_layer None: the text encoder's last hidden state
    assert np.array_equal(pixels(result.final.image), pixels(usual.image))
    assert result.final.distance == 0.0
    first = generate(tiny_model, dataclasses.replace(BASE, text_layer=1))
    assert np.array_equal(pixels(result.pictures[0].image), pixels(first.image))
    assert not result.judged  # the judge reads only the embedded model's pictures
    assert lens.layer_label(result.final, layers) == "layer 2 of 2 (the usual run)"
    figure = lens.lens_figure(result)
    assert [ax.get_title() for ax in figure.axes] == ["layer 1 of 2", "layer 2 of 2"]


def test_a_deep_text_encoder_shows_twelve_layers_evenly_spread_with_the_first_and_the_last():
    assert lens.lens_layers(3) == [1, 2, 3]
    assert lens.lens_layers(12) == list(range(1, 13))
    shown = lens.lens_layers(23)  # SD 2.x's text encoder
    assert len(shown) == 12 and shown[0] == 1 and shown[-1] == 23 and shown == sorted(set(shown))
    assert max(np.diff(shown)) - min(np.diff(shown)) <= 1
    with pytest.raises(SdvizError):
        lens.lens_layers(0)


def test_the_lens_description_follows_the_judges_verdicts():
    def picture(layer, accuracy, verdict, distance):
        return lens.LensPicture(layer=layer, image=None, distance=distance, accuracy=accuracy, verdict=verdict)

    result = lens.LensResult(settings=BASE, layers=3, pictures=[
        picture(1, 0.75, "colour: green", 0.12), picture(2, 1.0, "all 4 right", 0.02), picture(3, 1.0, "all 4 right", 0)])
    text = lens.describe_lens(result)
    assert "all 3 layers" in text and "at layer 1 (RMS pixel difference 0.120" in text
    assert "from layer 2 on" in text and "layer 1: colour: green" in text
    flipping = dataclasses.replace(result, pictures=[
        picture(1, 1.0, "all 4 right", 0.1), picture(2, 0.5, "shape: circle", 0.2), picture(3, 1.0, "all 4 right", 0)])
    assert "from layer 3 on" in lens.describe_lens(flipping)


def test_on_the_embedded_model_the_judge_reads_each_layers_picture():
    """The example the page opens with: layer 1 draws the circle green, layers 2 and 3 get everything right (the lens
    sentence in sdviz.app.texts says early layers most often get the colour wrong; benchmarks/lens_and_variants.py)."""
    model = load_model(device="cpu")
    settings = RunSettings(prompt="a big red circle on the left", steps=20, guidance_scale=2.0, seed=1)
    result = lens.diffusion_lens(model, settings)
    assert result.judged and [p.layer for p in result.pictures] == [1, 2, 3]
    assert [p.verdict for p in result.pictures] == ["colour: green", "all 4 right", "all 4 right"]
    assert "from layer 2 on" in lens.describe_lens(result)


# --- Guidance variants -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def variants(tiny_model):
    return gv.guidance_variants(tiny_model, BASE, rescale=0.7, interval=(0.0, 0.5))


def test_plain_cfg_is_the_usual_run(tiny_model, variants):
    usual = generate(tiny_model, BASE)
    assert np.array_equal(pixels(variants.plain.image), pixels(usual.image))
    assert variants.plain.unet_passes == usual.unet_passes == 12


def test_the_rescale_picture_is_diffusers_pipelines_with_guidance_rescale(tiny_model, variants):
    pipe = StableDiffusionPipeline(**{**tiny_model.pipe.components, "scheduler": make_scheduler(tiny_model, "euler")})
    expected = pipe(BASE.prompt, negative_prompt=BASE.negative_prompt, num_inference_steps=BASE.steps,
                    guidance_scale=BASE.guidance_scale, guidance_rescale=0.7, height=32, width=32,
                    generator=torch.Generator("cpu").manual_seed(BASE.seed)).images[0]
    assert np.abs(pixels(variants.rescale.image) - pixels(expected)).max() <= 1
    assert variants.rescale.distance > 0  # the rescale changed the picture


def test_the_interval_saves_the_unet_calls_the_loop_counted(variants):
    interval = variants.interval
    assert interval.guided_steps == [0, 1, 2]  # steps 1-3 of 6: index / 6 < 0.5
    assert interval.unet_passes == 6 + 3 == 9 and variants.saved(interval) == 3
    assert gv.calls_caption(variants, interval) == "6 + 3 = 9 calls, 3 saved"
    assert gv.calls_caption(variants, variants.plain) == "6 + 6 = 12 calls"
    assert gv.setting_label(interval) == "CFG on steps 1-3 of 6 only"
    # Outside the interval the scheduler used the prompt's own estimate: the same spread, exactly.
    assert gv.spread_ratio(interval)[3:] == [1.0, 1.0, 1.0]


def test_an_interval_that_holds_no_step_runs_the_prompt_alone_and_says_so(tiny_model):
    result = gv.guidance_variants(tiny_model, BASE, interval=(0.9, 1.0))  # 6 steps: the last one starts at 5/6
    assert result.interval.guided_steps == [] and result.interval.unet_passes == 6 and result.saved(result.interval) == 6
    assert gv.setting_label(result.interval) == "CFG on no step of 6 (the interval holds none)"
    assert gv.spread_ratio(result.interval) == [1.0] * 6
    gv.spread_figure(result)  # nothing to shade: still a figure


def test_a_long_prompt_is_cut_in_the_figures_titles():
    assert experiments.quoted("") == "(empty prompt)" and experiments.quoted("a red circle") == '"a red circle"'
    long = experiments.quoted("a big red circle " * 10)
    assert len(long) == 72 and long.endswith('…"')


def test_full_rescale_gives_the_guided_estimate_the_text_estimates_spread(tiny_model, variants):
    plain = gv.spread_ratio(variants.plain)
    assert max(abs(r - 1) for r in plain) > 0.05  # guidance changed the spread ...
    full = gv.guidance_variants(tiny_model, BASE, rescale=1.0, interval=(0.3, 0.6)).rescale
    assert np.allclose(gv.spread_ratio(full), 1.0, atol=2e-3)  # ... rescale 1 brings it back (float16 copies)


def test_the_figures_and_the_description_say_what_ran(variants):
    titles = [ax.get_title() for ax in gv.variants_figure(variants).axes]
    assert titles == ["plain CFG, g = 9\n6 + 6 = 12 calls", "rescale r = 0.7\n6 + 6 = 12 calls",
                      "CFG on steps 1-3 of 6 only\n6 + 3 = 9 calls, 3 saved"]
    lines = gv.spread_figure(variants).axes[0].get_lines()
    assert len(lines) == 4  # the line at 1 and one per run
    text = gv.describe_variants(variants)
    assert "12 U-Net calls" in text and "9 calls, 3 saved (25%)" in text and "Rescale r = 0.7" in text


@pytest.mark.parametrize("change, interval, words", [
    (dict(guidance_scale=1.0), (0.0, 0.5), "pick a guidance scale above 1"),
    ({}, (0.6, 0.4), "interval"),
])
def test_bad_variant_settings_are_refused_in_words(tiny_model, change, interval, words):
    with pytest.raises(SdvizError, match=words):
        gv.guidance_variants(tiny_model, dataclasses.replace(BASE, **change), interval=interval)
    with pytest.raises(SdvizError, match="rescale"):
        gv.guidance_variants(tiny_model, BASE, rescale=1.5)


# --- The page's handlers -------------------------------------------------------------------------------------------

SKIP = gr.skip()


def kept(result, says: str) -> bool:
    """Every output left as it was (gr.skip()), and the message, the last output, says ``says``."""
    *outputs, message = result
    return all(o == SKIP for o in outputs) and message.startswith("⚠️") and says in message


def test_the_lens_handler_runs_the_typed_prompt_or_the_last_runs(tiny_model_name, tiny_run):
    figure, text, message = ui.lens_run(tiny_model_name, "a small blue square", tiny_run)
    assert message == "" and "all 2 layers" in text and "same seed (1)" in text  # the last run's seed
    assert "a small blue square" in figure.texts[0].get_text()
    figure, _, _ = ui.lens_run(tiny_model_name, "", tiny_run)
    assert tiny_run.settings.prompt in figure.texts[0].get_text()
    assert kept(ui.lens_run("no/such-model-here", "a red circle", None), "no/such-model-here")


def test_the_variants_handler_compares_at_the_chosen_g(tiny_run):
    pictures, spread, text, message = ui.cfg_variants(tiny_run, 6.0, 0.5, 0.0, 0.5)
    assert message == "" and "at g = 6" in text and "calls" in text
    assert len(pictures.axes) == 3 and spread.axes


@pytest.mark.parametrize("args, says", [
    ((6.0, 0.5, 0.5, 0.5), "the start must be below the end"),
    ((6.0, 0.5, 0.8, 0.2), "the start must be below the end"),
    ((6.0, 1.5, 0.0, 0.5), "rescale"),
    ((1.0, 0.5, 0.0, 0.5), "pick a guidance scale above 1"),
    ((None, 0.5, 0.0, 0.5), "The guidance scale must be a number"),
    ((6.0, "lots", 0.0, 0.5), "Guidance rescale must be a number"),
])
def test_bad_variant_inputs_keep_the_results_and_say_why(tiny_run, args, says):
    assert kept(ui.cfg_variants(tiny_run, *args), says)


def test_without_a_run_the_variants_ask_for_one():
    assert kept(ui.cfg_variants(None, 6.0, 0.5, 0.0, 0.5), "Generate an image first")
    assert ui.cfg_tab_opened(None)[3] == SKIP


def test_opening_the_cfg_tab_sets_the_variants_g_to_the_runs(tiny_run):
    assert ui.cfg_tab_opened(tiny_run)[3].value == tiny_run.settings.guidance_scale
