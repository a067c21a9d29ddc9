"""The pixel judge: what does a toy-world picture show? Colour, shape, position and size, by pixel analysis;
and for two-shape pictures (:func:`judge_pair`), each shape and where one is seen from the other.

The evaluation (:mod:`sdviz.toy.evaluate`) asks the model for "a red triangle on the left" and lets this
judge say what came out. It knows nothing about the model; it reads pixels the way a person would:

1. The background is the dominant colour of the picture's border.
2. Each pixel's *coverage* says how much of it is shape: 0 = background colour, 1 = the shape's colour
   (anti-aliased edge pixels are in between). The shape's colour is the median of its confident pixels.
3. The largest connected blob is the shape. Its colour names the nearest toy colour; its bounding box
   gives the position (the anchor nearest its centre) and the size (half-extent), both measured on the blob's
   solid body and its rim (a lighter smudge beside it does not count); how much of the box
   it fills gives the shape: a circle fills pi/4 = 0.785 of it, a square all of it, a triangle half,
   and an upright triangle carries 3/4 of its mass in the lower half of its box.
4. A picture with no clear single shape (blank, noise, mush, several blobs) is flagged with the reasons.

Everything is measured on a 64x64 copy of the picture, whatever its size.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from sdviz.toy import world

SIDE = 64  # the judge looks at a 64x64 copy of any picture
BORDER = 2  # width, in pixels, of the frame whose dominant colour is the background
PLAIN_BORDER = 0.6  # at least this share of the frame must be background-coloured
NEAR_BACKGROUND = 30.0  # RGB distance within which a pixel counts as background colour
FOREGROUND = 60.0  # RGB distance from the background beyond which a pixel is (partly) shape
MIN_AREA = 20.0  # pixels (at 64x64): less than this is no shape at all; the smallest drawn one has ~100
SOLID = 0.7  # coverage from which a pixel is the shape's body, not its rim or a smudge
MAX_AREA = 0.35  # share of the picture: the biggest drawn shape covers under 20%
SPECK = 0.15  # a second blob smaller than this share of the main one is a speck, not a second shape
MAX_COLOUR_DISTANCE = 100.0  # RGB distance from the nearest toy colour beyond which no colour fits
MAX_BLOTCHINESS = 35.0  # median RGB distance of the shape's pixels from its colour: beyond it, not flat
MAX_EDGE_WIDTH = 4.0  # pixels: a drawn shape's rim is about 1 wide, mush (a blur of sigma 2.5) 4.4 or more; the
# embedded model's squares at guidance 20 ramp over 3.0-3.6 pixels and a person still reads them at a glance
MAX_SHAPE_DISTANCE = 3.0  # distance from the nearest shape prototype (in its own units) beyond it, no shape

# What each shape looks like to the judge: (share of its bounding box it fills, share of its mass in
# the lower half of the box). The scales say how far a drawn shape strays from its prototype.
SHAPE_PROTOTYPES: dict[str, tuple[float, float]] = {
    "circle": (math.pi / 4, 0.5),
    "square": (1.0, 0.5),
    "triangle": (0.5, 0.75),
}
FILL_SCALE, BOTTOM_SCALE = 0.07, 0.06
# A square whose corners come out rounded (a model's soft edges, or guidance that overshoots) fills less of its box
# than a drawn one, down to about 0.83 for a small one; a circle cannot fill more than pi/4 plus its rim. So a
# square's fill may stray further: the circle/square boundary sits at a fill of 0.82, not halfway (0.89).
SQUARE_FILL_SCALE = 0.35
# Small shapes have half-extents up to 0.14 of the side, big ones from 0.19: split in the middle.
SIZE_THRESHOLD = (world.HALF_EXTENT["small"][1] + world.HALF_EXTENT["big"][0]) / 2


@dataclass(frozen=True)
class Verdict:
    """What the judge sees in one picture. Attributes are None when there is no shape at all."""

    colour: str | None
    shape: str | None
    position: str | None
    size: str | None
    problems: tuple[str, ...]  # why the picture is not one clear shape, e.g. "blurry edges (3.4 pixels wide)"
    # The measurements behind the verdict (fractions are of the picture's side or area).
    background: tuple[int, int, int]
    rgb: tuple[int, int, int] | None  # the shape's colour: median of its confident pixels
    colour_distance: float  # from rgb to the named toy colour
    area: float  # share of the picture covered by the shape
    fill: float  # share of the shape's bounding box it fills
    bottom_share: float  # share of the shape's mass in the lower half of its box
    centre: tuple[float, float]  # centre of the bounding box (x, y)
    half_extent: float  # half the larger side of the bounding box

    @property
    def clear(self) -> bool:
        """One flat, sharp shape on a plain background."""
        return not self.problems

    def agrees(self, colour: str | None = None, shape: str | None = None, position: str | None = None,
               size: str | None = None) -> dict[str, bool]:
        """For each attribute asked about: does the picture show it? An unclear picture shows nothing."""
        wanted = {"colour": colour, "shape": shape, "position": position, "size": size}
        return {k: self.clear and getattr(self, k) == v for k, v in wanted.items() if v is not None}


def judge(picture: Image.Image | np.ndarray) -> Verdict:
    """Look at a one-shape toy-world picture (PIL or uint8 [H, W, 3]) and say what it shows."""
    pixels = _as_pixels(picture)
    background, problems = _background(pixels)
    distance = np.linalg.norm(pixels - background, axis=2)

    # 2. Blobs of pixels far from the background; the largest one is the shape.
    blobs, sizes = _blobs(distance)
    if sizes.size == 0 or sizes.max() < MIN_AREA:
        return _empty(background, problems + ["blank (no shape at all)"])
    main = int(np.argmax(sizes)) + 1
    others = np.delete(sizes, main - 1)
    more = int(np.sum(others >= max(MIN_AREA / 4, SPECK * sizes.max())))  # smaller ones are specks
    if more:
        problems.append(f"several shapes ({1 + more} blobs)")
    verdict, _ = _measure(pixels, background, distance, blobs == main)
    return dataclasses.replace(verdict, problems=tuple(problems) + verdict.problems)


@dataclass(frozen=True)
class PairVerdict:
    """What the judge sees in a two-shape picture: its (up to two) shapes, each judged on its own."""

    shapes: tuple[Verdict, ...]  # largest first
    masks: tuple[np.ndarray, ...]  # each shape's coverage on the judge's 64x64 grid, 0..1 (for attention)
    problems: tuple[str, ...]  # about the picture as a whole: no plain background, one shape, three shapes

    @property
    def found(self) -> bool:
        """Two clear shapes on a plain background."""
        return not self.problems and len(self.shapes) == 2 and all(v.clear for v in self.shapes)

    def assign(self, first: tuple[str, str], second: tuple[str, str]) -> tuple[int, int]:
        """Which shape is the caption's first and which its second (colour, shape): the pairing with the more
        attributes right."""
        def right(i: int, wanted: tuple[str, str]) -> int:
            return int(self.shapes[i].colour == wanted[0]) + int(self.shapes[i].shape == wanted[1])

        return (0, 1) if right(0, first) + right(1, second) >= right(1, first) + right(0, second) else (1, 0)

    def agrees(self, first: tuple[str, str], second: tuple[str, str], relation: str) -> dict[str, bool]:
        """Both shapes right (colour and shape), and, for a spatial relation, the first where the caption says."""
        if not self.found:
            return {"shapes": False, **({"relation": False} if relation != "and" else {})}
        i, j = self.assign(first, second)
        a, b = self.shapes[i], self.shapes[j]
        result = {"shapes": (a.colour, a.shape) == first and (b.colour, b.shape) == second}
        if relation != "and":
            result["relation"] = world.seen_relation(a.centre, b.centre) == relation
        return result


def judge_pair(picture: Image.Image | np.ndarray) -> PairVerdict:
    """Look at a two-shape toy-world picture and judge its two largest shapes, each on its own."""
    pixels = _as_pixels(picture)
    background, problems = _background(pixels)
    distance = np.linalg.norm(pixels - background, axis=2)
    blobs, sizes = _blobs(distance)
    real = [i + 1 for i in np.argsort(-sizes) if sizes[i] >= MIN_AREA]
    if len(real) < 2:
        problems.append("blank (no shape at all)" if not real else "one shape only (two touch, or one is missing)")
    elif len(real) > 2 and sizes[real[2] - 1] >= SPECK * sizes[real[1] - 1]:
        problems.append(f"several shapes ({len(real)} blobs)")
    shapes, masks = [], []
    for label in real[:2]:
        verdict, coverage = _measure(pixels, background, distance, blobs == label)
        shapes.append(verdict)
        masks.append(coverage)
    return PairVerdict(tuple(shapes), tuple(masks), tuple(problems))


def _background(pixels: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """1. The background: the dominant colour of the frame (and a problem if the frame is not plain)."""
    frame = np.concatenate([pixels[:BORDER].reshape(-1, 3), pixels[-BORDER:].reshape(-1, 3),
                            pixels[:, :BORDER].reshape(-1, 3), pixels[:, -BORDER:].reshape(-1, 3)])
    background = np.median(frame, axis=0)
    plain = np.mean(np.linalg.norm(frame - background, axis=1) < NEAR_BACKGROUND) >= PLAIN_BORDER
    return background, [] if plain else ["no plain background"]


def _blobs(distance: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Connected blobs of pixels far from the background, and each blob's size in pixels."""
    blobs = _label(distance > FOREGROUND)
    return blobs, np.bincount(blobs.ravel())[1:]


