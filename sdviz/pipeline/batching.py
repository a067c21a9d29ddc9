"""A classroom at once: requests from many users that can share a loop run as one batch.

Thirty students pressing Generate together would otherwise queue for thirty loops one after another. The
:class:`Batcher` gathers requests (when several wait, until none has come for a few tens of milliseconds; a lone
request starts at once and, if a class arrives within its first steps, starts again inside their batch), prepares each
one on its own (a bad request fails alone, see :func:`sdviz.pipeline.sampler.prepare`), and runs those that share a
schedule (same model, size, steps, scheduler and strength) through :func:`sdviz.pipeline.sampler.denoise_batch`, the one loop. Each request
gets a :class:`Ticket`: its own steps arrive there as the batch computes them, its own Stop drops only it, and its
picture is its own seed's (within 1/255 of the lone run's, docs/reliability.md).

Identical requests (the same example pressed by ten students) share one row of the batch, and finished runs stay in
a small cache, so a repeated request is answered at once with the same picture.

Every user's page shows the first step as soon as it exists. For a batch of several users the batcher can decode
that step's x_t and predicted x0 for all of them in one VAE call (``first_decodes``), instead of each user's thread
decoding its own two, one after another, between the batch's steps.
"""

from __future__ import annotations

import hashlib
import io
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from sdviz.pipeline import vae
from sdviz.pipeline.models import batch_threads, compute_lock
from sdviz.pipeline.sampler import InitImage, Start, denoise_batch, prepare
from sdviz.pipeline.settings import RunSettings
from sdviz.pipeline.trace import StepRecord, Trace

GATHER_S = 0.03  # in a busy moment a new batch waits until no request has come for this long ...
MAX_GATHER_S = 0.4  # ... but no longer than this (a class's presses reach the server over a few hundred ms)
REJOIN_S = 0.3  # a lone run this young (seconds) starts again inside the batch of a class that arrives just after it
POLL_S = 1.0  # a waiting request is woken when its batch steps, ends or needs a thread; this is only a safety net
FIRST_FRAMES_WAIT_S = 1.0  # after its first step a class's batch waits this long at most for every first live frame


class Ticket:
    """One request's view of its batch: iterate it for the run's step records and then its trace.

    A lone user's run is stepped by whoever iterates its ticket: the user's own thread, between its live updates, as
    without batching. A batch of several users is stepped by a thread of its own (:meth:`Batcher._drive`), so that
    no user's live updates hold the others up."""

    def __init__(self, batcher: Batcher) -> None:
        self._batcher = batcher
        self._items: deque = deque()  # guarded by the batcher's lock
        self.stopped = threading.Event()
        self.batch_size = 0  # requests computed together with this one (0 until its batch starts)
        self.have = 0  # steps it already got from a lone start (then it started again inside a batch)
        self.decoded: dict[tuple[int, str], Image.Image] = {}  # (step index, "x_t" or "x0") -> VAE decode, if made
        self.hungry = False  # its reader is waiting for its next record (it has shown the ones before)

    def __iter__(self) -> Iterator[StepRecord | Trace]:
        lock = self._batcher._lock
        while not self.stopped.is_set():
            with lock:
                item = self._items.popleft() if self._items else None
            if item is None:
                if not self._batcher._work():
                    with lock:
                        if not self._items:
                            self.hungry = True
                            self._batcher._fed.notify_all()  # only a batch waiting for its first frames listens
                            lock.wait(POLL_S)
                            self.hungry = False
                continue
            if isinstance(item, BaseException):
                raise item
            yield item
            if isinstance(item, Trace):
                return

    def waiting(self) -> int:
        """Records already computed but not yet taken: more than 0 means the reader is behind the loop."""
        with self._batcher._lock:
            return len(self._items)

    def stop(self) -> None:
        """Leave the batch: this ticket gets nothing more; the others go on."""
        self.stopped.set()
        self._batcher._left()

    def _put(self, item) -> None:  # under the batcher's lock
        if not self.stopped.is_set():
            self._items.append(item)


