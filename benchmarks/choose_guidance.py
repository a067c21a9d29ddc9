"""Choose the embedded model's recommended guidance scale without looking at the evaluation's pictures.

`python -m sdviz.toy.evaluate` reports accuracy on held-out prompts (colour + shape + position combinations
training never shows) at seeds 0-11. Picking the guidance scale from that table would tune on the test.
This script asks for 9 random combinations that training *does* show, in the same three caption forms,
at seeds 100-107, and prints the same accuracies for a few guidance scales; the recommended scale in
`sdviz_recommended.json` (and `TrainConfig.recommended`) is the one with the best "all" here.

    python benchmarks/choose_guidance.py                    # 2, 2.5 and 3: 648 pictures, about 5 minutes
    python benchmarks/choose_guidance.py --scales 1.5 2 2.5 --model runs/tiny-sd
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from sdviz.pipeline.models import EMBEDDED_MODEL_DIR, load_model  # noqa: E402
from sdviz.toy import evaluate, world  # noqa: E402

SEEDS = list(range(100, 108))


def validation_prompts(count: int = 9, seed: int = 123) -> list[evaluate.Prompt]:
    """`count` random colour + shape + position combinations seen in training, each in every caption form."""
    rng = random.Random(seed)
    combos: set[tuple[str, str, str]] = set()
    while len(combos) < count:
        combo = (rng.choice(list(world.COLOURS)), rng.choice(list(world.SHAPES)),
                 rng.choice(list(world.POSITIONS)))
        if combo not in world.HELD_OUT:
            combos.add(combo)
    return [evaluate.Prompt(c, s, p, z) for z in evaluate.SIZE_WORDS for c, s, p in sorted(combos)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(EMBEDDED_MODEL_DIR))
    parser.add_argument("--scales", type=float, nargs="+", default=[2.0, 2.5, 3.0])
    parser.add_argument("--steps", type=int, default=None, help="default: the model's recommended number")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model(args.model)
    steps = args.steps or model.recommended.steps
    prompts = validation_prompts()
    print(f"{len(prompts)} prompts x {len(SEEDS)} seeds (e.g. {prompts[0].text!r})", flush=True)
    for scale in args.scales:
        judged = evaluate.generate_and_judge(model, prompts, SEEDS, scale, steps)
        result = evaluate.accuracy(judged)
        print(f"guidance {scale:g}: " + ", ".join(
            f"{k} {v:.1%}" for k, v in result.items() if isinstance(v, float)), flush=True)


if __name__ == "__main__":
    main()
