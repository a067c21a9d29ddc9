"""Text conditioning, shown: the tokens, their CLIP embeddings, and the cross-attention maps of a run.

The prompt becomes tokens, the tokens become CLIP embeddings (one vector per token), and the U-Net reads
them through its cross-attention layers. :mod:`sdviz.pipeline.capture` records those layers' weights during
a run; this module turns tokens, embeddings and the recorded maps into tables, figures and pictures.
"""

from __future__ import annotations

import numpy as np
from matplotlib import colormaps
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


def overlay(image: Image.Image, heat: np.ndarray, alpha: float = 0.6) -> Image.Image:
    """A heat map (any size) stretched over a picture: bright = much attention (relative to its own peak)."""
    heat = np.asarray(heat, dtype=np.float32)
    heat = heat / heat.max() if heat.max() > 0 else heat
    coloured = (colormaps["inferno"](heat)[..., :3] * 255).astype(np.uint8)
    layer = Image.fromarray(coloured).resize(image.size, Image.Resampling.BILINEAR)
    return Image.blend(image.convert("RGB"), layer, alpha)


def token_gallery(maps: AttentionMaps, image: Image.Image, step: int | None = None,
                  include_special: bool = True) -> list[tuple[Image.Image, str]]:
    """One overlaid picture per map, captioned with its token and its share of the attention."""
    chosen, shares = maps.maps(step), maps.shares(step)
    items = []
    for label, heat, share in zip(maps.labels, chosen, shares, strict=True):
        if not include_special and (label in (START, END) or label.startswith("padding")):
            continue
        items.append((overlay(image, heat), f"{label}: {share:.0%}"))
    return items


def describe_maps(maps: AttentionMaps, step: int | None = None) -> str:
    where = "the whole run" if step is None else f"step {step + 1} (t = {maps.timesteps[step]:.0f})"
    shares = maps.shares(step)
    ranked = sorted(zip(maps.labels, shares, strict=True), key=lambda x: -x[1])
    top = ", ".join(f"**{label}** {share:.0%}" for label, share in ranked[:6])
    heads = sorted(set(maps.heads.values()))
    return (
        f"Cross-attention over {where}, averaged over {len(maps.layers)} cross-attention layers "
        f"({'/'.join(map(str, heads))} heads each). At every latent pixel the weights over all tokens add up "
        f"to 1; the share is a token's average weight. Largest shares: {top}. "
        "The start token usually soaks up much of the attention (a 'nothing in particular' slot); "
        "look at the prompt's own words to see which word lands where."
    )