def _measure(pixels: np.ndarray, background: np.ndarray, distance: np.ndarray,
             inside: np.ndarray) -> tuple[Verdict, np.ndarray]:
    """Steps 3-5 for one blob: its colour, coverage, box, shape, position and size, and what is wrong with it."""
    problems: list[str] = []
    # 3. The shape's colour, then each pixel's coverage: where it lies between background and that colour.
    core = inside & (distance >= 0.8 * np.percentile(distance[inside], 90))
    rgb = np.median(pixels[core], axis=0)
    contrast = rgb - background
    coverage = np.clip((pixels - background) @ contrast / max(float(contrast @ contrast), 1e-6), 0, 1)
    coverage = coverage * _grow(inside)  # the blob and its anti-aliased rim only
    area = float(coverage.sum())
    if area / SIDE**2 > MAX_AREA:
        problems.append(f"too big (covers {area / SIDE**2:.0%} of the picture)")
    solid = inside & (coverage > 0.5)
    blotchiness = float(np.median(np.linalg.norm(pixels[solid if solid.any() else inside] - rgb, axis=1)))
    if blotchiness > MAX_BLOTCHINESS:
        problems.append(f"blotchy colour (pixels stray {blotchiness:.0f} from it)")
    # Edge width: half-covered pixels per pixel of outline (about 4 * sqrt(area) long).
    edge_width = float(np.sum((coverage > 0.1) & (coverage < 0.9))) / (4 * math.sqrt(area))
    if edge_width > MAX_EDGE_WIDTH:
        problems.append(f"blurry edges ({edge_width:.1f} pixels wide)")
    # The box, the fill and the mass are measured on the blob's solid body and its rim only: a faint smudge or
    # halo beside the shape (guidance that overshoots smears lighter paint beside it) would stretch the box
    # beyond the one a person would draw around the shape. A drawn shape loses nothing (its rim is 1 pixel).
    body = inside & (coverage >= SOLID)
    if body.any():
        coverage = coverage * _grow(body)
        area = float(coverage.sum())
    colour, colour_distance = _nearest_colour(rgb)
    if colour_distance > MAX_COLOUR_DISTANCE:
        problems.append(f"odd colour ({_rgb_tuple(rgb)} is none of the toy colours)")

    # 4. The bounding box, measured with sub-pixel precision from the coverage profiles.
    columns, rows = coverage.max(axis=0), coverage.max(axis=1)
    width, height = float(columns.sum()), float(rows.sum())
    centre_x = float(columns @ (np.arange(SIDE) + 0.5)) / width
    centre_y = float(rows @ (np.arange(SIDE) + 0.5)) / height
    fill = area / (width * height)
    below = np.clip(np.arange(SIDE) + 1 - centre_y, 0, 1)  # how much of each row lies below the centre
    bottom_share = float(coverage.sum(axis=1) @ below) / area

    # 5. Names: the nearest shape prototype, position anchor and size class. The position comes from
    # the box's centre, which is where the toy world puts a shape; a triangle's centre of mass sits a
    # sixth of its height lower and would drift "at the top" triangles towards "in the center".
    shape, shape_distance = _nearest_shape(fill, bottom_share)
    if shape_distance > MAX_SHAPE_DISTANCE:
        problems.append(f"no clear shape (fills {fill:.0%} of its box, {bottom_share:.0%} in its lower half)")
    centre = (centre_x / SIDE, centre_y / SIDE)
    position = min(world.POSITIONS, key=lambda p: math.dist(centre, world.POSITIONS[p][1]))
    half_extent = max(width, height) / 2 / SIDE
    verdict = Verdict(
        colour=colour, shape=shape, position=position, size="big" if half_extent > SIZE_THRESHOLD else "small",
        problems=tuple(problems), background=_rgb_tuple(background), rgb=_rgb_tuple(rgb),
        colour_distance=colour_distance, area=area / SIDE**2, fill=fill, bottom_share=bottom_share,
        centre=centre, half_extent=half_extent,
    )
    return verdict, coverage


