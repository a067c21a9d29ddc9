"""Evaluate a model on the toy world: ``python -m sdviz.toy.evaluate [--model PATH] [--markdown docs/evaluation.md]``.

What it measures, in order:
1. **Held-out prompts.** Colour/shape/position combinations the model never saw in training
   (``world.HELD_OUT``), each captioned without a size word and with "small" and "big", several
   seeds, at the model's recommended settings. The pixel judge (:mod:`sdviz.toy.judge`) says what each
   picture shows; we count how often each attribute the caption names is right. A picture that is
   not one clear shape (blank, mush, several blobs) counts as wrong on every attribute.
2. **Guidance.** The same prompts and seeds at guidance 1 (no CFG), 2, 4, 7.5 and 12 (and the
   recommended scale): the classroom version of the classifier-free-guidance trade-off.
3. **Two-shape prompts** (a model trained on two-shape scenes): object pairs never seen together in training
   (``world.PAIR_HELD_OUT``) in every relation. Per picture: both shapes found, both right (colour and shape),
   and the relation right where both are found; and the **attention figure**: in how many pictures each colour
   word's cross-attention falls mostly on its own shape rather than the other (the judge's masks).
4. **The VAE.** Reconstruction PSNR on fresh toy pictures: how much the latent space loses.
5. **Speed.** Median time of a default generation, and of loading the model.

Every picture comes from the same loop the app and the CLI use (:mod:`sdviz.pipeline.sampler`): a prompt's seeds
go through it as one batch (``generate_batch``: each picture within 1/255 of its lone run), the attention
pictures and the speed runs one at a time.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from tqdm import tqdm

from sdviz.errors import SdvizError
from sdviz.pipeline import models, vae
from sdviz.pipeline.capture import AttentionMaps, capture_run
from sdviz.pipeline.sampler import generate, generate_batch
from sdviz.pipeline.schedulers import scheduler_name
from sdviz.pipeline.settings import RunSettings
from sdviz.toy import model as toy_model
from sdviz.toy import world
from sdviz.toy.judge import PairVerdict, Verdict, judge, judge_pair

GUIDANCE_SCALES = (1.0, 2.0, 4.0, 7.5, 12.0)
SIZE_WORDS = (None, "small", "big")  # the caption forms: no size word, then each size
ATTRIBUTES = ("colour", "shape", "position", "size")
# Seeds per prompt. One seed's starting noise shapes all its pictures alike, so the seed count matters more
# than the prompt count: with seeds 0-3 an earlier model scored colour 93% and position 98%, with seeds 4-9
# 85% and 89%, with 10-15 83% and 81%.
DEFAULT_SEEDS = 12
PSNR_SEED = 20_251_127  # fresh pictures: training draws its pictures from seeds 0..7007
PSNR_PICTURES = 200
SPEED_PROMPT = "a big red circle on the left"
IMAGES_DIR = Path(__file__).resolve().parents[2] / "docs" / "images"
MARK_BEGIN, MARK_END = "<!-- sdviz.toy.evaluate: begin -->", "<!-- sdviz.toy.evaluate: end -->"


@dataclass(frozen=True)
class Prompt:
    """A held-out prompt and the attributes its picture should show (size None: the caption has no size word)."""

    colour: str
    shape: str
    position: str
    size: str | None

    @property
    def text(self) -> str:
        return world.caption(self.colour, self.shape, self.size, self.position)


@dataclass(frozen=True)
class Judgement:
    prompt: Prompt
    seed: int
    guidance_scale: float
    verdict: Verdict
    image: Image.Image

    @property
    def correct(self) -> dict[str, bool]:
        """Each attribute the caption names: does the picture show it?"""
        p = self.prompt
        return self.verdict.agrees(colour=p.colour, shape=p.shape, position=p.position, size=p.size)

    def record(self) -> dict:
        verdict = dataclasses.asdict(self.verdict)
        return {"prompt": self.prompt.text, "seed": self.seed, "guidance_scale": self.guidance_scale,
                "correct": self.correct, "verdict": {k: v for k, v in verdict.items() if v != math.inf}}


def held_out_prompts(quick: bool = False) -> list[Prompt]:
    """Every held-out combination in every caption form (--quick: three combinations, two forms)."""
    combos = world.HELD_OUT[:3] if quick else world.HELD_OUT
    sizes = (None, "big") if quick else SIZE_WORDS
    return [Prompt(c, s, p, z) for z in sizes for c, s, p in combos]


def generate_and_judge(model, prompts: list[Prompt], seeds: list[int], guidance_scale: float, steps: int,
                       bar: tqdm | None = None) -> list[Judgement]:
    judgements = []
    for prompt in prompts:  # a prompt's seeds go through the loop as one batch
        settings = [RunSettings(prompt=prompt.text, steps=steps, guidance_scale=guidance_scale, seed=seed)
                    for seed in seeds]
        for seed, trace in zip(seeds, generate_batch(model, settings), strict=True):
            judgements.append(Judgement(prompt, seed, guidance_scale, judge(trace.image), trace.image))
        if bar is not None:
            bar.update(len(seeds))
    return judgements


def accuracy(judgements: list[Judgement]) -> dict[str, float | int | None]:
    """Share of pictures right on each attribute (size: only where the caption names it), on all, and clean."""
    result: dict[str, float | int | None] = {}
    for attribute in ATTRIBUTES:
        marks = [j.correct[attribute] for j in judgements if attribute in j.correct]
        result[attribute] = float(np.mean(marks)) if marks else None
    result["all"] = float(np.mean([all(j.correct.values()) for j in judgements]))
    result["clean"] = float(np.mean([j.verdict.clear for j in judgements]))
    result["n"] = len(judgements)
    return result


# -- two-shape prompts ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class PairPrompt:
    """A held-out object pair in one relation: the caption's first (colour, shape), relation, second."""

    first: tuple[str, str]
    relation: str
    second: tuple[str, str]

    @property
    def text(self) -> str:
        return world.pair_caption(self.first, self.relation, self.second)


