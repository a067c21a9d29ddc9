"""What the peek-inside panel shows, for each browser session: its latest run, bounded in count, bytes and time.

A browser tab is one Gradio *session* (``gr.Request.session_hash``). The panel always shows that session's
latest run: while it runs, the steps computed so far; after it, every step for scrubbing, with full VAE decodes
cached for it. :class:`PanelRun` holds one such run, and :class:`SessionRuns` keeps one per session:

- a new run replaces the session's previous one (what the panel shows and what the step slider scrubs are
  always the same run, also after Stop);
- the generate event fills :attr:`PanelRun.steps` as the loop goes, so a run that was stopped can be scrubbed
  too, and events that come after it (the animation, full decodes, the Stop message) check that the run they
  belong to is still the session's latest before they touch the panel;
- entries go when the tab closes (:meth:`SessionRuns.end_session`, from ``demo.unload``), ``ttl_s`` after their
  last use, and least recently used first beyond ``max_sessions`` runs or ``max_bytes`` of steps and decodes
  (the session asking is never the one dropped: the newest run always stays).

The finished trace also goes to the page's ``run_state`` (for the teaching tabs): the same object, not a copy.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from PIL import Image

from sdviz.pipeline.trace import StepRecord, Trace

RUNNING, DONE, STOPPED, FAILED = "running", "done", "stopped", "failed"
STATE_TTL_S = 1800  # a session's latest run lives 30 min after its last use (and goes when the tab closes)
DECODES_MAX_BYTES = 8 * 2**20  # full decodes kept per run, for scrubbing
_run_ids = itertools.count(1)


class DecodedPictures:
    """Full VAE decodes of one run's steps, keyed by (step index, "x_t" or "x0"), kept for scrubbing.

    Bounded by ``max_bytes`` of pixels: the least recently used pictures go first. It only stores; the decoding
    is done by :func:`sdviz.app.services.step_decodes`.
    """

    def __init__(self, max_bytes: int = DECODES_MAX_BYTES):
        self.max_bytes = max_bytes
        self._pictures: OrderedDict[tuple[int, str], Image.Image] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[int, str]) -> Image.Image | None:
        with self._lock:
            picture = self._pictures.get(key)
            if picture is not None:
                self._pictures.move_to_end(key)
            return picture

    def put(self, key: tuple[int, str], picture: Image.Image) -> None:
        with self._lock:
            self._pictures[key] = picture
            self._pictures.move_to_end(key)
            while len(self._pictures) > 1 and self._nbytes() > self.max_bytes:
                self._pictures.popitem(last=False)

    @property
    def nbytes(self) -> int:
        with self._lock:
            return self._nbytes()

    def _nbytes(self) -> int:
        return sum(p.width * p.height * len(p.getbands()) for p in self._pictures.values())

    def __len__(self) -> int:
        with self._lock:
            return len(self._pictures)


@dataclass(eq=False)
class PanelRun:
    """One run as the panel shows it."""

    model: str
    expected_steps: int
    run_id: int = field(default_factory=lambda: next(_run_ids))
    steps: list[StepRecord] = field(default_factory=list)  # computed so far (the trace's own list once done)
    trace: Trace | None = None  # set when the run finished
    outcome: str = RUNNING
    error: str = ""
    stop_requested: threading.Event = field(default_factory=threading.Event, repr=False)  # the Stop button
    ended: threading.Event = field(default_factory=threading.Event, repr=False)  # the loop is over, for good
    decodes: DecodedPictures = field(default_factory=DecodedPictures, repr=False)

    def finish(self, trace: Trace) -> None:
        self.trace, self.steps, self.outcome = trace, trace.steps, DONE

    def end(self, outcome: str, error: str = "") -> None:
        """The loop is over: DONE (after :meth:`finish`), STOPPED or FAILED. The first call wins."""
        if not self.ended.is_set():
            if self.outcome == RUNNING:
                self.outcome, self.error = outcome, error
            self.ended.set()

    def nbytes(self) -> int:
        return sum(s.nbytes() for s in self.steps) + self.decodes.nbytes


class SessionRuns:
    """The latest :class:`PanelRun` of every session, bounded by ``max_sessions``, ``max_bytes`` and ``ttl_s``."""

    def __init__(self, max_sessions: int = 500, ttl_s: float = STATE_TTL_S, max_bytes: int = 2048 * 2**20):
        self.max_sessions = max_sessions
        self.ttl_s = ttl_s
        self.max_bytes = max_bytes
        self._runs: OrderedDict[str, tuple[PanelRun, float]] = OrderedDict()  # session -> (run, last used)
        self._lock = threading.Lock()

    def start(self, session: str | None, model: str, expected_steps: int) -> PanelRun:
        """A new run becomes the session's latest (without a session, e.g. called outside a server, it is
        kept nowhere)."""
        run = PanelRun(model=model, expected_steps=expected_steps)
        if session is not None:
            with self._lock:
                self._runs[session] = (run, time.monotonic())
                self._runs.move_to_end(session)
                self._forget_old()
        return run

    def latest(self, session: str | None) -> PanelRun | None:
        if session is None:
            return None
        with self._lock:
            entry = self._runs.get(session)
            if entry is None:
                return None
            self._runs[session] = (entry[0], time.monotonic())
            self._runs.move_to_end(session)
            self._forget_old()  # a finished run may have grown (its decodes) since it started
            return entry[0]

    def is_latest(self, session: str | None, run: PanelRun) -> bool:
        with self._lock:
            entry = self._runs.get(session) if session is not None else None
            return entry is not None and entry[0] is run

    def end_session(self, session: str | None) -> None:
        """The tab closed: forget its run (a run still going is asked to stop; Gradio also closes it)."""
        with self._lock:
            entry = self._runs.pop(session, None) if session is not None else None
        if entry is not None:
            entry[0].stop_requested.set()

    def forget_expired(self) -> None:
        with self._lock:
            self._forget_old()

    def _forget_old(self) -> None:
        """Drop the least recently used runs while there are too many, too old, or too many bytes of them."""
        now = time.monotonic()
        held = sum(run.nbytes() for run, _ in self._runs.values())
        while self._runs:
            session, (run, used) = next(iter(self._runs.items()))  # the least recently used
            expired = now - used > self.ttl_s
            too_many = len(self._runs) > self.max_sessions
            too_big = held > self.max_bytes and len(self._runs) > 1  # the newest run always stays
            if not (expired or too_many or too_big):
                break
            del self._runs[session]  # a run still going goes on; only the panel forgets it
            held -= run.nbytes()

    def __len__(self) -> int:
        with self._lock:
            return len(self._runs)

    def nbytes(self) -> int:
        """Memory held by the kept runs' steps and decodes."""
        with self._lock:
            runs = [run for run, _ in self._runs.values()]
        return sum(run.nbytes() for run in runs)
