"""The only two places where sdviz reaches past Gradio's public API, each for a reason no public setting covers.

Each has a test (tests/test_layers.py) that fails loudly when a Gradio upgrade moves what it relies on; the pinned
version is in requirements.txt.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import gradio as gr


@contextmanager
def no_stub_files() -> Iterator[None]:
    """Define Gradio component subclasses without Gradio writing a ``.pyi`` stub next to their module.

    Gradio's component metaclass writes (or rewrites) a stub file beside the source of every new component class,
    at import time. A Space's app folder is no place to write into, and sdviz's subclasses add no events to stub.
    No public setting turns this off (Gradio 6.31), so the writer is replaced while the classes are defined.
    """
    import gradio.component_meta as meta

    write_stub = meta.create_or_modify_pyi
    meta.create_or_modify_pyi = lambda *args, **kwargs: None
    try:
        yield
    finally:
        meta.create_or_modify_pyi = write_stub


def forget_session(demo: gr.Blocks, session: str) -> None:
    """Drop what Gradio keeps of a closed browser session: its gr.State values and its copy of the page's settings.

    Gradio keeps a closed session's values for an hour (in case the tab comes back), and its per-session copy of
    the page until ``state_session_capacity`` newer sessions push it out. A classroom opens and closes many tabs:
    the app frees them when the tab closes (``demo.unload``). Gradio offers no public call for this (6.31).
    """
    holder = getattr(demo, "state_holder", None)
    if holder is None:  # never served: Gradio keeps nothing
        return
    holder.delete_state(session)
    with holder.lock:
        holder.session_data.pop(session, None)
        holder.time_last_used.pop(session, None)
