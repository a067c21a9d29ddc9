"""What real checkpoints need beyond the embedded model: SD 2.x / sd-turbo-like settings (v-prediction, trailing
timesteps, 1 step, no guidance), honest PNDM, recommended settings that travel with the model folder. The oracle is
diffusers' own pipelines built from the same parts, as in tests/test_sampler.py."""

from __future__ import annotations

import json
import time
import types
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from diffusers import (
    DDIMScheduler,
    EulerDiscreteScheduler,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionPipeline,
)
from PIL import Image

from sdviz.cli import main
from sdviz.errors import SdvizError
from sdviz.pipeline import models
from sdviz.pipeline.models import Recommended, load_model
from sdviz.pipeline.sampler import generate
from sdviz.pipeline.schedulers import SCHEDULERS, make_scheduler, x0_from_noise
from sdviz.pipeline.settings import RunSettings
from tests.conftest import build_tiny_pipeline
from tests.test_sampler import PROMPT, max_pixel_difference, pipeline_image


def turbo_like_scheduler(prediction_type: str = "epsilon") -> EulerDiscreteScheduler:
    """sd-turbo's scheduler config (Euler, trailing spacing), with either prediction type (SD 2.1's is v)."""
    return EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                  timestep_spacing="trailing", steps_offset=1, prediction_type=prediction_type)


def save_tiny(path, scheduler) -> str:
    pipe = build_tiny_pipeline()
    pipe.scheduler = scheduler
    pipe.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module", params=["epsilon", "v_prediction"])
def turbo_dir(request, tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp(f"turbo-{request.param}"), turbo_like_scheduler(request.param))


@pytest.fixture(scope="module")
def turbo(turbo_dir):
    return load_model(turbo_dir, device="cpu")


def diffusers_image(model, settings: RunSettings, init_image=None) -> Image.Image:
    """diffusers' own pipeline on the same parts, its scheduler built as a diffusers user would: ``from_config`` of
    the model's scheduler config (not sdviz's make_scheduler), so that sdviz's scheduler set-up is checked too."""
    scheduler = model.pipe.scheduler
    if settings.scheduler is not None:
        scheduler = SCHEDULERS[settings.scheduler].from_config(scheduler.config)
    kwargs = dict(num_inference_steps=settings.steps, guidance_scale=settings.guidance_scale,
                  negative_prompt=settings.negative_prompt or None,
                  generator=torch.Generator("cpu").manual_seed(settings.seed))
    if init_image is None:
        pipe = StableDiffusionPipeline(**{**model.pipe.components, "scheduler": scheduler})
        return pipe(settings.prompt, height=settings.height, width=settings.width, **kwargs).images[0]
    pipe = StableDiffusionImg2ImgPipeline(**{**model.pipe.components, "scheduler": scheduler})
    return pipe(settings.prompt, image=init_image, strength=settings.strength, **kwargs).images[0]


def random_picture(side: int = 32) -> Image.Image:
    return Image.fromarray(np.random.default_rng(0).integers(0, 255, (side, side, 3), dtype=np.uint8))


# --- Recommended settings travel with the model ---------------------------------------------------------------


def test_a_local_turbo_like_folder_gets_sd_turbos_settings(turbo):
    rec = turbo.recommended
    assert (rec.steps, rec.guidance_scale, rec.strength) == (1, 0.0, 0.5)
    assert rec.img2img_steps == 2 and int(rec.img2img_steps * rec.strength) == 1  # image to image runs a step


def test_the_hub_table_and_the_folder_file_give_the_settings_too(tmp_path):
    pipe = build_tiny_pipeline()  # a PNDM scheduler, leading spacing: not turbo-like
    assert models._recommended("some/folder", None, pipe).steps == 50
    turbo = models._recommended("stabilityai/sd-turbo", None, pipe)
    assert (turbo.steps, turbo.guidance_scale, turbo.img2img_steps) == (1, 0.0, 2)
    (tmp_path / models.RECOMMENDED_FILE).write_text(json.dumps({"steps": 4, "guidance_scale": 1.5}))
    pipe.scheduler = turbo_like_scheduler()
    saved = models._recommended("x", tmp_path, pipe)  # the folder's own file wins over what the scheduler implies
    assert (saved.steps, saved.guidance_scale, saved.strength, saved.img2img_steps) == (4, 1.5, 0.5, 4)


