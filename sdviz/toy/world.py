"""The toy world the embedded model is trained on: one flat shape on a plain light background.

Every picture is drawn from a handful of attributes (colour, shape, size, position), and every
caption names some of them: ``a [small|big] COLOUR SHAPE [on the left|...]``. Because the world
is drawn by code, a pixel analysis (:mod:`sdviz.toy.judge`) can check what a model generated.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

IMAGE_SIZE = 64
SUPERSAMPLE = 4  # draw 4x larger, then downsample: anti-aliased edges like a real photo's

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 160, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 205, 30),
    "orange": (245, 135, 25),
    "purple": (135, 55, 185),
}
SHAPES = ("circle", "square", "triangle")
SIZES = ("small", "big")
# Position word -> phrase in the caption and the shape's centre as a fraction of the image.
POSITIONS: dict[str, tuple[str, tuple[float, float]]] = {
    "left": ("on the left", (0.27, 0.5)),
    "right": ("on the right", (0.73, 0.5)),
    "top": ("at the top", (0.5, 0.27)),
    "bottom": ("at the bottom", (0.5, 0.73)),
    "center": ("in the center", (0.5, 0.5)),
}
# Half-extent of a shape, as a fraction of the image side.
HALF_EXTENT = {"small": (0.11, 0.14), "big": (0.19, 0.22)}
JITTER = 0.035  # how far a shape may wander from its position's anchor

# Combinations never seen in training: the evaluation checks that the model composes words
# it learned separately ("purple" and "triangle" and "on the left") into a new picture.
HELD_OUT: tuple[tuple[str, str, str], ...] = (
    ("red", "triangle", "left"),
    ("green", "circle", "top"),
    ("blue", "square", "right"),
    ("yellow", "triangle", "bottom"),
    ("orange", "circle", "center"),
    ("purple", "square", "left"),
    ("red", "square", "top"),
    ("blue", "circle", "bottom"),
    ("yellow", "square", "center"),
)

VOCABULARY = ("a", "small", "big", *COLOURS, *SHAPES, "on", "the", "at", "in", *POSITIONS)


@dataclass(frozen=True)
class Scene:
    """Everything needed to draw one toy picture."""

    colour: str
    shape: str
    size: str
    position: str
    cx: float  # centre, fraction of the image width
    cy: float
    half: float  # half-extent, fraction of the image side
    background: tuple[int, int, int]


def caption(colour: str, shape: str, size: str | None = None, position: str | None = None) -> str:
    """The canonical caption for some attributes (size and position optional)."""
    words = ["a", *([size] if size else []), colour, shape]
    if position:
        words.append(POSITIONS[position][0])
    return " ".join(words)


def random_scene(
    rng: random.Random,
    colour: str | None = None,
    shape: str | None = None,
    size: str | None = None,
    position: str | None = None,
    exclude_held_out: bool = False,
) -> Scene:
    """Draw attributes at random; any attribute given is kept fixed."""
    while True:
        c = colour or rng.choice(list(COLOURS))
        s = shape or rng.choice(SHAPES)
        p = position or rng.choice(list(POSITIONS))
        if not (exclude_held_out and (c, s, p) in HELD_OUT):
            break
    z = size or rng.choice(SIZES)
    ax, ay = POSITIONS[p][1]
    grey = rng.randint(226, 250)
    background = tuple(min(255, grey + rng.randint(-5, 5)) for _ in range(3))
    return Scene(
        colour=c,
        shape=s,
        size=z,
        position=p,
        cx=ax + rng.uniform(-JITTER, JITTER),
        cy=ay + rng.uniform(-JITTER, JITTER),
        half=rng.uniform(*HALF_EXTENT[z]),
        background=background,  # type: ignore[arg-type]
    )


def draw(scene: Scene, size: int = IMAGE_SIZE) -> Image.Image:
    """Render a scene as an RGB picture of ``size`` x ``size`` pixels."""
    big = size * SUPERSAMPLE
    img = Image.new("RGB", (big, big), scene.background)
    pen = ImageDraw.Draw(img)
    cx, cy, h = scene.cx * big, scene.cy * big, scene.half * big
    fill = COLOURS[scene.colour]
    if scene.shape == "circle":
        pen.ellipse((cx - h, cy - h, cx + h, cy + h), fill=fill)
    elif scene.shape == "square":
        pen.rectangle((cx - h, cy - h, cx + h, cy + h), fill=fill)
    else:  # an upright triangle, as wide as it is tall
        pen.polygon([(cx, cy - h), (cx + h, cy + h), (cx - h, cy + h)], fill=fill)
    return img.resize((size, size), Image.Resampling.BOX)


def to_array(img: Image.Image) -> np.ndarray:
    """A picture as float32 CHW in [-1, 1], the range the VAE works in."""
    return (np.asarray(img, dtype=np.float32).transpose(2, 0, 1) / 127.5) - 1.0


def batch(rng: random.Random, n: int, exclude_held_out: bool = True) -> tuple[np.ndarray, list[Scene]]:
    """``n`` random pictures as an [n, 3, 64, 64] array in [-1, 1], with their scenes."""
    scenes = [random_scene(rng, exclude_held_out=exclude_held_out) for _ in range(n)]
    return np.stack([to_array(draw(s)) for s in scenes]), scenes
