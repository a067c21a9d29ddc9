"""Export: a run as one zip, from the app and from the command line."""

from __future__ import annotations

import dataclasses
import io
import json
import zipfile

import numpy as np
import pytest
from PIL import Image

from sdviz.cli import main
from sdviz.errors import SdvizError
from sdviz.lessons.export import SLIDE_SIDE, bundle_name, for_slides, step_folder, write_bundle
from sdviz.pipeline import vae
from sdviz.pipeline.sampler import generate
from sdviz.pipeline.settings import RunSettings

SETTINGS = RunSettings(prompt="a red circle", steps=3, guidance_scale=5.0, seed=2)


def test_the_zip_holds_the_trace_files_and_every_steps_panels(tiny_model, tmp_path):
    trace = generate(tiny_model, SETTINGS)
    path = write_bundle(tiny_model, trace, tmp_path / "sub" / "run.zip")
    saved = trace.save(tmp_path / "saved")
    with zipfile.ZipFile(path) as zf:
        names = set(zf.namelist())
        assert {"final.png", "settings.json", "trace.npz", "animation.gif", "schedule.png", "README.txt"} <= names
        assert zf.read("final.png") == (saved / "final.png").read_bytes()
        assert json.loads(zf.read("settings.json")) == json.loads((saved / "settings.json").read_text())
        arrays = np.load(io.BytesIO(zf.read("trace.npz")))
        for key, value in trace.arrays().items():
            assert np.array_equal(arrays[key], value, equal_nan=True)
        gif = Image.open(io.BytesIO(zf.read("animation.gif")))
        assert gif.n_frames == len(trace.steps) + 1
        for record in trace.steps:
            folder = step_folder(record.index, record.timestep)
            for name in ("x_t.png", "x_t_rgb.png", "pred_x0_rgb.png", "noise_uncond.png", "noise_text.png",
                         "guidance_direction.png", "noise_guided.png", "numbers.md"):
                assert f"{folder}/{name}" in names
            assert Image.open(io.BytesIO(zf.read(f"{folder}/x_t.png"))).mode == "RGB"
        assert "a red circle" in zf.read("README.txt").decode()
    assert len([n for n in names if n.startswith("steps/") and n.endswith("x_t.png")]) == len(trace.steps)


def test_the_zip_holds_real_large_vae_decodes_of_every_step_and_says_why_pndm_ran_one_more(tiny_model, tmp_path):
    trace = generate(tiny_model, SETTINGS)  # the tiny model's PNDM: 3 steps asked, 4 ran
    with zipfile.ZipFile(write_bundle(tiny_model, trace, tmp_path / "run.zip")) as zf:
        for record in trace.steps:
            folder = step_folder(record.index, record.timestep)
            for name, latents in (("x_t_decode.png", record.latents), ("x0_decode.png", record.pred_x0)):
                picture = Image.open(io.BytesIO(zf.read(f"{folder}/{name}")))
                assert min(picture.size) >= SLIDE_SIDE  # 32x32 pictures, enlarged 16x with sharp pixels
                expected = for_slides(vae.decode_to_pil(tiny_model, latents))
                assert np.array_equal(np.asarray(picture.convert("RGB")), np.asarray(expected))
        readme = zf.read("README.txt").decode()
        gif = Image.open(io.BytesIO(zf.read("animation.gif")))
    assert "3 steps were asked for and 4 ran: the PNDM scheduler" in readme
    assert "enlarged 16x from 32x32" in readme
    assert gif.n_frames == len(trace.steps) + 1 and gif.width >= 2 * 256


def test_without_guidance_there_is_no_unconditional_panel(tiny_model, tmp_path):
    trace = generate(tiny_model, dataclasses.replace(SETTINGS, guidance_scale=1.0))
    with zipfile.ZipFile(write_bundle(tiny_model, trace, tmp_path / "run.zip")) as zf:
        names = zf.namelist()
    assert not any(n.endswith("noise_uncond.png") or n.endswith("guidance_direction.png") for n in names)
    assert sum(n.endswith("noise_text.png") for n in names) == len(trace.steps)


def test_a_bundle_must_be_a_zip(tiny_model, tmp_path):
    trace = generate(tiny_model, dataclasses.replace(SETTINGS, steps=1))
    with pytest.raises(SdvizError, match=".zip"):
        write_bundle(tiny_model, trace, tmp_path / "run.tar")
    assert bundle_name(trace) == "sdviz-seed2-g5-1steps.zip"


def test_cli_bundle_writes_the_same_zip(tiny_model_dir, tmp_path):
    out, bundle = tmp_path / "out", tmp_path / "run.zip"
    code = main(["generate", "--prompt", "a red circle", "--model", str(tiny_model_dir), "--steps", "3", "--seed", "2",
                 "--guidance-scale", "5", "--out", str(out), "--bundle", str(bundle)])
    assert code == 0
    with zipfile.ZipFile(bundle) as zf:
        assert zf.read("final.png") == (out / "final.png").read_bytes()
        ours, theirs = np.load(io.BytesIO(zf.read("trace.npz"))), np.load(out / "trace.npz")
        assert set(ours.files) == set(theirs.files)
        assert all(np.array_equal(ours[k], theirs[k], equal_nan=True) for k in ours.files)
        # one folder of panels per loop pass (PNDM makes one more pass than steps asked for)
        assert sum(n.endswith("/x_t.png") for n in zf.namelist()) == len(theirs["timesteps"]) == 4


def test_cli_refuses_a_bundle_that_is_not_a_zip_before_running(tiny_model_dir, tmp_path, capsys):
    code = main(["generate", "--model", str(tiny_model_dir), "--steps", "1", "--out", str(tmp_path / "o"),
                 "--bundle", str(tmp_path / "run.txt")])
    assert code == 2
    assert ".zip" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