@pytest.mark.parametrize(("steps", "strength", "img2img_steps"), [(1, 0.5, 2), (1, 0.3, 4), (20, 0.8, 20),
                                                                   (2, 0.25, 4), (1, 1.0, 1)])
def test_image_to_image_defaults_always_run_a_step(steps, strength, img2img_steps):
    rec = Recommended(steps, 7.5, 64, 64, strength=strength)
    assert rec.img2img_steps == img2img_steps and int(rec.img2img_steps * strength) >= 1
    assert rec.steps_for(img2img=False) == steps and rec.steps_for(img2img=True) == img2img_steps


def test_the_apps_image_to_image_defaults_run_a_step_on_a_turbo_like_folder(turbo_dir, tiny_model_dir):
    from sdviz.app import playground
    from sdviz.app.layout import build_demo

    page = build_demo([turbo_dir, str(tiny_model_dir)]).sdviz_page
    assert (page.txt.steps.value, page.img.steps.value, page.strength.value) == (1, 2, 0.5)
    updates = playground.choose_model(page, turbo_dir, str(tiny_model_dir))  # the dropdown, from another model
    assert updates[page.txt.steps].value == 1 and updates[page.img.steps].value == 2
    assert updates[page.strength].value == 0.5


def test_cli_image_to_image_defaults_run_on_a_turbo_like_folder(turbo, turbo_dir, tmp_path):
    start = tmp_path / "start.png"
    random_picture().save(start)
    out = tmp_path / "run"
    assert main(["generate", "--prompt", PROMPT, "--model", turbo_dir, "--init-image", str(start),
                 "--height", "32", "--width", "32", "--out", str(out)]) == 0
    assert np.load(out / "trace.npz")["timesteps"].shape == (1,)  # int(2 x 0.5)
    settings = RunSettings(prompt=PROMPT, steps=2, guidance_scale=0.0, strength=0.5, height=32, width=32)
    expected = pipeline_image(turbo, settings, Image.open(out / "init.png"))
    assert max_pixel_difference(Image.open(out / "final.png"), expected) <= 1


# --- PNDM honours the model's config ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ddim_model(tmp_path_factory):
    """A model that ships DDIM (like SD 2.1): PNDM built from its config runs PRK warm-up steps in diffusers."""
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)
    return load_model(save_tiny(tmp_path_factory.mktemp("ddim"), scheduler), device="cpu")


@pytest.mark.parametrize("img2img", [False, True])
def test_pndm_from_another_schedulers_config_equals_diffusers(ddim_model, img2img):
    settings = RunSettings(prompt=PROMPT, steps=5, guidance_scale=6.0, seed=3, scheduler="pndm", height=32, width=32,
                           strength=0.6)
    trace = generate(ddim_model, settings, init_image=random_picture() if img2img else None)
    # PRK: 5 steps plan 14 U-Net passes (3 Runge-Kutta steps of 4, then PLMS); image to image skips the first 2
    assert len(trace.steps) == (12 if img2img else 14)
    assert max_pixel_difference(trace.image, diffusers_image(ddim_model, settings, trace.init_image)) == 0


def test_pndm_with_too_few_steps_for_prk_says_the_minimum(ddim_model):
    with pytest.raises(SdvizError, match="at least 4 steps \\(got 3\\)"):
        generate(ddim_model, RunSettings(prompt=PROMPT, steps=3, scheduler="pndm", height=32, width=32))


def test_the_embedded_models_pndm_choice_runs_prk_at_its_recommended_steps():
    """The embedded model ships DPM++, so its "pndm" choice runs PRK warm-up, as diffusers would."""
    embedded = load_model("embedded", device="cpu")
    rec = embedded.recommended
    settings = RunSettings(prompt="a big red circle", steps=rec.steps, guidance_scale=rec.guidance_scale, seed=1,
                           scheduler="pndm")
    trace = generate(embedded, settings)
    assert len(trace.steps) == rec.steps + 9  # PRK: 12 passes for the first 3 steps
    assert max_pixel_difference(trace.image, diffusers_image(embedded, settings)) <= 1
    with pytest.raises(SdvizError, match="at least 4 steps"):
        generate(embedded, RunSettings(prompt="a big red circle", steps=2, scheduler="pndm"))


