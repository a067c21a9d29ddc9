"""Shared fixtures: a tiny random Stable Diffusion built in-process (no hub, no download), the app launched on
it, and a Chromium page for the browser tests."""

from __future__ import annotations

import os
import socket
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests must never reach the hub
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("SDVIZ_MAX_MODELS", "16")  # the suite loads many tiny models: keep them, as the fixtures do

import pytest
import torch
from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from sdviz.pipeline.models import load_model
from sdviz.pipeline.sampler import generate
from sdviz.pipeline.settings import RunSettings
from sdviz.toy import model as toy_model

CHROMIUM = Path("/usr/bin/chromium")  # Debian's (apt-get install chromium); .ci/run installs it
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]


def build_tiny_pipeline(max_tokens: int = toy_model.MAX_TOKENS, latent_channels: int = 4) -> StableDiffusionPipeline:
    """Random weights, SD's layout: like diffusers' own test components, with an offline tokenizer. The arguments
    make a variant whose numbers differ from the embedded model's (token limit, latent channels)."""
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=16, in_channels=latent_channels,
        out_channels=latent_channels,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, norm_num_groups=8, attention_head_dim=4,
    )
    vae = AutoencoderKL(
        block_out_channels=[8, 16], in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2, latent_channels=latent_channels, norm_num_groups=4,
    )
    tokenizer = toy_model.build_tokenizer(max_length=max_tokens)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=32, intermediate_size=37, num_attention_heads=4,
        num_hidden_layers=2, vocab_size=len(tokenizer), max_position_embeddings=max_tokens,
    ))
    # SD 1.5's own scheduler settings
    scheduler = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              skip_prk_steps=True, steps_offset=1, set_alpha_to_one=False)
    return StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-sd")
    build_tiny_pipeline().save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir):
    return load_model(tiny_model_dir, device="cpu")


@pytest.fixture(scope="session")
def tiny_model_name(tiny_model_dir, tiny_model) -> str:
    """The tiny model as the app names it (its folder), already loaded."""
    return str(tiny_model_dir)


@pytest.fixture(scope="session")
def tiny_run(tiny_model):
    """A finished run on the tiny model (3 steps, CFG 5), like a session's latest run; tests only read it."""
    return generate(tiny_model, RunSettings(prompt="a big red circle", steps=3, guidance_scale=5.0, seed=1))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def launch_app(tmp_path_factory):
    """Launches Gradio demos on free local ports, their files in a temporary folder; closed after the module."""
    from sdviz.app.layout import launch_kwargs  # Gradio, imported only by the tests that serve the app

    mp = pytest.MonkeyPatch()
    mp.setenv("GRADIO_TEMP_DIR", str(tmp_path_factory.mktemp("gradio")))
    demos = []

    def launch(demo) -> str:
        _, url, _ = demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=free_port(),
                                quiet=True, **launch_kwargs())
        demos.append(demo)
        return url

    yield launch
    for demo in demos:
        demo.close()
    mp.undo()


@pytest.fixture(scope="session")
def chromium() -> Path:
    """Debian's Chromium for Playwright; the test skips, saying why, where it or the playwright package is missing."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: install Debian's Chromium (apt-get install chromium) to run this test")
    pytest.importorskip("playwright", reason="the playwright package is missing (pip install playwright)")
    return CHROMIUM


@pytest.fixture(scope="module")
def browser_app_url(chromium, tiny_model_dir, launch_app) -> str:
    """The app on the tiny model, for the browser tests (launched only where they can run)."""
    from sdviz.app.layout import build_demo

    return launch_app(build_demo([str(tiny_model_dir)]))


@pytest.fixture
def browser_page(chromium):
    """A fresh Chromium page, 1400x1000, that waits up to 60 s for anything (the CPU is shared with training)."""
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(chromium), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(60_000)
        expect.set_options(timeout=60_000)
        yield page
        browser.close()


@pytest.fixture(autouse=True)
def fresh_batcher_cache():
    """Each test computes its runs: a finished run another test left in the app's cache would come back at once
    (and could not be stopped or watched step by step)."""
    from sdviz.app import services

    services.batcher().forget_finished()
    yield
