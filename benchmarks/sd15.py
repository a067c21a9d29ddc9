"""SD 1.5's parts at their real size with random weights: U-Net, VAE and CLIP text encoder built from SD 1.5's own
configs (stable-diffusion-v1-5/stable-diffusion-v1-5: unet/, vae/ and text_encoder/config.json), nothing downloaded.
The benchmarks (sampler_overhead, real_size, gpu_check) and the SD-sized tests share them. The tokenizer is the
embedded model's (77 positions, as CLIP's); its small vocabulary only limits which words the prompt can use.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from sdviz.toy import model as toy_model

# SD 1.5's configs (stable-diffusion-v1-5/stable-diffusion-v1-5, unet/vae/text_encoder config.json)
SD15_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32,
)
SD15_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, sample_size=512,
    scaling_factor=0.18215,
)
SD15_TEXT = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                 max_position_embeddings=77, vocab_size=49408, hidden_act="quick_gelu", projection_dim=768)
SD15_SCHEDULER = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", skip_prk_steps=True,
                      steps_offset=1, set_alpha_to_one=False)
QUICK_UNET = dict(SD15_UNET, block_out_channels=(32, 64, 64, 64), cross_attention_dim=64, layers_per_block=1)
QUICK_VAE = dict(SD15_VAE, block_out_channels=(16, 32, 32, 32), layers_per_block=1, norm_num_groups=16)
QUICK_TEXT = dict(SD15_TEXT, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                  projection_dim=64)


def build(folder: Path, quick: bool = False) -> None:
    """Save a random SD-1.5-sized pipeline (``quick``: a small stand-in of the same layout) into ``folder``."""
    torch.manual_seed(0)
    tokenizer = toy_model.build_tokenizer(max_length=77)
    text_config = CLIPTextConfig(**(QUICK_TEXT if quick else SD15_TEXT), bos_token_id=0, eos_token_id=1, pad_token_id=1)
    StableDiffusionPipeline(
        vae=AutoencoderKL(**(QUICK_VAE if quick else SD15_VAE)),
        text_encoder=CLIPTextModel(text_config),
        tokenizer=tokenizer,
        unet=UNet2DConditionModel(**(QUICK_UNET if quick else SD15_UNET)),
        scheduler=PNDMScheduler(**SD15_SCHEDULER),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    ).save_pretrained(folder)
