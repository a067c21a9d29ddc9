"""Lesson links and the guided lesson on the page: the event handlers.

A link's query (``?tab=cfg&prompt=...&run=1``) is read when the page loads (:func:`restore`): it is checked by
:func:`sdviz.lessons.links.parse_query`, and what passes sets the controls and selects the tab (:func:`apply`); what
does not is named in a notice under the header. ``run=1`` then runs the shown generate tab's settings
(:func:`run_link`: the playground's own handler, so the same loop and the same picture), and :func:`after_run` puts
back what needs the run: the step shown, a teaching tab's "last picture", the what-if step. The address bar gets the
checked query back, so a rejected value never stays in it.

"Copy link to this view" (:func:`copy_link`) writes the controls of the tab shown as a query (checked again by the
same rules), which a few lines of JavaScript (:data:`sdviz.app.texts.COPY_LINK_JS`) turn into the page's URL and put
on the clipboard. A guided-lesson station's button opens the station's link through the same :func:`apply`.

Which component holds a link key is registered where the page builds it (:meth:`LinkControls.register`): a new
control is one line in :data:`sdviz.lessons.links.KEYS` and one ``register`` call in :mod:`sdviz.app.layout`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import gradio as gr
import numpy as np
from PIL import Image

from sdviz.app import playground, teaching, texts
from sdviz.app.components import EXAMPLES_DIR, LessonView
from sdviz.app.playground import Page
from sdviz.app.sessions import DONE
from sdviz.lessons import guided, links
from sdviz.pipeline.trace import Trace

SETTINGS = {"prompt": "prompt", "negative": "negative_prompt", "seed": "seed", "steps": "steps",
            "cfg": "guidance_scale", "scheduler": "scheduler"}  # link key -> GenerateControls field
AFTER_RUN = ("step", "cfg_step", "cfg_g")  # keys put back after the run (their sliders fit the run first)
SAME_PICTURE = 6.0  # mean difference (of 255) under which two pictures count as the same (lossy caches)


@dataclass
class LinkControls:
    """Which component holds each link key: one per key, or one per generate tab (the settings keys)."""

    controls: dict[str, dict[str | None, gr.components.Component]] = field(default_factory=dict)
    # what a tab draws once a link has opened it: (handler(tab shown, *inputs), inputs, outputs); the page chains
    # each after restoring a link (a tab selected by a link gets no select event of its own)
    on_open: list[tuple] = field(default_factory=list)

    def register(self, key: str, component, tab: str | None = None) -> None:
        if key not in links.KEYS:
            raise KeyError(f"{key!r} is not in sdviz.lessons.links.KEYS: add it there first")
        self.controls.setdefault(key, {})[tab] = component

    def component(self, key: str, tab: str | None):
        held = self.controls.get(key, {})
        return held.get(tab, held.get(None))

    def components(self) -> list:
        return _unique([component for held in self.controls.values() for component in held.values()])


@dataclass
class Links:
    """What the link handlers work on: the page, the registered controls, and the link's own components."""

    page: Page
    controls: LinkControls
    tabs: gr.Tabs
    tab_state: gr.State  # the tab shown (a link or a station can select one; Gradio reports the student's clicks)
    pending: gr.State  # the link being applied: for the run and what follows it
    notice: gr.Markdown
    query: gr.Textbox  # the checked query, for the JavaScript that writes the address bar
    link_box: gr.Textbox
    run: gr.Button  # pressed by the page's JavaScript when the applied link says run=1
    lesson: LessonView
    cfg_info: gr.Markdown
    model_choice: gr.Dropdown

    def generate_tab(self, tab: str | None) -> str:
        return "img2img" if tab == "img2img" else "txt2img"

    def outputs(self) -> list:
        """Everything :func:`apply` may set."""
        page = self.page
        return _unique([*self.controls.components(), self.tabs, self.tab_state, self.pending, self.notice, self.query,
                *self.lesson.outputs(), page.model_state, self.model_choice, page.model_info, page.strength,
                page.slow_state, page.panel.latents_text, page.panel.live_text, *_model_defaults(page)])

    def after_run_outputs(self) -> list:
        return [*self.page.panel.frame_outputs(), *[self.controls.component(k, None) for k in
                ("forward_picture", "latent_picture", "cfg_step", "cfg_g", "variants_g")], self.cfg_info]