# --- SD 2.x / sd-turbo-like models: v-prediction, trailing timesteps, 1 step, no guidance ------------------------


def test_one_step_without_guidance_equals_diffusers(turbo):
    settings = RunSettings(prompt=PROMPT, steps=1, guidance_scale=0.0, seed=2, height=32, width=32)
    trace = generate(turbo, settings)
    assert not trace.guidance and len(trace.steps) == 1
    assert trace.timesteps == [999.0]  # trailing spacing: the one step starts from pure noise
    assert trace.steps[0].sigma == pytest.approx(float(turbo.pipe.scheduler.sigmas.max()), rel=1e-3)
    assert max_pixel_difference(trace.image, diffusers_image(turbo, settings)) == 0


def test_four_steps_with_guidance_equal_diffusers(turbo):
    settings = RunSettings(prompt=PROMPT, negative_prompt="blue square", steps=4, guidance_scale=5.0, seed=4,
                           height=32, width=32)
    trace = generate(turbo, settings)
    assert trace.guidance and trace.timesteps == [999.0, 749.0, 499.0, 249.0]  # trailing
    assert max_pixel_difference(trace.image, diffusers_image(turbo, settings)) == 0


def test_image_to_image_at_two_steps_and_strength_half_equals_diffusers(turbo):
    settings = RunSettings(prompt=PROMPT, steps=2, guidance_scale=0.0, seed=5, height=32, width=32, strength=0.5)
    trace = generate(turbo, settings, init_image=random_picture())
    assert trace.timesteps == [499.0]
    assert max_pixel_difference(trace.image, diffusers_image(turbo, settings, trace.init_image)) == 0


@pytest.mark.parametrize("img2img", [False, True], ids=["txt2img", "img2img"])
@pytest.mark.parametrize("scheduler", list(SCHEDULERS))
def test_every_scheduler_equals_diffusers_for_both_prediction_types(turbo, scheduler, img2img):
    settings = RunSettings(prompt=PROMPT, steps=4, guidance_scale=6.0, seed=3, scheduler=scheduler, height=32,
                           width=32, strength=0.5)
    trace = generate(turbo, settings, init_image=random_picture() if img2img else None)
    assert max_pixel_difference(trace.image, diffusers_image(turbo, settings, trace.init_image)) <= 1


@pytest.mark.parametrize("scheduler", list(SCHEDULERS))
def test_the_traces_x0_is_finite_and_the_schedulers_own(turbo, scheduler):
    """The recorded x0 is the scheduler's own pred_original_sample where it has one; the formula sdviz uses for
    the others (PNDM) gives the same on those, for both prediction types."""
    prediction = turbo.scheduler_config.prediction_type
    settings = RunSettings(prompt=PROMPT, steps=4, guidance_scale=5.0, seed=1, scheduler=scheduler, height=32, width=32)
    trace = generate(turbo, settings)
    assert all(torch.isfinite(s.pred_x0.float()).all() for s in trace.steps)
    if scheduler == "pndm":
        return
    oracle = make_scheduler(turbo, scheduler)  # with the two fixes StableDiffusionPipeline makes (clip_sample off)
    assert oracle.config.prediction_type == prediction
    oracle.set_timesteps(4)
    generator = torch.Generator().manual_seed(1)
    for s in trace.steps:
        t = oracle.timesteps[s.index]
        kwargs = {"generator": generator} if scheduler == "euler_a" else {}
        if hasattr(oracle, "scale_model_input"):
            oracle.scale_model_input(s.latents.float()[None], t)  # Euler counts its step here
        own = getattr(oracle.step(s.noise_guided.float()[None], t, s.latents.float()[None], **kwargs),
                      "pred_original_sample", None)
        if own is None:  # DPM-Solver++ keeps its x0 as its latest model output
            own = oracle.model_outputs[-1]
        torch.testing.assert_close(s.pred_x0.float(), own[0], atol=2e-2, rtol=1e-2)
        ours = x0_from_noise(oracle, s.latents.float(), s.noise_guided.float(), t, s.sigma)
        torch.testing.assert_close(ours, own[0], atol=5e-2, rtol=2e-2)


