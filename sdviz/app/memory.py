"""The server's memory: glibc keeps big freed blocks unless told otherwise.

This module imports nothing heavy, so ``app.py`` calls :func:`return_freed_memory` before torch, diffusers and
Gradio are imported and make their first big allocations.
"""

from __future__ import annotations

import ctypes
import sys


def return_freed_memory() -> bool:
    """Make glibc give large freed blocks back to the system (the server calls this once, first thing).

    glibc serves blocks over 128 KiB with their own memory map and unmaps them when freed, but after the first
    such free it raises that threshold (up to 32 MiB) and serves later ones from its heap, which it keeps. A
    server that draws plots and pictures of a few MB grew by ~40 MB that way in its first 50 runs (50.3 MB over
    300 runs; docs/reliability.md). Fixing the threshold at 128 KiB stops the raising. Returns False where
    there is no glibc (macOS, Windows, musl): nothing to do there.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    m_mmap_threshold = -3  # from glibc's malloc.h
    return bool(mallopt(m_mmap_threshold, 128 * 1024))