@dataclass(frozen=True)
class PairJudgement:
    prompt: PairPrompt
    seed: int
    guidance_scale: float
    verdict: PairVerdict
    image: Image.Image
    attention: dict[str, bool] | None = None  # per colour word: is its attention mostly on its own shape?

    @property
    def correct(self) -> dict[str, bool]:
        return self.verdict.agrees(self.prompt.first, self.prompt.second, self.prompt.relation)

    def record(self) -> dict:
        return {"prompt": self.prompt.text, "seed": self.seed, "guidance_scale": self.guidance_scale,
                "correct": self.correct, "found": self.verdict.found, "problems": list(self.verdict.problems),
                "attention": self.attention}


def knows_pairs(model) -> bool:
    """Whether the model's tokenizer reads every two-shape caption word as one token (a model trained on pairs)."""
    return toy_model.reads_pairs(model.tokenizer)


def pair_prompts(quick: bool = False) -> list[PairPrompt]:
    """Every held-out pair in every relation (--quick: two pairs, two relations)."""
    pairs = world.PAIR_HELD_OUT[:2] if quick else world.PAIR_HELD_OUT
    relations = ("and", "left") if quick else tuple(world.RELATIONS)
    return [PairPrompt(a, r, b) for r in relations for a, b in pairs]


def attention_on_own_shape(maps: AttentionMaps, prompt: PairPrompt, verdict: PairVerdict) -> dict[str, bool] | None:
    """For each colour word: does more of its cross-attention (over the whole run) fall on its own shape than on
    the other? None when the picture does not show the two shapes asked for."""
    if not verdict.found or not verdict.agrees(prompt.first, prompt.second, "and")["shapes"]:
        return None
    i, j = verdict.assign(prompt.first, prompt.second)
    result = {}
    for colour, own, other in ((prompt.first[0], i, j), (prompt.second[0], j, i)):
        heat = Image.fromarray(maps.overall[maps.labels.index(colour)].astype(np.float32))  # [h, w], latent grid
        heat = np.asarray(heat.resize(verdict.masks[own].shape[::-1], Image.Resampling.BILINEAR))
        result[colour] = float((heat * verdict.masks[own]).sum()) > float((heat * verdict.masks[other]).sum())
    return result


