"""The server's memory: glibc keeps big freed blocks unless told otherwise.

This module imports nothing heavy, so ``app.py`` calls :func:`return_freed_memory` before torch, diffusers and
Gradio are imported and make their first big allocations.
"""

from __future__ import annotations

import ctypes
import gc
import sys
import threading
import time

MMAP_THRESHOLD = 8 << 20  # bytes: blocks from this size get their own memory map, given back when freed


def return_freed_memory() -> bool:
    """Make glibc give large freed blocks back to the system (the server calls this once, first thing).

    glibc serves blocks over 128 KiB with their own memory map and unmaps them when freed, but after the first
    such free it raises that threshold (up to 32 MiB) and serves later ones from its heap, which it keeps. A
    server that draws plots and pictures of a few MB grew by ~40 MB that way in its first 50 runs (50.3 MB over
    300 runs; docs/reliability.md). Fixing the threshold stops the raising. It is fixed at 8 MiB, not glibc's
    starting 128 KiB: every tensor over the threshold becomes a fresh memory map (a system call and zeroed pages
    each time). At 128 KiB the embedded model's lone loop ran 1.5x slower (0.69 s against 0.45 s for 20 steps); at
    1 MiB a lone run was fine, but a class's batch of 30 (tensors of 1-8 MB) took 4.3-5.0 s for 20 steps against
    2.5-3.3 s without the call; at 8 MiB it takes 2.8-3.3 s (docs/reliability.md). Returns False where there is no
    glibc (macOS, Windows, musl): nothing to do there.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    m_mmap_threshold = -3  # from glibc's malloc.h
    return bool(mallopt(m_mmap_threshold, MMAP_THRESHOLD))


def freeze_startup_objects() -> int:
    """Move everything made so far (the page, the default model, the libraries: about 655,000 objects) out of
    Python's garbage collector's reach, after collecting what is already garbage; returns how many were frozen. The
    server calls this once, after building the page.

    Those objects live as long as the server, but every full collection walked them all: 0.29 s with the interpreter
    lock held, at an arbitrary moment (in one measured burst of 30 users, while their first frames were being made).
    Frozen, a full collection took 0.03-0.07 s (docs/reliability.md)."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


TRIM_EVERY_S = 5.0  # at most this often: one trim walks every heap (about 3 ms for this server)
_trim = {"last": float("-inf")}
_trim_lock = threading.Lock()


def trim_freed_memory() -> bool:
    """Hand the free pages inside glibc's heaps back to the system (``malloc_trim``), at most every
    ``TRIM_EVERY_S`` seconds; the playground calls it when a run ends. Blocks under the memory-map threshold (8 MiB:
    a class's batch tensors, plot canvases, pictures) come from those heaps and leave holes in them: over the soak's
    300 runs the server grew 56 MB with the threshold alone, against the limit of 50 (docs/reliability.md). False
    when nothing was done (too soon, or no glibc)."""
    if not sys.platform.startswith("linux"):
        return False
    now = time.monotonic()
    with _trim_lock:
        if now - _trim["last"] < TRIM_EVERY_S:
            return False
        _trim["last"] = now
    try:
        malloc_trim = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return False
    malloc_trim(0)  # ctypes lets go of the interpreter lock during the call
    return True
