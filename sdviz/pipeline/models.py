"""Loading a Stable Diffusion pipeline: the embedded toy model, a local folder, or a hub id.

The loaded :class:`Model` only holds the pipeline's parts (tokenizer, text encoder, U-Net, VAE and
the scheduler's config). Nothing in it changes during a run, so one model serves many runs at once;
each run builds its own scheduler (:mod:`sdviz.pipeline.schedulers`).
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import json
import os
import threading
from collections import OrderedDict
from collections.abc import Iterator
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

    def derived_from(self, key, source, make):
        """``make()``, made once and kept in ``derived`` under ``key`` while ``source`` (a part of the model) stays
        the model's; made again after it was replaced."""
        with self.lock:
            kept = self.derived.get(key)
            if kept is None or kept[0] is not source:
                kept = self.derived[key] = (source, make())
            return kept[1]

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


_threads: int | None = None  # torch's thread count for this process, decided once by use_cpu_threads
_threads_lock = threading.Lock()


def use_cpu_threads(model: Model) -> int:
    """Give torch the process's thread count, decided once: at the first call, from the first model loaded
    (:func:`cpu_threads`: one thread for a small model on the CPU, else torch's default; OMP_NUM_THREADS wins).

    torch's thread count is process-wide, so changing it for one model would change it under every other run in
    the process (a student's run of SD 1.5 while another loads the embedded model). The CLI and the app both call
    this, so the same model (the CLI's, the app's first) runs on the same threads and gives the same pixels in both
    (sums over different thread counts can differ in the last bit). Later calls only restore the count when someone
    else (e.g. a test) changed it."""
    global _threads
    with _threads_lock:
        if _threads is None:
            _threads = cpu_threads(model)
        if torch.get_num_threads() != _threads:
            torch.set_num_threads(_threads)
        return _threads