# --- What the peek panel shows of x_t --------------------------------------------------------------------------


def test_x_t_is_what_the_unet_saw_for_every_scheduler(tiny_model, monkeypatch):
    """Euler-type latents are x0 + sigma * noise (spread up to ~14.6); the panel's pictures, numbers and decodes use
    x_t in the variance-preserving form the U-Net sees (scale_model_input's output), as forward diffusion does."""
    from sdviz.app import services
    from sdviz.app.sessions import PanelRun
    from sdviz.lessons import peek
    from sdviz.pipeline import vae

    seen = []
    forward = tiny_model.unet.forward

    def recording_forward(x, *args, **kwargs):
        seen.append(x[:1].clone())
        return forward(x, *args, **kwargs)

    monkeypatch.setattr(tiny_model.unet, "forward", recording_forward)
    for scheduler in SCHEDULERS:
        seen.clear()
        trace = generate(tiny_model, RunSettings(prompt=PROMPT, steps=4, guidance_scale=5.0, scheduler=scheduler,
                                                 height=32, width=32))
        for record, model_input in zip(trace.steps, seen, strict=True):
            torch.testing.assert_close(record.x_t.float(), model_input[0], atol=2e-3, rtol=2e-3)
        first = trace.steps[0]
        assert float(first.x_t.float().std()) == pytest.approx(1.0, abs=0.3)  # pure noise, variance preserving
        if scheduler in ("euler", "euler_a"):
            raw = float(first.latents.float().std())  # what was decoded and plotted before: sqrt(sigma^2 + 1)
            assert raw > 2 and raw == pytest.approx((first.sigma**2 + 1) ** 0.5, rel=0.3)
        assert peek.step_numbers(first, 4).latents_std == pytest.approx(float(first.x_t.float().std()))
    run = PanelRun(model=tiny_model.name, expected_steps=4)
    run.steps = list(trace.steps)
    x_t, _ = services.step_decodes(tiny_model, run, 0)
    assert max_pixel_difference(x_t, vae.decode_to_pil(tiny_model, first.x_t)) == 0


# --- Threads: decided once per process ---------------------------------------------------------------------------


