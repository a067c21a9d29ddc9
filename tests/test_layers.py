"""The package's layers: pipeline -> lessons -> app, the toy model beside them; no import circles; and the two
places that reach past Gradio's public API still find what they rely on (they fail loudly on an upgrade)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import gradio as gr
import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "sdviz"
LAYERS = ("pipeline", "lessons", "toy", "app")


def modules_of(layer: str) -> list[str]:
    return sorted(f"sdviz.{layer}.{p.stem}" for p in (PACKAGE / layer).glob("*.py") if p.stem != "__init__")


def loaded_after_importing(modules: list[str]) -> set[str]:
    """The top-level packages in sys.modules after a fresh interpreter imports ``modules``."""
    code = (f"import sys\nfor m in {modules!r}: __import__(m)\n"
            "print(' '.join(sorted({name.split('.')[0] for name in sys.modules})))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          cwd=PACKAGE.parent, check=True)
    return set(done.stdout.split())


def test_every_module_belongs_to_a_layer_or_is_one_of_the_entry_points():
    top = {p.name for p in PACKAGE.iterdir() if p.suffix == ".py"}
    assert top == {"__init__.py", "__main__.py", "cli.py", "errors.py"}
    assert {p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__"} == set(LAYERS)


def test_the_pipeline_loads_neither_gradio_nor_matplotlib():
    loaded = loaded_after_importing(modules_of("pipeline"))
    assert "torch" in loaded and "diffusers" in loaded  # it did import the real thing
    assert "gradio" not in loaded and "matplotlib" not in loaded


def test_the_lessons_and_the_toy_model_load_no_gradio():
    loaded = loaded_after_importing(modules_of("lessons") + modules_of("toy"))
    assert "matplotlib" in loaded and "gradio" not in loaded


def imports_inside_the_package() -> dict[str, set[str]]:
    """module -> the sdviz modules it imports (``from sdviz.x import y`` counts y when y is a module)."""
    modules = {f"sdviz.{p.relative_to(PACKAGE).with_suffix('').as_posix().replace('/', '.')}".removesuffix(".__init__")
               for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        name = f"sdviz.{path.relative_to(PACKAGE).with_suffix('').as_posix().replace('/', '.')}".removesuffix(".__init__")
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("sdviz"):
                for alias in node.names:
                    child = f"{node.module}.{alias.name}"
                    found.add(child if child in modules else node.module)
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name.startswith("sdviz")}
        graph[name] = {m for m in found if m in modules and m != name}
    return graph


def test_no_import_circles_inside_the_package():
    graph = imports_inside_the_package()

    def circle_from(start: str) -> list[str] | None:
        stack = [(start, [start])]
        while stack:
            node, path = stack.pop()
            for nxt in graph.get(node, ()):
                if nxt == start:
                    return path + [nxt]
                if nxt not in path:
                    stack.append((nxt, path + [nxt]))
        return None

    circles = [c for c in (circle_from(m) for m in graph) if c]
    assert not circles, circles[0]


def test_data_flows_one_way_between_the_layers():
    """pipeline imports no other layer; toy only the pipeline; lessons the pipeline and the toy world's judge; only
    the app imports the app; the playground and the teaching tabs never import each other."""
    allowed = {"pipeline": {"pipeline"}, "toy": {"pipeline", "toy"}, "lessons": {"pipeline", "toy", "lessons"},
               "app": set(LAYERS)}
    for module, imported in imports_inside_the_package().items():
        layer = module.split(".")[1] if module.count(".") >= 1 else ""
        if layer not in allowed:
            continue
        layers = {m.split(".")[1] for m in imported if m.count(".") >= 2}
        assert layers <= allowed[layer], (module, layers - allowed[layer])
    graph = imports_inside_the_package()
    assert "sdviz.app.teaching" not in graph["sdviz.app.playground"]
    assert "sdviz.app.playground" not in graph["sdviz.app.teaching"]


def test_no_function_in_the_app_is_longer_than_about_80_lines():
    for path in (PACKAGE / "app").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                assert node.end_lineno - node.lineno + 1 <= 85, f"{path.name}: {node.name}"


# --- The two places that reach past Gradio's public API (sdviz.app.gradio_internals) ------------------------------

def test_component_subclasses_write_no_stub_file_and_gradio_still_has_the_writer(tmp_path, monkeypatch):
    import gradio.component_meta as meta

    from sdviz.app.gradio_internals import no_stub_files

    assert callable(meta.create_or_modify_pyi), "Gradio moved its stub writer: revisit no_stub_files"
    source = tmp_path / "widgets.py"
    source.write_text("import gradio as gr\n\nclass Widget(gr.Slider):\n    is_template = True\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with no_stub_files():
        __import__("widgets")
    assert not (tmp_path / "widgets.pyi").exists()
    assert meta.create_or_modify_pyi is not None and meta.create_or_modify_pyi.__name__ == "create_or_modify_pyi"


def test_forget_session_drops_what_gradio_keeps_of_a_session(tiny_model_dir, launch_app):
    from gradio_client import Client

    from sdviz.app.gradio_internals import forget_session
    from sdviz.app.layout import build_demo

    demo = build_demo([str(tiny_model_dir)])
    url = launch_app(demo)
    client = Client(url, download_files=False, verbose=False, analytics_enabled=False)
    try:
        client.predict("a red circle", steps=2, api_name="/txt2img")
        holder = demo.state_holder
        assert {"session_data", "time_last_used", "lock", "delete_state"} <= set(dir(holder)), \
            "Gradio's StateHolder changed: revisit forget_session"
        session = client.session_hash
        assert session in holder.session_data
        forget_session(demo, session)
        assert session not in holder.session_data and session not in holder.time_last_used
    finally:
        client.close()


@pytest.mark.parametrize("handler", ["txt2img", "settle", "show_step", "request_stop", "choose_model"])
def test_a_bound_handler_is_what_gradio_expects_of_an_event_function(handler, tiny_model_dir):
    import inspect

    from sdviz.app import playground
    from sdviz.app.layout import build_demo

    demo = build_demo([str(tiny_model_dir)])
    fn = next(f for f in demo.fns.values() if f.name == handler)
    original = getattr(playground, handler)
    assert list(inspect.signature(fn.fn).parameters) == list(inspect.signature(original).parameters)[1:]
    assert inspect.isgeneratorfunction(fn.fn) == inspect.isgeneratorfunction(original)
    hints = gr.utils.get_type_hints(fn.fn)
    assert ("request" in hints) == ("request" in inspect.signature(original).parameters)