def generate_and_judge_pairs(model, prompts: list[PairPrompt], seeds: list[int], guidance_scale: float, steps: int,
                             with_attention: bool = False, bar: tqdm | None = None) -> list[PairJudgement]:
    judgements = []
    for prompt in prompts:
        settings = [RunSettings(prompt=prompt.text, steps=steps, guidance_scale=guidance_scale, seed=seed)
                    for seed in seeds]
        if with_attention:  # captured one run at a time; capture changes no picture (tests/test_attention.py)
            runs = [capture_run(model, s) for s in settings]
        else:  # a prompt's seeds as one batch
            runs = [(trace, None) for trace in generate_batch(model, settings)]
        for seed, (trace, maps) in zip(seeds, runs, strict=True):
            verdict = judge_pair(trace.image)
            attention = attention_on_own_shape(maps, prompt, verdict) if maps is not None else None
            judgements.append(PairJudgement(prompt, seed, guidance_scale, verdict, trace.image, attention))
        if bar is not None:
            bar.update(len(seeds))
    return judgements


def pair_accuracy(judgements: list[PairJudgement]) -> dict[str, float | int | None]:
    """Both shapes found; both right; relation right where both are found; attention on its own shape."""
    found = [j for j in judgements if j.verdict.found]
    spatial = [j for j in found if j.prompt.relation != "and"]
    attended = [j.attention for j in judgements if j.attention is not None]
    return {
        "found": float(np.mean([j.verdict.found for j in judgements])) if judgements else None,
        "shapes": float(np.mean([j.correct["shapes"] for j in judgements])) if judgements else None,
        "relation": float(np.mean([j.correct["relation"] for j in spatial])) if spatial else None,
        "attention_words": float(np.mean([ok for a in attended for ok in a.values()])) if attended else None,
        "attention_both": float(np.mean([all(a.values()) for a in attended])) if attended else None,
        "attention_pictures": len(attended),
        "n": len(judgements),
    }


def seed_spread(judgements: list[Judgement]) -> dict[str, list[float]]:
    """Each attribute's lowest and highest accuracy over the seeds, each seed's pictures taken on their own.

    The starting noise shapes every picture of a seed alike (where the shape lands, how big it is), so the
    pictures of one seed are not independent draws: this spread says how much a few seeds can mislead."""
    seeds = sorted({j.seed for j in judgements})
    by_seed = [accuracy([j for j in judgements if j.seed == seed]) for seed in seeds]
    return {a: [min(r[a] for r in by_seed), max(r[a] for r in by_seed)]
            for a in (*ATTRIBUTES, "all") if all(r[a] is not None for r in by_seed)}


def vae_psnr(model, n: int = PSNR_PICTURES, seed: int = PSNR_SEED, pair_fraction: float = 0.0) -> dict:
    """Encode and decode ``n`` fresh toy pictures (``pair_fraction`` of them two-shape scenes); PSNR (dB) of the
    8-bit result against the original."""
    rng = random.Random(seed)
    side = model.recommended.width
    scores = []
    for _ in range(n):
        scene = world.random_pair_scene(rng) if pair_fraction and rng.random() < pair_fraction else world.random_scene(rng)
        picture = world.draw_scene(scene, size=side)
        latents = vae.encode(model, picture, generator=None)  # the posterior's mean, no sampling noise
        decoded = vae.decode_to_pil(model, latents)
        error = np.mean((np.asarray(decoded, dtype=np.float64) - np.asarray(picture, dtype=np.float64)) ** 2)
        scores.append(10 * math.log10(255**2 / max(error, 1e-10)))
    return {"mean_db": float(np.mean(scores)), "min_db": float(np.min(scores)), "pictures": n, "seed": seed,
            "side": side}


