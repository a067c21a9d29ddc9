"""The peek panel's pictures, numbers, plot and animation, made from a real (tiny) run."""

from __future__ import annotations

import io
import threading

import numpy as np
import pytest
import torch
from PIL import Image

from sdviz.app import services
from sdviz.app.sessions import DecodedPictures, PanelRun
from sdviz.lessons import peek
from sdviz.pipeline import vae
from sdviz.pipeline.sampler import generate
from sdviz.pipeline.settings import RunSettings

WHITE = (255, 255, 255)


@pytest.fixture(scope="module")
def trace(tiny_model):
    return generate(tiny_model, RunSettings(prompt="a red circle", steps=4, guidance_scale=6.0, seed=1,
                                            scheduler="euler"))


@pytest.fixture(scope="module")
def unguided_trace(tiny_model):
    return generate(tiny_model, RunSettings(prompt="a red circle", steps=3, guidance_scale=1.0, seed=1))


def test_zero_is_white_and_the_scale_maps_to_full_red_and_blue():
    rgb = peek.signed_to_rgb(np.array([[0.0, 2.0, -2.0, 9.0, -9.0, 1.0]]), scale=2.0)[0]
    assert tuple(rgb[0]) == WHITE
    red, blue, half_red = rgb[1], rgb[2], rgb[5]
    assert red[0] > 150 > red[2] and blue[2] > 150 > blue[0]
    assert red[1] < half_red[1] < 255  # halfway to the scale: halfway from white to red
    assert (rgb[3] == red).all() and (rgb[4] == blue).all()  # beyond the scale: clipped


def test_the_scale_is_a_high_percentile_so_one_outlier_does_not_wash_out_the_rest():
    values = torch.ones(4, 16, 16)
    values[0, 0, 0] = 1000.0
    assert peek.signed_scale(values) == pytest.approx(1.0)
    assert peek.signed_scale(torch.zeros(4, 2, 2)) == 1.0  # never 0 (no division by zero)


def test_channel_grid_shows_four_channels_as_crisp_enlarged_tiles(trace):
    latents = trace.steps[0].latents  # [4, 16, 16]
    grid = peek.channel_grid(latents, target=64)
    factor = peek.upscale_factor(32, 32, 64)  # the 2 x 2 grid is 32 latent pixels per side
    assert factor == 2
    assert grid.size == (2 * 16 * factor + peek.GUTTER, 2 * 16 * factor + peek.GUTTER)
    pixels = np.asarray(grid)
    top_left = pixels[: 16 * factor, : 16 * factor]
    blocks = top_left.reshape(16, factor, 16, factor, 3)
    assert (blocks == blocks[:, :1, :, :1]).all()  # nearest neighbour: every latent pixel a uniform block
    scale = peek.signed_scale(latents)
    expected = peek.signed_to_rgb(latents[0].float().numpy(), scale)
    assert np.array_equal(blocks[:, 0, :, 0], expected)  # channel 0, on the shared scale


def test_rgb_preview_is_the_approximate_decoder_enlarged(tiny_model, trace):
    latents = trace.steps[-1].pred_x0
    rgb_map = vae.preview_map(tiny_model)
    preview = peek.rgb_preview(rgb_map, latents, target=64)
    assert preview.size == (64, 64)
    small = preview.resize((16, 16), Image.Resampling.NEAREST)
    assert np.array_equal(np.asarray(small), vae.approx_rgb(rgb_map, latents))


def test_noise_pictures_share_a_scale_except_the_guidance_direction(trace):
    record = trace.steps[1]
    scales = peek.noise_scales(record)
    assert scales["uncond"] == scales["text"] == scales["guided"]
    assert scales["direction"] == pytest.approx(peek.signed_scale(record.guidance_direction))
    pictures = peek.noise_pictures(record, target=64)
    assert set(pictures) == set(peek.NOISE_KINDS)
    assert all(p is not None and p.size == pictures["guided"].size for p in pictures.values())


def test_without_cfg_there_is_no_unconditional_estimate_to_show(unguided_trace):
    record = unguided_trace.steps[0]
    pictures = peek.noise_pictures(record)
    assert pictures["uncond"] is None and pictures["direction"] is None
    assert pictures["text"] is not None and pictures["guided"] is not None
    numbers = peek.step_numbers(record, total=3)
    assert np.isnan(numbers.noise_rms["uncond"]) and "—" in peek.numbers_markdown(numbers)


