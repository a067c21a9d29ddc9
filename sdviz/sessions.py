"""What the peek-inside panel shows, for each browser session: its latest run, bounded in count and time.

A browser tab is one Gradio *session* (``gr.Request.session_hash``). The panel always shows that session's
latest run: while it runs, the steps computed so far; after it, every step for scrubbing, with full VAE decodes
cached for it. :class:`PanelRun` holds one such run, and :class:`SessionRuns` keeps one per session:

- a new run replaces the session's previous one (what the panel shows and what the step slider scrubs are
  always the same run, also after Stop);
- the generate event fills :attr:`PanelRun.steps` as the loop goes, so a run that was stopped can be scrubbed
  too, and events that come after it (the animation, full decodes, the Stop message) check that the run they
  belong to is still the session's latest before they touch the panel;
- entries go when the tab closes (:meth:`SessionRuns.end_session`, from ``demo.unload``), ``ttl_s`` after their
  last use, and least recently used first beyond ``max_sessions``.

The finished trace also goes to the page's ``run_state`` (for the teaching tabs): the same object, not a copy.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from sdviz.render import DecodeCache
from sdviz.trace import StepRecord, Trace

RUNNING, DONE, STOPPED, FAILED = "running", "done", "stopped", "failed"
_run_ids = itertools.count(1)


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
    _decodes: DecodeCache | None = field(default=None, repr=False)

    def finish(self, trace: Trace) -> None:
        self.trace, self.steps, self.outcome = trace, trace.steps, DONE

    def end(self, outcome: str, error: str = "") -> None:
        """The loop is over: DONE (after :meth:`finish`), STOPPED or FAILED. The first call wins."""
        if not self.ended.is_set():
            if self.outcome == RUNNING:
                self.outcome, self.error = outcome, error
            self.ended.set()

    @property
    def decodes(self) -> DecodeCache:
        """Full VAE decodes of this run's steps, made on demand (the cache reads only ``.steps``)."""
        if self._decodes is None:
            self._decodes = DecodeCache(self)  # type: ignore[arg-type]
        return self._decodes

    def nbytes(self) -> int:
        steps = sum(s.nbytes() for s in self.steps)
        return steps + (self._decodes.nbytes if self._decodes is not None else 0)


class SessionRuns:
    """The latest :class:`PanelRun` of every session, bounded by ``max_sessions`` and ``ttl_s``."""

    def __init__(self, max_sessions: int = 500, ttl_s: float = 1800):
        self.max_sessions = max_sessions
        self.ttl_s = ttl_s
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
        now = time.monotonic()
        while self._runs:
            session, (_, used) = next(iter(self._runs.items()))
            too_many = len(self._runs) > self.max_sessions
            if not too_many and now - used <= self.ttl_s:
                break
            del self._runs[session]  # a run still going goes on; only the panel forgets it

    def __len__(self) -> int:
        with self._lock:
            return len(self._runs)

    def nbytes(self) -> int:
        """Memory held by the kept runs' steps and decodes."""
        with self._lock:
            runs = [run for run, _ in self._runs.values()]
        return sum(run.nbytes() for run in runs)
