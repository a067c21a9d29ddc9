"""Loading a Stable Diffusion pipeline: the embedded toy model, a local folder, or a hub id.

The loaded :class:`Model` only holds the pipeline's parts (tokenizer, text encoder, U-Net, VAE and
the scheduler's config). Nothing in it changes during a run, so one model serves many runs at once;
each run builds its own scheduler (:mod:`sdviz.pipeline.schedulers`).
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

import torch

from sdviz.errors import SdvizError

EMBEDDED = "embedded"
EMBEDDED_MODEL_DIR = Path(__file__).resolve().parents[2] / "assets" / "tiny-sd"
RECOMMENDED_FILE = "sdviz_recommended.json"  # steps, guidance and size the model works best with

# What the model cards recommend for the real checkpoints sdviz knows.
KNOWN_HUB_MODELS: dict[str, dict] = {
    "stable-diffusion-v1-5/stable-diffusion-v1-5": {"steps": 50, "guidance_scale": 7.5, "height": 512, "width": 512},
    "stabilityai/stable-diffusion-2-1-base": {"steps": 50, "guidance_scale": 7.5, "height": 512, "width": 512},
    "stabilityai/sd-turbo": {"steps": 1, "guidance_scale": 0.0, "height": 512, "width": 512, "strength": 0.5,
                             "img2img_steps": 2},
}


@dataclass(frozen=True)
class Recommended:
    steps: int
    guidance_scale: float
    height: int
    width: int
    strength: float = 0.8
    img2img_steps: int | None = None  # None: ``steps``, raised until steps x strength runs at least one step

    def __post_init__(self):
        # Image to image runs only the last ``strength`` share of the schedule: int(steps * strength) steps. For
        # sd-turbo (1 step, strength 0.5) that is none, so its image-to-image default is 2 steps, as diffusers'
        # docs recommend for it.
        steps = self.img2img_steps or self.steps
        while self.strength > 0 and int(steps * self.strength) < 1:
            steps += 1
        object.__setattr__(self, "img2img_steps", steps)

    def steps_for(self, img2img: bool) -> int:
        return self.img2img_steps if img2img else self.steps


@dataclass
class Model:
    name: str
    pipe: object  # a diffusers StableDiffusionPipeline: the container of the parts below
    recommended: Recommended
    device: torch.device
    dtype: torch.dtype
    derived: dict = field(default_factory=dict, repr=False)  # computed once from the parts, e.g. a float32 VAE
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)  # guards `derived`

    @property
    def tokenizer(self):
        return self.pipe.tokenizer

    @property
    def text_encoder(self):
        return self.pipe.text_encoder

    @property
    def unet(self):
        return self.pipe.unet

    @property
    def vae(self):
        return self.pipe.vae

    @property
    def scheduler_config(self):
        return self.pipe.scheduler.config

    @property
    def vae_scale_factor(self) -> int:
        return self.pipe.vae_scale_factor


def pick_device(device: str | torch.device | None = None, dtype: str | torch.dtype | None = None):
    """CUDA in float16 when there is a GPU, Apple MPS next, else the CPU in float32; both can be forced."""
    if device is None:
        if torch.cuda.is_available():
            device = "cuda"
        elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            device = "mps"
        else:
            device = "cpu"
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise SdvizError(f"Unknown device {device!r}: use cpu, cuda or mps.") from err
    if isinstance(dtype, str):
        names = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
                 "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
        if dtype not in names:
            raise SdvizError(f"Unknown dtype {dtype!r}: use one of {', '.join(names)}.")
        dtype = names[dtype]
    if dtype is None:
        dtype = torch.float16 if device.type == "cuda" else torch.float32
    return device, dtype


# Torch's own thread count when sdviz was imported (all cores, or OMP_NUM_THREADS when that is set).
_DEFAULT_THREADS = torch.get_num_threads()
SMALL_UNET_PARAMETERS = 50_000_000  # the embedded model's U-Net has 4.8 M, SD 1.5's 860 M


def cpu_threads(model: Model) -> int:
    """How many torch threads a run of ``model`` uses: one for a small model on the CPU, else torch's default.

    A small model's operations are too small to share out: on 2 cores the embedded model runs no faster on two
    threads than on one, and in the app, where the web server and the loop share the cores, a second thread
    spends its time waiting (the app's loop took 1.01 s on two threads against 0.51 s on one; see
    docs/app.md). An OMP_NUM_THREADS set by whoever runs sdviz always wins.
    """
    small = sum(p.numel() for p in model.unet.parameters()) < SMALL_UNET_PARAMETERS
    if model.device.type == "cpu" and small and "OMP_NUM_THREADS" not in os.environ:
        return 1
    return _DEFAULT_THREADS


def use_cpu_threads(model: Model) -> None:
    """Set torch's (process-wide) thread count for runs of ``model``: the CLI and the app both do, so the same
    settings give the same pixels in both (sums over different thread counts can differ in the last bit)."""
    torch.set_num_threads(cpu_threads(model))


_cache: dict[tuple, Model] = {}
_cache_locks: dict[tuple, threading.Lock] = {}
_cache_lock = threading.Lock()  # guards the two dicts; each model loads under its own lock


def load_model(name: str | Path | None = None, device=None, dtype=None) -> Model:
    """Load (once, then from memory) the embedded model, a local pipeline folder, or a hub id."""
    device, dtype = pick_device(device, dtype)
    name = EMBEDDED if name in (None, "", EMBEDDED) else str(name)
    key = (name, str(device), dtype)
    with _cache_lock:
        key_lock = _cache_locks.setdefault(key, threading.Lock())
    with key_lock:  # a slow download of one model does not hold up runs on another
        if key not in _cache:
            _cache[key] = _load(name, device, dtype)
        return _cache[key]


def _load(name: str, device: torch.device, dtype: torch.dtype) -> Model:
    import diffusers
    import transformers
    from diffusers import StableDiffusionPipeline

    diffusers.utils.logging.set_verbosity_error()  # loading chatter (progress bars, safety-checker notice)
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()

    if name == EMBEDDED:
        path = EMBEDDED_MODEL_DIR
        if not (path / "model_index.json").exists():
            raise SdvizError(f"The embedded model is missing from {path}: train it with `python -m sdviz.toy.train`.")
    else:
        path = Path(name).expanduser()
    local = path.exists()
    if local and not (path / "model_index.json").exists():
        raise SdvizError(f"{path} is not a diffusers pipeline folder (it has no model_index.json).")
    if not local and (name.count("/") != 1 or name.startswith((".", "/", "~"))):
        raise SdvizError(
            f"Unknown model {name!r}: give a local diffusers pipeline folder or a hub id such as "
            f"{', '.join(KNOWN_HUB_MODELS)}."
        )
    try:
        pipe = StableDiffusionPipeline.from_pretrained(
            str(path) if local else name,
            dtype=dtype,
            use_safetensors=True,  # never unpickle weights
            safety_checker=None,
            requires_safety_checker=False,
            local_files_only=local,  # a local folder never touches the hub
        )
    except Exception as err:  # diffusers raises many kinds: OSError, ValueError, EnvironmentError, HTTP errors
        where = "folder" if local else "hub id (is there a network, and does it have safetensors weights?)"
        raise SdvizError(f"Could not load the Stable Diffusion model {name!r} from this {where}: {err}") from err
    pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    for part in (pipe.unet, pipe.vae, pipe.text_encoder):
        part.requires_grad_(False).eval()
    return Model(name=name, pipe=pipe, recommended=_recommended(name, path if local else None, pipe), device=device,
                 dtype=dtype)


# A few-step distilled model (sd-turbo, adversarial diffusion distillation) ships a scheduler that visits the last
# timestep first ("trailing" spacing); checkpoints trained for 20-50 steps use "leading" or "linspace".
TURBO_LIKE = {"steps": 1, "guidance_scale": 0.0, "strength": 0.5}


def is_turbo_like(scheduler) -> bool:
    """Whether a model's scheduler is that of a few-step distilled model like sd-turbo: an Euler-type scheduler
    with trailing timestep spacing (sd-turbo's own), so a local copy gets the same settings as the hub id."""
    euler = type(scheduler).__name__ in ("EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler")
    return euler and scheduler.config.get("timestep_spacing") == "trailing"


def _recommended(name: str, path: Path | None, pipe) -> Recommended:
    """The settings a model works best with, the first that says: the folder's ``sdviz_recommended.json``, what
    its scheduler config implies (turbo-like: 1 step, no guidance), the model card of a known hub id, defaults."""
    side = pipe.unet.config.sample_size * pipe.vae_scale_factor
    values = {"steps": 50, "guidance_scale": 7.5, "height": side, "width": side}
    values.update(KNOWN_HUB_MODELS.get(name, {}))
    if is_turbo_like(pipe.scheduler):
        values.update(TURBO_LIKE)
    if path is not None and (path / RECOMMENDED_FILE).exists():
        saved = json.loads((path / RECOMMENDED_FILE).read_text())
        keys = ("steps", "guidance_scale", "height", "width", "strength", "img2img_steps")
        values.update({k: saved[k] for k in keys if k in saved})
    return Recommended(**values)
