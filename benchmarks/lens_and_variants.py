"""What the page's two sentences on Diffusion Lens and the guidance variants say, measured on the embedded model.

For 12 prompts of the toy world at seeds 0-2 (lens) and 0-1 (variants), 20 steps, the default scheduler, it counts the
pictures the pixel judge (``sdviz.toy.judge``) finds fully right:

- Diffusion Lens at guidance 2: the U-Net reading text layer 1, 2 or 3 (the last: the usual run), and which attribute
  (colour, shape, size, position) the judge finds wrong;
- the guidance variants at g = 2 and 7.5: plain CFG, rescale 0.7, CFG on the first half / the middle half / the last
  half of the steps, with the mean RMS pixel difference from plain CFG.

    OMP_NUM_THREADS=1 python benchmarks/lens_and_variants.py      # 348 runs, about 2 minutes on 1 CPU thread
"""

from __future__ import annotations

import collections
import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from sdviz.lessons.experiments import judge_accuracy, pixel_distance, prompt_attributes  # noqa: E402
from sdviz.pipeline.models import load_model  # noqa: E402
from sdviz.pipeline.sampler import generate  # noqa: E402
from sdviz.pipeline.settings import RunSettings  # noqa: E402
from sdviz.toy.judge import judge  # noqa: E402

PROMPTS = ["a big red circle on the left", "a small blue square at the top", "a yellow triangle",
           "a green square on the right", "a purple circle at the bottom", "a big orange triangle in the center",
           "a small red square", "a blue circle on the right", "a big green triangle at the top",
           "a small purple square on the left", "a orange circle", "a yellow square at the bottom"]
VARIANTS = {"plain": {}, "rescale 0.7": dict(guidance_rescale=0.7), "first half": dict(guidance_end=0.5),
            "middle half": dict(guidance_start=0.25, guidance_end=0.75), "last half": dict(guidance_start=0.5)}


def lens(model) -> None:
    right, wrong, n = collections.Counter(), collections.Counter(), 0
    for prompt in PROMPTS:
        for seed in range(3):
            n += 1
            for layer in (1, 2, 3):
                image = generate(model, RunSettings(prompt=prompt, steps=20, guidance_scale=2.0, seed=seed,
                                                    text_layer=layer)).image
                verdict = judge(image)
                wanted = prompt_attributes(prompt)
                agrees = verdict.agrees(**wanted) if verdict.clear else {k: False for k in wanted}
                right[layer] += all(agrees.values())
                wrong.update(f"layer {layer}: {k}" for k, ok in agrees.items() if not ok)
    print(f"Diffusion Lens, g = 2, {n} prompt-seed pairs: fully right per layer {dict(right)}; wrong {dict(wrong)}")


def variants(model) -> None:
    for g in (2.0, 7.5):
        right, distances = collections.Counter(), collections.defaultdict(list)
        for prompt in PROMPTS:
            for seed in range(2):
                base = RunSettings(prompt=prompt, steps=20, guidance_scale=g, seed=seed)
                plain = None
                for name, change in VARIANTS.items():
                    image = generate(model, dataclasses.replace(base, **change)).image
                    plain = plain or image
                    right[name] += judge_accuracy(image, prompt) == 1
                    distances[name].append(pixel_distance(image, plain))
        means = {k: round(sum(v) / len(v), 3) for k, v in distances.items()}
        print(f"variants, g = {g:g}, {2 * len(PROMPTS)} pairs: fully right {dict(right)}; mean RMS from plain {means}")


if __name__ == "__main__":
    embedded = load_model("embedded")
    lens(embedded)
    variants(embedded)