def generation_seconds(model, steps: int, guidance_scale: float, runs: int) -> dict:
    """Median wall time of one default text-to-image run, after a warm-up run."""
    settings = RunSettings(prompt=SPEED_PROMPT, steps=steps, guidance_scale=guidance_scale, seed=0)
    trace = generate(model, settings)  # warm-up: first-call allocations, lazy imports
    times = []
    for seed in range(runs):
        started = time.perf_counter()
        generate(model, dataclasses.replace(settings, seed=seed))
        times.append(time.perf_counter() - started)
    return {"median_s": statistics.median(times), "min_s": min(times), "runs": runs, "steps": steps,
            "guidance_scale": guidance_scale, "cfg": trace.guidance, "height": trace.height, "width": trace.width}


_LOAD_SNIPPET = """
import sys, time
started = time.perf_counter()
import torch
torch.set_num_threads(int(sys.argv[3]))
from diffusers import StableDiffusionPipeline
from sdviz.pipeline.models import load_model
imported = time.perf_counter()
load_model(sys.argv[1], device=sys.argv[2])
print(imported - started, time.perf_counter() - imported)
"""


def load_seconds(name: str, device: torch.device, runs: int) -> dict:
    """Model load times, each the median of ``runs``.

    - cold: ``load_model`` in a fresh Python process (diffusers already imported there);
    - imports: what that process spent importing torch, diffusers and transformers first;
    - warm: ``load_model`` again in this process after dropping the model from ``models._cache``.
    """
    package_root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([package_root, os.environ.get("PYTHONPATH", "")])}
    imports, cold = [], []
    for _ in range(runs):
        done = subprocess.run([sys.executable, "-c", _LOAD_SNIPPET, name, str(device), str(torch.get_num_threads())],
                              capture_output=True, text=True, env=env, timeout=300)
        if done.returncode != 0:
            raise SdvizError(f"Loading {name!r} in a fresh process failed:\n{done.stderr[-2000:]}")
        seconds = [float(x) for x in done.stdout.strip().splitlines()[-1].split()]
        imports.append(seconds[0])
        cold.append(seconds[1])
    warm = []
    for _ in range(runs):
        for key in [k for k in models._cache if k[0] == name]:
            del models._cache[key]  # forget the loaded model: the next load reads the folder again
        started = time.perf_counter()
        models.load_model(name, device=device)
        warm.append(time.perf_counter() - started)
    return {"cold_median_s": statistics.median(cold), "imports_median_s": statistics.median(imports),
            "warm_median_s": statistics.median(warm), "runs": runs}


# -- pictures for people ------------------------------------------------------------------------------
TILE = 128  # each picture is shown 128 pixels wide (a 64x64 one 2x), pixels kept sharp
GAP = 4  # white space between tiles
LABEL = 46


def save_prompt_grid(judgements: list[Judgement], path: Path, columns: int) -> Path:
    """One tile per judgement: the picture, what was asked, and what the judge saw (green: right)."""
    def label(j: Judgement) -> tuple[str, str, str, str]:
        p = j.prompt
        return (f"{p.size or ''} {p.colour} {p.shape}".strip(), world.POSITIONS[p.position][0], _seen(j),
                _mark_colour(j))

    return _save_tiles(judgements, label, path, columns)