@dataclass
class _Request:
    model_name: str
    settings: RunSettings
    init_image: InitImage | None
    key: str | None  # what makes two requests identical (None: never shared)
    tickets: list[Ticket] = field(default_factory=list)
    start: Start | None = None
    rejoined: bool = False  # started alone, then again inside a batch (once at most)

    def may_share_with(self, other: _Request) -> bool:
        """Whether the two could share a loop, judged from their settings before either is prepared."""
        a, b = self.settings, other.settings
        return (self.model_name == other.model_name and (self.init_image is None) == (other.init_image is None)
                and (a.steps, a.scheduler, a.height, a.width) == (b.steps, b.scheduler, b.height, b.width)
                and (self.init_image is None or a.strength == b.strength))

    def live(self) -> list[Ticket]:
        return [t for t in self.tickets if not t.stopped.is_set()]


@dataclass
class _Batch:
    requests: list[_Request]
    model: object
    loop: Iterator  # denoise_batch's generator
    busy: bool = False  # a thread is computing its next step
    dedicated: bool = False  # stepped by a thread of its own (a batch of several users), not by the users' threads
    steps_done: int = 0
    started: float = field(default_factory=time.monotonic)


class Batcher:
    """Batches the runs submitted together (one batch computes at a time: a run already uses every core).

    ``load(model_name)`` gives the model; ``max_batch(model)`` how many requests one batch may hold (memory and
    device decide: see :func:`sdviz.app.hosting.batch_size`). Finished runs are kept for repeats, up to
    ``cache_mb`` of their traces. ``first_decodes(model)``: whether a batch of several users decodes its first step
    for all of them at once (into each :attr:`Ticket.decoded`); the app asks it where live frames show real decodes.
    """

    def __init__(self, load: Callable[[str], object], max_batch: Callable[[object], int] = lambda model: 32,
                 *, gather_s: float = GATHER_S, cache_mb: float = 32,
                 first_decodes: Callable[[object], bool] = lambda model: False) -> None:
        self._load, self._max_batch, self._gather_s = load, max_batch, gather_s
        self._first_decodes = first_decodes
        self._lock = threading.Condition()
        self._fed = threading.Condition(self._lock)  # a reader is waiting for its next record (same lock)
        self._pending: list[_Request] = []
        self._batch: _Batch | None = None
        self._forming = False
        self._cache: OrderedDict[str, tuple[Trace, int]] = OrderedDict()
        self._cache_bytes, self._cache_limit = 0, int(cache_mb * 2**20)
        self.batches: deque[int] = deque(maxlen=1000)  # the sizes of the latest batches (benchmarks and tests)
        self.rejoined = 0  # lone runs that started again inside a class's batch

    # -- the users' side ---------------------------------------------------------------------------------------

    def submit(self, model_name: str, settings: RunSettings, init_image: InitImage | None = None) -> Ticket:
        """Queue one run; iterate the returned ticket for its steps (a cached identical run's come at once)."""
        ticket = Ticket(self)
        key = request_key(model_name, settings, init_image)
        with self._lock:
            if self._replay(key, ticket):
                return ticket
            for request in self._pending:  # the same request already waiting: share its row
                if key is not None and request.key == key:
                    request.tickets.append(ticket)
                    return ticket
            self._pending.append(_Request(model_name, settings, init_image, key, [ticket]))
        return ticket

    def forget_finished(self) -> None:
        """Empty the cache of finished runs (the next identical request is computed again)."""
        with self._lock:
            self._cache.clear()
            self._cache_bytes = 0

    def _replay(self, key: str | None, ticket: Ticket) -> bool:
        """Serve a finished identical run from the cache (under the lock)."""
        if key is None or key not in self._cache:
            return False
        self._cache.move_to_end(key)
        trace = self._cache[key][0]
        ticket.batch_size = 1
        for record in trace.steps:
            ticket._put(record)
        ticket._put(trace)
        return True

    # -- the work, done by whichever waiting user's thread finds some ---------------------------------------------

    def _work(self) -> bool:
        """Form the next batch or compute the current one's next step, if nobody else is; False if nothing to do."""
        with self._lock:
            batch = self._batch
            if batch is None and self._pending and not self._forming:
                self._forming, busy = True, len(self._pending) > 1
            elif batch is not None and not batch.busy and not batch.dedicated:
                batch.busy = True
            else:
                return False
        if batch is None:
            self._form(busy)
        else:
            self._step(batch)
        return True

    def _form(self, busy: bool) -> None:
        try:
            if busy:  # several waiting: a class is arriving; let the rest join this batch while they keep coming
                deadline = time.monotonic() + MAX_GATHER_S
                seen = -1
                while time.monotonic() < deadline:
                    with self._lock:
                        count = len(self._pending)
                    if count == seen:
                        break
                    seen = count
                    time.sleep(self._gather_s)
            with self._lock:
                taken, self._pending = self._pending, []
            requests, rest, model = self._choose(taken)  # outside the lock: preparing takes a moment
            with self._lock:
                self._pending[:0] = rest
                if requests:
                    for request in requests:
                        for ticket in request.tickets:
                            ticket.batch_size = len(requests)
                    self.batches.append(len(requests))
                    self._batch = _Batch(requests, model, denoise_batch(model, [r.start for r in requests]),
                                         dedicated=len(requests) > 1)
                    if self._batch.dedicated:
                        threading.Thread(target=self._drive, args=(self._batch,), name="sdviz-batch",
                                         daemon=True).start()
        finally:
            with self._lock:
                self._forming = False
                self._lock.notify_all()

    def _choose(self, taken: list[_Request]) -> tuple[list[_Request], list[_Request], object]:
        """The oldest request's model and schedule, and every taken request that shares them (up to the batch
        limit); the rest wait for the next batch. Requests are prepared here, one by one: a bad one fails alone."""
        name = taken[0].model_name
        try:
            model = self._load(name)
        except Exception as err:  # noqa: BLE001 - every request for this model hears why it did not load
            for request in taken:
                if request.model_name == name:
                    self._fail(request, err)
            return [], [r for r in taken if r.model_name != name], None
        limit = max(1, int(self._max_batch(model)))
        batch, rest, key = [], [], None
        for request in taken:
            if request.model_name != name or len(batch) >= limit:
                rest.append(request)
                continue
            if not request.live():
                continue  # everyone who asked for it pressed Stop before it started
            with self._lock:
                served = request.key is not None and all(self._replay(request.key, t) for t in request.live())
            if served:
                continue  # finished meanwhile by an earlier batch
            if request.start is None:
                try:
                    request.start = prepare(model, request.settings, request.init_image)
                except Exception as err:  # noqa: BLE001 - the request's own error, e.g. bad settings
                    self._fail(request, err)
                    continue
            key = key or request.start.schedule_key
            (batch if request.start.schedule_key == key else rest).append(request)
        return batch, rest, model

    def _step(self, batch: _Batch) -> None:
        finished = False
        try:
            if not any(request.live() for request in batch.requests):
                finished = True  # everyone pressed Stop: the loop ends at this step
                return
            if self._rejoin(batch):
                return
            with compute_lock, batch_threads(batch.model, len(batch.requests)):  # see models.compute_lock
                items = next(batch.loop)
                decoded = self._decode_first(batch, items)
            batch.steps_done += 1
            with self._lock:
                for request, pictures in zip(batch.requests, decoded, strict=False):
                    for ticket in request.live():
                        ticket.decoded.update(pictures)
                for request, item in zip(batch.requests, items, strict=True):
                    for ticket in request.live():
                        if not (isinstance(item, StepRecord) and item.index < ticket.have):  # else: it has it
                            ticket._put(item)
            if isinstance(items[0], Trace):
                finished = True
                for request, trace in zip(batch.requests, items, strict=True):
                    if request.key is not None:
                        self._remember(request.key, trace)
        except Exception as err:  # noqa: BLE001 - the loop itself failed: every request of this batch hears it
            finished = True
            for request in batch.requests:
                self._fail(request, err)
        finally:
            if finished:
                batch.loop.close()
            with self._lock:
                batch.busy = False
                if finished and self._batch is batch:
                    self._batch = None
                self._lock.notify_all()

    def _decode_first(self, batch: _Batch, items: list) -> list[dict]:
        """The first step's x_t and predicted x0 of every request of a batch of several users, in one VAE call
        (every user's page shows the first step). Nothing for a lone run, other steps, or when not asked."""
        if not (batch.dedicated and isinstance(items[0], StepRecord) and items[0].index == 0
                and self._first_decodes(batch.model)):
            return []
        latents = [x.reshape(-1, *x.shape[-3:]) for record in items for x in (record.x_t, record.pred_x0)]
        pictures = vae.decode_batch_to_pil(batch.model, torch.cat(latents))
        return [{(0, "x_t"): pictures[2 * j], (0, "x0"): pictures[2 * j + 1]} for j in range(len(items))]

    def _rejoin(self, batch: _Batch) -> bool:
        """The first press of a class starts at once, alone (it cannot know the others are coming). When more
        requests for its model arrive within ``REJOIN_S`` of its start, it starts again with them, in one batch: its
        user loses those steps' time instead of everyone waiting for its whole run (a class's presses reach the
        server over a few hundred milliseconds; the embedded model's lone run makes 3 steps in 0.1 s)."""
        if batch.dedicated or time.monotonic() - batch.started > REJOIN_S:
            return False
        (request,) = batch.requests
        with self._lock:
            if request.rejoined or not any(request.may_share_with(r) for r in self._pending):
                return False
            request.rejoined = True
            for ticket in request.tickets:
                ticket.have = max(ticket.have, batch.steps_done)
            same = [r for r in self._pending if request.key is not None and r.key == request.key]
            if same:  # the same request is waiting: one row for all of them
                same[0].tickets.extend(request.tickets)
            else:
                request.start = None  # its scheduler and random numbers are used up: prepared again
                self._pending.insert(0, request)
            self._batch = None
        batch.loop.close()
        self.rejoined += 1
        return True

    def _drive(self, batch: _Batch) -> None:
        """Step a batch of several users to its end. Their threads are paced by their pages (a server hands each
        live update to the browser before it asks for the next), so a batch stepped only by them would stall
        whenever all of them are busy drawing; a lone run is still stepped by its own user's thread.

        After the first step it waits (at most ``FIRST_FRAMES_WAIT_S``) until every user has drawn it: thirty
        first frames drawn beside the second step made that step 9x slower (1.34 s against 0.15 s; the pictures
        and the loop's Python share one interpreter lock), and the frames came later too."""
        while True:
            with self._lock:
                while batch.busy and self._batch is batch:
                    self._lock.wait(POLL_S)
                if self._batch is not batch:
                    return
                if batch.steps_done == 1:
                    self._wait_for_first_frames(batch)
                batch.busy = True
            self._step(batch)

    def _wait_for_first_frames(self, batch: _Batch) -> None:  # under the lock
        deadline = time.monotonic() + FIRST_FRAMES_WAIT_S
        while self._batch is batch and time.monotonic() < deadline:
            tickets = [t for request in batch.requests for t in request.live()]
            if all(t.hungry and not t._items for t in tickets):
                return
            self._fed.wait(max(0.0, deadline - time.monotonic()))

    def _left(self) -> None:
        """A ticket stopped: if nobody is left in the batch, end its loop now (no thread would step it again)."""
        with self._lock:
            batch = self._batch
            if batch is None or batch.busy or any(request.live() for request in batch.requests):
                return
            batch.busy = True
        self._step(batch)  # finds nobody live: closes the loop and clears the batch

    def _fail(self, request: _Request, err: BaseException) -> None:
        with self._lock:
            for ticket in request.live():
                ticket._put(err)
            self._lock.notify_all()

    def _remember(self, key: str, trace: Trace) -> None:
        size = sum(r.nbytes() for r in trace.steps) + trace.width * trace.height * 3
        with self._lock:
            if key in self._cache:
                self._cache_bytes -= self._cache.pop(key)[1]
            self._cache[key] = (trace, size)
            self._cache_bytes += size
            while self._cache_bytes > self._cache_limit and self._cache:
                self._cache_bytes -= self._cache.popitem(last=False)[1][1]


def request_key(model_name: str, settings: RunSettings, init_image: InitImage | None) -> str | None:
    """A fingerprint of everything that decides a run's picture (the init image by its pixels or file bytes)."""
    h = hashlib.sha256(repr((model_name, sorted(settings.to_dict().items()))).encode())
    if init_image is None:
        pass
    elif isinstance(init_image, (str, Path)):
        try:
            h.update(Path(init_image).read_bytes())
        except OSError:
            return None  # unreadable: the run's own error says so; never share it
    elif isinstance(init_image, Image.Image):
        buffer = io.BytesIO()
        init_image.save(buffer, format="PNG")
        h.update(buffer.getvalue())
    elif isinstance(init_image, np.ndarray):
        h.update(repr((init_image.shape, init_image.dtype.str)).encode())
        h.update(np.ascontiguousarray(init_image).tobytes())
    else:
        return None
    return h.hexdigest()
