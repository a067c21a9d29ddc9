"""Train the embedded tiny Stable Diffusion from scratch: ``python -m sdviz.toy.train`` (``--ship`` to ship it).

Three stages, as in the real thing:
1. the VAE learns to squeeze toy pictures into 8x8x4 latents and back (reconstruction + a little KL);
2. the U-Net and the CLIP text encoder learn to predict the noise that was added to those latents,
   given the caption (10% of captions are dropped to "", so the same model also learns the
   unconditional prediction that classifier-free guidance needs);
3. a layout stage continues stage 2 with coarse "pyramid" noise, so that position words are learned,
   and with cleaner captions, so that the prompt is followed closely.

Settings sit at the top; ``--preset micro`` runs a few steps of everything in seconds (used by the tests).
Checkpoints are written every ``checkpoint_every`` steps to ``--workdir``; ``--resume`` continues from them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, StableDiffusionPipeline
from tqdm import tqdm

from sdviz.pipeline.models import EMBEDDED_MODEL_DIR, RECOMMENDED_FILE
from sdviz.toy import model as toy_model
from sdviz.toy import world

DEFAULT_OUT = Path("runs/tiny-sd")  # git-ignored; `--ship` writes into assets/ instead


@dataclass
class TrainConfig:
    seed: int = 0
    threads: int = 2
    # the world and the model's size (the shipped model: 64x64 pictures of one shape, 8x8x4 latents)
    image_size: int = 64
    pair_fraction: float = 0.0  # share of two-shape pictures ("a red circle to the left of a blue square")
    max_tokens: int = toy_model.MAX_TOKENS  # the text encoder's length
    unet_channels: tuple[int, ...] = (64, 96, 128)
    unet_attention: tuple[bool, ...] = (True, True, False)  # cross-attention per level, finest first
    # stage 1: VAE
    vae_steps: int = 2500
    vae_batch: int = 32
    vae_lr: float = 1e-3
    vae_crop: int | None = None  # train on random crops of this side (the VAE is fully convolutional)
    kl_weight: float = 1e-6  # SD's weight: keeps the latent space smooth without blurring
    # stage 2: U-Net + text encoder, on latents of a fixed set of pictures
    dataset_size: int = 30000
    unet_steps: int = 4500
    unet_batch: int = 64
    unet_lr: float = 5e-4
    uncond_fraction: float = 0.1  # captions replaced by "" so CFG has an unconditional model
    keep_size_word: float = 0.6  # how often the caption names the size
    keep_position_words: float = 0.75  # ... and the position
    # Real captions (alt-text from the web) are often wrong. So are ours: each word that names an attribute
    # is swapped for another value of it this often. Without guidance the model then draws what such a
    # caption *usually* comes with, wrong attribute included; classifier-free guidance pushes towards what
    # sets the caption apart from no caption at all, and the mistakes go: the CFG slider visibly matters.
    caption_noise: float = 0.2
    # ... until the last stage, which sees cleaner captions (as SD's last stages trained on better-captioned
    # subsets of its data): the model keeps what noisy captions taught the unconditional side, and its
    # conditional side sharpens. Measured on a fine-tune of the previous model, 700 steps: colour at
    # guidance 2.5 85% -> 98%, with guidance 1 still clearly worse (docs/embedded-model.md).
    layout_caption_noise: float = 0.05
    min_snr_gamma: float = 5.0
    # The layout (where the shape goes) is decided at the noisiest steps, where the epsilon loss hardly
    # sees the picture: an error e in the predicted clean latents costs only SNR * e^2 there (SNR 0.005 at
    # t=999). A floor on that weight (1.0 is what v-prediction gives) lets those steps learn position words.
    x0_weight_floor: float = 1.0
    # stage 3: layout (and the cleaner captions above). Plain training learns colour and shape but not position
    # words: even at t=999, SD's schedule leaves a faint layout in x_t, and the U-Net learns to copy it from the
    # noise instead of reading "on the left". More steps continue the U-Net and text encoder with coarse
    # "pyramid" noise (4x4, 2x2, 1x1 layers, decaying weights) that hides that faint layout, and more noisy
    # timesteps.
    layout_steps: int = 2000
    layout_lr: float = 4e-4
    pyramid_noise_discount: float = 0.6
    high_noise_fraction: float = 0.3  # share of timesteps drawn from the noisier half, where layout is decided
    ema_decay: float = 0.999
    warmup_steps: int = 200
    checkpoint_every: int = 500
    # what the model recommends to the CLI and the app (height and width: image_size)
    recommended: dict = dataclasses.field(default_factory=lambda: {"steps": 20, "guidance_scale": 2.0})


# v3 (not shipped yet): 128x128 pictures (16x16x4 latents), half of them two-shape scenes. Sized for <= 120 min on
# 2 cores from measured step times (U-Net (32, 64, 128) without attention at 16x16: 0.85 s a step of 64; the VAE
# on 64x64 crops: 0.91 s a step of 32): VAE 2,000 steps (~30 min), encoding (~4 min), U-Net 5,000 (~71 min).
V3 = dict(image_size=128, pair_fraction=0.5, max_tokens=24, unet_channels=(32, 64, 128),
          unet_attention=(False, True, True), vae_crop=64, vae_steps=2000, unet_steps=3500, layout_steps=1500)
MICRO = dict(vae_steps=2, vae_batch=4, dataset_size=16, unet_steps=2, layout_steps=1, unet_batch=4, warmup_steps=1,
             checkpoint_every=1)
PRESETS = {
    "full": TrainConfig(),  # the shipped model
    "micro": TrainConfig(**MICRO),
    "v3": TrainConfig(**V3),
    "v3-micro": TrainConfig(**{**V3, **MICRO}),
}


def lr_at(step: int, total: int, base: float, warmup: int) -> float:
    """Linear warm-up, then cosine decay to 5% of the base rate."""
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))


def save_checkpoint(path: Path, **state) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)  # atomic: a crash never leaves a half-written checkpoint


# -- stage 1 ----------------------------------------------------------------------------------
def train_vae(cfg: TrainConfig, workdir: Path, device: torch.device, resume: bool):
    vae = toy_model.build_vae(cfg.image_size).to(device)
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    ckpt, start = workdir / "vae.ckpt", 0
    if resume and ckpt.exists():
        state = torch.load(ckpt, map_location=device, weights_only=False)
        vae.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        start = state["step"]
    rng = random.Random(cfg.seed * 1000 + start)  # the picture stream is seeded per resume point
    bar = tqdm(range(start, cfg.vae_steps), desc="VAE", initial=start, total=cfg.vae_steps)
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg.vae_steps, cfg.vae_lr, cfg.warmup_steps)
        x = torch.from_numpy(world.batch(rng, cfg.vae_batch, pair_fraction=cfg.pair_fraction,
                                         size=cfg.image_size)[0])
        x = random_crops(x, cfg.vae_crop, rng).to(device)
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample()).sample
        # L1 keeps edges sharp, MSE is what PSNR measures; the KL term is SD's tiny one.
        loss = F.l1_loss(recon, x) + F.mse_loss(recon, x) + cfg.kl_weight * posterior.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.vae_steps:
            save_checkpoint(ckpt, model=vae.state_dict(), opt=opt.state_dict(), step=step + 1)
    vae.eval()
    return vae


@torch.no_grad()
def encode_dataset(cfg: TrainConfig, vae, workdir: Path, device: torch.device, resume: bool) -> dict:
    """Draw the training pictures once and keep their latent distributions (mean, std)."""
    path = workdir / "latents.pt"
    if resume and path.exists():
        return torch.load(path, weights_only=False)
    rng = random.Random(cfg.seed + 1)
    means, stds, scenes = [], [], []
    for start in tqdm(range(0, cfg.dataset_size, 256), desc="encode"):
        x, batch_scenes = world.batch(rng, min(256, cfg.dataset_size - start), pair_fraction=cfg.pair_fraction,
                                      size=cfg.image_size)
        dist = vae.encode(torch.from_numpy(x).to(device)).latent_dist
        means.append(dist.mean.cpu())
        stds.append(dist.std.cpu())
        scenes += [dataclasses.asdict(s) for s in batch_scenes]
    data = {"mean": torch.cat(means), "std": torch.cat(stds), "scenes": scenes}
    # SD rescales latents to unit variance before diffusion; this is the number it stores as
    # vae.config.scaling_factor (0.18215 for SD 1.x). We measure ours the same way.
    data["scaling_factor"] = float(1.0 / data["mean"].std())
    torch.save(data, path)
    return data


# -- stage 2 ----------------------------------------------------------------------------------
def random_crops(x: torch.Tensor, side: int | None, rng: random.Random) -> torch.Tensor:
    """A random ``side`` x ``side`` crop of each picture of [n, 3, H, W] (all of it when ``side`` is None)."""
    if side is None or side >= x.shape[-1]:
        return x
    corners = [(rng.randrange(x.shape[-2] - side + 1), rng.randrange(x.shape[-1] - side + 1)) for _ in range(len(x))]
    return torch.stack([picture[:, y : y + side, left : left + side] for picture, (y, left) in zip(x, corners, strict=True)])


CONVERSE = {"and": "and", "left": "right", "right": "left", "above": "below", "below": "above"}


def random_caption(rng: random.Random, scene: dict, cfg: TrainConfig, caption_noise: float) -> str:
    """The caption a training picture gets: "" (for CFG) or some of its attributes, some of them wrong."""
    if rng.random() < cfg.uncond_fraction:
        return ""
    if "relation" in scene:
        return pair_caption(rng, scene, caption_noise)
    with_size = rng.random() < cfg.keep_size_word
    with_position = rng.random() < cfg.keep_position_words
    named = {"colour": list(world.COLOURS), "shape": list(world.SHAPES),
             **({"size": list(world.SIZES)} if with_size else {}),
             **({"position": list(world.POSITIONS)} if with_position else {})}
    while True:
        said = dict(scene)
        for attribute, values in named.items():
            if rng.random() < caption_noise:
                said[attribute] = rng.choice([v for v in values if v != scene[attribute]])
        # a wrong caption must not name a held-out combination: the evaluation's prompts stay unseen
        if not (with_position and (said["colour"], said["shape"], said["position"]) in world.HELD_OUT):
            break
    return world.caption(said["colour"], said["shape"], said["size"] if with_size else None,
                            said["position"] if with_position else None)


def pair_caption(rng: random.Random, scene: dict, caption_noise: float) -> str:
    """A two-shape scene's caption: either way round ("A left of B" or "B right of A"), each colour and shape word
    wrong with probability ``caption_noise``, never naming a held-out pair."""
    first, second, relation = scene["first"], scene["second"], scene["relation"]
    if rng.random() < 0.5:  # the same picture, said the other way round
        first, second, relation = second, first, CONVERSE[relation]
    while True:
        objects = []
        for shape in (first, second):
            colour, kind = shape["colour"], shape["shape"]
            if rng.random() < caption_noise:
                colour = rng.choice([c for c in world.COLOURS if c != colour])
            if rng.random() < caption_noise:
                kind = rng.choice([k for k in world.SHAPES if k != kind])
            objects.append((colour, kind))
        if objects[0] != objects[1] and not world.is_held_out_pair(*objects):
            return world.pair_caption(objects[0], relation, objects[1])


def build_networks(cfg: TrainConfig, tokenizer, device: torch.device):
    """A fresh U-Net and text encoder of the configuration's sizes."""
    unet = toy_model.build_unet(cfg.image_size, cfg.unet_channels, cfg.unet_attention).to(device)
    return unet, toy_model.build_text_encoder(len(tokenizer), cfg.max_tokens).to(device)