def notice(notices: list[str]) -> gr.Markdown:
    """The notice under the header: shown only when there is something to say (empty, it would still take a gap
    of the page's layout, and push the live view off a 720-px screen)."""
    return gr.Markdown(texts.link_notices(notices), visible=bool(notices))


def _unique(components: list) -> list:
    return list({id(c): c for c in components}.values())


def _model_defaults(page: Page) -> list:
    return [c for controls in (page.txt, page.img) for c in (controls.steps, controls.guidance_scale,
                                                             controls.scheduler)]


def page_choices(page: Page) -> dict[str, list[str]]:
    """The link keys whose choices the page decides: its models and its example pictures."""
    examples = sorted(p.stem for p in EXAMPLES_DIR.glob("*.png"))
    return {"model": list(page.models), "example": examples, "forward_picture": [*examples, links.LAST_PICTURE],
            "latent_picture": [*examples, links.LAST_PICTURE]}


# --- Opening a link: restore, apply, run, and what needs the run ------------------------------------------------


def restore(ln: Links, model_name, request: gr.Request = None) -> dict:
    """The page loaded: the link in its address (if any) sets the view."""
    query = getattr(request, "query_params", None) or {}
    query = {k: v for k, v in dict(query).items() if k not in links.GRADIO_KEYS}
    if not query:
        return {ln.pending: {}}
    parsed = links.parse_query(query, page_choices(ln.page))
    return apply(ln, parsed.values, parsed.notices, model_name)


def apply(ln: Links, values: dict, notices: list[str], model_name) -> dict:
    """Set the controls, the tab, the model and the station from checked link values; the run (``run``) and the
    values that need it follow (:func:`run_link`, :func:`after_run`)."""
    page, notices = ln.page, list(notices)
    updates: dict = {ln.pending: values, ln.query: "?" + links.make_query(values)}
    tab = values.get("tab")
    if tab is not None:
        updates[ln.tabs] = gr.Tabs(selected=tab)
        updates[ln.tab_state] = tab
    model = values.get("model", model_name)
    if model != model_name:
        try:
            updates |= playground.choose_model(page, model, model_name)
            updates[ln.model_choice] = model
        except gr.Error as err:
            notices.append(f"The link's model did not load ({err.message}): the page keeps {model_name}.")
    for key, value in values.items():
        component = ln.controls.component(key, ln.generate_tab(tab) if key in SETTINGS else None)
        if component is None or key in AFTER_RUN:
            continue
        if key in ("example", "forward_picture", "latent_picture"):
            if value != links.LAST_PICTURE:  # the last picture needs the run: after_run
                updates[component] = str(EXAMPLES_DIR / f"{value}.png")
            continue
        updates[component] = value
    if "slow" in values:
        updates[page.slow_state] = values["slow"]  # now: the run may start before the checkbox's own event
    if "station" in values:
        updates |= station_view(ln, values["station"])
    updates[ln.notice] = notice(notices)
    return updates


def run_link(ln: Links, pending, txt_prompt, txt_negative, txt_steps, txt_cfg, txt_seed, txt_scheduler, image,
             img_prompt, img_negative, strength, img_steps, img_cfg, img_seed, img_scheduler, model_name, slow,
             request: gr.Request = None):
    """``run=1``: the shown generate tab's run (Text to image unless the link shows Image to image), with the controls
    as the link set them: the playground's own handler, so the same loop, panel and picture as pressing Generate."""
    if not isinstance(pending, dict) or not pending.get("run"):
        yield playground.unchanged()  # nothing to run (a generator that yields nothing would empty its outputs)
        return
    page = ln.page
    if pending.get("tab") == "img2img":
        yield from playground.img2img(page, image, img_prompt, img_negative, strength, img_steps, img_cfg, img_seed,
                                      img_scheduler, model_name, slow, request=request)
    else:
        yield from playground.txt2img(page, txt_prompt, txt_negative, txt_steps, txt_cfg, txt_seed, txt_scheduler,
                                      model_name, slow, request=request)


