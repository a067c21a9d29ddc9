"""Text conditioning, shown: the tokens, their CLIP embeddings, and the cross-attention maps of a run.

The prompt becomes tokens, the tokens become CLIP embeddings (one vector per token), and the U-Net reads
them through its cross-attention layers. :mod:`sdviz.pipeline.capture` records those layers' weights during
a run; this module turns tokens, embeddings and the recorded maps into tables, figures and pictures.
"""

from __future__ import annotations

import html

import numpy as np
from matplotlib.figure import Figure
from PIL import Image

from sdviz.pipeline.capture import END, START, AttentionMaps, token_label
from sdviz.pipeline.text import Tokens, embed

# 1. Tokens and embeddings ------------------------------------------------------------------------------


def token_rows(tokens: Tokens) -> list[list]:
    """One row per position the text encoder sees: [position, token, id, role]."""
    rows = []
    for i, (tok, tid) in enumerate(zip(tokens.tokens, tokens.ids, strict=True)):
        if i == 0:
            role = "start"
        elif i <= tokens.n_prompt_tokens:
            role = "prompt"
        elif i == tokens.n_prompt_tokens + 1:
            role = "end"
        else:
            role = "padding"
        rows.append([i, token_label(tok), int(tid), role])
    return rows


def describe_tokens(tokens: Tokens) -> str:
    n, total = tokens.n_prompt_tokens, len(tokens.ids)
    text = (
        f"The prompt became **{n} token{'s' * (n != 1)}** between a start and an end token, then "
        f"**{total - n - 2} padding tokens**: the text encoder always reads exactly {total} positions "
        "(the model's maximum). Each position gets its own embedding vector, padding included, and the "
        "U-Net can attend to all of them."
    )
    if tokens.dropped_words:
        text += f"\n\n**Cut off** (the prompt was too long): {' '.join(tokens.dropped_words)}"
    return text


def embedding_matrix(model, tokens: Tokens) -> np.ndarray:
    """The text encoder's output for the tokens: one row per token position, one column per embedding dimension."""
    return embed(model, tokens)[0].float().cpu().numpy()


def embedding_figure(matrix: np.ndarray, tokens: Tokens) -> Figure:
    """The text-embedding matrix (:func:`embedding_matrix`) as a heat map, each row labelled with its token."""
    limit = float(np.percentile(np.abs(matrix), 99)) or 1.0
    rows, dims = matrix.shape
    fig = Figure(figsize=(7, min(2 + 0.14 * rows, 12)), layout="constrained")
    ax = fig.subplots()
    shown = ax.imshow(matrix, aspect="auto", cmap="RdBu_r", vmin=-limit, vmax=limit, interpolation="nearest")
    labels = [f"{r[1]} ({r[3]})" if r[3] != "prompt" else r[1] for r in token_rows(tokens)]
    ax.set_yticks(range(rows), labels, fontsize=6 if rows > 20 else 8)
    ax.set_xlabel(f"embedding dimension (0 .. {dims - 1})")
    ax.set_title(f"text embeddings: {rows} positions x {dims} numbers", fontsize=10)
    fig.colorbar(shown, ax=ax, shrink=0.6)
    return fig


# 2. Showing the maps -------------------------------------------------------------------------------------
#
# Every map of one figure is drawn on one shared scale (0 .. the largest weight shown), in grey (black = no
# attention, white = the most), so "a" and "circle" can be compared at a glance and no toy colour (red, green,
# blue, yellow, orange, purple) can be mistaken for attention. The picture stays readable as a cyan outline of
# what differs from its background, drawn over every map.

OUTLINE_COLOUR = "#00e5ff"  # cyan: none of the toy world's colours
HEAT_MAP = "gray"
MAX_COLUMNS = 6


def is_special(label: str) -> bool:
    return label in (START, END) or label.startswith("padding")


def shown(maps: AttentionMaps, step: int | None = None, include_special: bool = True
          ) -> tuple[list[str], np.ndarray, np.ndarray]:
    """The labels, maps [n, h, w] and shares a figure shows (without start, end and padding if asked)."""
    chosen, shares = maps.maps(step), maps.shares(step)
    keep = [i for i, label in enumerate(maps.labels) if include_special or not is_special(label)]
    return [maps.labels[i] for i in keep], chosen[keep], shares[keep]


def shared_scale(heats: np.ndarray) -> float:
    """The top of the one colour scale of a figure: the largest weight of any map shown."""
    top = float(np.max(heats)) if np.size(heats) else 0.0
    return top if top > 0 else 1.0


