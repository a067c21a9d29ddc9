"""The command line: the files it writes, and how it treats bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import torch
from diffusers import StableDiffusionPipeline
from PIL import Image

from sdviz.cli import main
from sdviz.pipeline.schedulers import make_scheduler


def test_generate_writes_final_settings_and_trace(tiny_model, tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["generate", "--prompt", "a red circle", "--model", str(tiny_model_dir), "--steps", "4",
                 "--guidance-scale", "6", "--seed", "5", "--scheduler", "euler", "--height", "32", "--width", "32",
                 "--out", str(out)])
    assert code == 0
    image = Image.open(out / "final.png")
    pipe = StableDiffusionPipeline(**{**tiny_model.pipe.components, "scheduler": make_scheduler(tiny_model, "euler")})
    expected = pipe("a red circle", num_inference_steps=4, guidance_scale=6.0, height=32, width=32,
                    generator=torch.Generator().manual_seed(5)).images[0]
    assert np.array_equal(np.asarray(image), np.asarray(expected))

    settings = json.loads((out / "settings.json").read_text())
    assert settings["seed"] == 5 and settings["scheduler"] == "euler" and settings["steps"] == 4
    assert settings["model"] == str(tiny_model_dir)
    trace = np.load(out / "trace.npz")
    assert trace["timesteps"].shape == (4,)
    assert trace["latents"].shape == (5, 4, 16, 16)
    assert trace["pred_x0"].shape == trace["noise_guided"].shape == (4, 4, 16, 16)


def test_settings_json_reproduces_the_run(tiny_model_dir, tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    main(["generate", "--prompt", "a blue square", "--model", str(tiny_model_dir), "--steps", "3", "--seed", "9",
          "--height", "32", "--width", "32", "--out", str(first)])
    s = json.loads((first / "settings.json").read_text())
    main(["generate", "--prompt", s["prompt"], "--model", s["model"], "--steps", str(s["steps"]), "--seed",
          str(s["seed"]), "--guidance-scale", str(s["guidance_scale"]), "--scheduler", s["scheduler"],
          "--height", str(s["height"]), "--width", str(s["width"]), "--out", str(second)])
    assert (first / "final.png").read_bytes() == (second / "final.png").read_bytes()


def test_img2img_from_the_command_line(tiny_model_dir, tmp_path):
    start = tmp_path / "start.png"
    Image.new("RGBA", (50, 40), (200, 30, 30, 128)).save(start)
    out = tmp_path / "run"
    assert main(["generate", "--prompt", "a red circle", "--model", str(tiny_model_dir), "--steps", "4",
                 "--init-image", str(start), "--strength", "0.5", "--scheduler", "ddim", "--height", "32", "--width", "32",
                 "--out", str(out)]) == 0
    assert np.load(out / "trace.npz")["timesteps"].shape == (2,)
    assert Image.open(out / "init.png").size == (32, 32)


def test_bad_input_prints_one_line_and_exits_nonzero_without_traceback(tiny_model_dir, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "sdviz", "generate", "--prompt", "x", "--model", str(tiny_model_dir),
         "--steps", "0", "--out", str(tmp_path / "o")],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    assert "error: Steps must be a whole number from 1 to 500" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "o").exists()


def test_small_models_run_on_one_cpu_thread_in_the_cli_and_the_app_alike(tiny_model, monkeypatch):
    from sdviz.pipeline import models

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert models.cpu_threads(tiny_model) == 1  # a tiny U-Net on the CPU
    monkeypatch.setattr(models, "SMALL_UNET_PARAMETERS", 0)
    assert models.cpu_threads(tiny_model) == models._DEFAULT_THREADS  # a big one: torch's default
    monkeypatch.setattr(models, "SMALL_UNET_PARAMETERS", 50_000_000)
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert models.cpu_threads(tiny_model) == models._DEFAULT_THREADS  # the operator's choice wins