def after_run(ln: Links, pending, run, request: gr.Request = None) -> dict:
    """What a link sets that needs the session's run: the step shown (after the run settled), a teaching tab's
    "last picture", and the CFG tab's what-if step and scale (the slider first fits the run)."""
    if not isinstance(pending, dict) or not pending:
        return playground.unchanged()
    page, updates = ln.page, {}
    latest = page.runs.latest(getattr(request, "session_hash", None))
    if "step" in pending and latest is not None and latest.outcome == DONE:
        shown = playground.show_step(page, pending["step"], request=request)
        updates |= shown if shown != playground.unchanged() else {}
    for key in ("forward_picture", "latent_picture"):
        if pending.get(key) == links.LAST_PICTURE and isinstance(run, Trace):
            updates[ln.controls.component(key, None)] = run.image
    if pending.get("tab") == "cfg" and isinstance(run, Trace):
        step, scale, info, variants_g = teaching.cfg_tab_opened(run)
        n = len(run.steps)
        step.value = min(pending.get("cfg_step", 1), n)
        scale.value = pending.get("cfg_g", run.settings.guidance_scale)
        variants_g.value = pending.get("variants_g", run.settings.guidance_scale)  # (an update: .value is write-only)
        updates |= {ln.controls.component("cfg_step", None): step, ln.controls.component("cfg_g", None): scale,
                    ln.controls.component("variants_g", None): variants_g, ln.cfg_info: info}
    return updates or playground.unchanged()


# --- Copy link to this view ------------------------------------------------------------------------------------


def copy_link(ln: Links, data: dict, request: gr.Request = None) -> dict:
    """The view as a checked query: the tab shown, the model, the generate settings (of Image to image when it is
    shown, else Text to image), the tab's own controls; ``run=1`` and the step shown when the session's last run
    is exactly what the link describes (so the link gives the same pictures)."""
    page, notices = ln.page, []
    tab = data.get(ln.tab_state) or "txt2img"
    run = data.get(page.run_state)
    if tab == "lesson":
        values = {"tab": tab, "station": data.get(ln.lesson.station)}
    else:
        values = {"tab": tab, "model": data.get(page.model_state), "slow": bool(data.get(page.panel.slow))}
        for key in links.keys_of(tab):
            component = ln.controls.component(key, ln.generate_tab(tab) if key in SETTINGS else None)
            if component is None or key in values or key in ("run", "step"):
                continue
            values[key] = data.get(component)
        _pictures_by_name(values, tab, run, notices)
        if _reproduces(values, tab, run):
            values["run"], values["step"] = True, data.get(page.panel.step)
        elif links.LAST_PICTURE in values.values():  # the last picture exists only with the run that made it
            values = {k: v for k, v in values.items() if v != links.LAST_PICTURE}
            notices.append(texts.LAST_NOT_IN_LINK)
    raw = links.make_query({k: v for k, v in _as_link_values(values).items() if v is not None})
    parsed = links.parse_query(links.parse_pairs(raw), page_choices(page))  # the same rules as an opened link
    return {ln.query: "?" + links.make_query(parsed.values), ln.link_box: gr.Textbox(visible=True),
            ln.notice: notice(notices + parsed.notices)}


def _as_link_values(values: dict) -> dict:
    """Component values in the link's terms: whole numbers for the whole-number keys (Gradio's numbers are floats)."""
    out = {}
    for key, value in values.items():
        kind = links.KEYS[key].kind
        if kind == "whole" and isinstance(value, float) and value.is_integer():
            value = int(value)
        out[key] = value
    return out


