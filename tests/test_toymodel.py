"""The embedded model's parts: the offline tokenizer and the training loss weights."""

from __future__ import annotations

import torch
from diffusers import DDPMScheduler

from sdviz.toy import model as toy_model
from sdviz.toy import world
from sdviz.toy.train import TrainConfig, loss_weight


def test_every_toy_word_is_one_token_in_clips_own_tokenizer():
    tokenizer = toy_model.build_tokenizer()
    for word in world.VOCABULARY:
        assert tokenizer.tokenize(word) == [word + "</w>"], word
    ids = tokenizer("a big green triangle at the bottom").input_ids
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
    assert len(ids) == 2 + 7


def test_unknown_and_non_ascii_text_encodes_into_byte_tokens():
    tokenizer = toy_model.build_tokenizer()
    ids = tokenizer("zebra ü 🙂").input_ids
    assert tokenizer.unk_token_id not in ids[1:-1]  # every byte has a token: nothing is unknown
    assert tokenizer.decode(ids, skip_special_tokens=True) == "zebra ü 🙂"


def test_loss_weight_is_min_snr_with_a_floor_for_the_noisiest_steps():
    alphas = DDPMScheduler(**toy_model.NOISE_SCHEDULE).alphas_cumprod
    snr = alphas / (1 - alphas)
    plain = loss_weight(alphas, TrainConfig(min_snr_gamma=5.0, x0_weight_floor=0.0))
    floored = loss_weight(alphas, TrainConfig(min_snr_gamma=5.0, x0_weight_floor=1.0))
    assert torch.allclose(plain, torch.clamp(snr, max=5.0) / snr)
    low_noise = snr > 5.0
    assert torch.allclose(plain[low_noise], floored[low_noise])  # clean steps: down-weighted as before
    assert floored[-1] > 100 * plain[-1]  # t=999: the picture's error counts as much as at SNR 1
    assert torch.allclose(floored[-1] * snr[-1], torch.tensor(1.0))


def test_a_tokenizer_reads_pairs_only_when_it_has_every_two_shape_word():
    assert toy_model.reads_pairs(toy_model.build_tokenizer(world.PAIR_VOCABULARY))
    assert not toy_model.reads_pairs(toy_model.build_tokenizer(world.VOCABULARY))
