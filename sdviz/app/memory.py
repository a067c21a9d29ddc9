"""The server's memory: glibc keeps big freed blocks unless told otherwise.

This module imports nothing heavy, so ``app.py`` calls :func:`return_freed_memory` before torch, diffusers and
Gradio are imported and make their first big allocations.
"""

from __future__ import annotations

import ctypes
import sys

MMAP_THRESHOLD = 1 << 20  # bytes: blocks from this size get their own memory map, given back when freed


def return_freed_memory() -> bool:
    """Make glibc give large freed blocks back to the system (the server calls this once, first thing).

    glibc serves blocks over 128 KiB with their own memory map and unmaps them when freed, but after the first
    such free it raises that threshold (up to 32 MiB) and serves later ones from its heap, which it keeps. A
    server that draws plots and pictures of a few MB grew by ~40 MB that way in its first 50 runs (50.3 MB over
    300 runs; docs/reliability.md). Fixing the threshold stops the raising. It is fixed at 1 MiB, not glibc's
    starting 128 KiB: at 128 KiB every mid-sized tensor of the denoising loop became a fresh memory map (a system
    call and zeroed pages each time), and the embedded model's loop ran 1.5x slower (0.69 s against 0.45 s for 20
    steps); at 1 MiB it runs as fast as without the call, and the plots and pictures (a few MB) still go back to
    the system. Returns False where there is no glibc (macOS, Windows, musl): nothing to do there.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    m_mmap_threshold = -3  # from glibc's malloc.h
    return bool(mallopt(m_mmap_threshold, MMAP_THRESHOLD))