def _pictures_by_name(values: dict, tab: str, run, notices: list[str]) -> None:
    """A picture goes into a link by name (an example, or the last run's picture), never as pixels."""
    for key in ("example", "forward_picture", "latent_picture"):
        if key not in values:
            continue
        picture = values.pop(key)
        if picture is None:
            continue
        name = picture_name(picture, run if key != "example" else None)
        if name is None:
            notices.append(texts.PICTURE_NOT_IN_LINK)
        else:
            values[key] = name


def picture_name(picture, run=None) -> str | None:
    """The example picture (its name) or the session's last picture ("last") that ``picture`` is; None if neither."""
    try:
        pixels = _pixels(picture)
    except (OSError, ValueError):
        return None
    if isinstance(run, Trace) and _same(pixels, _pixels(run.image)):
        return links.LAST_PICTURE
    for path in sorted(EXAMPLES_DIR.glob("*.png")):
        if _same(pixels, _pixels(path)):
            return path.stem
    return None


def _pixels(picture) -> np.ndarray:
    image = picture if isinstance(picture, Image.Image) else Image.open(picture)
    return np.asarray(image.convert("RGB").resize((64, 64), Image.Resampling.BILINEAR), dtype=np.float32)


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return float(np.abs(a - b).mean()) < SAME_PICTURE


def _reproduces(values: dict, tab: str, run) -> bool:
    """Whether the session's last run is the run these values describe (same settings; image to image: same picture)."""
    if not isinstance(run, Trace) or values.get("model") != run.model:
        return False
    img2img = tab == "img2img"
    if img2img != (run.init_image is not None):
        return False
    s = run.settings
    same = (values.get("prompt") or "", values.get("negative") or "", values.get("seed"), values.get("steps"),
            values.get("cfg")) == (s.prompt, s.negative_prompt, s.seed, s.steps, s.guidance_scale)
    scheduler = values.get("scheduler")
    same = same and (s.scheduler or links.DEFAULT_SCHEDULER) == (scheduler or links.DEFAULT_SCHEDULER)
    if img2img:
        same = same and values.get("strength") == s.strength and "example" in values \
            and _same(_pixels(EXAMPLES_DIR / f"{values['example']}.png"), _pixels(run.init_image))
    return same


# --- The guided lesson ------------------------------------------------------------------------------------------


def station_view(ln: Links, number) -> dict:
    """Station ``number`` on screen: its texts, its answer hidden again, Back/Next, and its button's label."""
    n = len(guided.STATIONS)
    number = min(max(int(number or 1), 1), n)
    shown, view = texts.station_texts(number, n, guided.station(number)), ln.lesson
    return {view.station: number, view.title: shown["title"], view.do: shown["do"], view.look: shown["look"],
            view.question: shown["question"], view.answer_box: gr.Accordion(open=False), view.answer: shown["answer"],
            view.back: gr.Button(interactive=number > 1), view.next: gr.Button(interactive=number < n),
            view.open: gr.Button(value=shown["open"])}


def go_to_station(ln: Links, number, delta: int) -> dict:
    """Back (-1) or Next (+1); the address bar gets the station's own link (``?tab=lesson&station=N``)."""
    target = min(max(int(number or 1) + delta, 1), len(guided.STATIONS))
    return {**station_view(ln, target), ln.query: "?" + links.make_query({"tab": "lesson", "station": target})}


def station_back(ln: Links, number) -> dict:
    return go_to_station(ln, number, -1)


def station_next(ln: Links, number) -> dict:
    return go_to_station(ln, number, +1)


def open_station(ln: Links, number, model_name) -> dict:
    """The station's button: its lesson link, applied as if it had been opened (then run, if it says so)."""
    station = guided.station(number)
    parsed = links.parse_query(links.parse_pairs(links.make_query(station.link)), page_choices(ln.page))
    return apply(ln, parsed.values, parsed.notices, model_name)


def tab_selected(evt: gr.SelectData):
    """The student clicked a tab: remember which (for Copy link), and put the last link away (it was another view's,
    and it would push the live view off a projector's screen)."""
    return {label: tab for tab, label in links.TABS.items()}.get(evt.value, gr.skip()), gr.Textbox(visible=False)
