"""The training script: a micro run takes seconds, saves a standard pipeline folder, and resumes."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline

from sdviz.pipeline.models import RECOMMENDED_FILE
from sdviz.toy import train

MAX_WEIGHT_FILE = 10_000_000  # bytes: a Hugging Face Space stores files under 10 MB without Git LFS


@pytest.fixture(autouse=True)
def keep_torch_threads():
    """train.main sets torch's thread count for the whole process; put it back afterwards."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def run_micro(workdir, out, *extra: str) -> None:
    train.main(["--preset", "micro", "--workdir", str(workdir), "--out", str(out), "--threads", "1",
                "--device", "cpu", *extra])


def test_micro_training_saves_a_pipeline_diffusers_loads_and_runs_offline(tmp_path):
    out = tmp_path / "tiny-sd"
    run_micro(tmp_path / "work", out)

    pipe = StableDiffusionPipeline.from_pretrained(out, local_files_only=True, safety_checker=None,
                                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    image = pipe("a big red circle on the left", num_inference_steps=2, guidance_scale=5.0, output_type="np",
                 generator=torch.Generator().manual_seed(0)).images[0]
    assert image.shape == (64, 64, 3) and np.isfinite(image).all()
    assert pipe.vae_scale_factor == 8 and pipe.vae.config.latent_channels == 4

    recommended = json.loads((out / RECOMMENDED_FILE).read_text())
    assert {"steps", "guidance_scale", "height", "width"} <= recommended.keys()
    assert recommended["training"]["preset"] == "micro" and recommended["training"]["seconds"] > 0

    weights = [p for p in out.rglob("*") if p.suffix in (".safetensors", ".bin", ".pt", ".ckpt")]
    assert weights and all(p.suffix == ".safetensors" for p in weights)  # never pickles in the shipped folder
    for path in weights:
        assert path.stat().st_size < MAX_WEIGHT_FILE, path


def test_resume_continues_from_the_checkpoints_instead_of_restarting(tmp_path, monkeypatch):
    workdir, out = tmp_path / "work", tmp_path / "tiny-sd"
    micro = train.PRESETS["micro"]
    steps_run: list[tuple[int, int]] = []  # (step, total) of every optimiser step, via the lr schedule
    real_lr_at = train.lr_at

    def spy_lr_at(step: int, total: int, base: float, warmup: int) -> float:
        steps_run.append((step, total))
        return real_lr_at(step, total, base, warmup)

    monkeypatch.setattr(train, "lr_at", spy_lr_at)

    # A first run that stops after one step of each stage, as if interrupted ...
    monkeypatch.setitem(train.PRESETS, "micro", dataclasses.replace(micro, vae_steps=1, unet_steps=1, layout_steps=0))
    run_micro(workdir, out)
    assert steps_run == [(0, 1), (0, 1)]
    assert torch.load(workdir / "unet.ckpt", weights_only=False)["step"] == 1
    latents_written = (workdir / "latents.pt").stat().st_mtime_ns

    # ... then the full micro run with --resume does only the steps that are left.
    steps_run.clear()
    monkeypatch.setitem(train.PRESETS, "micro", micro)
    run_micro(workdir, out, "--resume")
    total = micro.unet_steps + micro.layout_steps  # the layout stage continues the U-Net's step count
    # ... with a learning-rate schedule of its own (step 0 of layout_steps)
    assert steps_run == [(1, micro.vae_steps), (1, micro.unet_steps), (0, micro.layout_steps)]
    assert torch.load(workdir / "vae.ckpt", weights_only=False)["step"] == micro.vae_steps
    assert torch.load(workdir / "unet.ckpt", weights_only=False)["step"] == total
    assert (workdir / "latents.pt").stat().st_mtime_ns == latents_written  # the encoded dataset is reused
    assert (out / "model_index.json").exists()

    # Without --resume it starts again from step 0.
    steps_run.clear()
    run_micro(workdir, out)
    assert steps_run[0] == (0, micro.vae_steps)


def test_training_saves_under_runs_by_default_and_into_assets_only_when_asked(tmp_path):
    assert train.DEFAULT_OUT == Path("runs/tiny-sd")  # git-ignored
    shipped = train.EMBEDDED_MODEL_DIR
    before = {p: p.stat().st_mtime_ns for p in shipped.rglob("*")}
    for out in (shipped, shipped.parent / "another-model"):
        with pytest.raises(SystemExit):  # argparse's error: a quick run never overwrites the shipped model
            run_micro(tmp_path / "work", out)
    assert {p: p.stat().st_mtime_ns for p in shipped.rglob("*")} == before
    assert not (shipped.parent / "another-model").exists()


def test_the_v3_recipe_trains_end_to_end_at_128_with_two_shape_captions(tmp_path):
    out = tmp_path / "v3"
    train.main(["--preset", "v3-micro", "--workdir", str(tmp_path / "work"), "--out", str(out), "--threads", "1",
                "--device", "cpu"])
    pipe = StableDiffusionPipeline.from_pretrained(out, local_files_only=True, safety_checker=None,
                                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    prompt = "a red circle to the left of a big blue square"
    image = pipe(prompt, num_inference_steps=2, guidance_scale=3.0, output_type="np",
                 generator=torch.Generator().manual_seed(0)).images[0]
    assert image.shape == (128, 128, 3) and np.isfinite(image).all()
    assert pipe.unet.config.sample_size == 16 and pipe.unet.config.down_block_types[0] == "DownBlock2D"
    ids = pipe.tokenizer(prompt).input_ids
    assert len(ids) == len(prompt.split()) + 2  # every word one token, start and end: fits its 24 positions
    assert pipe.tokenizer.model_max_length == 24 == pipe.text_encoder.config.max_position_embeddings
    recommended = json.loads((out / RECOMMENDED_FILE).read_text())
    assert recommended["height"] == recommended["width"] == 128


def test_two_shape_captions_say_the_picture_either_way_round_and_never_a_held_out_pair():
    import random

    from sdviz.toy import world

    cfg = train.PRESETS["v3"]
    rng = random.Random(0)
    scene = dataclasses.asdict(world.PairScene(world.Shape("red", "circle", 0.3, 0.5, 0.1),
                                               world.Shape("green", "square", 0.7, 0.5, 0.1), "left", (240,) * 3))
    said = {train.random_caption(rng, scene, cfg, caption_noise=0.0) for _ in range(200)}
    assert said == {"", "a red circle to the left of a green square", "a green square to the right of a red circle"}
    for _ in range(500):
        drawn = dataclasses.asdict(world.random_pair_scene(rng, exclude_held_out=True))
        caption = train.random_caption(rng, drawn, cfg, caption_noise=0.5)
        for (c1, s1), (c2, s2) in world.PAIR_HELD_OUT:
            for a, b in (((c1, s1), (c2, s2)), ((c2, s2), (c1, s1))):
                assert not (caption.startswith(f"a {a[0]} {a[1]} ") and caption.endswith(f" a {b[0]} {b[1]}"))
