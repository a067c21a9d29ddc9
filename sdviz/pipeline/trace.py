"""The trace of a run: what the loop saw and computed at every step, kept for looking at afterwards.

Per-step tensors are stored on the CPU in float16 (SD 1.5 at 512x512 for 50 steps: about 8 MB);
the final latents keep full precision, since the final picture is decoded from them.
"""

from __future__ import annotations

import hashlib
import json
import platform
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from sdviz.pipeline.settings import RunSettings
from sdviz.pipeline.text import Tokens

TRACE_DTYPE = torch.float16


def keep(x: torch.Tensor | None) -> torch.Tensor | None:
    """A compact CPU copy of one latent-shaped tensor, [C, h, w]."""
    return None if x is None else x.detach()[0].to("cpu", TRACE_DTYPE)


@dataclass
class StepRecord:
    """One pass through the loop: x_t went in, the U-Net estimated its noise, the scheduler stepped."""

    index: int  # 0-based position in the loop
    timestep: float  # the model's timestep t (999 = pure noise ... 0 = clean)
    sigma: float  # the noise level of x_t: noise std relative to the signal
    latents: torch.Tensor  # x_t as the scheduler keeps it (Euler-type: x0 + sigma * noise), the step's input
    noise_uncond: torch.Tensor | None  # U-Net estimate for the negative/empty prompt (None without CFG)
    noise_text: torch.Tensor  # U-Net estimate for the prompt
    noise_guided: torch.Tensor  # what the scheduler used: uncond + g * (text - uncond)
    pred_x0: torch.Tensor  # the clean latent implied by the guided estimate
    input_scale: float = 1.0  # what scale_model_input multiplied ``latents`` by (schedulers.input_scale)

    @property
    def x_t(self) -> torch.Tensor:
        """x_t as the U-Net saw it, variance preserving for every scheduler: what pictures and decodes show (raw
        Euler latents have a spread of sigma, up to about 14.6, and decode to garbage)."""
        if self.input_scale == 1:
            return self.latents
        return (self.latents.float() * self.input_scale).to(self.latents.dtype)

    @property
    def guidance_direction(self) -> torch.Tensor | None:
        """text - uncond: the direction CFG pushes along, scaled by the guidance scale."""
        if self.noise_uncond is None:
            return None
        return self.noise_text.float() - self.noise_uncond.float()

    def nbytes(self) -> int:
        parts = (self.latents, self.noise_uncond, self.noise_text, self.noise_guided, self.pred_x0)
        return sum(p.numel() * p.element_size() for p in parts if p is not None)


@dataclass
class Trace:
    settings: RunSettings
    model: str
    scheduler: str
    mode: str  # "txt2img" or "img2img"
    guidance: bool  # whether CFG ran (guidance_scale > 1): two U-Net passes per step
    height: int
    width: int
    prompt_tokens: Tokens
    negative_tokens: Tokens | None
    steps: list[StepRecord]
    final_latents: torch.Tensor  # [C, h, w], float32
    image: Image.Image  # the full VAE decode of the final latents
    init_image: Image.Image | None = None
    seconds: float = 0.0
    environment: dict = field(default_factory=dict)
    unet_passes: int = 0  # U-Net evaluations of this sample: 2 a step where CFG ran, 1 elsewhere

    @property
    def timesteps(self) -> list[float]:
        return [s.timestep for s in self.steps]

    def nbytes(self) -> int:
        return sum(s.nbytes() for s in self.steps) + self.final_latents.numel() * self.final_latents.element_size()

    def arrays(self) -> dict[str, np.ndarray]:
        """The trace as arrays: latents [N+1] (each step's input, then the result), the rest [N]."""
        nan = torch.full_like(self.steps[0].latents, float("nan"))

        def stack(name: str) -> np.ndarray:
            return torch.stack([getattr(s, name) if getattr(s, name) is not None else nan for s in self.steps]).numpy()

        latents = [s.latents.float() for s in self.steps] + [self.final_latents.float()]
        return {
            "timesteps": np.array(self.timesteps, dtype=np.float32),
            "sigmas": np.array([s.sigma for s in self.steps], dtype=np.float32),
            "input_scales": np.array([s.input_scale for s in self.steps], dtype=np.float32),  # latents x it = x_t
            "latents": torch.stack(latents).numpy(),
            "noise_uncond": stack("noise_uncond"),  # NaN where guidance was off
            "noise_text": stack("noise_text"),
            "noise_guided": stack("noise_guided"),
            "pred_x0": stack("pred_x0"),
        }

    def settings_record(self) -> dict:
        """All that is needed to reproduce the run (and what came out of the prompt)."""
        record = {
            **self.settings.to_dict(),
            "height": self.height,
            "width": self.width,
            "scheduler": self.scheduler,
            "model": self.model,
            "mode": self.mode,
            "guidance_applied": self.guidance,
            "prompt_tokens": self.prompt_tokens.tokens[: self.prompt_tokens.n_prompt_tokens + 2],
            "dropped_words": self.prompt_tokens.dropped_words,
            "environment": self.environment,
        }
        if self.init_image is not None:
            record["init_image_sha256"] = hashlib.sha256(self.init_image.tobytes()).hexdigest()
        else:
            record.pop("strength")
        return record

    def save(self, out: str | Path) -> Path:
        """Write final.png, settings.json and trace.npz (and init.png for image to image) into ``out``."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        self.image.save(out / "final.png")
        if self.init_image is not None:
            self.init_image.save(out / "init.png")
        (out / "settings.json").write_text(json.dumps(self.settings_record(), indent=2) + "\n")
        np.savez_compressed(out / "trace.npz", **self.arrays())
        return out


def environment(model) -> dict:
    import diffusers
    import transformers

    return {
        "device": str(model.device),
        "dtype": str(model.dtype).replace("torch.", ""),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
    }
