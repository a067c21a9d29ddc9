"""The architecture of the embedded tiny Stable Diffusion: the same four parts as the real thing.

- a CLIP tokenizer (BPE, built offline over the toy world's words) and a CLIP text encoder,
- a VAE (``AutoencoderKL``) that squeezes a 64x64x3 picture into 8x8x4 latents: 48x fewer numbers,
- a U-Net (``UNet2DConditionModel``) that predicts noise, reading the text through cross-attention,
- a scheduler with Stable Diffusion's own noise schedule.

Only sizes differ from SD 1.5, so every part of sdviz treats it exactly like a real checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass

from diffusers import AutoencoderKL, DPMSolverMultistepScheduler, UNet2DConditionModel
from tokenizers.pre_tokenizers import ByteLevel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from sdviz.toy import world

MAX_TOKENS = 16  # the toy tokenizer's model_max_length (SD uses 77)
TEXT_DIM = 128  # width of the text embeddings, and the U-Net's cross_attention_dim
BOS, EOS = "<|startoftext|>", "<|endoftext|>"

# Stable Diffusion's noise schedule, unchanged: every scheduler in the app behaves as it does for SD.
NOISE_SCHEDULE = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    prediction_type="epsilon",
    steps_offset=1,
)


def build_tokenizer(words: tuple[str, ...] = world.VOCABULARY, max_length: int = MAX_TOKENS) -> CLIPTokenizer:
    """A CLIP BPE tokenizer whose vocabulary holds every byte (so any text encodes) and the toy words."""
    vocab = {BOS: 0, EOS: 1}
    alphabet = sorted(ByteLevel.alphabet())  # CLIP's byte-level alphabet: nothing is ever unknown
    for symbol in alphabet + [c + "</w>" for c in alphabet]:
        vocab.setdefault(symbol, len(vocab))
    merges: list[tuple[str, str]] = []
    for word in dict.fromkeys(words):  # add merges until each word is one token
        pieces = _bpe(list(word[:-1]) + [word[-1] + "</w>"], merges)
        while len(pieces) > 1:  # earlier words' merges may have split it elsewhere: join from the left
            merges.append((pieces[0], pieces[1]))
            vocab.setdefault(pieces[0] + pieces[1], len(vocab))
            pieces = _bpe(pieces, merges)
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=max_length,
                         bos_token=BOS, eos_token=EOS, pad_token=EOS, unk_token=EOS)


def is_toy_tokenizer(tokenizer) -> bool:
    """Whether ``tokenizer`` is one :func:`build_tokenizer` makes: every byte as a token, and merges only for a few
    whole words (CLIP's own has 49,408 tokens; a toy one about 600). In such a tokenizer a word is either one of its
    words or falls apart into pieces the model never learned."""
    vocab = tokenizer.get_vocab()
    return len(vocab) < 2048 and all(c in vocab and c + "</w>" in vocab for c in ByteLevel.alphabet())


@dataclass(frozen=True)
class UnknownWord:
    word: str
    pieces: tuple[str, ...]  # the tokens it became, as text


def unknown_words(tokenizer, text: str) -> list[UnknownWord]:
    """The words of ``text`` that the tokenizer has no whole-word token for: each became several sub-word tokens
    (letters, for a toy tokenizer), in order, once each. Punctuation and numbers are not words here."""
    found: dict[str, UnknownWord] = {}
    pieces: list[str] = []
    for token in tokenizer.tokenize(text):
        pieces.append(token)
        if not token.endswith("</w>"):
            continue
        if len(pieces) > 1:
            pieces = [p.removesuffix("</w>") for p in pieces]
            word = tokenizer.convert_tokens_to_string(pieces).strip()
            shown = tuple(tokenizer.convert_tokens_to_string([p]) for p in pieces)
            if any("\ufffd" in p for p in shown):  # a letter of several bytes, split between tokens
                shown = tuple(word)
            if any(c.isalpha() for c in word):
                found.setdefault(word, UnknownWord(word, shown))
        pieces = []
    return list(found.values())


def known_words(tokenizer) -> list[str]:
    """The whole words a toy tokenizer has tokens for (longer than one letter), alphabetically."""
    words = {token.removesuffix("</w>") for token in tokenizer.get_vocab() if token.endswith("</w>")}
    return sorted(w for w in words if len(w) > 1 and w.isalpha())


def reads_pairs(tokenizer) -> bool:
    """Whether every word of the two-shape captions is one token of ``tokenizer`` (a model trained on pairs)."""
    words = set(world.PAIR_VOCABULARY) - set(world.VOCABULARY)
    return all(len(tokenizer(w, add_special_tokens=False).input_ids) == 1 for w in words)


def _bpe(pieces: list[str], merges: list[tuple[str, str]]) -> list[str]:
    """What CLIP's BPE does to one word: apply the lowest-ranked merge present, again and again."""
    rank = {pair: i for i, pair in enumerate(merges)}
    while len(pieces) > 1:
        pairs = [(rank.get(pair, len(rank)), i) for i, pair in enumerate(zip(pieces, pieces[1:], strict=False))]
        best, i = min(pairs)
        if best == len(rank):
            break
        pieces = pieces[:i] + [pieces[i] + pieces[i + 1]] + pieces[i + 2:]
    return pieces


def build_text_encoder(vocab_size: int, max_tokens: int = MAX_TOKENS) -> CLIPTextModel:
    config = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=TEXT_DIM,
        intermediate_size=4 * TEXT_DIM,
        num_hidden_layers=3,
        num_attention_heads=4,
        max_position_embeddings=max_tokens,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
    return CLIPTextModel(config)


def build_vae(image_size: int = world.IMAGE_SIZE) -> AutoencoderKL:
    """Three halvings (64 -> 8, or 128 -> 16) and 4 latent channels: the same compression as SD's VAE. Fully
    convolutional, so it can learn on crops of the pictures it will encode whole."""
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(16, 32, 64, 64),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=image_size,
    )


def build_unet(image_size: int = world.IMAGE_SIZE, channels: tuple[int, ...] = (64, 96, 128),
               attention: tuple[bool, ...] = (True, True, False)) -> UNet2DConditionModel:
    """A small U-Net over the latent grid (image_size / 8), halving at each level but the last and back.
    ``attention`` says which levels have cross-attention (the text enters there; the middle always has it).
    The shipped model: 8x8 -> 4x4 -> 2x2, cross-attention at 8x8, 4x4 and in the middle."""
    return UNet2DConditionModel(
        sample_size=image_size // 8,
        in_channels=4,
        out_channels=4,
        down_block_types=tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attention),
        up_block_types=tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention)),
        block_out_channels=channels,
        layers_per_block=1,
        cross_attention_dim=TEXT_DIM,
        attention_head_dim=8,
        norm_num_groups=32,
    )


def build_scheduler() -> DPMSolverMultistepScheduler:
    """DPM-Solver++ (2M): good pictures in few steps; any other scheduler can be chosen at run time."""
    return DPMSolverMultistepScheduler(**NOISE_SCHEDULE)