def outline_mask(image: Image.Image) -> np.ndarray:
    """1 where the picture differs clearly from the dominant colour of its border (the shape), else 0."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.float64)
    frame = np.concatenate([pixels[:2].reshape(-1, 3), pixels[-2:].reshape(-1, 3), pixels[:, :2].reshape(-1, 3),
                            pixels[:, -2:].reshape(-1, 3)])
    return (np.linalg.norm(pixels - np.median(frame, axis=0), axis=2) > 60).astype(np.float64)


def overlay(image: Image.Image, heat: np.ndarray, vmax: float | None = None, alpha: float = 0.85) -> Image.Image:
    """A heat map (any size) in grey over a faint grey copy of the picture: bright = much attention, on the
    scale 0 .. ``vmax`` (by default the map's own peak; pass the figure's shared scale to compare maps)."""
    heat = np.asarray(heat, dtype=np.float32)
    top = vmax if vmax is not None else shared_scale(heat)
    level = np.clip(heat / top, 0, 1)
    layer = Image.fromarray((level * 255).astype(np.uint8)).resize(image.size, Image.Resampling.BILINEAR)
    faint = image.convert("L").point(lambda v: int(v * 0.35))
    return Image.blend(faint, layer, alpha).convert("RGB")


def attention_figure(maps: AttentionMaps, image: Image.Image, step: int | None = None,
                     include_special: bool = True) -> Figure:
    """The picture, then one map per token, all on one scale with its colour bar, every token shown."""
    labels, heats, shares = shown(maps, step, include_special)
    top = shared_scale(heats)
    n = len(labels) + 1
    columns = min(MAX_COLUMNS, n)
    rows = -(-n // columns)
    fig = Figure(figsize=(2.1 * columns + 1.0, 2.3 * rows + 0.5), dpi=100, layout="constrained")
    axes = fig.subplots(rows, columns, squeeze=False).ravel()
    side = max(image.size)
    picture = np.asarray(image.convert("RGB"))
    axes[0].imshow(picture, interpolation="nearest")
    axes[0].set_title("the picture", fontsize=12)
    outline = outline_mask(image)
    drawn = None
    for ax, label, heat, share in zip(axes[1:n], labels, heats, shares, strict=True):
        drawn = ax.imshow(heat, cmap=HEAT_MAP, vmin=0, vmax=top, interpolation="bilinear",
                          extent=(0, image.width, image.height, 0))
        if 0 < outline.sum() < outline.size:
            ax.contour(np.arange(image.width) + 0.5, np.arange(image.height) + 0.5, outline, levels=[0.5],
                       colors=OUTLINE_COLOUR, linewidths=max(1.0, 2.0 * 64 / side))
        ax.set_title(f"{label}: {share:.0%}", fontsize=12, fontweight="bold" if share == shares.max() else None)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in axes[n:]:
        ax.set_visible(False)
    if drawn is not None:
        bar = fig.colorbar(drawn, ax=list(axes), shrink=0.8, pad=0.02)
        bar.set_label("attention weight (one scale for all maps)", fontsize=10)
    where = "the whole run" if step is None else f"step {step + 1} (t = {maps.timesteps[step]:.0f})"
    fig.suptitle(f"Cross-attention per token, {where}: white = attended, cyan = the picture's outline",
                 fontsize=12)
    return fig


def token_gallery(maps: AttentionMaps, image: Image.Image, step: int | None = None,
                  include_special: bool = True) -> list[tuple[Image.Image, str]]:
    """One overlaid picture per map (on the maps' shared scale), captioned with its token and its share."""
    labels, heats, shares = shown(maps, step, include_special)
    top = shared_scale(heats)
    return [(overlay(image, heat, top), f"{label}: {share:.0%}") for label, heat, share in
            zip(labels, heats, shares, strict=True)]


def describe_maps(maps: AttentionMaps, step: int | None = None, include_special: bool = True) -> str:
    """What the figure shows, in words made from its numbers only (Markdown; token labels escaped)."""
    where = "the whole run" if step is None else f"step {step + 1} (t = {maps.timesteps[step]:.0f})"
    shares = maps.shares(step)
    pairs = list(zip(maps.labels, shares, strict=True))
    words = sorted(((label, s) for label, s in pairs if not is_special(label)), key=lambda x: -x[1])
    special = sorted(((label, s) for label, s in pairs if is_special(label)), key=lambda x: -x[1])
    special_total, words_total = sum(s for _, s in special), sum(s for _, s in words)
    heads = sorted(set(maps.heads.values()))

    def named(items) -> str:
        return ", ".join(f"**{html.escape(label)}** {share:.0%}" for label, share in items)

    text = (f"Cross-attention over {where}, averaged over {len(maps.layers)} cross-attention layers "
            f"({'/'.join(map(str, heads))} heads each). At every latent pixel the weights over all tokens add up "
            f"to 1; a token's share is its average weight, so all shares add up to 100%. ")
    if words:
        text += f"The prompt's words get {words_total:.0%} in all: {named(words)}. "
    if special:
        text += (f"The tokens that carry no word (start, end, padding) get {special_total:.0%}: {named(special)}"
                 f"{'' if include_special else ' (not drawn: tick the box to see them)'}. ")
    if words:
        text += (f"Among the words, **{html.escape(words[0][0])}** draws the most; the maps share one scale, so a "
                 "brighter map is a token the picture listens to more.")
    return text