class FairLock:
    """A lock that serves its waiters in turn: in the order they came (``with lock:``), or the one with the smallest
    key first (``with lock.turn(key):``). ``threading.Lock`` lets a thread that releases it take it straight back, so
    a loop holding it step after step would starve everyone else; here a release hands the lock to the next waiter."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held = False
        self._waiting: list[tuple[float, int, threading.Event]] = []  # a heap: (key, arrival, woken when handed over)
        self._arrivals = itertools.count()

    def __enter__(self) -> None:
        self._acquire(None)

    def __exit__(self, *exc) -> None:
        self._release()

    @contextlib.contextmanager
    def turn(self, key: float) -> Iterator[None]:
        self._acquire(key)
        try:
            yield
        finally:
            self._release()

    def _acquire(self, key: float | None) -> None:
        mine = threading.Event()
        with self._lock:
            arrival = next(self._arrivals)
            if not self._held:
                self._held = True
                return
            heapq.heappush(self._waiting, (arrival if key is None else key, arrival, mine))
        try:
            mine.wait()
        except BaseException:
            with self._lock:
                if not mine.is_set():  # interrupted while waiting: leave the queue
                    self._waiting = [entry for entry in self._waiting if entry[2] is not mine]
                    heapq.heapify(self._waiting)
                    raise
            self._release()  # handed over just as the wait was interrupted: pass it on
            raise

    def _release(self) -> None:
        with self._lock:
            if self._waiting:
                heapq.heappop(self._waiting)[2].set()  # still held: now by the next waiter
            else:
                self._held = False


# The playground's torch work (a batch's steps, the live views' decodes) runs one piece at a time, in turn, under this
# lock. Each piece already uses every core (torch's thread pool is process-wide); thirty users' threads calling into
# torch at once would start thirty thread teams on two cores and spend their time waiting for each other (a class of
# 30: the live views' decodes took 42% of the server's samples and the loop crawled; see docs/reliability.md). In
# turn, the decodes of a class's live views fit between two steps of their batch.
compute_lock = FairLock()


@contextlib.contextmanager
def batch_threads(model: Model, batch: int) -> Iterator[int]:
    """Threads for one step of a batch of ``batch`` runs, then back to :func:`use_cpu_threads`' count: a lone run
    keeps that count (the CLI's: the same pixels); several runs together make operations big enough for every core
    (measured on 2 cores, a class of 30 with the embedded model: see docs/reliability.md). Back afterwards because
    torch starts a new thread on the latest count set: a teaching tab's thread started after a class's batch would
    otherwise run on every core and lose the CLI's exact pixels."""
    own = use_cpu_threads(model)
    threads = own
    if batch > 1 and model.device.type == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        threads = max(threads, _DEFAULT_THREADS)
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    try:
        yield threads
    finally:
        if torch.get_num_threads() != own:
            torch.set_num_threads(own)


MAX_MODELS_ENV = "SDVIZ_MAX_MODELS"
DEFAULT_MAX_MODELS = 2  # three hub models in float32 on the CPU would be about 14 GB

_cache: OrderedDict[tuple, Model] = OrderedDict()  # least recently used first
_cache_locks: dict[tuple, threading.Lock] = {}
_cache_lock = threading.Lock()  # guards the two dicts; each model loads under its own lock


def max_models() -> int:
    """How many loaded models the process keeps (``SDVIZ_MAX_MODELS``, default 2); the least recently used goes."""
    raw = os.environ.get(MAX_MODELS_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_MODELS
    if not raw.isdigit() or int(raw) < 1:
        raise SdvizError(f"{MAX_MODELS_ENV} must be a whole number of 1 or more (got {raw!r}).")
    return int(raw)


def load_model(name: str | Path | None = None, device=None, dtype=None) -> Model:
    """Load (once, then from memory) the embedded model, a local pipeline folder, or a hub id.

    The process keeps at most :func:`max_models` models, dropping the least recently used one before loading
    another (a run still using a dropped model keeps it alive until it ends)."""
    device, dtype = pick_device(device, dtype)
    name = EMBEDDED if name in (None, "", EMBEDDED) else str(name)
    key = (name, str(device), dtype)
    with _cache_lock:
        key_lock = _cache_locks.setdefault(key, threading.Lock())  # one per key, kept: few keys, tiny
    with key_lock:  # a slow download of one model does not hold up runs on another
        with _cache_lock:
            if key in _cache:
                _cache.move_to_end(key)
                return _cache[key]
            limit = max_models()
            dropped = 0
            while len(_cache) >= limit:  # make room first: the new model's parts need the memory
                _cache.popitem(last=False)
                dropped += 1
        if dropped and device.type == "cuda":
            torch.cuda.empty_cache()
        model = _load(name, device, dtype)
        with _cache_lock:
            _cache[key] = model
            while len(_cache) > limit:  # others loaded meanwhile
                _cache.popitem(last=False)
        return model


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
        pipe = pipe.to(device)
    except Exception as err:  # diffusers raises many kinds: OSError, ValueError, EnvironmentError, HTTP errors
        raise SdvizError(_load_failure(name, local, device, dtype, err)) from err
    pipe.set_progress_bar_config(disable=True)
    for part in (pipe.unet, pipe.vae, pipe.text_encoder):
        part.requires_grad_(False).eval()
    return Model(name=name, pipe=pipe, recommended=_recommended(name, path if local else None, pipe), device=device,
                 dtype=dtype)


_OFFLINE_ERRORS = {"OfflineModeIsEnabled", "LocalEntryNotFoundError", "ConnectError", "ConnectTimeout",
                   "ConnectionError", "ProxyError", "SSLError", "ReadTimeout", "Timeout", "NameResolutionError"}


def _causes(err: BaseException) -> list[BaseException]:
    chain, seen = [], set()
    while err is not None and id(err) not in seen:
        chain.append(err)
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return chain


def _load_failure(name: str, local: bool, device: torch.device, dtype: torch.dtype, err: Exception) -> str:
    """One plain sentence on why a model did not load: out of memory, no internet for a hub id, or what diffusers
    said (without its "see the stacktrace above": the student sees no stack trace)."""
    causes = _causes(err)
    if any(isinstance(c, torch.cuda.OutOfMemoryError) or "out of memory" in str(c).lower() for c in causes):
        dtype_name = str(dtype).replace("torch.", "")
        return (f"Not enough {'GPU ' if device.type == 'cuda' else ''}memory to load the Stable Diffusion model "
                f"{name!r} ({dtype_name} on {device}): keep fewer models loaded ({MAX_MODELS_ENV}, now "
                f"{max_models()}), free the memory other programs hold, or use float16.")
    if not local and any(type(c).__name__ in _OFFLINE_ERRORS or isinstance(c, ConnectionError) for c in causes):
        return (f"Could not load the Stable Diffusion model {name!r}: it is not on this machine and needs internet to "
                f"download from the Hugging Face Hub (no internet here, or HF_HUB_OFFLINE is set).")
    said = str(err).replace("Please check out the root cause in the stacktrace above.", "").strip()
    where = "folder" if local else "hub id (does it exist, with safetensors weights?)"
    return f"Could not load the Stable Diffusion model {name!r} from this {where}: {said}"


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
