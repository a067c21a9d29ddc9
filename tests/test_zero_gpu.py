"""On ZeroGPU every use of the model runs in spaces.GPU: a forked worker that gets pickled copies of its arguments
and gives back a pickled copy of its result. Simulated here (no real ZeroGPU Space): a fake ``spaces`` package
whose GPU wrapper round-trips everything through pickle, refuses what must not cross (a loaded model, a figure,
a page component), passes on only gr.Error and records the GPU time each call asks for. The app's modules are
imported again under it, so their ``hosting.gpu`` wrappers use it, then get their own objects back.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import gc
import importlib
import importlib.machinery
import inspect
import io
import pickle
import sys
import types
import zipfile
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
from matplotlib.figure import Figure
from PIL import Image

from sdviz.app import components, hosting, playground, services, teaching
from sdviz.app.sessions import PanelRun
from sdviz.pipeline import vae
from sdviz.pipeline.models import Model, load_model
from sdviz.pipeline.sampler import generate
from sdviz.pipeline.settings import RunSettings

NOT_PLAIN = (Model, Figure, gr.blocks.Block, gr.Progress)  # what must never cross to or from a GPU worker


class _PlainPickler(pickle.Pickler):
    def reducer_override(self, obj):
        if isinstance(obj, NOT_PLAIN):
            raise pickle.PicklingError(f"a {type(obj).__name__} cannot cross to or from a ZeroGPU worker")
        return NotImplemented


def cross(value):
    """What the other side of the fork gets: a pickled copy."""
    buffer = io.BytesIO()
    _PlainPickler(buffer).dump(value)
    return pickle.loads(buffer.getvalue())


@contextlib.contextmanager
def only_gr_errors():
    """Like the worker: a gr.Error comes back as it is, anything else without its message."""
    try:
        yield
    except gr.Error:
        raise
    except Exception as err:
        raise gr.Error(f"ZeroGPU worker error: {type(err).__name__}") from None


class ForkBoundary:
    """A stand-in for ``spaces.GPU``; ``calls`` lists (function name, seconds asked for)."""

    def __init__(self):
        self.calls: list[tuple[str, int]] = []

    def GPU(self, fn, duration=None):  # noqa: N802 (the name spaces gives it)
        def reserve(args, kwargs):
            seconds = duration(*args, **kwargs) if callable(duration) else duration
            self.calls.append((fn.__name__, seconds))
            return cross((args, kwargs))

        if inspect.isgeneratorfunction(fn):  # like spaces: each item crosses as it is made

            @functools.wraps(fn)
            def stream(*args, **kwargs):
                args, kwargs = reserve(args, kwargs)
                with only_gr_errors():
                    for item in fn(*args, **kwargs):
                        yield cross(item)

            return stream

        @functools.wraps(fn)
        def call(*args, **kwargs):
            args, kwargs = reserve(args, kwargs)
            with only_gr_errors():
                return cross(fn(*args, **kwargs))

        return call

    def ran(self) -> list[str]:
        """The functions run on the GPU since the last look (and checks the time each asked for)."""
        assert all(isinstance(s, int) and 0 < s <= hosting.MAX_SECONDS for _, s in self.calls), self.calls
        names = [name for name, _ in self.calls]
        self.calls.clear()
        return names


@pytest.fixture(scope="module")
def zero_gpu():
    """The fake ``spaces``, SPACES_ZERO_GPU=1, and sdviz.app.services (every GPU function) imported again under them.
    Afterwards it gets its own namespace back (the very objects other tests hold)."""
    boundary = ForkBoundary()
    fake = types.ModuleType("spaces")
    fake.__spec__ = importlib.machinery.ModuleSpec("spaces", None)
    fake.GPU = boundary.GPU
    modules = (services,)  # the playground and the teaching tabs call its functions through the module
    saved = {module: dict(vars(module)) for module in modules}
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(sys.modules, "spaces", fake)
        mp.setenv("SPACES_ZERO_GPU", "1")
        try:
            for module in modules:
                importlib.reload(module)
            assert hosting.zero_gpu() and services.run_loop_on_gpu is not services.run_loop  # the wrappers are the fake's
            yield boundary
        finally:
            for module, namespace in saved.items():
                vars(module).clear()
                vars(module).update(namespace)
            gc.collect()  # the classes made by the second import go (Gradio looks components up by class name)


@pytest.fixture
def gpu(zero_gpu):
    zero_gpu.calls.clear()
    return zero_gpu


def test_the_simulated_boundary_refuses_a_loaded_model_and_a_figure(tiny_model):
    def work(value):
        return value

    crossing = ForkBoundary().GPU(work, duration=5)
    for not_plain in (tiny_model, Figure()):
        with pytest.raises(pickle.PicklingError, match="cannot cross"):
            crossing(not_plain)
    assert crossing(Image.new("RGB", (2, 2))).size == (2, 2)


def test_the_picture_tabs_run_the_vae_in_a_gpu_worker(gpu, tiny_model_name, tiny_run):
    picture, _ = teaching.toy_picture(tiny_model_name, seed=3)
    noisy, latents_fig, schedule_fig, text, _ = teaching.forward_view(tiny_model_name, picture, 250, 0)
    assert noisy.size == (32, 32) and "t = 250" in text
    assert len([ax for ax in latents_fig.axes if ax.get_images()]) == 4 and schedule_fig.axes
    decoded, channels_fig, text, _ = teaching.latent_view(tiny_model_name, teaching.last_picture(tiny_run)[0])
    assert decoded.size == (32, 32) and "3x fewer numbers" in text and channels_fig.axes
    assert gpu.ran() == ["noise_picture", "explore_latents"]


def test_the_text_tab_runs_the_text_encoder_and_the_capture_run_in_a_gpu_worker(gpu, tiny_model_name, tiny_run,
                                                                                 tiny_model):
    rows, text, fig, _ = teaching.tokens_view(tiny_model_name, "", tiny_run)
    assert [r[1] for r in rows[1:5]] == ["a", "big", "red", "circle"]
    assert fig.axes[0].get_images()[0].get_array().shape == (16, tiny_model.text_encoder.config.hidden_size)
    image, figure, slider, text, captured, _ = teaching.attention_run(tiny_model_name, "a red circle", tiny_run)
    assert image.size == (32, 32) and slider.maximum == len(tiny_run.steps)
    assert [ax.get_title().split(":")[0] for ax in figure.axes[1:5]] == ["<start>", "a", "red", "circle"]
    step_figure, _, _ = teaching.attention_step(2, False, captured)  # stored maps: no model, no GPU
    assert [ax.get_title().split(":")[0] for ax in step_figure.axes[1:4]] == ["a", "red", "circle"]
    assert gpu.ran() == ["embed_tokens", "capture_attention"]


def test_the_cfg_and_ab_tabs_run_in_a_gpu_worker_with_the_same_pictures(gpu, tiny_run):
    pictures, fig, table, _ = teaching.cfg_sweep(tiny_run, "1, 5")
    assert [ax.get_title() for ax in pictures.axes] == ["g = 1 (no CFG)", "g = 5"]
    shown = pictures.axes[1].get_images()[0].get_array()
    assert np.array_equal(np.asarray(shown), np.asarray(tiny_run.image))  # g = 5 is the run itself
    recorded, changed, text, _ = teaching.cfg_what_if(tiny_run, 1, 10.0)
    assert recorded.size == changed.size == (32, 32) and "g = 10" in text
    ab, _, a_xt, a_x0, b_xt, b_x0, fig, text, _ = teaching.ab_run(tiny_run, "a small blue square")
    assert a_x0.size == b_x0.size == tiny_run.image.size and "same noise" in text
    settings = tiny_run.settings
    assert gpu.calls == [("guidance_sweep", hosting.sweep_seconds("m", settings, [1, 5])),
                         ("what_if", hosting.QUICK_SECONDS), ("prompt_ab", hosting.loop_seconds("m", settings)),
                         ("decode_pair", hosting.QUICK_SECONDS), ("decode_pair", hosting.QUICK_SECONDS)]
    gpu.ran()


def test_the_lens_and_the_guidance_variants_run_in_a_gpu_worker(gpu, tiny_model_name, tiny_run):
    figure, text, message = teaching.lens_run(tiny_model_name, "a red circle", tiny_run)
    assert message == "" and [ax.get_title() for ax in figure.axes] == ["layer 1 of 2", "layer 2 of 2"]
    pictures, spread, text, message = teaching.cfg_variants(tiny_run, 6.0, 0.7, 0.0, 0.5)
    assert message == "" and "saved" in text and len(pictures.axes) == 3
    lens_settings = dataclasses.replace(tiny_run.settings, prompt="a red circle")
    assert gpu.calls == [("diffusion_lens", hosting.lens_seconds("m", lens_settings, None, [1, 2])),
                         ("compare_guidance", hosting.variants_seconds("m", tiny_run.settings))]
    gpu.ran()


def test_export_fits_missing_preview_colours_in_a_gpu_worker(gpu, tiny_run, tiny_model_name, tmp_path, monkeypatch):
    monkeypatch.setattr(teaching, "EXPORT_DIR", tmp_path / "exports")
    model = load_model(tiny_model_name)  # the cached model the app uses (other tests may have reloaded it)
    monkeypatch.delitem(model.derived, "rgb_map", raising=False)  # a model whose colours are not fitted yet
    with zipfile.ZipFile(Path(teaching.export_run(tiny_run)[0])) as zf:
        assert "final.png" in zf.namelist() and "animation.gif" in zf.namelist()
    assert "rgb_map" in model.derived and gpu.ran() == ["fit_preview_colours", "decode_steps"]
    teaching.export_run(tiny_run)  # fitted once per model; the decodes are made in a GPU worker each time
    assert gpu.ran() == ["decode_steps"]


def test_the_app_loop_streams_from_a_gpu_worker_and_the_step_slider_decodes_there(gpu, tiny_model_name, tiny_model):
    with gr.Blocks():
        panel, final, run_state = components.peek_panel(), gr.Image(), gr.State()
    services.load_for_app(tiny_model_name)
    gpu.ran()  # the preview colours: see the export test
    settings = RunSettings(prompt="a red circle", steps=6, guidance_scale=5.0, scheduler="ddim")
    run = PanelRun(model=tiny_model_name, expected_steps=6)
    updates = list(playground.live_run(panel, final, run_state, tiny_model_name, settings, run=run))
    trace = updates[-1][run_state]
    assert [s.index for s in trace.steps] == list(range(6)) and updates[-1][final] is trace.image
    assert gpu.calls == [("run_loop", hosting.loop_seconds(tiny_model_name, settings))]
    gpu.ran()
    x_t, x0 = services.step_decodes(tiny_model, run, 2)
    assert gpu.ran() == ["decode_pair"]
    assert np.array_equal(np.asarray(x_t), np.asarray(vae.decode_to_pil(tiny_model, run.steps[2].latents)))
    assert np.array_equal(np.asarray(x0), np.asarray(vae.decode_to_pil(tiny_model, run.steps[2].pred_x0)))


def test_errors_inside_a_gpu_worker_still_reach_the_student(gpu, tiny_model_name, tiny_run, tiny_model):
    # The teaching tabs keep their results and say why (their last output); the playground raises gr.Error.
    said = teaching.forward_view(tiny_model_name, teaching.toy_picture(tiny_model_name, seed=3)[0], 5000, 0)[-1]
    assert "The timestep must be a whole number" in said
    unguided = generate(tiny_model, RunSettings(prompt="a red circle", steps=2, guidance_scale=1.0))
    assert "no classifier-free guidance" in teaching.cfg_what_if(unguided, 1, 5.0)[-1]
    with gr.Blocks():
        panel, final, run_state = components.peek_panel(), gr.Image(), gr.State()
    with pytest.raises(gr.Error, match="Unknown scheduler"):
        list(playground.live_run(panel, final, run_state, tiny_model_name,
                                 RunSettings(prompt="x", steps=4, scheduler="nope")))
    assert gpu.ran() == ["noise_picture", "what_if", "run_loop"]