def train_unet(cfg: TrainConfig, data: dict, tokenizer, workdir: Path, device: torch.device, resume: bool):
    unet, text_encoder = build_networks(cfg, tokenizer, device)
    ema = dict(zip(("unet", "text_encoder"), build_networks(cfg, tokenizer, device), strict=True))
    for name, model in (("unet", unet), ("text_encoder", text_encoder)):
        ema[name].load_state_dict(model.state_dict())
        ema[name].requires_grad_(False)
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.unet_lr, weight_decay=0.01)
    noise_scheduler = DDPMScheduler(**toy_model.NOISE_SCHEDULE)
    alphas_cumprod = noise_scheduler.alphas_cumprod.to(device)
    ckpt, start = workdir / "unet.ckpt", 0
    if resume and ckpt.exists():
        state = torch.load(ckpt, map_location=device, weights_only=False)
        unet.load_state_dict(state["unet"])
        text_encoder.load_state_dict(state["text_encoder"])
        ema["unet"].load_state_dict(state["ema_unet"])
        ema["text_encoder"].load_state_dict(state["ema_text_encoder"])
        opt.load_state_dict(state["opt"])
        start = state["step"]
    total = cfg.unet_steps + cfg.layout_steps
    n, scale = len(data["scenes"]), data["scaling_factor"]
    bar = tqdm(range(start, total), desc="U-Net", initial=start, total=total)
    for step in bar:
        if step == start or step == cfg.unet_steps:  # random streams are seeded per resume point and stage
            rng = random.Random(cfg.seed * 1000 + 7 + step)
            gen = torch.Generator().manual_seed(cfg.seed * 1000 + 7 + step)
        layout = step >= cfg.unet_steps
        caption_noise = cfg.layout_caption_noise if layout else cfg.caption_noise
        for group in opt.param_groups:
            group["lr"] = (lr_at(step - cfg.unet_steps, cfg.layout_steps, cfg.layout_lr, cfg.warmup_steps) if layout
                           else lr_at(step, cfg.unet_steps, cfg.unet_lr, cfg.warmup_steps))
        idx = torch.randint(0, n, (cfg.unet_batch,), generator=gen)
        mean, std = data["mean"][idx], data["std"][idx]
        latents = (mean + std * torch.randn(mean.shape, generator=gen)).to(device) * scale
        captions = [random_caption(rng, data["scenes"][i], cfg, caption_noise) for i in idx.tolist()]
        ids = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length,
                        truncation=True, return_tensors="pt").input_ids.to(device)
        noise = training_noise(latents.shape, gen, cfg.pyramid_noise_discount if layout else 0.0).to(device)
        n_train = noise_scheduler.config.num_train_timesteps
        t = torch.randint(0, n_train, (cfg.unet_batch,), generator=gen)
        if layout and cfg.high_noise_fraction > 0:
            noisy_half = torch.rand(cfg.unet_batch, generator=gen) < cfg.high_noise_fraction
            t = torch.where(noisy_half, n_train // 2 + t // 2, t)
        t = t.to(device)
        noisy = noise_scheduler.add_noise(latents, noise, t)  # forward diffusion: x_t from x_0 in one jump
        noise_pred = unet(noisy, t, encoder_hidden_states=text_encoder(ids)[0]).sample
        loss = (loss_weight(alphas_cumprod[t], cfg) * (noise_pred - noise).pow(2).mean(dim=(1, 2, 3))).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        decay = min(cfg.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for name, model in (("unet", unet), ("text_encoder", text_encoder)):
                for p_ema, p in zip(ema[name].parameters(), model.parameters(), strict=True):
                    p_ema.lerp_(p, 1 - decay)
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == total:
            save_checkpoint(ckpt, unet=unet.state_dict(), text_encoder=text_encoder.state_dict(),
                            ema_unet=ema["unet"].state_dict(), ema_text_encoder=ema["text_encoder"].state_dict(),
                            opt=opt.state_dict(), step=step + 1)
    return ema["unet"].eval(), ema["text_encoder"].eval()


def loss_weight(alpha_cumprod: torch.Tensor, cfg: TrainConfig) -> torch.Tensor:
    """Weight of each example's epsilon loss: min-SNR (the easy, almost noise-free steps don't drown out the
    rest), and a floor for the noisiest steps. Written as weight-on-clean-latents / SNR, since
    |eps error|^2 = SNR * |x0 error|^2."""
    snr = alpha_cumprod / (1 - alpha_cumprod)
    return torch.clamp(snr, min=cfg.x0_weight_floor, max=cfg.min_snr_gamma) / snr


def training_noise(shape, gen: torch.Generator, discount: float) -> torch.Tensor:
    """Gaussian noise; with ``discount`` > 0, plus coarser noise layers, rescaled to unit variance."""
    noise = torch.randn(shape, generator=gen)
    if discount <= 0:
        return noise
    weight, total = 1.0, 1.0
    for side in (4, 2, 1):
        weight *= discount
        coarse = torch.randn((*shape[:2], side, side), generator=gen)
        noise = noise + weight * F.interpolate(coarse, size=shape[-2:], mode="nearest")
        total += weight**2
    return noise / total**0.5


def save_pipeline(out: Path, vae, unet, text_encoder, tokenizer, scaling_factor: float, cfg: TrainConfig, info: dict):
    vae.register_to_config(scaling_factor=scaling_factor)
    pipe = StableDiffusionPipeline(
        vae=vae.cpu(), text_encoder=text_encoder.cpu(), tokenizer=tokenizer, unet=unet.cpu(),
        scheduler=toy_model.build_scheduler(), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )
    # Shards of at most 8 MB: a Hugging Face Space stores files under 10 MB without Git LFS.
    pipe.save_pretrained(out, safe_serialization=True, max_shard_size="8MB")
    recommended = {**cfg.recommended, "height": cfg.image_size, "width": cfg.image_size}
    (out / RECOMMENDED_FILE).write_text(json.dumps({**recommended, "training": info}, indent=2) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="full")
    parser.add_argument("--workdir", type=Path, default=Path("runs/train"), help="checkpoints go here")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"where the pipeline goes (default {DEFAULT_OUT})")
    parser.add_argument("--ship", action="store_true",
                        help=f"save into {EMBEDDED_MODEL_DIR}: replace the embedded model the app ships")
    parser.add_argument("--resume", action="store_true", help="continue from the checkpoints in --workdir")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="override one TrainConfig setting, e.g. --set unet_steps=3000")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: the config's)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    out = EMBEDDED_MODEL_DIR if args.ship else args.out
    if not args.ship and out.resolve().is_relative_to(EMBEDDED_MODEL_DIR.parent.resolve()):
        parser.error(f"{out} is inside {EMBEDDED_MODEL_DIR.parent}: pass --ship to replace the shipped model")
    cfg = PRESETS[args.preset]
    for item in args.set:
        name, _, value = item.partition("=")
        if name not in TrainConfig.__dataclass_fields__ or name == "recommended":
            parser.error(f"unknown setting {name!r}")
        cfg = dataclasses.replace(cfg, **{name: type(getattr(cfg, name))(value)})
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(args.threads or cfg.threads)
    device = torch.device(args.device)
    args.workdir.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    vae = train_vae(cfg, args.workdir, device, args.resume)
    data = encode_dataset(cfg, vae, args.workdir, device, args.resume)
    words = world.PAIR_VOCABULARY if cfg.pair_fraction else world.VOCABULARY
    tokenizer = toy_model.build_tokenizer(words, max_length=cfg.max_tokens)
    unet, text_encoder = train_unet(cfg, data, tokenizer, args.workdir, device, args.resume)
    info = {"preset": args.preset, "device": str(device), "seconds": round(time.time() - t0, 1),
            "config": {k: v for k, v in dataclasses.asdict(cfg).items() if k != "recommended"}}
    save_pipeline(out, vae, unet, text_encoder, tokenizer, data["scaling_factor"], cfg, info)
    print(f"saved {out} after {info['seconds']} s")


if __name__ == "__main__":
    main()
