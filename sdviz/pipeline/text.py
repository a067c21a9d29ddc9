"""Text conditioning: prompt -> tokens -> CLIP text embeddings that the U-Net reads via cross-attention.

Exactly what diffusers' ``StableDiffusionPipeline.encode_prompt`` does: the prompt is padded (or cut) to
the tokenizer's maximum length, and with classifier-free guidance the negative prompt ("" when none is
given) is encoded the same way, to be the "unconditional" reference point.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass, field

import torch

logger = logging.getLogger(__name__)
# A Rust-backed tokenizer changes its padding/truncation settings per call: one call at a time.
_tokenizer_lock = threading.Lock()


@dataclass
class Tokens:
    """A prompt as the text encoder sees it."""

    text: str
    ids: list[int]  # exactly max_length ids: start token, the prompt's tokens, end token, padding
    tokens: list[str]  # the same, as readable strings
    n_prompt_tokens: int  # how many ids come from the prompt itself (between the start and end tokens)
    dropped_words: list[str] = field(default_factory=list)  # cut because the prompt was too long


def tokenize(tokenizer, text: str) -> Tokens:
    max_length = tokenizer.model_max_length
    with _tokenizer_lock:
        ids = tokenizer(text, padding="max_length", max_length=max_length, truncation=True).input_ids
        full = tokenizer(text, truncation=False, verbose=False).input_ids  # [start, ..., end] of any length
        tokens = tokenizer.convert_ids_to_tokens(ids)
    kept = max_length - 2
    dropped: list[str] = []
    if len(full) - 2 > kept:
        with _tokenizer_lock:
            dropped = tokenizer.decode(full[1 + kept : -1]).split()
        logger.warning(
            "The prompt is longer than the text encoder's %d tokens; these words were dropped: %s",
            max_length, " ".join(dropped),
        )
    n = min(len(full) - 2, kept)
    return Tokens(text=text, ids=ids, tokens=tokens, n_prompt_tokens=n, dropped_words=dropped)


EMBEDDINGS_KEPT = 32  # per model, the latest texts' embeddings (at most 32 x 77 x 1024 floats = 10 MB for SD 2)


def embed(model, tokens: Tokens, layer: int | None = None) -> torch.Tensor:
    """CLIP's last hidden state for the tokens: one embedding vector per token, [1, max_length, dim].

    ``layer`` (Diffusion Lens, Toker et al. 2024): the hidden state after that encoder layer instead, through the
    encoder's final layer norm as the last layer's is (so the last layer gives the usual embeddings exactly).

    The latest texts' embeddings are kept (the same tensor is returned: do not change it in place): with guidance
    every run also encodes its negative prompt, nearly always "", and a class encodes thirty prompts one after
    another before its batch can start."""
    key = (tuple(tokens.ids), tokens.n_prompt_tokens, layer)
    kept = model.derived_from("embeddings", model.text_encoder, OrderedDict)
    with model.lock:
        if key in kept:
            kept.move_to_end(key)
            return kept[key]
    embeddings = _encode(model, tokens, layer)
    with model.lock:
        kept[key] = embeddings
        while len(kept) > EMBEDDINGS_KEPT:
            kept.popitem(last=False)
    return embeddings


@torch.no_grad()
def _encode(model, tokens: Tokens, layer: int | None) -> torch.Tensor:
    ids = torch.tensor([tokens.ids], device=model.device)
    attention_mask = None  # like diffusers: CLIP checkpoints do not ask for a mask, so padding is attended to
    if getattr(model.text_encoder.config, "use_attention_mask", False):
        attention_mask = torch.ones_like(ids)
        attention_mask[0, tokens.n_prompt_tokens + 2 :] = 0
    if layer is None:
        return model.text_encoder(ids, attention_mask=attention_mask)[0].to(model.text_encoder.dtype)
    out = model.text_encoder(ids, attention_mask=attention_mask, output_hidden_states=True)
    encoder = getattr(model.text_encoder, "text_model", model.text_encoder)  # transformers < 5 nests it
    hidden = encoder.final_layer_norm(out.hidden_states[layer])  # hidden_states[0]: the token embeddings
    return hidden.to(model.text_encoder.dtype)


@dataclass
class PromptEmbeddings:
    prompt: Tokens
    negative: Tokens | None  # None when guidance is off: one U-Net pass per step
    text_embeds: torch.Tensor
    uncond_embeds: torch.Tensor | None

    def unet_batch(self) -> torch.Tensor:
        """The U-Net's encoder_hidden_states: [uncond, text] with guidance (uncond first, as in diffusers)."""
        if self.uncond_embeds is None:
            return self.text_embeds
        return torch.cat([self.uncond_embeds, self.text_embeds])


def encode_prompt(model, prompt: str, negative_prompt: str, guidance: bool,
                  layer: int | None = None) -> PromptEmbeddings:
    """The prompt's embeddings (and the negative prompt's, for CFG), from the text encoder's last layer or, for
    Diffusion Lens, both from encoder layer ``layer``: the text encoder as if it ended there."""
    tokens = tokenize(model.tokenizer, prompt)
    negative = tokenize(model.tokenizer, negative_prompt or "") if guidance else None
    return PromptEmbeddings(
        prompt=tokens,
        negative=negative,
        text_embeds=embed(model, tokens, layer),
        uncond_embeds=embed(model, negative, layer) if negative is not None else None,
    )
