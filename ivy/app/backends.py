"""The backends of one app: the queue backend producers send to, the notifiers of both roles,
and the result consumers; it closes what it built, never an object handed in."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator
from typing import TypeVar

from ivy.config import Spec, make_notifier, make_queue_backend
from ivy.errors import IvyError
from ivy.notifiers.base import Notifier
from ivy.queues.base import QueueBackend
from ivy.results import Results

log = logging.getLogger("ivy")
T = TypeVar("T", QueueBackend, Notifier)


class Backends:
    """Owns an app's backends. A role's spec that names a notifier already in use shares it
    rather than opening a second connection; a notification consumer switched to another
    notifier keeps the old one until the calls it holds are settled.

    Parameters:
        queue, notifier: The app's default specs (URL, dict, backend object or None: the
            environment's, else the SQLite file ``ivy.db``).
        name: How errors name the app (``<Ivy 0f3a...>``).
        results: The producer's result consumers (started on the notifier chosen here).
        uses_priority, routes: What the queue backends built here ask of the app's registry.
    """

    def __init__(self, queue: Spec, notifier: Spec, *, name: str, results: Results,
                 uses_priority: Callable[[str], bool],
                 routes: Callable[[str], list[str]]) -> None:
        self.queue_spec = queue
        self.notifier_spec = notifier
        self.results = results
        self._name = name
        self._hints = (uses_priority, routes)
        self._queue: QueueBackend | None = None
        self._consumer: Notifier | None = None
        self._consumer_spec: Spec = None
        self._producer: Notifier | None = None
        self._producer_spec: Spec = None
        self._owned: list[QueueBackend | Notifier] = []
        self.lock = threading.RLock()
        self._closed = False

    @property
    def closed(self) -> bool:
        """Whether the app was closed."""
        return self._closed

    def check_open(self) -> None:
        """Raise :class:`ivy.IvyError` if the app was closed."""
        if self._closed:
            raise IvyError(f"{self._name} was closed: make a new ivy.Ivy() to send or listen "
                           "again")

    def mark_closed(self) -> bool:
        """Mark the app closed; False if it was already."""
        with self.lock:
            if self._closed:
                return False
            self._closed = True
            return True

    # -- the queue ---------------------------------------------------------------------------

    @property
    def queue(self) -> QueueBackend:
        """The queue backend producers send to, built on first use."""
        queue = self._queue  # made once: every send reads it, so no lock once it exists
        if queue is not None:
            return queue
        with self.lock:
            if self._queue is None:
                self.check_open()
                self._queue = self.own(self.queue_spec, make_queue_backend)
            return self._queue

    @property
    def queue_if_built(self) -> QueueBackend | None:
        """The queue backend, or None if none was built yet."""
        return self._queue

    def setup_queue(self, spec: Spec) -> QueueBackend:
        """What :meth:`ivy.Ivy.setup_queue` documents."""
        with self.lock:
            self.check_open()
            backend = self.own(spec, make_queue_backend)
            self._queue = backend
            self.queue_spec = spec
            return backend

    @contextlib.contextmanager
    def queue_replaced(self, backend: QueueBackend) -> Iterator[None]:
        """Send to ``backend`` inside the block, then to the queue of before (testing)."""
        with self.lock:
            self.check_open()
            previous, self._queue = self._queue, backend
        try:
            yield
        finally:
            with self.lock:
                if self._queue is backend:
                    self._queue = previous

    # -- notifiers ---------------------------------------------------------------------------

    @property
    def producer_notifier(self) -> Notifier | None:
        """The workers' notifier (which carries results back), if started."""
        return self._producer

    def start_consumer(self, spec: Spec = None) -> None:
        """What :meth:`ivy.Ivy.start_notification_consumer` documents: start receiving
        results on the notifier ``spec`` names, or switch to it."""
        with self.lock:
            self.check_open()
            current = self.results.notifier
            if current is not None and (spec is None or spec is current
                                        or spec == self._consumer_spec):
                return
            notifier = self.notifier_for(spec)
            if notifier is current:
                return
            self._consumer = notifier
            self._consumer_spec = spec if spec is not None else self.notifier_spec
            self.results.start(notifier)

    def notifier_retired(self, notifier: Notifier) -> None:
        """A retired consumer has settled every call it held: close its notifier unless it
        is still in use here, or was handed in by the caller."""
        with self.lock:
            in_use = notifier is self._producer or notifier is self._consumer
            if in_use or not any(thing is notifier for thing in self._owned):
                return
            self._owned = [thing for thing in self._owned if thing is not notifier]
        try:
            notifier.close()
        except Exception:
            log.debug("closing %s raised", notifier.url, exc_info=True)

    def start_producer(self, spec: Spec = None) -> Notifier:
        """What :meth:`ivy.Ivy.start_notification_producer` documents."""
        with self.lock:
            self.check_open()
            self._producer = self.notifier_for(spec)
            # the spec it was built from (the app's default when None), so that the consumer
            # side asking for the same one shares this object, not a second connection
            self._producer_spec = spec if spec is not None else self.notifier_spec
            return self._producer

    def notifier_for(self, spec: Spec) -> Notifier:
        """The notifier ``spec`` names (None: the app's default): one of either role already
        in use if it is the same, else a new one owned here."""
        spec = spec if spec is not None else self.notifier_spec
        for existing, existing_spec in ((self._consumer, self._consumer_spec),
                                        (self._producer, self._producer_spec)):
            if existing is not None and (spec is None or spec is existing
                                         or spec == existing_spec):
                return existing
        return self.own(spec, make_notifier)

    def store_notifier(self) -> Notifier:
        """The notifier whose store holds the app's shared state (paused queues): the one its
        workers use, else its consumer's, else the default one, started as the workers'
        would be."""
        with self.lock:
            self.check_open()
            found = self._producer or self._consumer
            return found if found is not None else self.start_producer(None)

    # -- owning ------------------------------------------------------------------------------

    def own(self, spec: Spec, make: Callable[[Spec], T]) -> T:
        """Build a backend from ``spec``; it is closed with the app, unless ``spec`` was the
        backend object itself (that one the caller closes)."""
        thing = make(spec)
        if thing is not spec:
            with self.lock:
                self._owned.append(thing)
        if isinstance(thing, QueueBackend):
            thing.use_hints(*self._hints)
        return thing

    def owns(self, thing: object) -> bool:
        """Whether ``thing`` was built here (and is closed with the app)."""
        with self.lock:
            return any(owned is thing for owned in self._owned)

    def close_owned(self) -> None:
        """Close the backends built here: notifiers first (one that stores in the background,
        SQLite's, acks what it stored on closing, through the queue backends, which must
        still be open then)."""
        with self.lock:
            owned, self._owned = self._owned, []
        for thing in sorted(reversed(owned), key=lambda t: not isinstance(t, Notifier)):
            try:
                thing.close()
            except Exception:
                log.debug("closing %r raised", thing, exc_info=True)