def _as_pixels(picture: Image.Image | np.ndarray) -> np.ndarray:
    """A float [64, 64, 3] RGB copy of the picture."""
    img = picture if isinstance(picture, Image.Image) else Image.fromarray(np.asarray(picture, dtype=np.uint8))
    img = img.convert("RGB")
    if img.size != (SIDE, SIDE):
        img = img.resize((SIDE, SIDE), Image.Resampling.BOX)
    return np.asarray(img, dtype=np.float64)


def _empty(background: np.ndarray, problems: list[str]) -> Verdict:
    return Verdict(colour=None, shape=None, position=None, size=None, problems=tuple(problems),
                   background=_rgb_tuple(background), rgb=None, colour_distance=math.inf, area=0.0, fill=0.0,
                   bottom_share=0.0, centre=(0.5, 0.5), half_extent=0.0)


def _nearest_colour(rgb: np.ndarray) -> tuple[str, float]:
    name = min(world.COLOURS, key=lambda c: float(np.linalg.norm(rgb - world.COLOURS[c])))
    return name, float(np.linalg.norm(rgb - world.COLOURS[name]))


def _nearest_shape(fill: float, bottom_share: float) -> tuple[str, float]:
    def distance(shape: str) -> float:
        f, b = SHAPE_PROTOTYPES[shape]
        scale = SQUARE_FILL_SCALE if shape == "square" and fill > SHAPE_PROTOTYPES["circle"][0] else FILL_SCALE
        return math.hypot((fill - f) / scale, (bottom_share - b) / BOTTOM_SCALE)

    name = min(SHAPE_PROTOTYPES, key=distance)
    return name, distance(name)


