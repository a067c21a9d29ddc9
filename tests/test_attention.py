"""Text conditioning and cross-attention capture: the weights are real, and capturing changes nothing."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from PIL import Image

from sdviz.errors import SdvizError
from sdviz.lessons.text_attention import (
    attention_figure,
    describe_maps,
    describe_tokens,
    embedding_figure,
    embedding_matrix,
    overlay,
    token_gallery,
    token_rows,
)
from sdviz.pipeline import capture
from sdviz.pipeline.capture import (
    AttentionRecorder,
    attention_probs,
    capture_run,
    install_capture,
    layer_size,
    token_groups,
)
from sdviz.pipeline.sampler import generate
from sdviz.pipeline.settings import RunSettings
from sdviz.pipeline.text import tokenize

SETTINGS = RunSettings(prompt="a big red circle on the left", steps=3, guidance_scale=6.0, seed=4)


def cross_attention_layers(model):
    return [m for n, m in model.unet.named_modules() if n.endswith("attn2")]


@pytest.fixture
def recorded_layers(monkeypatch) -> list:
    """Every (step, layer name, weights [heads, pixels, tokens]) a capture run hands its recorder."""
    seen = []
    add = AttentionRecorder.add

    def spy(self, name, probs, heads):
        seen.append((len(self.steps), name, probs.clone()))
        add(self, name, probs, heads)

    monkeypatch.setattr(AttentionRecorder, "add", spy)
    return seen


def test_capture_does_not_change_the_picture(tiny_model):
    plain = generate(tiny_model, SETTINGS)
    captured, maps = capture_run(tiny_model, SETTINGS)
    assert torch.equal(plain.final_latents, captured.final_latents)
    assert np.array_equal(np.asarray(plain.image), np.asarray(captured.image))
    for a, b in zip(plain.steps, captured.steps, strict=True):
        assert torch.equal(a.noise_guided, b.noise_guided)
    assert maps.per_step.shape[0] == len(captured.steps)
    # and a run after the capture is still the same (the installed wrapper passes through)
    assert torch.equal(generate(tiny_model, SETTINGS).final_latents, plain.final_latents)


def test_weights_sum_to_one_over_tokens_before_aggregation(tiny_model, recorded_layers):
    trace, maps = capture_run(tiny_model, SETTINGS)
    layers = cross_attention_layers(tiny_model)
    n_tokens = len(tokenize(tiny_model.tokenizer, SETTINGS.prompt).ids)
    assert len(recorded_layers) == len(trace.steps) * len(layers)  # every layer, every step, nothing else
    for _, name, probs in recorded_layers:
        heads = tiny_model.unet.get_submodule(name).heads
        assert probs.shape[0] == heads and probs.shape[2] == n_tokens
        assert torch.allclose(probs.sum(dim=-1), torch.ones(probs.shape[:2]), atol=1e-5)
        assert probs.min() >= 0
    # Averaging over heads and layers and bilinear upsampling keep the sum at 1 at every pixel.
    assert maps.per_step.shape == (len(trace.steps), len(maps.labels), 16, 16)
    assert np.allclose(maps.per_step.sum(axis=1), 1, atol=1e-5)
    assert np.allclose(maps.overall, maps.per_step.mean(axis=0))
    assert maps.shares().sum() == pytest.approx(1, abs=1e-5)


def test_attention_probs_reproduce_the_layer_output(tiny_model):
    """Weights x values, projected out, give exactly what the layer itself computes."""
    attn = cross_attention_layers(tiny_model)[0]
    torch.manual_seed(0)
    hidden = torch.randn(1, 20, attn.to_q.in_features)
    context = torch.randn(1, 7, attn.to_k.in_features)
    probs = attention_probs(attn, hidden, context)  # [heads, 20, 7]
    value = attn.to_v(context).view(1, 7, attn.heads, -1).transpose(1, 2)[0]  # [heads, 7, d]
    mixed = (probs @ value).transpose(0, 1).reshape(1, 20, -1)
    expected = attn(hidden, encoder_hidden_states=context)
    assert torch.allclose(attn.to_out[0](mixed), expected, atol=1e-5)


def test_only_the_run_that_asked_is_recorded(tiny_model, recorded_layers):
    """A capture and a plain run at the same time on the same model: neither disturbs the other."""
    install_capture(tiny_model)
    reference = generate(tiny_model, RunSettings(prompt="a blue square", steps=3, seed=1)).final_latents
    results, errors = {}, []

    def plain():
        try:
            results["plain"] = [generate(tiny_model, RunSettings(prompt="a blue square", steps=3, seed=1)).final_latents
                                for _ in range(3)]
        except Exception as err:  # pragma: no cover - reported below
            errors.append(err)

    def captured():
        try:
            results["capture"] = [capture_run(tiny_model, SETTINGS) for _ in range(3)]
        except Exception as err:  # pragma: no cover
            errors.append(err)

    threads = [threading.Thread(target=plain), threading.Thread(target=captured)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert all(torch.equal(r, reference) for r in results["plain"])
    n_layers = len(cross_attention_layers(tiny_model))
    assert len(recorded_layers) == sum(len(trace.steps) for trace, _ in results["capture"]) * n_layers
    assert capture._active_recorder.get() is None


def test_tokens_table_shows_start_end_and_padding(tiny_model):
    tokens = tokenize(tiny_model.tokenizer, "a red circle")
    rows = token_rows(tokens)
    assert len(rows) == tiny_model.tokenizer.model_max_length == 16
    assert [r[3] for r in rows[:5]] == ["start", "prompt", "prompt", "prompt", "end"]
    assert all(r[3] == "padding" for r in rows[5:])
    assert [r[1] for r in rows[1:4]] == ["a", "red", "circle"]
    assert [r[2] for r in rows] == tokens.ids
    assert "3 tokens" in describe_tokens(tokens) and "11 padding tokens" in describe_tokens(tokens)


def test_truncation_is_reported(tiny_model):
    long = " ".join(["a big red circle on the left"] * 3)
    tokens = tokenize(tiny_model.tokenizer, long)
    assert tokens.dropped_words
    assert "Cut off" in describe_tokens(tokens) and "left" in describe_tokens(tokens)
    labels, groups = token_groups(tokens)
    assert labels[-1] == "<end>" and len(labels) == 16  # no padding left


def test_token_groups_cover_every_position_once(tiny_model):
    tokens = tokenize(tiny_model.tokenizer, "a red circle")
    labels, groups = token_groups(tokens)
    assert labels == ["<start>", "a", "red", "circle", "<end>", "padding (11)"]
    assert sorted(p for g in groups for p in g) == list(range(16))


def test_embedding_heat_map_has_one_row_per_token(tiny_model):
    tokens = tokenize(tiny_model.tokenizer, "a red circle")
    fig = embedding_figure(embedding_matrix(tiny_model, tokens), tokens)
    shown = fig.axes[0].get_images()[0].get_array()
    assert shown.shape == (16, tiny_model.text_encoder.config.hidden_size)
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert labels[1:4] == ["a", "red", "circle"] and labels[0] == "<|startoftext|> (start)"


def test_layer_size_halves_the_latent_grid():
    assert layer_size(64, 8, 8) == (8, 8)
    assert layer_size(4, 8, 8) == (2, 2)
    assert layer_size(15, 5, 9) == (3, 5)  # halving rounds up, like a stride-2 convolution with padding
    with pytest.raises(ValueError):
        layer_size(7, 8, 8)


def test_recorder_needs_attention_to_record():
    recorder = AttentionRecorder([[0], [1]], 2, 4, 4)
    with pytest.raises(SdvizError, match="No cross-attention"):
        recorder.end_step()


def test_gallery_overlays_each_token(tiny_model):
    trace, maps = capture_run(tiny_model, SETTINGS)
    gallery = token_gallery(maps, trace.image)
    assert [caption.split(":")[0] for _, caption in gallery] == maps.labels
    assert all(img.size == trace.image.size for img, _ in gallery)
    words = token_gallery(maps, trace.image, step=1, include_special=False)
    assert [caption.split(":")[0] for _, caption in words] == ["a", "big", "red", "circle", "on", "the", "left"]
    with pytest.raises(SdvizError, match="Step 10 does not exist"):
        maps.maps(9)


def test_overlay_is_bright_where_attention_is():
    picture = Image.new("RGB", (8, 8), (0, 0, 0))
    heat = np.zeros((2, 2))
    heat[0, 0] = 1.0
    out = np.asarray(overlay(picture, heat, alpha=1.0)).astype(int)
    assert out[0, 0].sum() > out[7, 7].sum()


def synthetic_maps(shares: list[float]) -> capture.AttentionMaps:
    """Maps whose shares are given: <start>, a, red, circle, <end>, padding (11); one step, 4x4 pixels."""
    labels = ["<start>", "a", "red", "circle", "<end>", "padding (11)"]
    rng = np.random.default_rng(0)
    per_step = np.stack([np.full((4, 4), s) + rng.normal(0, 0.001, (4, 4)) for s in shares])[None]
    per_step[0, 3, 1, 1] += 0.05  # "circle" attends one spot
    return capture.AttentionMaps(labels=labels, groups=[[i] for i in range(6)], per_step=per_step,
                                 timesteps=[999.0], layers=["l1", "l2"], heads={"l1": 8, "l2": 8})


def test_every_map_of_a_figure_shares_one_scale_with_a_colour_bar():
    maps = synthetic_maps([0.12, 0.1, 0.1, 0.16, 0.2, 0.32])
    picture = Image.new("RGB", (8, 8), (240, 240, 240))
    for include_special, top in ((True, maps.overall.max()), (False, maps.overall[1:4].max())):
        figure = attention_figure(maps, picture, include_special=include_special)
        drawn = [ax.get_images()[0] for ax in figure.axes if ax.get_title().split(":")[0] in maps.labels]
        assert len(drawn) == (6 if include_special else 3)  # every token shown
        assert all(im.get_clim() == pytest.approx((0, top)) for im in drawn)  # one scale for all
        assert any(ax.get_ylabel().startswith("attention weight") for ax in figure.axes)  # the colour bar
        assert all(im.get_cmap().name == "gray" for im in drawn)  # no toy colour can pass for attention


def test_the_text_is_made_from_the_shares_shown():
    maps = synthetic_maps([0.12, 0.1, 0.1, 0.16, 0.2, 0.32])
    text = describe_maps(maps)
    shares = dict(zip(maps.labels, maps.overall.mean(axis=(1, 2)), strict=True))
    assert f"**padding (11)** {shares['padding (11)']:.0%}" in text and "**&lt;start&gt;** 12%" in text
    assert "The prompt's words get 36% in all" in text and "**circle** draws the most" in text
    assert "soaks up" not in text
    assert text.index("padding (11)") < text.index("&lt;start&gt;")  # ranked by share, padding first here
