"""The toy world the embedded model is trained on: flat shapes on a plain light background.

A :class:`Scene` is one shape, drawn from a handful of attributes (colour, shape, size, position), and its
caption names some of them: ``a [small|big] COLOUR SHAPE [on the left|...]``. A :class:`PairScene` is two
shapes that do not overlap, in a relation its caption names: ``a COLOUR SHAPE and a COLOUR SHAPE``, ``a COLOUR
SHAPE to the left of a COLOUR SHAPE`` (``to the right of``, ``above``, ``below``). Because the world is drawn by
code, a pixel analysis (:mod:`sdviz.toy.judge`) can check what a model generated.
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

# Two-shape scenes: relation word -> the words between the two shapes in the caption.
RELATIONS: dict[str, str] = {
    "and": "and",  # any arrangement
    "left": "to the left of",
    "right": "to the right of",
    "above": "above",
    "below": "below",
}
PAIR_HALF_EXTENT = (0.10, 0.15)  # two shapes share the picture: smaller than one alone
PAIR_GAP = 0.04  # at least this much background between the two shapes' boxes (fraction of the side)
# Pairs of objects never seen together in training (in any relation or order): the evaluation asks for them.
PAIR_HELD_OUT: tuple[tuple[tuple[str, str], tuple[str, str]], ...] = (
    (("red", "circle"), ("blue", "square")),
    (("green", "triangle"), ("yellow", "circle")),
    (("purple", "square"), ("orange", "triangle")),
    (("blue", "circle"), ("red", "triangle")),
    (("yellow", "square"), ("purple", "circle")),
    (("orange", "circle"), ("green", "square")),
)

VOCABULARY = ("a", "small", "big", *COLOURS, *SHAPES, "on", "the", "at", "in", *POSITIONS)  # one-shape captions
PAIR_VOCABULARY = (*VOCABULARY, "and", "to", "of", "above", "below")  # and two-shape captions


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
    _draw_shape(ImageDraw.Draw(img), scene.shape, COLOURS[scene.colour], scene.cx * big, scene.cy * big,
                scene.half * big)
    return img.resize((size, size), Image.Resampling.BOX)


def _draw_shape(pen: ImageDraw.ImageDraw, shape: str, fill: tuple[int, int, int], cx: float, cy: float,
                h: float) -> None:
    if shape == "circle":
        pen.ellipse((cx - h, cy - h, cx + h, cy + h), fill=fill)
    elif shape == "square":
        pen.rectangle((cx - h, cy - h, cx + h, cy + h), fill=fill)
    else:  # an upright triangle, as wide as it is tall
        pen.polygon([(cx, cy - h), (cx + h, cy + h), (cx - h, cy + h)], fill=fill)


@dataclass(frozen=True)
class Shape:
    """One shape of a two-shape scene."""

    colour: str
    shape: str
    cx: float  # centre, fraction of the image width
    cy: float
    half: float  # half-extent, fraction of the image side


@dataclass(frozen=True)
class PairScene:
    """Two shapes that do not overlap; ``first`` stands in ``relation`` to ``second`` (as the caption says)."""

    first: Shape
    second: Shape
    relation: str  # a key of RELATIONS
    background: tuple[int, int, int]


def pair_caption(first: tuple[str, str], relation: str, second: tuple[str, str]) -> str:
    """"a red circle to the left of a blue square": (colour, shape), a RELATIONS key, (colour, shape)."""
    return f"a {first[0]} {first[1]} {RELATIONS[relation]} a {second[0]} {second[1]}"


def is_held_out_pair(a: tuple[str, str], b: tuple[str, str]) -> bool:
    return (a, b) in PAIR_HELD_OUT or (b, a) in PAIR_HELD_OUT


def seen_relation(a: tuple[float, float], b: tuple[float, float]) -> str:
    """Where centre ``a`` (x, y) is, seen from centre ``b``: left, right, above or below (the larger offset
    decides)."""
    dx, dy = a[0] - b[0], a[1] - b[1]
    if abs(dx) >= abs(dy):
        return "left" if dx < 0 else "right"
    return "above" if dy < 0 else "below"


def random_pair_scene(rng: random.Random, relation: str | None = None, first: tuple[str, str] | None = None,
                      second: tuple[str, str] | None = None, exclude_held_out: bool = False) -> PairScene:
    """Two shapes of different colours or shapes, laid out as ``relation`` says (any arrangement for "and")."""
    relation = relation or rng.choice(list(RELATIONS))
    while True:
        a = first or (rng.choice(list(COLOURS)), rng.choice(SHAPES))
        b = second or (rng.choice(list(COLOURS)), rng.choice(SHAPES))
        if a != b and not (exclude_held_out and is_held_out_pair(a, b)):
            break
    layout = relation if relation != "and" else rng.choice(["left", "right", "above", "below"])
    while True:
        ha, hb = rng.uniform(*PAIR_HALF_EXTENT), rng.uniform(*PAIR_HALF_EXTENT)
        # along the relation's axis: first on one side of the middle, second on the other
        near, far = rng.uniform(0.2, 0.42), rng.uniform(0.58, 0.8)
        across_a, across_b = rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.7)
        along_a, along_b = (near, far) if layout in ("left", "above") else (far, near)
        if layout in ("left", "right"):
            sa, sb = Shape(*a, along_a, across_a, ha), Shape(*b, along_b, across_b, hb)
        else:
            sa, sb = Shape(*a, across_a, along_a, ha), Shape(*b, across_b, along_b, hb)
        apart = max(abs(sa.cx - sb.cx), abs(sa.cy - sb.cy)) >= ha + hb + PAIR_GAP
        inside = all(s.half <= c <= 1 - s.half for s in (sa, sb) for c in (s.cx, s.cy))
        if apart and inside and seen_relation((sa.cx, sa.cy), (sb.cx, sb.cy)) == layout:
            break
    grey = rng.randint(226, 250)
    background = tuple(min(255, grey + rng.randint(-5, 5)) for _ in range(3))
    return PairScene(sa, sb, relation, background)  # type: ignore[arg-type]


def draw_scene(scene: Scene | PairScene, size: int = IMAGE_SIZE) -> Image.Image:
    """Render a one- or two-shape scene as an RGB picture of ``size`` x ``size`` pixels."""
    if isinstance(scene, Scene):
        return draw(scene, size)
    big = size * SUPERSAMPLE
    img = Image.new("RGB", (big, big), scene.background)
    pen = ImageDraw.Draw(img)
    for shape in (scene.first, scene.second):
        _draw_shape(pen, shape.shape, COLOURS[shape.colour], shape.cx * big, shape.cy * big, shape.half * big)
    return img.resize((size, size), Image.Resampling.BOX)


def to_array(img: Image.Image) -> np.ndarray:
    """A picture as float32 CHW in [-1, 1], the range the VAE works in."""
    return (np.asarray(img, dtype=np.float32).transpose(2, 0, 1) / 127.5) - 1.0


def batch(rng: random.Random, n: int, exclude_held_out: bool = True, pair_fraction: float = 0.0,
          size: int = IMAGE_SIZE) -> tuple[np.ndarray, list[Scene | PairScene]]:
    """``n`` random pictures as an [n, 3, size, size] array in [-1, 1], with their scenes; ``pair_fraction`` of
    them two-shape scenes (with 0, the stream of random numbers is exactly the one-shape world's)."""
    scenes: list[Scene | PairScene] = [
        random_pair_scene(rng, exclude_held_out=exclude_held_out) if pair_fraction and rng.random() < pair_fraction
        else random_scene(rng, exclude_held_out=exclude_held_out)
        for _ in range(n)
    ]
    return np.stack([to_array(draw_scene(s, size)) for s in scenes]), scenes