def _save_tiles(judgements: list, label: Callable, path: Path, columns: int) -> Path:
    """The pictures in a grid of ``columns``, each with three lines under it: ``label(j)`` gives two lines of what
    was asked, then what the judge saw and its colour."""
    font = ImageFont.load_default(size=11)
    rows = math.ceil(len(judgements) / columns)
    grid = Image.new("RGB", (columns * (TILE + GAP), rows * (TILE + LABEL)), "white")
    pen = ImageDraw.Draw(grid)
    for i, j in enumerate(judgements):
        x, y = (i % columns) * (TILE + GAP), (i // columns) * (TILE + LABEL)
        grid.paste(j.image.resize((TILE, TILE), Image.Resampling.NEAREST), (x, y))
        asked, asked_more, seen, mark = label(j)
        pen.text((x + 3, y + TILE + 2), asked, fill="black", font=font)
        pen.text((x + 3, y + TILE + 15), asked_more, fill="black", font=font)
        pen.text((x + 3, y + TILE + 29), seen, fill=mark, font=font)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
    return path


def save_guidance_grid(by_scale: dict[float, list[Judgement]], path: Path) -> Path:
    """Rows: guidance scales; columns: the same prompts and seed. Shows what CFG does to a picture."""
    font = ImageFont.load_default(size=11)
    margin = 52
    scales = sorted(by_scale)
    columns = len(by_scale[scales[0]])
    stride = TILE + GAP
    grid = Image.new("RGB", (margin + columns * stride, LABEL - 16 + len(scales) * (TILE + 16)), "white")
    pen = ImageDraw.Draw(grid)
    for c, j in enumerate(by_scale[scales[0]]):
        pen.text((margin + c * stride + 3, 2), f"{j.prompt.colour} {j.prompt.shape}", fill="black", font=font)
        pen.text((margin + c * stride + 3, 15), world.POSITIONS[j.prompt.position][0], fill="black", font=font)
    for r, g in enumerate(scales):
        y = LABEL - 16 + r * (TILE + 16)
        pen.text((4, y + TILE // 2 - 6), f"g = {g:g}", fill="black", font=font)
        for c, j in enumerate(by_scale[g]):
            grid.paste(j.image.resize((TILE, TILE), Image.Resampling.NEAREST), (margin + c * stride, y))
            pen.text((margin + c * stride + 3, y + TILE + 1), _seen(j), fill=_mark_colour(j), font=font)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
    return path


def save_pair_grid(judgements: list[PairJudgement], path: Path, columns: int) -> Path:
    """One tile per two-shape judgement: the picture, the caption, and what the judge saw (green: all right)."""
    def label(j: PairJudgement) -> tuple[str, str, str, str]:
        (c1, s1), (c2, s2) = j.prompt.first, j.prompt.second
        if not j.verdict.found:
            seen, mark = (j.verdict.problems or ("not two clear shapes",))[0].split(" (")[0], "darkorange"
        else:
            seen = " + ".join(f"{v.colour} {v.shape}" for v in j.verdict.shapes)
            mark = "green" if all(j.correct.values()) else "red"
        return f"{c1} {s1} {world.RELATIONS[j.prompt.relation]}", f"{c2} {s2}", seen[:24], mark

    return _save_tiles(judgements, label, path, columns)


def _seen(j: Judgement) -> str:
    if not j.verdict.clear:
        return j.verdict.problems[0].split(" (")[0]  # orange: not one clear shape
    wrong = [f"{getattr(j.verdict, a)}" for a, ok in j.correct.items() if not ok]
    return "right" if not wrong else "saw " + ", ".join(wrong)


def _mark_colour(j: Judgement) -> str:
    if not j.verdict.clear:
        return "darkorange"
    return "green" if all(j.correct.values()) else "red"


# -- the report ---------------------------------------------------------------------------------------
def _percent(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.0f}%"


def markdown_report(results: dict, folder: Path = Path("docs")) -> str:
    """The results as markdown tables (the part of docs/evaluation.md between the markers).

    ``folder`` is where the markdown file lives: image links are relative to it.
    """
    rec, acc = results["settings"], results["recommended"]
    lines = [
        f"Model `{results['model']}`, {results['held_out_prompts']} held-out prompts x {len(results['seeds'])} "
        f"seed{'s' if len(results['seeds']) > 1 else ''} "
        f"= {acc['n']} pictures per guidance scale; {rec['steps']} steps, scheduler `{rec['scheduler']}`, "
        f"{rec['height']}x{rec['width']}. Measured {results['date']} on {results['machine']}.",
        "",
        f"**At the recommended guidance ({rec['guidance_scale']:g}):**",
        "",
        "| colour | shape | position | size (when named) | all named attributes | clean pictures |",
        "|---|---|---|---|---|---|",
        f"| {_percent(acc['colour'])} | {_percent(acc['shape'])} | {_percent(acc['position'])} | "
        f"{_percent(acc['size'])} | {_percent(acc['all'])} | {_percent(acc['clean'])} |",
    ]
    spread = results.get("recommended_seed_spread")
    if spread and len(results["seeds"]) > 1:
        ranges = ", ".join(f"{a} {_percent(lo)}-{_percent(hi)}" for a, (lo, hi) in spread.items())
        lines += ["", f"Seed to seed (each seed's {results['held_out_prompts']} pictures on their own, lowest-highest): "
                      f"{ranges}. A seed's starting noise shapes all its pictures alike, so few seeds can mislead."]
    lines += [
        "",
        "**Accuracy against guidance scale** (the same prompts and seeds; 1 = no classifier-free guidance):",
        "",
        "| guidance | colour | shape | position | size | all | clean |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in results["guidance"]:
        g = f"{row['guidance_scale']:g}" + (" (recommended)" if row["guidance_scale"] == rec["guidance_scale"] else "")
        lines.append(f"| {g} | {_percent(row['colour'])} | {_percent(row['shape'])} | {_percent(row['position'])} | "
                     f"{_percent(row['size'])} | {_percent(row['all'])} | {_percent(row['clean'])} |")
    if results.get("pairs"):
        lines += pair_report(results["pairs"], results["settings"]["guidance_scale"], len(results["seeds"]))
    psnr, gen, load = results["vae_psnr"], results["speed"]["generation"], results["speed"]["load"]
    lines += [
        "",
        "**VAE and speed:**",
        "",
        "| measure | value |",
        "|---|---|",
        f"| VAE reconstruction PSNR, {psnr['pictures']} fresh toy pictures | {psnr['mean_db']:.1f} dB mean, "
        f"{psnr['min_db']:.1f} dB worst |",
        f"| default generation ({gen['steps']} steps, {'with' if gen['cfg'] else 'without'} CFG, "
        f"{gen['height']}x{gen['width']}), median of {gen['runs']} | {gen['median_s']:.2f} s |",
        f"| model load (`load_model`) in a fresh Python process, median of {load['runs']} | "
        f"{load['cold_median_s']:.2f} s (+ {load['imports_median_s']:.1f} s importing torch and diffusers) |",
        f"| model load, warm process (`sdviz.pipeline.models._cache` cleared), median of {load['runs']} | "
        f"{load['warm_median_s']:.2f} s |",
    ]
    for name in results.get("images", []):
        link = Path(os.path.relpath(Path(name).resolve(), folder.resolve())).as_posix()
        lines += ["", f"![{Path(name).stem}]({link})"]
    return "\n".join(lines) + "\n"


def pair_report(pairs: dict, recommended: float, n_seeds: int) -> list[str]:
    """The two-shape tables: at the recommended guidance (with the attention figure) and against guidance."""
    acc = pairs["recommended"]
    lines = [
        "",
        f"**Two-shape prompts** ({pairs['prompts']} held-out pairs and relations x {n_seeds} seeds = {acc['n']} "
        f"pictures per scale), at the recommended guidance ({recommended:g}):",
        "",
        "| both shapes found | both shapes right (colour and shape) | relation right (where both found) | "
        "each colour word's attention mostly on its own shape | both colour words |",
        "|---|---|---|---|---|",
        f"| {_percent(acc['found'])} | {_percent(acc['shapes'])} | {_percent(acc['relation'])} | "
        f"{_percent(acc['attention_words'])} | {_percent(acc['attention_both'])} (of {acc['attention_pictures']} "
        "pictures showing both shapes right) |",
        "",
        "| guidance | found | both right | relation |",
        "|---|---|---|---|",
    ]
    for row in pairs["guidance"]:
        g = f"{row['guidance_scale']:g}" + (" (recommended)" if row["guidance_scale"] == recommended else "")
        lines.append(f"| {g} | {_percent(row['found'])} | {_percent(row['shapes'])} | {_percent(row['relation'])} |")
    return lines


def write_markdown(path: Path, section: str) -> None:
    """Put the section between the markers in ``path`` (added at the end if the file has none)."""
    block = f"{MARK_BEGIN}\n{section}{MARK_END}"
    if path.exists():
        text = path.read_text()
        if MARK_BEGIN in text and MARK_END in text:
            head, rest = text.split(MARK_BEGIN, 1)
            text = head + block + rest.split(MARK_END, 1)[1]
        else:
            text = text.rstrip("\n") + "\n\n" + block + "\n"
    else:
        text = f"# Evaluation\n\n{block}\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _print_summary(results: dict) -> None:
    acc, rec = results["recommended"], results["settings"]
    print(f"\nheld-out prompts at guidance {rec['guidance_scale']:g} ({acc['n']} pictures):")
    for key in (*ATTRIBUTES, "all", "clean"):
        print(f"  {key:9s} {_percent(acc[key]):>5s}")
    print("\naccuracy against guidance scale:")
    print(f"  {'guidance':>8s} " + " ".join(f"{k:>8s}" for k in (*ATTRIBUTES, "all", "clean")))
    for row in results["guidance"]:
        print(f"  {row['guidance_scale']:8g} " + " ".join(f"{_percent(row[k]):>8s}" for k in (*ATTRIBUTES, "all", "clean")))
    if results.get("pairs"):
        pairs = results["pairs"]["recommended"]
        print(f"\ntwo-shape prompts ({pairs['n']} pictures): found {_percent(pairs['found'])}, both right "
              f"{_percent(pairs['shapes'])}, relation {_percent(pairs['relation'])}, attention on its own shape "
              f"{_percent(pairs['attention_words'])} of colour words")
    psnr, gen, load = results["vae_psnr"], results["speed"]["generation"], results["speed"]["load"]
    print(f"\nVAE reconstruction PSNR: {psnr['mean_db']:.1f} dB mean, {psnr['min_db']:.1f} dB worst "
          f"({psnr['pictures']} fresh pictures)")
    print(f"default generation: {gen['median_s']:.3f} s median of {gen['runs']} ({gen['steps']} steps, "
          f"{'with' if gen['cfg'] else 'without'} CFG, {gen['height']}x{gen['width']}, {results['threads']} threads)")
    print(f"model load: {load['cold_median_s']:.2f} s in a fresh process (after {load['imports_median_s']:.1f} s "
          f"of imports), {load['warm_median_s']:.2f} s warm (median of {load['runs']})")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m sdviz.toy.evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="local pipeline folder or hub id (default: the embedded model)")
    parser.add_argument("--quick", action="store_true", help="a few prompts and runs: a smoke test in seconds")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per prompt (default 12; --quick: 1)")
    parser.add_argument("--steps", type=int, default=None, help="default: the model's recommended number")
    parser.add_argument("--device", default=None, help="cpu, cuda or mps (default: the best available)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's own)")
    parser.add_argument("--out", type=Path, default=None, help="write every number (and every verdict) as JSON")
    parser.add_argument("--markdown", type=Path, default=None, help="write the tables into this markdown file")
    parser.add_argument("--images", type=Path, default=None,
                        help=f"folder for the sample grids (default: {IMAGES_DIR} for a full run, none for --quick)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    n_seeds = args.seeds if args.seeds is not None else (1 if args.quick else DEFAULT_SEEDS)
    if n_seeds < 1:
        raise SdvizError("--seeds must be at least 1.")
    images_dir = args.images if args.images is not None else (None if args.quick else IMAGES_DIR)

    model = models.load_model(args.model, device=args.device)
    rec = model.recommended
    steps = args.steps or rec.steps
    prompts, seeds = held_out_prompts(args.quick), list(range(n_seeds))
    scales = sorted({*GUIDANCE_SCALES, rec.guidance_scale})
    by_scale: dict[float, list[Judgement]] = {}
    with tqdm(total=len(scales) * len(prompts) * len(seeds), desc="generating", unit="picture", file=sys.stderr) as bar:
        for g in [rec.guidance_scale] + [g for g in scales if g != rec.guidance_scale]:
            by_scale[g] = generate_and_judge(model, prompts, seeds, g, steps, bar)

    pairs = None
    if knows_pairs(model):
        two = pair_prompts(args.quick)
        pair_scales: dict[float, list[PairJudgement]] = {}
        with tqdm(total=len(scales) * len(two) * len(seeds), desc="two shapes", unit="picture", file=sys.stderr) as bar:
            for g in scales:  # attention captured at the recommended scale only
                pair_scales[g] = generate_and_judge_pairs(model, two, seeds, g, steps, g == rec.guidance_scale, bar)
        pairs = {"prompts": len(two), "recommended": pair_accuracy(pair_scales[rec.guidance_scale]),
                 "guidance": [{"guidance_scale": g, **pair_accuracy(pair_scales[g])} for g in scales]}

    print("measuring the VAE and the speed ...", file=sys.stderr)
    psnr = vae_psnr(model, n=20 if args.quick else PSNR_PICTURES, pair_fraction=0.5 if pairs is not None else 0.0)
    generation = generation_seconds(model, steps, rec.guidance_scale, runs=3 if args.quick else 10)
    load = load_seconds(model.name, model.device, runs=1 if args.quick else 3)
    model = models.load_model(args.model, device=args.device)  # timing the loads replaced the cached model

    results = {
        "model": model.name,
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()} {os.cpu_count()} CPU cores, {torch.get_num_threads()} torch threads, "
                   f"device {model.device}",
        "threads": torch.get_num_threads(),
        "quick": args.quick,
        "settings": {"steps": steps, "guidance_scale": rec.guidance_scale, "scheduler": scheduler_name(model.pipe.scheduler),
                     "height": rec.height, "width": rec.width},
        "held_out_prompts": len(prompts),
        "seeds": seeds,
        "recommended": accuracy(by_scale[rec.guidance_scale]),
        "recommended_seed_spread": seed_spread(by_scale[rec.guidance_scale]),
        "guidance": [{"guidance_scale": g, **accuracy(by_scale[g])} for g in scales],
        "pairs": pairs,
        "vae_psnr": psnr,
        "speed": {"generation": generation, "load": load},
        "images": [],
    }
    if images_dir is not None:
        first_seed = [j for j in by_scale[rec.guidance_scale] if j.seed == seeds[0]]
        results["images"].append(str(save_prompt_grid(first_seed, images_dir / "eval_grid.png",
                                                      columns=len(prompts) // len({p.size for p in prompts}))))
        no_size = {g: [j for j in js if j.seed == seeds[0] and j.prompt.size is None] for g, js in by_scale.items()}
        results["images"].append(str(save_guidance_grid(no_size, images_dir / "eval_guidance.png")))
        if pairs is not None:
            first_pairs = [j for j in pair_scales[rec.guidance_scale] if j.seed == seeds[0]]
            results["images"].append(str(save_pair_grid(first_pairs, images_dir / "eval_pairs.png",
                                                        columns=len({(j.prompt.first, j.prompt.second) for j in first_pairs}))))
    _print_summary(results)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        details = [j.record() for js in by_scale.values() for j in js]
        if pairs is not None:
            details += [j.record() for js in pair_scales.values() for j in js]
        args.out.write_text(json.dumps({**results, "pictures": details}, indent=1) + "\n")
        print(f"wrote {args.out}")
    if args.markdown is not None:
        write_markdown(args.markdown, markdown_report(results, args.markdown.parent))
        print(f"wrote {args.markdown}")
    return results


if __name__ == "__main__":
    try:
        main()
    except SdvizError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
