"""The Gradio page, a thin layer over the package: layout (components and wiring), playground and teaching
(event handlers), services (the model work the page needs), sessions, hosting, memory, texts.

Imports nothing itself, so that ``app.py`` can call :func:`sdviz.app.memory.return_freed_memory` before torch
and Gradio load.
"""
