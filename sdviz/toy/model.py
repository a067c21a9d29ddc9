"""The architecture of the embedded tiny Stable Diffusion: the same four parts as the real thing.

- a CLIP tokenizer (BPE, built offline over the toy world's words) and a CLIP text encoder,
- a VAE (``AutoencoderKL``) that squeezes a 64x64x3 picture into 8x8x4 latents: 48x fewer numbers,
- a U-Net (``UNet2DConditionModel``) that predicts noise, reading the text through cross-attention,
- a scheduler with Stable Diffusion's own noise schedule.

Only sizes differ from SD 1.5, so every part of sdviz treats it exactly like a real checkpoint.
"""

from __future__ import annotations

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
