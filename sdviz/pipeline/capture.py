"""Capturing cross-attention during a run: which word does each part of the picture listen to?

The U-Net reads the prompt's CLIP embeddings through its cross-attention layers (``attn2`` in every
transformer block). In each such layer every latent pixel asks "which tokens matter to me?" and gets a
softmax over the tokens: weights that add up to 1. Averaged over the attention heads and layers, those
weights form one heat map per token: which word "lands" where. (:mod:`sdviz.lessons.text_attention`
draws them.)

Capturing them must not change the picture, and other users may be running the same model at the same
moment. So the capture is installed once per model as a thin wrapper around each ``attn2`` layer's own
processor: the wrapped processor still computes the layer's output exactly as before, and only a run that
asked for capture (through a context variable, private to the thread that runs it) also computes the
attention weights on the side. Every other run passes straight through.
"""

from __future__ import annotations

import math
from contextvars import ContextVar
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from sdviz.errors import SdvizError
from sdviz.pipeline.sampler import generate
from sdviz.pipeline.settings import RunSettings
from sdviz.pipeline.text import Tokens, tokenize
from sdviz.pipeline.trace import StepRecord, Trace

START, END = "<start>", "<end>"

# The recorder of the run that asked for capture, in the context (thread) running it; None everywhere else.
_active_recorder: ContextVar[AttentionRecorder | None] = ContextVar("sdviz_attention_recorder", default=None)


def token_label(token: str) -> str:
    """A CLIP token as a reader would write it: 'red</w>' -> 'red'."""
    return token.replace("</w>", "")



# Capturing cross-attention during a run ---------------------------------------------------------------