def test_the_thread_count_is_decided_once_per_process_not_per_model(tiny_model, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(models, "_threads", None)
    before = torch.get_num_threads()
    try:
        assert models.use_cpu_threads(tiny_model) == 1 == torch.get_num_threads()  # the first model: small, CPU
        monkeypatch.setattr(models, "SMALL_UNET_PARAMETERS", 0)  # a later, big model (say SD 1.5) ...
        assert models.cpu_threads(tiny_model) == models._DEFAULT_THREADS
        assert models.use_cpu_threads(tiny_model) == 1 == torch.get_num_threads()  # ... changes nothing
        torch.set_num_threads(2)  # someone else changed it (the CLI's main restores its caller's count)
        assert models.use_cpu_threads(tiny_model) == 1 == torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


# --- The model cache: a bounded LRU; load failures in plain words ------------------------------------------------


@pytest.fixture
def fresh_cache(monkeypatch):
    """An empty model cache, and loads that cost nothing: (name, device, dtype) -> a fake model, counted."""
    monkeypatch.setattr(models, "_cache", models.OrderedDict())
    loads = []

    def fake_load(name, device, dtype):
        loads.append(name)
        time.sleep(0.05)  # long enough for racing threads to meet
        return types.SimpleNamespace(name=name)

    monkeypatch.setattr(models, "_load", fake_load)
    return loads


def test_the_model_cache_keeps_the_most_recently_used_models(fresh_cache, monkeypatch):
    monkeypatch.delenv(models.MAX_MODELS_ENV, raising=False)
    a = load_model("a/a", device="cpu")
    load_model("b/b", device="cpu")
    assert load_model("a/a", device="cpu") is a  # from memory; now b is the least recently used
    load_model("c/c", device="cpu")
    assert [key[0] for key in models._cache] == ["a/a", "c/c"]  # the default: 2 models
    load_model("b/b", device="cpu")
    assert fresh_cache == ["a/a", "b/b", "c/c", "b/b"] and [key[0] for key in models._cache] == ["c/c", "b/b"]
    monkeypatch.setenv(models.MAX_MODELS_ENV, "1")
    load_model("a/a", device="cpu")
    assert [key[0] for key in models._cache] == ["a/a"]
    monkeypatch.setenv(models.MAX_MODELS_ENV, "none")
    with pytest.raises(SdvizError, match="SDVIZ_MAX_MODELS must be a whole number of 1 or more"):
        load_model("z/z", device="cpu")


def test_simultaneous_loads_of_one_model_load_it_once(fresh_cache, monkeypatch):
    monkeypatch.setenv(models.MAX_MODELS_ENV, "3")
    names = ["a/a"] * 6 + ["b/b"] * 3
    with ThreadPoolExecutor(len(names)) as pool:
        loaded = list(pool.map(lambda n: load_model(n, device="cpu"), names))
    assert sorted(fresh_cache) == ["a/a", "b/b"]
    assert len({id(m) for m in loaded[:6]}) == 1 and len({id(m) for m in loaded[6:]}) == 1


def failing_load(monkeypatch, err: Exception):
    monkeypatch.setattr(models, "_cache", models.OrderedDict())

    def from_pretrained(*args, **kwargs):
        raise err

    monkeypatch.setattr(StableDiffusionPipeline, "from_pretrained", from_pretrained)


def test_out_of_memory_while_loading_says_so(monkeypatch, tmp_path):
    (tmp_path / "model_index.json").write_text("{}")
    failing_load(monkeypatch, torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB"))
    with pytest.raises(SdvizError) as caught:
        load_model("stabilityai/sd-turbo", device="cuda")
    message = str(caught.value)
    assert message.startswith("Not enough GPU memory to load the Stable Diffusion model 'stabilityai/sd-turbo'")
    assert "SDVIZ_MAX_MODELS" in message and "network" not in message
    with pytest.raises(SdvizError, match="^Not enough memory to load"):
        load_model(tmp_path, device="cpu")


def test_an_offline_hub_id_says_it_needs_internet_in_one_sentence(monkeypatch):
    from huggingface_hub.errors import OfflineModeIsEnabled

    try:
        try:
            raise OfflineModeIsEnabled("Cannot reach the Hub: offline mode is enabled.")
        except OfflineModeIsEnabled as cause:
            raise OSError("Cannot load model x/y: the model is not fully cached locally and an error occurred while "
                          "trying to fetch metadata from the Hub. Please check out the root cause in the stacktrace "
                          "above.") from cause
    except OSError as err:
        failing_load(monkeypatch, err)
    with pytest.raises(SdvizError) as caught:
        load_model("x/y", device="cpu")
    message = str(caught.value)
    assert message == ("Could not load the Stable Diffusion model 'x/y': it is not on this machine and needs internet "
                       "to download from the Hugging Face Hub (no internet here, or HF_HUB_OFFLINE is set).")
    failing_load(monkeypatch, OSError("x/y is not a valid model. Please check out the root cause in the stacktrace "
                                      "above."))
    with pytest.raises(SdvizError) as caught:
        load_model("x/y", device="cpu")
    assert "stacktrace" not in str(caught.value) and "x/y is not a valid model" in str(caught.value)


# --- Precision: the dtype asked for, and the float32 VAE fallback --------------------------------------------------


@pytest.mark.parametrize("dtype", ["float32", "fp16", "bfloat16"])
def test_loaded_parts_have_the_dtype_asked_for(tiny_model_dir, dtype):
    """pick_device allows any dtype on any device (float16 on the CPU is slow but works in torch)."""
    model = load_model(tiny_model_dir, device="cpu", dtype=dtype)
    wanted = {"float32": torch.float32, "fp16": torch.float16, "bfloat16": torch.bfloat16}[dtype]
    assert model.dtype == wanted
    for part in (model.unet, model.vae, model.text_encoder):
        assert {p.dtype for p in part.parameters()} == {wanted}
    settings = RunSettings(prompt=PROMPT, steps=2, guidance_scale=5.0, seed=1, height=32, width=32)
    trace = generate(model, settings)
    assert trace.environment["dtype"] == str(wanted).replace("torch.", "")
    assert torch.isfinite(trace.final_latents).all()
    assert max_pixel_difference(trace.image, diffusers_image(model, settings)) <= 1


def test_a_float16_decode_that_overflows_falls_back_to_a_float32_vae(tiny_model_dir, monkeypatch):
    from diffusers import AutoencoderKL

    from sdviz.pipeline import vae

    half = load_model(tiny_model_dir, device="cpu", dtype="float16")
    full = load_model(tiny_model_dir, device="cpu", dtype="float32")
    latents = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    decode = AutoencoderKL.decode
    calls = []

    def overflowing(self, z, *args, **kwargs):  # SD's VAE in float16 can overflow to inf on some latents
        calls.append(self.dtype)
        out = decode(self, z, *args, **kwargs)
        if self.dtype == torch.float16:
            out[0].fill_(float("inf"))
        return out

    monkeypatch.setattr(AutoencoderKL, "decode", overflowing)
    image = vae.decode(half, latents)
    assert calls == [torch.float16, torch.float32]  # the float16 decode, then the float32 copy's
    assert image.dtype == torch.float32 and torch.isfinite(image).all()
    expected = vae.decode(full, latents)  # the float32 copy holds the float16 weights: close, not equal
    torch.testing.assert_close(image, expected, atol=2e-2, rtol=0)
    assert half.derived["vae_float32"] is not half.vae and half.vae.dtype == torch.float16  # a copy, made once
    picture = vae.decode_to_pil(half, latents[0])
    assert picture.size == (32, 32) and len(calls) == 5  # (one more for `full`)


# --- Attention capture on an SD-sized U-Net, with either attention processor ---------------------------------------


@pytest.fixture(scope="module")
def sd_sized_model():
    """SD 1.5's real U-Net config (860 M parameters, random weights) on an 8x8 latent grid; a tiny VAE and a
    one-layer CLIP of SD's width (768). About 15 s to build, 2-10 s a U-Net pass on 2 busy cores."""
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from benchmarks.sd15 import SD15_UNET
    from sdviz.pipeline.models import Model
    from sdviz.toy import model as toy_model

    tiny = build_tiny_pipeline()
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**dict(SD15_UNET, sample_size=8)).eval().requires_grad_(False)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=768, intermediate_size=64, num_attention_heads=12,
        num_hidden_layers=1, vocab_size=len(tiny.tokenizer), max_position_embeddings=toy_model.MAX_TOKENS,
    )).eval()
    pipe = StableDiffusionPipeline(vae=tiny.vae, text_encoder=text_encoder, tokenizer=tiny.tokenizer, unet=unet,
                                   scheduler=tiny.scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    return lambda: Model(name="sd-sized", pipe=pipe, recommended=Recommended(2, 7.5, 16, 16),
                         device=torch.device("cpu"), dtype=torch.float32)


@pytest.mark.parametrize("processor", ["AttnProcessor2_0", "AttnProcessor"])
def test_attention_capture_on_an_sd_sized_unet_sums_to_one(sd_sized_model, processor, monkeypatch):
    from diffusers.models import attention_processor

    from sdviz.pipeline.capture import AttentionRecorder, capture_run

    model = sd_sized_model()  # a fresh Model: capture is installed once per Model, around the current processors
    model.unet.set_attn_processor(getattr(attention_processor, processor)())
    seen = []
    add = AttentionRecorder.add
    monkeypatch.setattr(AttentionRecorder, "add", lambda self, name, probs, heads: (seen.append(probs.clone()),
                                                                                    add(self, name, probs, heads)))
    settings = RunSettings(prompt="a big red circle", steps=1, guidance_scale=5.0, seed=0, scheduler="ddim")
    plain = generate(model, settings)
    trace, maps = capture_run(model, settings)
    assert torch.equal(plain.final_latents, trace.final_latents)  # capturing changes nothing
    assert len(maps.layers) == 16 and len(seen) == 16  # SD 1.5 has 16 cross-attention layers; one step
    assert {type(model.unet.get_submodule(name).processor.inner).__name__ for name in maps.layers} == {processor}
    for probs in seen:
        torch.testing.assert_close(probs.sum(dim=-1), torch.ones(probs.shape[:2]), atol=1e-5, rtol=0)
    assert maps.per_step.shape == (1, len(maps.labels), 8, 8)
    assert np.allclose(maps.per_step.sum(axis=1), 1, atol=1e-5)
