"""Hosting the app for many people: which models it offers, how many runs at once, GPU reservations, and the
server settings a public Space needs.

Everything an operator sets comes from environment variables (a Space's "variables"), read once when the app is
built:

    SDVIZ_MODELS        comma-separated allow-list of models; the first is the default. Only these can ever be
                        loaded, from the page or the API (default: the embedded model and the hub checkpoints
                        sdviz knows)
    SDVIZ_CONCURRENCY   users whose runs are served at the same time (default 32, a class): their runs share one
                        loop, batched, when they can (same model, size, steps, scheduler and strength)
    SDVIZ_BATCH         the most runs in one batch (default: 32 for small models like the embedded one; for
                        larger ones 8 on a CUDA GPU, 1 on a CPU or Apple GPU, where one run already fills the
                        machine); 1 turns batching off
    SDVIZ_LESSON_CONCURRENCY  teaching-tab experiments computed at the same time (default 1; 2 on a CUDA GPU)
    SDVIZ_RUN_CACHE_MB  memory for finished runs kept to answer identical requests at once (default 4; 0: none)
    SDVIZ_QUEUE_SIZE    requests that may wait beyond those; one more gets "this application is busy" (default 64)
    SDVIZ_MAX_SESSIONS  browser sessions whose latest run is kept in memory (default 500)
    SDVIZ_SESSION_MB    memory for those runs (traces and their VAE decodes), in MB; the least recently used go
                        first beyond it (default 2048: a 512x512 SD 1.5 run with its decodes is about 16 MB, so
                        a class of 60 needs about 1 GB; the embedded model's about 0.1 MB)

On a ZeroGPU Space (the ``spaces`` package is installed and ``SPACES_ZERO_GPU`` is set), :func:`gpu` wraps the
functions that touch the model in ``spaces.GPU``: each call borrows a GPU for its duration, in a forked worker, so
those functions take and return plain values. Everywhere else :func:`gpu` returns the function unchanged.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch

from sdviz.errors import SdvizError
from sdviz.pipeline.models import EMBEDDED, KNOWN_HUB_MODELS, pick_device

MODELS_ENV = "SDVIZ_MODELS"
CONCURRENCY_ENV = "SDVIZ_CONCURRENCY"
BATCH_ENV = "SDVIZ_BATCH"
RUN_CACHE_ENV = "SDVIZ_RUN_CACHE_MB"
DEFAULT_RUN_CACHE_MB = 4  # ~60 runs of the embedded model (raise it for real checkpoints: SD 1.5 at 512x512 ~8 MB a run)
LESSON_CONCURRENCY_ENV = "SDVIZ_LESSON_CONCURRENCY"
QUEUE_SIZE_ENV = "SDVIZ_QUEUE_SIZE"
MAX_SESSIONS_ENV = "SDVIZ_MAX_SESSIONS"
SESSION_MB_ENV = "SDVIZ_SESSION_MB"

DEFAULT_QUEUE_SIZE = 64
DEFAULT_CONCURRENCY = 32  # a class served at once (their runs batched); more wait in the queue
SMALL_MODEL_PARAMS = 50_000_000  # U-Nets below this (the embedded one: 2 M) batch 32 runs even on a CPU
DEFAULT_MAX_SESSIONS = 500
DEFAULT_SESSION_MB = 2048
MAX_UPLOAD = "10mb"  # the largest file the server accepts (a picture for image to image)


# --- Which models: an allow-list, never a path or id from the page ------------------------------------

def allowed_models(env: Mapping[str, str] | None = None) -> list[str]:
    """``$SDVIZ_MODELS`` (comma-separated) or the embedded model and the hub checkpoints sdviz knows."""
    env = os.environ if env is None else env
    listed = [m.strip() for m in env.get(MODELS_ENV, "").split(",") if m.strip()]
    return listed or [EMBEDDED, *KNOWN_HUB_MODELS]


def check_allowed(name: object, allowed: Sequence[str]) -> str:
    """``name`` if the allow-list has it; otherwise a :class:`SdvizError` (nothing is loaded)."""
    if not isinstance(name, str) or name not in allowed:
        raise SdvizError(f"The model {name!r} is not offered by this app: choose one of {', '.join(allowed)}.")
    return name


# --- How many runs at once ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Capacity:
    concurrency: int  # users whose runs are served at the same time (batched together where they can be)
    queue_size: int  # requests that may wait for a slot (all events together)
    max_sessions: int  # sessions whose latest run stays in memory (and Gradio's own session limit)
    session_bytes: int = DEFAULT_SESSION_MB * 2**20  # memory those runs may hold together
    lesson_concurrency: int = 1  # teaching-tab experiments computed at the same time


def default_lesson_concurrency(device: torch.device) -> int:
    """One experiment at a time on a CPU (one already uses every core) or an Apple GPU; two on a CUDA GPU, where a
    second fills the gaps of the first (small models and short steps leave the GPU idle between kernels)."""
    return 2 if device.type == "cuda" else 1


def capacity(device: torch.device | None = None, env: Mapping[str, str] | None = None) -> Capacity:
    """The limits for this server, from the environment (with defaults for ``device``, by default the one
    :func:`sdviz.pipeline.models.pick_device` chooses)."""
    env = os.environ if env is None else env
    device = pick_device()[0] if device is None else device
    return Capacity(
        concurrency=_positive_int(env, CONCURRENCY_ENV, DEFAULT_CONCURRENCY),
        queue_size=_positive_int(env, QUEUE_SIZE_ENV, DEFAULT_QUEUE_SIZE),
        max_sessions=_positive_int(env, MAX_SESSIONS_ENV, DEFAULT_MAX_SESSIONS),
        session_bytes=_positive_int(env, SESSION_MB_ENV, DEFAULT_SESSION_MB) * 2**20,
        lesson_concurrency=_positive_int(env, LESSON_CONCURRENCY_ENV, default_lesson_concurrency(device)),
    )


def batch_size(model, env: Mapping[str, str] | None = None) -> int:
    """The most runs one batch of the loop holds for ``model`` (``SDVIZ_BATCH``, or a default by its size and device:
    batching pays where one run leaves the machine idle, and a batch of big models must fit in memory)."""
    env = os.environ if env is None else env
    if env.get(BATCH_ENV):
        return _positive_int(env, BATCH_ENV, 1)
    if sum(p.numel() for p in model.unet.parameters()) < SMALL_MODEL_PARAMS:
        return 32
    return 8 if model.device.type == "cuda" else 1


def run_cache_mb(env: Mapping[str, str] | None = None) -> int:
    """Memory for finished runs kept for identical requests (``SDVIZ_RUN_CACHE_MB``; 0 keeps none)."""
    env = os.environ if env is None else env
    raw = env.get(RUN_CACHE_ENV, "").strip()
    if raw == "0":
        return 0
    return _positive_int(env, RUN_CACHE_ENV, DEFAULT_RUN_CACHE_MB) if raw else DEFAULT_RUN_CACHE_MB


def batching(env: Mapping[str, str] | None = None) -> bool:
    """Whether playground runs go through the batcher (``SDVIZ_BATCH=1`` sends each run to a loop of its own)."""
    env = os.environ if env is None else env
    return env.get(BATCH_ENV, "").strip() != "1"


def _positive_int(env: Mapping[str, str], name: str, default: int) -> int:
    text = env.get(name, "").strip()
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise SdvizError(f"{name} must be a whole number of 1 or more (got {text!r}).")
    return value


# --- ZeroGPU -------------------------------------------------------------------------------------------

def zero_gpu() -> bool:
    """True on a ZeroGPU Space: the ``spaces`` package is there and the platform says so."""
    flag = os.environ.get("SPACES_ZERO_GPU", "").lower() in ("1", "t", "true")
    return flag and importlib.util.find_spec("spaces") is not None


def gpu(fn: Callable | None = None, *, duration: int | Callable[..., int] | None = None):
    """``spaces.GPU(fn, duration=...)`` where the ``spaces`` package can be imported, ``fn`` itself otherwise.

    ``spaces.GPU`` is itself a no-op off ZeroGPU; on ZeroGPU it runs ``fn`` in a forked worker that holds a
    GPU, so ``fn`` must take and return picklable values and must not change objects of the calling process.
    Use as ``@gpu`` or ``@gpu(duration=...)`` (seconds, or a function of ``fn``'s arguments).
    """
    if fn is None:
        return lambda f: gpu(f, duration=duration)
    if importlib.util.find_spec("spaces") is None:
        return fn
    import spaces

    return spaces.GPU(fn, duration=duration)


# The GPU time each kind of work asks ZeroGPU for (shorter requests wait less in its queue). A duration
# function gets the GPU function's own arguments, which start with the model name and (for runs) the settings.
QUICK_SECONDS = 20  # a few VAE or text-encoder calls: a picture's trip through the VAE, two decodes
MAX_SECONDS = 120  # the longest GPU time sdviz asks for


def loop_seconds(model_name: str, settings, *inputs) -> int:
    """One run: 15 s + 0.5 s per step, at most :data:`MAX_SECONDS`."""
    return _steps_seconds(settings.steps)


def sweep_seconds(model_name: str, settings, scales: Sequence[float], *inputs) -> int:
    """A guidance sweep: one run per scale, and the unguided run it is measured from."""
    return _steps_seconds(settings.steps * (len(scales) + 1))


def lens_seconds(model_name: str, settings, init_image, layers: Sequence[int], *inputs) -> int:
    """Diffusion Lens: one run per text-encoder layer shown."""
    return _steps_seconds(settings.steps * len(layers))


def variants_seconds(model_name: str, settings, *inputs) -> int:
    """The guidance variants: three runs (plain CFG, rescale, an interval)."""
    return _steps_seconds(settings.steps * 3)


def _steps_seconds(steps: int) -> int:
    return int(min(MAX_SECONDS, 15 + 0.5 * steps))


# --- Server settings for a public Space -------------------------------------------------------------------

def secure_launch_settings() -> dict:
    """``demo.launch`` settings a public deployment should have (see docs/deploying.md for the why)."""
    return {
        "max_file_size": MAX_UPLOAD,  # uploads beyond it are refused before they reach any code
        "show_error": False,  # unexpected exceptions reach the page as a generic error; gr.Error messages still do
        "enable_monitoring": False,  # no /monitoring dashboard of everyone's requests
        "strict_cors": True,  # localhost apps refuse requests from other sites' pages
        "allowed_paths": [],  # serve nothing from disk beyond Gradio's own cache and uploads
        "ssr_mode": False,  # no Node server-side rendering (one process less; SSR breaks some clients)
    }