def _label(mask: np.ndarray) -> np.ndarray:
    """Connected components (4-neighbour) of a boolean mask: 0 = background, 1.. = blobs."""
    labels = np.zeros(mask.shape, dtype=np.int32)
    h, w = mask.shape
    count = 0
    for start in zip(*np.nonzero(mask), strict=True):
        if labels[start]:
            continue
        count += 1
        labels[start] = count
        stack = [start]
        while stack:
            y, x = stack.pop()
            for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not labels[ny, nx]:
                    labels[ny, nx] = count
                    stack.append((ny, nx))
    return labels


def _grow(mask: np.ndarray) -> np.ndarray:
    """The mask and its 8 neighbours: a blob with its anti-aliased rim."""
    grown = mask.copy()
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            shifted = np.roll(np.roll(mask, dy, axis=0), dx, axis=1)
            # np.roll wraps around; undo the wrapped row/column
            if dy == 1:
                shifted[0] = False
            elif dy == -1:
                shifted[-1] = False
            if dx == 1:
                shifted[:, 0] = False
            elif dx == -1:
                shifted[:, -1] = False
            grown |= shifted
    return grown


def _rgb_tuple(rgb: np.ndarray) -> tuple[int, int, int]:
    return tuple(int(round(c)) for c in rgb)  # type: ignore[return-value]
