"""The shipped model in assets/tiny-sd: loads offline, is small, is SD-shaped, and draws what it is asked."""

from __future__ import annotations

import dataclasses
import json

import pytest
from PIL import Image

from sdviz.cli import main as cli_main
from sdviz.pipeline import vae
from sdviz.pipeline.models import EMBEDDED, EMBEDDED_MODEL_DIR, RECOMMENDED_FILE, load_model
from sdviz.pipeline.sampler import generate
from sdviz.pipeline.settings import RunSettings
from sdviz.toy import world
from sdviz.toy.judge import judge

MAX_WEIGHT_FILE = 10_000_000  # bytes: a Hugging Face Space stores files under 10 MB without Git LFS
MAX_FOLDER = 30_000_000


@pytest.fixture(scope="module")
def embedded():
    return load_model(device="cpu")  # HF_HUB_OFFLINE=1 (conftest): nothing may come from the network


def recommended_run(model, prompt: str, seed: int = 0) -> RunSettings:
    rec = model.recommended
    return RunSettings(prompt=prompt, steps=rec.steps, guidance_scale=rec.guidance_scale, seed=seed)


def test_embedded_model_loads_offline_and_draws_a_64x64_picture(embedded):
    assert embedded.name == EMBEDDED
    trace = generate(embedded, recommended_run(embedded, "a big red circle"))
    assert trace.image.size == (64, 64)
    assert trace.guidance  # the recommended settings use classifier-free guidance


def test_embedded_model_is_small_enough_for_a_space_without_lfs():
    files = [p for p in EMBEDDED_MODEL_DIR.rglob("*") if p.is_file()]
    weights = [p for p in files if p.suffix in (".safetensors", ".bin", ".pt", ".ckpt", ".pth")]
    assert weights and all(p.suffix == ".safetensors" for p in weights)
    for path in weights:
        assert path.stat().st_size < MAX_WEIGHT_FILE, path
    assert sum(p.stat().st_size for p in files) < MAX_FOLDER


def test_embedded_vae_downsamples_8x_into_4_channels_48x_fewer_numbers(embedded):
    assert embedded.vae_scale_factor == 8
    assert embedded.vae.config.latent_channels == 4
    assert vae.compression_ratio(embedded) == 48
    latents = vae.encode(embedded, Image.new("RGB", (64, 64), (240, 240, 240)), generator=None)
    assert tuple(latents.shape) == (1, 4, 8, 8)


def test_embedded_model_records_its_recommended_settings(embedded):
    saved = json.loads((EMBEDDED_MODEL_DIR / RECOMMENDED_FILE).read_text())
    for key in ("steps", "guidance_scale", "height", "width"):
        assert getattr(embedded.recommended, key) == saved[key]
    assert (embedded.recommended.height, embedded.recommended.width) == (64, 64)
    assert embedded.recommended.guidance_scale > 1


def test_cli_without_model_uses_the_embedded_model(tmp_path):
    out = tmp_path / "run"
    assert cli_main(["generate", "--prompt", "a small blue square", "--out", str(out)]) == 0
    settings = json.loads((out / "settings.json").read_text())
    assert settings["model"] == EMBEDDED
    assert Image.open(out / "final.png").size == (64, 64)


# prompt -> what the picture must show (combinations seen in training)
EASY_PROMPTS = {
    "a big red circle on the left": {"colour": "red", "shape": "circle", "size": "big", "position": "left"},
    "a blue square at the top": {"colour": "blue", "shape": "square", "position": "top"},
    "a small green triangle on the right": {"colour": "green", "shape": "triangle", "size": "small",
                                            "position": "right"},
    "a big yellow circle at the bottom": {"colour": "yellow", "shape": "circle", "size": "big", "position": "bottom"},
    "a purple circle in the center": {"colour": "purple", "shape": "circle", "position": "center"},
}
SEEDS = (0, 1)


def misses(model, guidance_scale: float) -> list[str]:
    """The easy prompts' pictures that do not show everything the prompt asks for."""
    failures = []
    for prompt, wanted in EASY_PROMPTS.items():
        for seed in SEEDS:
            settings = dataclasses.replace(recommended_run(model, prompt, seed), guidance_scale=guidance_scale)
            verdict = judge(generate(model, settings).image)
            if not all(verdict.agrees(**wanted).values()):
                failures.append(f"{prompt!r} seed {seed}: {verdict.colour} {verdict.shape} {verdict.position} "
                                f"{verdict.size} {verdict.problems}")
    return failures


def test_embedded_model_draws_easy_prompts_right_and_guidance_matters(embedded):
    """A smoke test of quality; the real numbers come from `python -m sdviz.toy.evaluate`."""
    guided = misses(embedded, embedded.recommended.guidance_scale)
    unguided = misses(embedded, 1.0)  # no CFG: the U-Net's text-conditioned estimate alone
    assert len(guided) <= 2, guided  # at most two misses in ten pictures
    assert len(unguided) >= len(guided) + 2, (guided, unguided)  # the CFG slider visibly matters (measured: 1 vs 5)


def test_shipped_tokenizer_reads_every_toy_word_as_one_token(embedded):
    for word in world.VOCABULARY:
        assert embedded.tokenizer.tokenize(word) == [word + "</w>"], word


def test_the_guided_lesson_says_what_the_shipped_model_draws(embedded):
    """The guided lesson's sentences name the embedded model's own pictures (sdviz.lessons.guided): the judge checks
    each named picture on the shipped model, so a new model cannot leave the lesson describing the old one's."""
    from sdviz.app.components import EXAMPLES_DIR
    from sdviz.lessons import guided

    def seen(prompt: str, seed: int = 7, guidance: float = 2.0, init=None, strength: float = 0.8) -> tuple:
        settings = RunSettings(prompt=prompt, steps=20, guidance_scale=guidance, seed=seed, strength=strength)
        verdict = judge(generate(embedded, settings, init).image)
        return verdict.colour, verdict.shape, verdict.position, verdict.size

    texts = {s.title: f"{s.look} {s.question} {s.answer}" for s in guided.STATIONS}
    assert "seed 3 draws a small one" in texts["Text to image"]
    assert seen("a big red circle on the left")[:3] == ("red", "circle", "left")
    assert seen("a big red circle on the left", seed=3)[3] == "small"
    cfg = texts["Classifier-free guidance"]
    assert "purple triangle at the top" in cfg and "at 4 it turns red" in cfg and "at 8 yellow" in cfg
    assert [seen("a purple triangle at the top", guidance=g)[:3] for g in (1, 2, 4, 8)] == [
        ("purple", "triangle", "top"), ("purple", "triangle", "top"), ("red", "triangle", "top"),
        ("yellow", "triangle", "top")]
    img2img = texts["Image to image"]
    assert "comes out orange" in img2img and "at 0.3 it stays yellow, at 0.9 it turns purple" in img2img
    start = Image.open(EXAMPLES_DIR / "big_yellow_triangle_at_the_top.png")
    assert [seen("a big purple triangle at the top", seed=0, init=start, strength=s)[0] for s in (0.3, 0.6, 0.9)] == [
        "yellow", "orange", "purple"]
