"""Lesson links: the state of a view written into the page's URL query, and read back from it.

A teacher sets up a view (a tab, a prompt, a seed, a teaching tab's controls), copies its link, and the class opens
exactly that view: ``?tab=txt2img&prompt=a+big+red+circle&seed=7&steps=20&run=1`` restores every control and runs it,
so everyone gets the same pictures.

:data:`KEYS` is the table of everything a link can hold: a key's name, its kind, its range or choices, the tab it
belongs to (none: the whole view, or the generate settings of the tab shown), and how a notice calls it. A new control
is one line here (and one ``register`` call where the page builds it: :mod:`sdviz.app.lesson_links`).

:func:`parse_query` checks a query the way the controls check what is typed (the same ranges, the steps and seed
limits of :mod:`sdviz.pipeline.settings`, :func:`~sdviz.pipeline.settings.check_settings` on the run as a whole)
and gives the values it accepts and a notice for everything it ignores: unknown keys, values of the wrong kind or
out of range, texts that are too long. Nothing of a query reaches the page unchecked: a notice names a rejected key
only shortened and without its control characters (the page escapes it again), and never repeats a rejected value.
:func:`make_query` writes checked values back as a query (``urllib.parse.urlencode``).
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode

from sdviz.errors import SdvizError
from sdviz.lessons import diffusion_2d as lab
from sdviz.lessons.experiments import MAX_SCALE, MAX_SWEEP, parse_scales
from sdviz.pipeline.schedulers import SCHEDULERS
from sdviz.pipeline.settings import MAX_SEED, MAX_STEPS, RunSettings, check_settings

# The page's tabs: id (as layout.py names them, and as a link writes them) -> label
TABS = {"txt2img": "Text to image", "img2img": "Image to image", "forward": "Forward diffusion",
        "latent": "Latent space", "attention": "Text & attention", "unet": "U-Net", "cfg": "CFG experiments",
        "lab2d": "2-D lab", "ab": "Prompt A/B", "export": "Export", "lesson": "Guided lesson"}
GENERATE_TABS = ("txt2img", "img2img")
DEFAULT_SCHEDULER = "default"  # the scheduler dropdown's value for "the model's own"
LAST_PICTURE = "last"  # a teaching tab's picture: the session's last generated picture
UI_MAX_STEPS = min(100, MAX_STEPS)  # the Steps slider's end (sdviz.app.components uses the same number)

MAX_TEXT = 300  # characters of a text or a choice in a link (a toy-world prompt needs about 40)
MAX_VALUE = 40  # characters of a number or a flag
MAX_KEYS = 40  # keys read from one query; the rest are ignored with one notice
SHOWN_KEY = 24  # characters of a rejected key that a notice shows
SCALES_RULE = f"it must be 1 to {MAX_SWEEP} numbers from 0 to {MAX_SCALE:g}, separated by commas, like 1, 3, 7.5."
GRADIO_KEYS = ("__theme", "view", "lang")  # Gradio's own query keys: not a lesson link's, and no notice


@dataclass(frozen=True)
class Key:
    """One thing a link can hold. ``kind``: whole (an int in [low, high]), number (a float in [low, high], on the
    slider's grid of ``step``), text, choice (one of ``choices``; None: the page gives them, e.g. its models) or
    flag (1/0). ``tab``: the tab whose control it is (None: the whole view, or the shown generate tab's setting)."""

    name: str
    kind: str
    label: str
    low: float | None = None
    high: float | None = None
    step: float | None = None
    choices: tuple[str, ...] | None = None
    tab: str | None = None
    check: Callable[[str], object] | None = None  # a text's own check (raises SdvizError)
    rule: str = ""  # ... and the rule it checks, in words


def whole(name, low, high, label, tab=None) -> Key:
    return Key(name, "whole", label, low=low, high=high, tab=tab)


def number(name, low, high, step, label, tab=None) -> Key:
    return Key(name, "number", label, low=low, high=high, step=step, tab=tab)


def text(name, label, tab=None, check=None, rule="") -> Key:
    return Key(name, "text", label, tab=tab, check=check, rule=rule)


def choice(name, choices, label, tab=None) -> Key:
    return Key(name, "choice", label, choices=None if choices is None else tuple(choices), tab=tab)


def flag(name, label, tab=None) -> Key:
    return Key(name, "flag", label, tab=tab)


# Everything a lesson link can hold, one line per control (a key's tab: the tab whose control it is).
KEYS: dict[str, Key] = {key.name: key for key in (
    choice("tab", TABS, "the tab"),
    choice("model", None, "the model"),  # the page's allow-list
    text("prompt", "the prompt"),  # prompt ... scheduler: the settings of the generate tab shown (else Text to image)
    text("negative", "the negative prompt"),
    whole("seed", 0, MAX_SEED, "the seed"),
    whole("steps", 1, UI_MAX_STEPS, "steps"),
    number("cfg", 0, 20, 0.5, "the CFG scale"),
    choice("scheduler", (DEFAULT_SCHEDULER, *SCHEDULERS), "the scheduler"),
    number("strength", 0.05, 1, 0.05, "the strength", tab="img2img"),
    choice("example", None, "the example picture", tab="img2img"),  # an example by name: an upload cannot travel
    flag("slow", "slow motion"),
    flag("run", "run"),  # run the generate tab's settings once restored
    whole("step", 1, MAX_STEPS + 1, "the step shown"),  # PNDM runs one step more than asked for
    choice("forward_picture", None, "the forward diffusion picture", tab="forward"),
    whole("forward_t", 0, 999, "the timestep t", tab="forward"),
    whole("forward_seed", 0, MAX_SEED, "the noise seed", tab="forward"),
    choice("latent_picture", None, "the latent space picture", tab="latent"),
    text("attention_prompt", "the attention prompt", tab="attention"),
    flag("attention_special", "show start, end and padding tokens", tab="attention"),
    text("cfg_scales", "the guidance scales", tab="cfg", check=parse_scales, rule=SCALES_RULE),
    whole("cfg_step", 1, MAX_STEPS + 1, "the what-if step", tab="cfg"),
    number("cfg_g", 0, 20, 0.5, "the what-if guidance scale", tab="cfg"),
    number("variants_g", 0, 20, 0.5, "the guidance variants' scale", tab="cfg"),  # app.layout.VARIANT_SLIDERS
    number("variants_rescale", 0, 1, 0.05, "the guidance rescale", tab="cfg"),
    number("variants_from", 0, 0.95, 0.05, "where CFG starts", tab="cfg"),
    number("variants_until", 0.05, 1, 0.05, "where CFG ends", tab="cfg"),
    text("ab_prompt", "prompt B", tab="ab"),
    choice("lab_class", (lab.ALL_CLASSES, *lab.CLASSES), "the lab's class", tab="lab2d"),
    number("lab_g", lab.GUIDANCE.minimum, lab.GUIDANCE.maximum, lab.GUIDANCE.step, "the lab's guidance", tab="lab2d"),
    whole("lab_steps", lab.STEPS.minimum, lab.STEPS.maximum, "the lab's steps", tab="lab2d"),
    choice("lab_scheduler", lab.SCHEDULER_NAMES, "the lab's scheduler", tab="lab2d"),
    number("lab_samples", lab.SAMPLES.minimum, lab.SAMPLES.maximum, lab.SAMPLES.step, "the lab's samples", tab="lab2d"),
    whole("lab_seed", lab.SEED.minimum, lab.SEED.maximum, "the lab's seed", tab="lab2d"),
    whole("station", 1, 8, "the station", tab="lesson"),
)}


@dataclass
class Parsed:
    """What a query holds that passed every check, and one sentence for everything that was ignored."""

    values: dict
    notices: list[str]


def keys_of(tab: str) -> list[str]:
    """The keys that describe a view of ``tab``: the view's and the generate settings (no tab), then the tab's own."""
    return [k.name for k in KEYS.values() if k.tab in (None, tab)]


def shown(name: str) -> str:
    """A rejected key as a notice may name it: printable characters only, at most SHOWN_KEY of them."""
    printable = "".join(c for c in str(name) if unicodedata.category(c)[0] not in "CZ" or c == " ")
    return printable[:SHOWN_KEY] + ("…" if len(printable) > SHOWN_KEY else "")


def parse_query(query: Mapping[str, str] | Iterable[tuple[str, str]],
                choices: Mapping[str, Sequence[str]] | None = None) -> Parsed:
    """Check every key and value of ``query`` (a mapping, or (key, value) pairs: a key given twice counts once).
    ``choices``: the page's own choices for the keys whose table entry has none (the models, the example pictures).
    Returns the accepted values (typed: int, float, str, bool) and the notices."""
    pairs = list(query.items()) if isinstance(query, Mapping) else list(query)
    choices = choices or {}
    values: dict = {}
    notices: list[str] = []
    if len(pairs) > MAX_KEYS:
        notices.append(f"The link holds {len(pairs)} settings; only the first {MAX_KEYS} were read.")
        pairs = pairs[:MAX_KEYS]
    for name, raw in pairs:
        key = KEYS.get(name) if isinstance(name, str) else None
        if key is None:
            notices.append(f"'{shown(name)}' is not a setting a lesson link knows: ignored.")
            continue
        if key.name in values:
            notices.append(f"The link gives {key.label} twice: the first one counts.")
            continue
        try:
            values[key.name] = parse_value(key, raw, choices.get(key.name))
        except SdvizError as err:
            notices.append(f"The link's value for {key.label} was ignored: {err}")
    return Parsed(values, notices + _check_run(values))


def _check_run(values: dict) -> list[str]:
    """The run as a whole, with the pipeline's own check (steps x strength must make a step in image to image);
    a link that cannot run does not try to (its values are still restored, so Generate says why)."""
    img2img = values.get("tab") == "img2img"
    settings = RunSettings(steps=values.get("steps", RunSettings.steps),
                           strength=values.get("strength", RunSettings.strength))
    try:
        check_settings(settings, img2img=img2img and "steps" in values and "strength" in values)
    except SdvizError as err:
        if values.pop("run", False):
            return [f"The link does not run: {err}"]
    return []


_WHOLE = re.compile(r"[0-9]{1,19}")
_NUMBER = re.compile(r"[0-9]{1,4}(\.[0-9]{1,6})?")


def parse_value(key: Key, raw, page_choices: Sequence[str] | None = None):
    """One value of a query, checked against its key; raises SdvizError with the rule it broke."""
    if not isinstance(raw, str):
        raise SdvizError("it is not text.")
    limit = MAX_TEXT if key.kind in ("text", "choice") else MAX_VALUE  # a choice may be a model's folder
    if len(raw) > limit:
        raise SdvizError(f"it is longer than {limit} characters.")
    if key.kind == "whole":
        if not _WHOLE.fullmatch(raw) or not key.low <= int(raw) <= key.high:
            raise SdvizError(f"it must be a whole number from {key.low:g} to {key.high:g}.")
        return int(raw)
    if key.kind == "number":
        value = float(raw) if _NUMBER.fullmatch(raw) else math.nan
        on_grid = abs(value / key.step - round(value / key.step)) < 1e-6 if math.isfinite(value) else False
        if not (key.low <= value <= key.high and on_grid):
            raise SdvizError(f"it must be a number from {key.low:g} to {key.high:g} in steps of {key.step:g}.")
        return value
    if key.kind == "flag":
        if raw not in ("0", "1", "true", "false"):
            raise SdvizError("it must be 1 or 0.")
        return raw in ("1", "true")
    if key.kind == "choice":
        allowed = key.choices if key.choices is not None else tuple(page_choices or ())
        if raw not in allowed:
            raise SdvizError(f"it is not one of the {len(allowed)} this page offers.")
        return raw
    return _text(key, raw)


def _text(key: Key, raw: str) -> str:
    if any(unicodedata.category(c)[0] == "C" for c in raw) or "<" in raw or ">" in raw:
        raise SdvizError("it holds characters a prompt never needs (< > or control characters).")
    if key.check is not None:
        try:
            key.check(raw)
        except SdvizError as err:  # its message may quote the text: say the rule only
            raise SdvizError(key.rule) from err
    return raw


def format_value(key: Key, value) -> str:
    if key.kind == "flag":
        return "1" if value else "0"
    if key.kind == "whole" and not isinstance(value, bool) and float(value).is_integer():
        return str(int(value))  # else as it is: parse_query then refuses it
    if key.kind == "number":
        return f"{float(value):g}"
    return str(value)


def make_query(values: Mapping) -> str:
    """Checked values as a URL query, in the table's order (keys of no value, None, are left out)."""
    unknown = set(values) - set(KEYS)
    if unknown:
        raise ValueError(f"not lesson-link keys: {sorted(unknown)}")
    return urlencode([(name, format_value(key, values[name])) for name, key in KEYS.items()
                      if values.get(name) is not None])


def parse_pairs(query: str) -> list[tuple[str, str]]:
    """A query string's (key, value) pairs, as a page's address gives them to :func:`parse_query`."""
    return parse_qsl(str(query).removeprefix("?"), keep_blank_values=True)[: MAX_KEYS + 1]
