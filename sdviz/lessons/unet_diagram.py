"""The U-Net, drawn from the loaded model itself: contracting path, bottleneck, expansive path, skips.

Stable Diffusion's U-Net has two paths: a contracting path of encoders that shrink the
picture (here: the latents) while adding channels, and an expansive path of decoders that grow it back,
helped by skip connections that carry each resolution's details straight across. Stable Diffusion's
U-Net adds two things: every block gets the timestep (how noisy the input is), and the blocks with
cross-attention read the text embeddings; that is where the prompt enters. Everything here is read from
the model's config and modules, so it is right for the embedded toy model and for SD 1.5 alike.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

from sdviz.errors import SdvizError

# Top-level U-Net parts that are not on the U itself, and the block they are counted with.
GROUPS = {"time_proj": "time_embedding", "conv_norm_out": "conv_out", "conv_act": "conv_out"}


@dataclass
class UNetBlock:
    """One block of the U-Net (or a small part next to it), as it runs for a given latent size."""

    name: str  # the module's name in the U-Net, e.g. "down_blocks.1"
    kind: str  # its class, e.g. "CrossAttnDownBlock2D"
    path: str  # "input", "contracting", "bottleneck", "expansive", "output", "time" or "other"
    in_channels: int
    out_channels: int
    resolution: tuple[int, int]  # (h, w) of the latents it works on
    out_resolution: tuple[int, int]  # after its down- or upsampler
    resnets: int
    cross_attention_layers: int  # attention layers that read the text embeddings
    heads: int  # attention heads per cross-attention layer (0 without)
    skip_channels: list[int] = field(default_factory=list)  # expansive path: channels arriving over skips
    params: int = 0


@dataclass
class UNetLayout:
    blocks: list[UNetBlock]
    total_params: int
    latent_size: tuple[int, int]
    latent_channels: int
    text_dim: int  # cross_attention_dim: the width of the text embeddings the U-Net reads

    def on_path(self, path: str) -> list[UNetBlock]:
        return [b for b in self.blocks if b.path == path]


def count_params(module) -> int:
    return sum(p.numel() for p in module.parameters())


def describe_unet(model, height: int | None = None, width: int | None = None) -> UNetLayout:
    """Walk the model's U-Net in the order it runs and note each block's shape, attention and size."""
    unet = model.unet
    f = model.vae_scale_factor
    size = ((height or model.recommended.height) // f, (width or model.recommended.width) // f)
    if min(size) < 1:
        raise SdvizError(f"A {height}x{width} picture is too small for this model (its VAE shrinks {f}x).")
    blocks: list[UNetBlock] = []
    grouped: dict[str, int] = {}  # params of the small parts, added to their group's block

    def cross_attention(module) -> tuple[int, int]:
        layers = [m for n, m in module.named_modules() if n.endswith("attn2") and getattr(m, "is_cross_attention", False)]
        return len(layers), (layers[0].heads if layers else 0)

    def add(name, module, path, c_in, c_out, res, res_out, skips=()):
        n_attn, heads = cross_attention(module)
        blocks.append(UNetBlock(
            name=name, kind=type(module).__name__, path=path, in_channels=c_in, out_channels=c_out,
            resolution=res, out_resolution=res_out, resnets=len(getattr(module, "resnets", []) or []),
            cross_attention_layers=n_attn, heads=heads, skip_channels=list(skips), params=count_params(module),
        ))

    # The stem: latents -> the first block's channels.
    add("conv_in", unet.conv_in, "input", unet.conv_in.in_channels, unet.conv_in.out_channels, size, size)
    add("time_embedding", unet.time_embedding, "time", 0, unet.time_embedding.linear_2.out_features, size, size)

    # Contracting path: each block keeps its resolution, then (all but the last) halves it.
    res = size
    for i, block in enumerate(unet.down_blocks):
        down = block.downsamplers is not None
        res_out = (math.ceil(res[0] / 2), math.ceil(res[1] / 2)) if down else res
        add(f"down_blocks.{i}", block, "contracting", block.resnets[0].in_channels,
            block.resnets[-1].out_channels, res, res_out)
        res = res_out

    if unet.mid_block is not None:
        mid = unet.mid_block
        add("mid_block", mid, "bottleneck", mid.resnets[0].in_channels, mid.resnets[-1].out_channels, res, res)

    # Expansive path: each resnet takes one skip connection from the contracting path, concatenated.
    hidden = blocks[-1].out_channels
    for i, block in enumerate(unet.up_blocks):
        skips = []
        for resnet in block.resnets:
            skips.append(resnet.in_channels - hidden)
            hidden = resnet.out_channels
        up = getattr(block, "upsamplers", None) is not None
        res_out = (res[0] * 2, res[1] * 2) if up else res
        add(f"up_blocks.{i}", block, "expansive", block.resnets[0].in_channels - skips[0], hidden, res, res_out, skips)
        res = res_out

    # The head: back to latent channels (a noise estimate the shape of the input).
    known = {"conv_in", "time_embedding", "down_blocks", "mid_block", "up_blocks", "conv_out", *GROUPS}
    for name, module in unet.named_children():
        if name in GROUPS:
            grouped[GROUPS[name]] = grouped.get(GROUPS[name], 0) + count_params(module)
    add("conv_out", unet.conv_out, "output", unet.conv_out.in_channels, unet.conv_out.out_channels, res, res)
    for name, module in unet.named_children():  # anything else (extra embeddings of other model families)
        if name not in known and module is not None:
            add(name, module, "other", 0, 0, size, size)
    for b in blocks:
        b.params += grouped.get(b.name, 0)

    return UNetLayout(
        blocks=blocks, total_params=count_params(unet), latent_size=size, latent_channels=unet.config.in_channels,
        text_dim=unet.config.cross_attention_dim,
    )


def human(n: int) -> str:
    """A parameter count for people: 1234567 -> '1.23 M'."""
    for unit, div in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= div:
            return f"{n / div:.3g} {unit}"
    return str(n)


def table(layout: UNetLayout) -> list[list]:
    """One row per block: name, type, path, channels, resolution, cross-attention, params."""
    rows = []
    for b in layout.blocks:
        attn = f"{b.cross_attention_layers} x {b.heads} heads" if b.cross_attention_layers else ""
        channels = f"{b.in_channels} -> {b.out_channels}" if b.path != "time" else f"t -> {b.out_channels}"
        if b.skip_channels:
            channels += f" (+ skips {'/'.join(map(str, b.skip_channels))})"
        res = f"{b.resolution[1]}x{b.resolution[0]}"
        if b.out_resolution != b.resolution:
            res += f" -> {b.out_resolution[1]}x{b.out_resolution[0]}"
        rows.append([b.name, b.kind, b.path, channels, res, attn, b.params])
    return rows


TABLE_HEADERS = ["block", "type", "path", "channels", "latent grid", "cross-attention", "parameters"]


def describe(layout: UNetLayout) -> str:
    attn_blocks = [b.name for b in layout.blocks if b.cross_attention_layers]
    n_attn = sum(b.cross_attention_layers for b in layout.blocks)
    down = layout.on_path("contracting")
    return (
        f"**{human(layout.total_params)} parameters.** The contracting path has {len(down)} blocks "
        f"({' -> '.join(str(b.out_channels) for b in down)} channels) and shrinks the "
        f"{layout.latent_size[1]}x{layout.latent_size[0]} latent grid to "
        f"{down[-1].out_resolution[1]}x{down[-1].out_resolution[0]}; the expansive path grows it back, each "
        f"block taking the matching contracting block's outputs over skip connections. "
        f"The prompt enters through {n_attn} cross-attention layers in {', '.join(attn_blocks) or 'no block'}: "
        f"there every latent pixel reads the {layout.text_dim}-wide text embeddings. The timestep goes "
        "through the time embedding into every ResNet block, so each block knows how noisy its input is."
    )


COLOURS = {"input": "#d9d9d9", "output": "#d9d9d9", "time": "#fde9c9", "contracting": "#cfe2f3",
           "bottleneck": "#d9ead3", "expansive": "#f4cccc", "other": "#eeeeee"}
ATTENTION_EDGE = "#7030a0"


def diagram(layout: UNetLayout) -> Figure:
    """The U: contracting path down the left, bottleneck at the bottom, expansive path up the right."""
    on_u = [b for b in layout.blocks if b.path in ("input", "contracting", "bottleneck", "expansive", "output")]
    top = layout.latent_size[0]

    def depth(b: UNetBlock) -> int:
        return round(math.log2(top / b.resolution[0])) if b.resolution[0] else 0

    levels = max(depth(b) for b in on_u) + 1
    dx, dy, bw, bh = 2.0, 2.1, 1.85, 1.75
    # Shown at the page's width (about 1200 pixels): the fonts grow with the figure so the text reads at about
    # 12 screen pixels whatever the number of blocks (SD 1.5 has many more than the embedded model)
    width = 1.7 * len(on_u) + 0.5
    fs = max(7.0, 0.85 * width)
    fig = Figure(figsize=(width, 1.75 * (levels + 1) + 1.6), layout="constrained")
    ax = fig.subplots()
    where = {}
    for x, b in enumerate(on_u):
        cx, cy = x * dx, -depth(b) * dy
        where[b.name] = (cx, cy)
        edge = ATTENTION_EDGE if b.cross_attention_layers else "#555555"
        ax.add_patch(FancyBboxPatch((cx - bw / 2, cy - bh / 2), bw, bh, boxstyle="round,pad=0.02",
                                    facecolor=COLOURS[b.path], edgecolor=edge, linewidth=2.5 if b.cross_attention_layers else 1))
        kind = b.kind.replace("2D", "")
        kind = kind.replace("CrossAttn", "CrossAttn\n") if kind.startswith("CrossAttn") else \
            kind.replace("CrossAttn", "\nCrossAttn")
        lines = [b.name, kind.strip(), f"{b.in_channels}->{b.out_channels} ch",
                 f"{b.resolution[1]}x{b.resolution[0]}" + (f" -> {b.out_resolution[1]}x{b.out_resolution[0]}"
                                                           if b.out_resolution != b.resolution else "")]
        if b.cross_attention_layers:
            lines += [f"cross-attn x{b.cross_attention_layers}", f"{b.heads} heads"]
        lines.append(f"{human(b.params)} params")
        ax.text(cx, cy, "\n".join(lines), ha="center", va="center", fontsize=fs * 0.85, linespacing=1.1)
    for a, b in zip(on_u, on_u[1:], strict=False):  # the main path, box edge to box edge
        (x0, y0), (x1, y1) = where[a.name], where[b.name]
        ax.add_patch(FancyArrowPatch((x0 + bw / 2, y0), (x1 - bw / 2, y1), arrowstyle="-|>", mutation_scale=10,
                                     color="#333333"))
    # Skip connections: contracting block i feeds expansive block (n - 1 - i) at the same resolution,
    # drawn as arcs over the top of the boxes between them.
    down, up = layout.on_path("contracting"), layout.on_path("expansive")
    for i, d in enumerate(down[: len(up)]):
        u = up[len(up) - 1 - i]
        (x0, y0), (x1, y1) = where[d.name], where[u.name]
        rise = 0.35
        ax.add_patch(FancyArrowPatch((x0, y0 + bh / 2), (x1, y1 + bh / 2), arrowstyle="-|>", mutation_scale=9,
                                     linestyle="--", color="#1f77b4",
                                     connectionstyle=f"arc3,rad={-2 * rise * dy / max(x1 - x0, 1e-6):.3f}"))
        ax.text((x0 + x1) / 2, y0 + bh / 2 + rise * dy + 0.05, f"skip ({'/'.join(map(str, u.skip_channels))} ch)",
                ha="center", va="bottom", fontsize=fs * 0.8, color="#1f77b4")
    time = next((b for b in layout.blocks if b.path == "time"), None)
    note = f"timestep -> time embedding ({human(time.params)} params) -> every ResNet block" if time else ""
    ax.text(0.01, 0.99, f"{note}\npurple edge = cross-attention: reads the {layout.text_dim}-wide text embeddings\n"
            f"dashed = skip connection", transform=ax.transAxes, va="top", fontsize=fs * 0.85)
    ax.set_xlim(-dx / 2 - 0.1, (len(on_u) - 1) * dx + dx / 2 + 0.1)
    ax.set_ylim(-(levels - 1) * dy - bh / 2 - 0.2, bh / 2 + 1.9)
    ax.set_aspect("equal")
    ax.axis("off")
    ax.set_title(f"the U-Net: {human(layout.total_params)} parameters, latents {layout.latent_size[1]}x"
                 f"{layout.latent_size[0]}x{layout.latent_channels}", fontsize=fs * 1.2)
    return fig
