"""The queue backend interface: what every backend implements and the contract suite checks."""

from __future__ import annotations

import logging
import math
import threading
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Collection
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from ivy._flags import Sent
from ivy.errors import ConfigurationError

log = logging.getLogger("ivy.queue")


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message that was set aside, and why. ``id`` is the backend's own handle for it (a
    row id, a broker message id), the same in every listing, which
    :meth:`QueueBackend.requeue_dead` takes; it is not the call id in the body."""

    queue: str
    body: bytes
    reason: str
    time: float
    id: str


#: Deliveries of one message that may end without an outcome before it is dead-lettered
#: (:attr:`QueueBackend.max_deliveries`): Redis Streams' default, for every backend.
DEFAULT_MAX_DELIVERIES = 10


def max_deliveries_option(value: Any, what: str) -> int:
    """``max_deliveries`` (an argument, or the URL option ``?max_deliveries=N`` as text) as a
    whole number >= 1; else a ConfigurationError that names the value and the fix."""
    try:
        limit = int(value)
    except (TypeError, ValueError):
        limit = 0
    if isinstance(value, bool) or limit < 1 or str(limit) != str(value).strip():
        raise ConfigurationError(
            f"max_deliveries={value!r} for {what}: expected a whole number >= 1, such as "
            f"?max_deliveries={DEFAULT_MAX_DELIVERIES} (the deliveries of a message that may "
            "end without an outcome before it is dead-lettered)")
    return limit


#: How long a dead letter is kept (:attr:`QueueBackend.dead_letter_ttl`): 14 days, the
#: longest that SQS keeps a message, so that every backend can keep to the same default.
DEFAULT_DEAD_LETTER_TTL = 14 * 86_400.0


def dead_letter_ttl_option(value: Any, what: str) -> float | None:
    """``dead_letter_ttl`` (an argument, or the URL option ``?dead_letter_ttl=SECONDS`` as
    text) as seconds > 0, or None for ``none`` (kept until requeued or purged); else a
    ConfigurationError that names the value and the fix."""
    if value is None or (isinstance(value, str) and value.strip().lower() == "none"):
        return None
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = 0.0
    if isinstance(value, bool) or not 0 < seconds < float("inf"):
        raise ConfigurationError(
            f"dead_letter_ttl={value!r} for {what}: expected seconds > 0, such as "
            f"?dead_letter_ttl={DEFAULT_DEAD_LETTER_TTL:.0f} (14 days, the default), or "
            "?dead_letter_ttl=none to keep dead letters until they are requeued or purged")
    return seconds


def delivery_limit_reason(lost: int, limit: int) -> str:
    """The dead-letter reason of a poison message."""
    return (f"delivery limit: delivered {lost} times, and each time its worker died, was "
            f"killed or hung before an outcome; max_deliveries is {limit}")


#: What :meth:`QueueBackend.requeue_dead` does to each body on its way back: it returns the
#: body to send and the priority to send it with (None: the one the backend kept, else 0).
Rewrite = Callable[[bytes], tuple[bytes, int | None]]


class Delivery(ABC):
    """One received message. Exactly one of ack, retry, defer, dead_letter or release ends it;
    until then the backend keeps it reserved for this consumer (extend() pushes the reservation
    out).

    Operations on one delivery are serialized: the heartbeat's extend() and an executor's ack()
    never overlap (IronMQ's touch hands out a new reservation id that the delete must use).
    Once an ending operation succeeded, later ones do nothing: an extend() that loses the race
    against an ack() is skipped, a second ack() is logged and ignored. Backends implement the
    underscored methods; this class does the locking.
    """

    body: bytes
    queue: str
    #: 1 on first delivery, +1 each time the backend delivered it again (lease expiry, retry)
    delivery_count: int = 1
    #: Set by a backend that counted too many deliveries of this message that each ended
    #: without an outcome (its worker died or hung: a poison message), to the reason. The
    #: worker then dead-letters it with that reason, and tells its producer, instead of
    #: running it.
    exhausted: str | None = None
    #: Set by a backend that knows this delivery follows one lost without an outcome but
    #: could not count it in the message (a classic RabbitMQ queue's ``redelivered``): the
    #: worker puts it back at once (:meth:`defer`), which stores the count, instead of
    #: running it, so that :attr:`QueueBackend.max_deliveries` sees every lost delivery.
    uncounted: bool = False

    def __init__(self) -> None:
        self._op_lock = threading.Lock()
        #: the name of the operation that ended this delivery, or None while it is held
        self.ended: str | None = None

    def _end(self, what: str, op: Callable[[], None]) -> None:
        with self._op_lock:
            if self.ended is not None:
                log.warning("%s of a message of %s ignored: it was settled by %s already", what,
                            self.queue, self.ended)
                return
            op()
            self.ended = what

    def ack(self) -> None:
        """Delete the message: its outcome is recorded."""
        self._end("ack", self._ack)

    def retry(self, delay: float, body: bytes | None = None) -> None:
        """Put the message back, to be delivered again after ``delay`` seconds, with ``body``
        replacing the old body when given (backends that cannot replace it keep the old one).
        The next delivery counts as another attempt."""
        self._end("retry", lambda: self._retry(delay, body))

    def defer(self, delay: float) -> None:
        """Put the message back unchanged until ``delay`` seconds from now (a call whose
        ``eta`` is later), without counting this delivery as an attempt."""
        self._end("defer", lambda: self._defer(delay))

    def dead_letter(self, reason: str) -> None:
        """Move the message to the queue's dead letters with ``reason``."""
        self._end("dead_letter", lambda: self._dead_letter(reason))

    def release(self) -> None:
        """Give back a delivery that was never started, to be delivered again at once."""
        self._end("release", self._release)

    def extend(self, seconds: float, *, wait: bool = True) -> bool:
        """Keep the message reserved for ``seconds`` from now; nothing once it has ended.
        With ``wait=False`` (the heartbeat) it gives up at once while another operation on
        this delivery is in progress. True if the reservation was extended."""
        if not self._op_lock.acquire(blocking=wait):
            return False
        try:
            if self.ended is not None:
                return False
            self._extend(seconds)
            return True
        finally:
            self._op_lock.release()

    @abstractmethod
    def _ack(self) -> None: ...

    @abstractmethod
    def _retry(self, delay: float, body: bytes | None) -> None: ...

    @abstractmethod
    def _dead_letter(self, reason: str) -> None: ...

    @abstractmethod
    def _extend(self, seconds: float) -> None: ...

    def _release(self) -> None:
        self._retry(0.0, None)

    def _defer(self, delay: float) -> None:
        """Backends whose next delivery would count as an attempt override this."""
        self._retry(delay, None)


class Consumer(ABC):
    """Receives deliveries of one queue name. ``get`` returns None when ``timeout`` passes;
    several threads may call it at once (a worker's executors share one consumer)."""

    @abstractmethod
    def get(self, timeout: float) -> Delivery | None: ...

    def buffered(self) -> list[Delivery]:
        """Deliveries received (and so reserved) but not handed out by get() yet. A worker's
        heartbeat extends their reservations too, so that none lapses while it waits in a
        prefetch buffer. Consumers without a buffer, or whose broker keeps no lease (AMQP),
        return []."""
        return []

    def wait_ready(self, timeout: float) -> bool:
        """Whether the consumer receives (connected, its queue declared), waiting up to
        ``timeout`` s for it. Most consumers are ready once made; one that connects on its
        own thread (AMQP) says so when it is: a worker says "listening" only then."""
        return True

    @abstractmethod
    def close(self) -> None:
        """Stop receiving and return prefetched, unstarted deliveries to the queue at once.
        May be called from another thread: a get() in progress returns None soon."""


class LongPollConsumer(Consumer):
    """A consumer of an HTTP queue service (SQS, IronMQ): one request waits up to
    ``long_poll`` whole seconds for up to ``prefetch`` messages, which are handed out one per
    get(). Executor threads share it; one of them polls at a time."""

    long_poll = 20

    def __init__(self, queue: str) -> None:
        self.queue = queue
        self._buffer: deque[Delivery] = deque()
        self._lock = threading.Lock()
        self._closed = False

    @abstractmethod
    def _receive(self, wait: int) -> list[Delivery]:
        """One request, waiting up to ``wait`` seconds for messages."""

    def buffered(self) -> list[Delivery]:
        return list(tuple(self._buffer))  # a tuple of a deque is taken whole, under the GIL

    def get(self, timeout: float) -> Delivery | None:
        deadline = time.monotonic() + timeout
        if not self._lock.acquire(timeout=max(timeout, 0.001)):
            return None
        try:
            while not self._closed:
                if self._buffer:
                    return self._buffer.popleft()
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                # whole seconds, rounded up: one request waits at least the time left
                self._buffer.extend(self._receive(min(self.long_poll, math.ceil(remaining))))
            while self._buffer:  # closed during the long poll
                self._buffer.popleft().release()
            return None
        finally:
            self._lock.release()

    def close(self) -> None:
        """Give back what was received and not started. A get() in a long poll is not waited
        for: it gives back what it receives once it sees the consumer closed."""
        self._closed = True
        if self._lock.acquire(blocking=False):
            try:
                while self._buffer:
                    self._buffer.popleft().release()
            finally:
                self._lock.release()


class QueueBackend(ABC):
    """A queue backend: carries message bodies between producers and workers."""

    #: URL with any password masked, for logs
    url: str = ""
    #: whether publish(priority=...) orders deliveries
    supports_priority: bool = True
    #: how long a worker's consumer.get() waits at a time (a long poll on cloud queues, where
    #: each empty request costs)
    poll_seconds: float = 0.5
    #: Poison messages: how many deliveries of one message may end without an outcome (its
    #: worker died, was killed, or hung until its lease ran out) before the worker
    #: dead-letters it, with a reason that starts "delivery limit", instead of running it
    #: again; its producer's call fails with that reason. A backend that sets it counts
    #: those deliveries in ``Delivery.delivery_count`` beside the retries that the message's
    #: ``attempt`` counts (Redis Streams also marks a delivery past it ``exhausted``).
    #: None: the backend stops poison messages itself (RabbitMQ quorum queues) or cannot
    #: tell a retry from a lost delivery (SQS, IronMQ: give their queues a redrive policy).
    max_deliveries: int | None = None
    #: Seconds a dead letter is kept before it expires (None: until it is requeued or
    #: purged); URL option ``?dead_letter_ttl=SECONDS`` (or ``none``), default
    #: :data:`DEFAULT_DEAD_LETTER_TTL`. Expired letters are never listed; each backend
    #: deletes them its own way (its docstring says how).
    dead_letter_ttl: float | None = DEFAULT_DEAD_LETTER_TTL

    def dead_letter_cutoff(self) -> float:
        """The ``time.time()`` before which a dead letter has expired (0.0: none has)."""
        ttl = self.dead_letter_ttl
        return 0.0 if ttl is None else time.time() - ttl

    def live_dead_letters(self, letters: list[DeadLetter]) -> list[DeadLetter]:
        """``letters`` without those that expired (:attr:`dead_letter_ttl`)."""
        cutoff = self.dead_letter_cutoff()
        return [d for d in letters if d.time >= cutoff] if cutoff else letters

    @property
    def counts_lost_deliveries(self) -> bool:
        """Whether ``Delivery.delivery_count`` minus the message's ``attempt`` counts the
        deliveries that ended without an outcome, across defers, so that the worker may
        spread out what comes back from a dead worker (:class:`ivy.worker.processing.Suspects`):
        where :attr:`max_deliveries` is set. (A quorum queue counts in its own
        ``x-delivery-count``, which a put-back copy starts afresh.)"""
        return self.max_deliveries is not None

    #: (uses_priority, routes) of the app that owns the backend: :meth:`use_hints`
    _hints: tuple[Callable[[str], bool], Callable[[str], list[str]]] | None = None

    def use_hints(self, uses_priority: Callable[[str], bool],
                  routes: Callable[[str], list[str]]) -> None:
        """Answer :meth:`priority_hint` and :meth:`routes_hint` with these (the app that
        owns the backend passes looks at its registry)."""
        self._hints = (uses_priority, routes)

    def priority_hint(self, queue: str) -> bool:
        """Whether tasks sent to ``queue`` use priorities (see :meth:`use_hints`; False
        without hints); backends whose queues must be declared for priorities (RabbitMQ) ask
        it."""
        return False if self._hints is None else self._hints[0](queue)

    def routes_hint(self, queue: str) -> list[str]:
        """The routes (the original's ``route`` option) of the tasks registered for ``queue``
        (see :meth:`use_hints`; none without hints). Only AMQP with an exchange uses routes
        (to bind the queue); other backends ignore them."""
        return [] if self._hints is None else self._hints[1](queue)

    @abstractmethod
    def publish(self, queue: str, body: bytes, *, priority: int = 0, delay: float = 0.0,
                route: str | None = None) -> None:
        """Enqueue ``body`` on queue name ``queue``; it is delivered no sooner than ``delay`` s.
        ``route`` is the task's route (AMQP with an exchange: the routing key); other backends
        ignore it."""

    def publish_many(self, queue: str, bodies: list[bytes], *, priority: int = 0,
                     delay: float = 0.0, route: str | None = None) -> None:
        """Enqueue several bodies; backends that can batch (one round trip, one transaction)
        override this."""
        for body in bodies:
            self.publish(queue, body, priority=priority, delay=delay, route=route)

    def send_many(self, queue: str, bodies: list[bytes], *, priority: int = 0,
                  delay: float = 0.0, route: str | None = None) -> list[Future[None]]:
        """Hand bodies over and return a future per body that completes once the backend has
        the message, or fails with the reason (:class:`ivy.PublishError` for a refusal or a
        missing confirm). Backends that confirm asynchronously (RabbitMQ) return before the
        broker answered; this default publishes first, so its futures are already complete."""
        futures: list[Future[None]] = [Sent() for _ in bodies]
        try:
            self.publish_many(queue, bodies, priority=priority, delay=delay, route=route)
        except Exception as exc:
            for future in futures:
                future.set_exception(exc)
        else:
            for future in futures:
                future.set_result(None)
        return futures

    @abstractmethod
    def consume(self, queue: str, *, prefetch: int = 1, reserve_time: float = 30.0) -> Consumer:
        """Start receiving; each delivery stays reserved ``reserve_time`` seconds unless
        extended, then comes back to the queue (a worker that died loses nothing)."""

    @abstractmethod
    def size(self, queue: str) -> int:
        """Messages waiting or reserved in ``queue`` (not dead letters)."""

    def oldest_age(self, queue: str) -> float | None:
        """Seconds since the oldest message of ``queue`` that waits for a worker (due, not
        reserved) became due; 0.0 if none waits; None if this backend cannot tell (the
        default). ``ivy_queue_oldest_age_seconds`` samples it: a rising value says the
        workers do not keep up, the signal autoscalers want."""
        return None

    @abstractmethod
    def dead_letters(self, queue: str, limit: int = 100) -> list[DeadLetter]:
        """The most recent dead letters of ``queue``, oldest first."""

    def requeue_dead(self, queue: str, ids: Collection[str] | None = None, *,
                     rewrite: Rewrite | None = None) -> int:
        """Put the dead letters of ``queue`` named by ``ids`` (all when None) back on
        ``queue`` as fresh messages (their delivery count starts again), each body passed
        through ``rewrite`` first; return how many went back. Ids that are not there are
        skipped. Each backend says what is atomic; none loses a message (at worst one is in
        both places after a crash)."""
        raise NotImplementedError(f"the queue backend {type(self).__name__} ({self.url}) "
                                  "cannot requeue dead letters: implement requeue_dead()")

    def purge_dead(self, queue: str) -> int:
        """Delete every dead letter of ``queue``; return how many were deleted."""
        raise NotImplementedError(f"the queue backend {type(self).__name__} ({self.url}) "
                                  "cannot purge dead letters: implement purge_dead()")

    def queues(self) -> list[str]:
        """Queue names this backend knows of (empty when it cannot list them)."""
        return []

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections; the backend is not used afterwards."""