def test_step_numbers(trace):
    record = trace.steps[2]
    n = peek.step_numbers(record, total=len(trace.steps))
    assert (n.index, n.total, n.timestep, n.sigma) == (2, 4, record.timestep, record.sigma)
    assert n.noise_rms["guided"] == pytest.approx(float(record.noise_guided.float().pow(2).mean().sqrt()))
    assert peek.rms(torch.randn(4, 64, 64, generator=torch.Generator().manual_seed(0))) == pytest.approx(1, abs=0.02)
    table = peek.numbers_markdown(n)
    assert "3 of 4" in table and f"{record.timestep:.0f}" in table


def _marks(fig):
    return [line for ax in fig.axes for line in ax.get_lines() if line.get_gid() == peek.CURRENT_STEP_GID]


def test_the_plot_marks_the_current_step_and_spans_the_whole_run(trace):
    fig = peek.schedule_figure(trace.steps[:2], current=1, total=4)  # mid-run: two steps so far
    marks = _marks(fig)
    assert len(marks) == 2 and all(list(m.get_xdata()) == [2, 2] for m in marks)  # steps are numbered from 1
    top, bottom = fig.axes
    assert list(top.get_lines()[0].get_xdata()) == [1, 2]
    assert list(top.get_lines()[0].get_ydata()) == [s.sigma for s in trace.steps[:2]]
    assert bottom.get_xlim() == (0.5, 4.5)
    fig.savefig(io.BytesIO(), format="png")  # it renders without pyplot


def test_plots_can_be_built_from_many_threads_at_once(trace):
    errors = []

    def draw(i: int) -> None:
        try:
            fig = peek.schedule_figure(trace.steps, current=i % 4, total=4)
            assert [m.get_xdata()[0] for m in _marks(fig)] == [i % 4 + 1] * 2
            fig.savefig(io.BytesIO(), format="png")
        except Exception as err:  # collected, then asserted in the main thread
            errors.append(err)

    threads = [threading.Thread(target=draw, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_animation_has_one_frame_per_step_plus_the_final_picture(tiny_model, trace):
    gif = Image.open(io.BytesIO(peek.run_animation(vae.preview_map(tiny_model), trace, target=32)))
    assert gif.format == "GIF" and gif.n_frames == len(trace.steps) + 1
    gif.seek(gif.n_frames - 1)
    last = np.asarray(gif.convert("RGB"))
    final = np.asarray(trace.image.resize((32, 32), Image.Resampling.NEAREST)).astype(int)
    right_half = last[peek._CAPTION_H : peek._CAPTION_H + 32, -32 - peek.GUTTER : -peek.GUTTER].astype(int)
    assert np.abs(right_half - final).mean() < 12  # the real final picture (GIF palette: close, not exact)


def test_decodes_are_computed_once_and_match_the_vae(tiny_model, trace):
    run = PanelRun(model=tiny_model.name, expected_steps=4)
    run.finish(trace)
    first = services.step_decodes(tiny_model, run, 1)
    again = services.step_decodes(tiny_model, run, 1)
    assert all(a is b for a, b in zip(first, again, strict=True)) and len(run.decodes) == 2
    expected = (vae.decode_to_pil(tiny_model, trace.steps[1].x_t), vae.decode_to_pil(tiny_model, trace.steps[1].pred_x0))
    for picture, wanted in zip(first, expected, strict=True):
        assert np.array_equal(np.asarray(picture), np.asarray(wanted))


def test_the_decode_store_is_bounded_and_drops_the_least_recently_used():
    one = 32 * 32 * 3  # bytes of one decoded 32x32 RGB picture
    store = DecodedPictures(max_bytes=2 * one)
    pictures = {i: Image.new("RGB", (32, 32), (i, 0, 0)) for i in range(3)}
    store.put((0, "x0"), pictures[0])
    store.put((1, "x0"), pictures[1])
    assert store.get((0, "x0")) is pictures[0]  # touch step 0: step 1 is now the oldest
    store.put((2, "x0"), pictures[2])
    assert len(store) == 2 and store.nbytes <= 2 * one
    assert store.get((1, "x0")) is None and store.get((0, "x0")) is pictures[0]


def test_a_live_frame_is_small(tiny_model, trace):
    frame = peek.peek_frame(vae.preview_map(tiny_model), trace.steps[0], total=4)
    pictures = [frame.latents, frame.latents_rgb, frame.pred_x0_rgb, *frame.noise.values()]
    sizes = []
    for picture in pictures:
        out = io.BytesIO()
        picture.save(out, format="PNG")
        sizes.append(len(out.getvalue()))
    assert max(max(p.size) for p in pictures) <= 2 * peek.TILE
    assert sum(sizes) < 150_000
