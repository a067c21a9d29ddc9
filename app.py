"""sdviz in the browser: ``python app.py`` (then open http://127.0.0.1:7860).

The page is built by :func:`sdviz.app.layout.build_demo`; this file only launches it, with the settings a public
Space needs (:func:`sdviz.app.layout.launch_kwargs`). Gradio reads the address from GRADIO_SERVER_NAME /
GRADIO_SERVER_PORT; the model allow-list (SDVIZ_MODELS) and the limits (SDVIZ_CONCURRENCY, SDVIZ_QUEUE_SIZE,
SDVIZ_MAX_SESSIONS) come from the environment: see docs/deploying.md.
"""

from sdviz.app.memory import freeze_startup_objects, return_freed_memory

return_freed_memory()  # first, before torch and Gradio: memory stays flat over hundreds of runs (docs/reliability.md)

from sdviz.app.layout import build_demo, launch_kwargs  # noqa: E402 (after the call above, on purpose)

demo = build_demo()
freeze_startup_objects()  # the page and the model stay for good: full garbage collections need not walk them

if __name__ == "__main__":
    demo.launch(**launch_kwargs())