def attention_probs(attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor,
                    temb: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(Q K^T / sqrt(d)) of one attention layer for one batch item: [heads, pixels, tokens], float32.

    The same preprocessing as diffusers' ``AttnProcessor2_0``, written out instead of fused into SDPA.
    """
    h = hidden_states
    if attn.spatial_norm is not None:
        h = attn.spatial_norm(h, temb)
    if h.ndim == 4:
        b, c, height, width = h.shape
        h = h.view(b, c, height * width).transpose(1, 2)
    if attn.group_norm is not None:
        h = attn.group_norm(h.transpose(1, 2)).transpose(1, 2)
    context = encoder_hidden_states
    if attn.norm_cross:
        context = attn.norm_encoder_hidden_states(context)
    query, key = attn.to_q(h), attn.to_k(context)
    head_dim = key.shape[-1] // attn.heads
    query = query.view(h.shape[0], -1, attn.heads, head_dim).transpose(1, 2)
    key = key.view(h.shape[0], -1, attn.heads, head_dim).transpose(1, 2)
    if attn.norm_q is not None:
        query = attn.norm_q(query)
    if attn.norm_k is not None:
        key = attn.norm_k(key)
    scores = query.float() @ key.float().transpose(-1, -2) / math.sqrt(head_dim)
    return scores.softmax(dim=-1)[0]


class CaptureCrossAttention:
    """Wraps one cross-attention layer's own processor; records its weights only for a run that asked."""

    def __init__(self, name: str, inner):
        self.name = name
        self.inner = inner  # computes the layer's output, exactly as before the wrapper was installed

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        if temb is not None:
            kwargs["temb"] = temb
        out = self.inner(attn, hidden_states, encoder_hidden_states=encoder_hidden_states,
                         attention_mask=attention_mask, **kwargs)
        recorder = _active_recorder.get()
        if recorder is not None and encoder_hidden_states is not None:
            # The last batch item is the prompt's branch (with CFG the batch is [unconditional, prompt]).
            with torch.no_grad():
                probs = attention_probs(attn, hidden_states[-1:], encoder_hidden_states[-1:], temb)
            recorder.add(self.name, probs, heads=attn.heads)
        return out


def install_capture(model) -> list[str]:
    """Wrap every ``attn2`` processor of the model's U-Net (once per model); returns the layer names."""
    from diffusers.models.attention_processor import Attention

    with model.lock:
        if "attention_capture" not in model.derived:
            names = []
            for name, module in model.unet.named_modules():
                if name.endswith("attn2") and isinstance(module, Attention) and module.is_cross_attention:
                    if not isinstance(module.processor, CaptureCrossAttention):
                        module.set_processor(CaptureCrossAttention(name, module.processor))
                    names.append(name)
            model.derived["attention_capture"] = names
        return model.derived["attention_capture"]


def token_groups(tokens: Tokens) -> tuple[list[str], list[list[int]]]:
    """Which positions each map shows: the start token, each prompt token, the end token, all padding."""
    n, total = tokens.n_prompt_tokens, len(tokens.ids)
    labels = [START] + [token_label(t) for t in tokens.tokens[1 : n + 1]] + [END]
    groups = [[i] for i in range(n + 2)]
    if total > n + 2:
        labels.append(f"padding ({total - n - 2})")
        groups.append(list(range(n + 2, total)))
    return labels, groups


def layer_size(pixels: int, height: int, width: int) -> tuple[int, int]:
    """The grid of a layer with ``pixels`` positions: the latent grid halved (rounding up) k times."""
    h, w = height, width
    while h * w > pixels:
        h, w = math.ceil(h / 2), math.ceil(w / 2)
    if h * w != pixels:
        raise ValueError(f"no halving of a {height}x{width} latent grid has {pixels} positions")
    return h, w


class AttentionRecorder:
    """Collects one run's cross-attention: averaged over heads and layers, one set of maps per step."""

    def __init__(self, groups: list[list[int]], n_tokens: int, height: int, width: int):
        self.height, self.width = height, width
        self.grouping = torch.zeros(len(groups), n_tokens)  # [maps, tokens]: sums token weights into maps
        for row, positions in enumerate(groups):
            self.grouping[row, positions] = 1.0
        self.layer_names: list[str] = []
        self.heads: dict[str, int] = {}
        self.steps: list[torch.Tensor] = []  # per step: [maps, height, width]
        self._sum: torch.Tensor | None = None
        self._count = 0

    def add(self, name: str, probs: torch.Tensor, heads: int) -> None:
        if not self.steps:
            self.layer_names.append(name)
            self.heads[name] = heads
        per_pixel = probs.mean(dim=0).cpu()  # average over heads: [pixels, tokens]
        h, w = layer_size(per_pixel.shape[0], self.height, self.width)
        maps = (self.grouping @ per_pixel.T).reshape(1, -1, h, w)
        # Bilinear upsampling mixes neighbouring pixels with weights that add up to 1, so at every pixel the
        # maps still add up to 1 over tokens.
        maps = F.interpolate(maps, size=(self.height, self.width), mode="bilinear", align_corners=False)[0]
        self._sum = maps if self._sum is None else self._sum + maps
        self._count += 1

    def end_step(self, record: StepRecord | None = None) -> None:
        if self._count == 0:
            raise SdvizError("No cross-attention was recorded: this U-Net's attention layers were replaced after "
                             "capture was installed, or it has no cross-attention.")
        self.steps.append(self._sum / self._count)
        self._sum, self._count = None, 0


@dataclass
class AttentionMaps:
    """Per-token cross-attention maps of one run, at latent resolution."""

    labels: list[str]  # one per map: <start>, the prompt's tokens, <end>, padding (n)
    groups: list[list[int]]  # the token positions behind each map
    per_step: np.ndarray  # [steps, maps, h, w]; at every pixel the maps add up to 1
    timesteps: list[float]
    layers: list[str]  # the cross-attention layers that were averaged
    heads: dict[str, int]

    @property
    def overall(self) -> np.ndarray:
        """The whole run: the mean over steps, [maps, h, w]."""
        return self.per_step.mean(axis=0)

    def maps(self, step: int | None = None) -> np.ndarray:
        if step is None:
            return self.overall
        if not 0 <= step < len(self.per_step):
            raise SdvizError(f"Step {step + 1} does not exist: this run has steps 1 to {len(self.per_step)}.")
        return self.per_step[step]

    def shares(self, step: int | None = None) -> np.ndarray:
        """Each map's share of all attention (they add up to 1)."""
        return self.maps(step).mean(axis=(1, 2))


@torch.no_grad()
def capture_run(model, settings: RunSettings, init_image=None) -> tuple[Trace, AttentionMaps]:
    """Run :func:`sdviz.pipeline.sampler.generate` (the one loop) and record its cross-attention. The picture is unchanged."""
    install_capture(model)
    tokens = tokenize(model.tokenizer, settings.prompt)
    labels, groups = token_groups(tokens)
    f = model.vae_scale_factor
    height = (settings.height or model.recommended.height) // f
    width = (settings.width or model.recommended.width) // f
    recorder = AttentionRecorder(groups, len(tokens.ids), height, width)
    token = _active_recorder.set(recorder)
    try:
        trace = generate(model, settings, init_image, on_step=recorder.end_step)
    finally:
        _active_recorder.reset(token)
    maps = AttentionMaps(
        labels=labels, groups=groups, per_step=torch.stack(recorder.steps).numpy(), timesteps=trace.timesteps,
        layers=recorder.layer_names, heads=recorder.heads,
    )
    return trace, maps
