"""The U-Net diagram is read from the model: blocks, channels, resolutions, skips and parameters."""

from __future__ import annotations

from matplotlib.patches import FancyBboxPatch

from sdviz.lessons.unet_diagram import describe, describe_unet, diagram, human, table


def block(layout, name: str):
    return next(b for b in layout.blocks if b.name == name)

def test_blocks_and_channels_match_the_config(tiny_model):
    config = tiny_model.unet.config
    layout = describe_unet(tiny_model)
    down, up = layout.on_path("contracting"), layout.on_path("expansive")
    assert [b.kind for b in down] == list(config.down_block_types)
    assert [b.kind for b in up] == list(config.up_block_types)
    assert [b.out_channels for b in down] == list(config.block_out_channels)
    assert [b.out_channels for b in up] == list(reversed(config.block_out_channels))
    assert block(layout, "conv_in").in_channels == config.in_channels
    assert block(layout, "conv_out").out_channels == config.out_channels
    assert block(layout, "mid_block").in_channels == config.block_out_channels[-1]
    # Cross-attention sits exactly in the CrossAttn blocks (and the mid block).
    for b in down + up:
        assert (b.cross_attention_layers > 0) == ("CrossAttn" in b.kind)
        assert b.resnets == (config.layers_per_block + (1 if b in up else 0))
    assert block(layout, "mid_block").cross_attention_layers == 1
    assert layout.text_dim == config.cross_attention_dim


def test_resolutions_halve_down_and_double_up(tiny_model):
    layout = describe_unet(tiny_model)  # 32x32 pictures, a 2x VAE: 16x16 latents
    assert layout.latent_size == (16, 16)
    d0, d1 = layout.on_path("contracting")
    u0, u1 = layout.on_path("expansive")
    assert (d0.resolution, d0.out_resolution) == ((16, 16), (8, 8))
    assert (d1.resolution, d1.out_resolution) == ((8, 8), (8, 8))  # the last block does not downsample
    assert block(layout, "mid_block").resolution == (8, 8)
    assert (u0.resolution, u0.out_resolution) == ((8, 8), (16, 16))
    assert (u1.resolution, u1.out_resolution) == ((16, 16), (16, 16))
    assert describe_unet(tiny_model, 64, 48).latent_size == (32, 24)


def test_skip_connections_carry_the_contracting_outputs_in_reverse(tiny_model):
    unet = tiny_model.unet
    produced = [unet.conv_in.out_channels]
    for block in unet.down_blocks:
        produced += [r.out_channels for r in block.resnets]
        if block.downsamplers is not None:
            produced.append(block.resnets[-1].out_channels)
    layout = describe_unet(tiny_model)
    consumed = [c for b in layout.on_path("expansive") for c in b.skip_channels]
    assert consumed == list(reversed(produced))


def test_parameter_counts_add_up_to_the_model(tiny_model):
    layout = describe_unet(tiny_model)
    total = sum(p.numel() for p in tiny_model.unet.parameters())
    assert layout.total_params == total
    assert sum(b.params for b in layout.blocks) == total
    assert block(layout, "down_blocks.1").params == sum(p.numel() for p in tiny_model.unet.down_blocks[1].parameters())
    assert all(b.params > 0 for b in layout.blocks)
    assert human(total) in describe(layout)


def test_diagram_draws_every_block_of_the_u(tiny_model):
    layout = describe_unet(tiny_model)
    fig = diagram(layout)
    boxes = [p for p in fig.axes[0].patches if isinstance(p, FancyBboxPatch)]
    on_u = [b for b in layout.blocks if b.path != "time"]
    assert len(boxes) == len(on_u) == 7  # conv_in, 2 down, mid, 2 up, conv_out
    texts = " ".join(t.get_text() for t in fig.axes[0].texts)
    assert "skip" in texts and "cross-attn" in texts
    rows = table(layout)
    assert [r[0] for r in rows] == [b.name for b in layout.blocks]
    down0 = rows[[r[0] for r in rows].index("down_blocks.0")]
    assert down0[3] == "32 -> 32" and down0[4] == "16x16 -> 8x8" and down0[5] == ""
    up0 = rows[[r[0] for r in rows].index("up_blocks.0")]
    assert up0[3] == "64 -> 64 (+ skips 64/32)" and up0[5].startswith("2 x")


def test_human_counts():
    assert human(999) == "999"
    assert human(1234) == "1.23 k"
    assert human(859_520_964) == "860 M"
    assert human(1_500_000_000) == "1.5 B"
