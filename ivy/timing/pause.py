"""Pausing queues: ``app.pause_queue(q)``, ``app.resume_queue(q)``, ``ivy queue pause Q``, one key
of the notifier's store that every worker reads from its heartbeat (docs/internals/timing.md)."""

from __future__ import annotations

import json
import logging
import threading
import time

from ivy.errors import ConfigurationError, IvyError
from ivy.queues.base import Consumer, Delivery, QueueBackend
from ivy.stores import KeyStore

log = logging.getLogger("ivy.worker")
app_log = logging.getLogger("ivy")

PAUSED_KEY = "ivy:paused"
#: How long the paused list is kept after its last change: as good as for ever, within what
#: every store's key TTL takes (Redis milliseconds, PostgreSQL intervals).
PAUSE_TTL = 10 * 365 * 86400.0
#: Seconds between a worker's looks at the paused queues.
POLL_PAUSES = 1.0
#: Compare-and-set rounds before a change gives up (other processes changing the list).
CHANGE_TRIES = 50


def check_queue(queue: object) -> str:
    if not isinstance(queue, str) or not queue or len(queue) > 1000:
        raise ValueError(f"queue name {queue!r} is not one: a non-empty string of at most "
                         "1000 characters")
    return queue


def parse(value: str | None) -> list[str]:
    """The queue names a value of :data:`PAUSED_KEY` holds (none when it is not a JSON list
    of strings: such a value is replaced by the next change)."""
    if value is None:
        return []
    try:
        names = json.loads(value)
    except ValueError:
        return []
    return sorted({n for n in names if isinstance(n, str)}) if isinstance(names, list) else []


def _no_store(notifier: KeyStore, exc: NotImplementedError) -> ConfigurationError:
    return ConfigurationError(
        f"queues cannot be paused through notifier {type(notifier).__name__} "
        f"({notifier.url or 'no URL'}): it keeps no keys (RabbitMQ alone has no store). Use "
        "the memory://, sqlite://, redis:// or postgresql:// notifier your workers share "
        f"(--notifier-url). ({exc})")


def paused_queues(notifier: KeyStore) -> list[str]:
    """The queues paused on ``notifier``, sorted."""
    try:
        return parse(notifier.get_keys([PAUSED_KEY])[0])
    except NotImplementedError as exc:
        raise _no_store(notifier, exc) from None


def set_paused(notifier: KeyStore, queue: str, paused: bool) -> bool:
    """Pause (``paused``) or resume ``queue`` on ``notifier``; True if that changed it (False:
    it was so already)."""
    check_queue(queue)
    try:
        for _ in range(CHANGE_TRIES):
            held = notifier.get_keys([PAUSED_KEY])[0]
            names = set(parse(held))
            if (queue in names) == paused:
                return False
            names = names | {queue} if paused else names - {queue}
            value = json.dumps(sorted(names))
            if held is None:
                done = notifier.claim_key(PAUSED_KEY, value, PAUSE_TTL) is None
            elif names:
                done = notifier.release_key(PAUSED_KEY, held, PAUSE_TTL, new_value=value)
            else:
                done = notifier.release_key(PAUSED_KEY, held, 0)
            if done:
                app_log.info("queue %s %s on %s", queue, "paused" if paused else "resumed",
                             notifier.url)
                return True
    except NotImplementedError as exc:
        raise _no_store(notifier, exc) from None
    raise IvyError(f"the paused queues on {notifier.url} changed {CHANGE_TRIES} times while "
                   f"{queue!r} was being {'paused' if paused else 'resumed'}: try again")


class PausableConsumer(Consumer):
    """A worker's consumer of one queue, closed while the queue is paused and opened again
    on the first get() after it is resumed."""

    def __init__(self, backend: QueueBackend, queue: str, prefetch: int, reserve_time: float,
                 *, paused: bool) -> None:
        self.backend, self.queue = backend, queue
        self.prefetch, self.reserve_time = prefetch, reserve_time
        self._lock = threading.Lock()
        self._go = threading.Event()  # set while gets may fetch (not paused), or once closed
        self._closed = False
        self._inner: Consumer | None = None
        if not paused:  # opened now: a backend's refusal (QueueMismatch) fails the start
            self._inner = self._open()
            self._go.set()

    def _open(self) -> Consumer:
        return self.backend.consume(self.queue, prefetch=self.prefetch,
                                    reserve_time=self.reserve_time)

    def get(self, timeout: float) -> Delivery | None:
        inner = self._inner
        if inner is None:  # paused, resumed and not opened yet, or closed
            if not self._go.wait(timeout):
                return None
            with self._lock:
                if self._closed or not self._go.is_set():
                    return None
                if self._inner is None:
                    self._inner = self._open()
                inner = self._inner
        delivery = inner.get(timeout)
        if delivery is not None and self._inner is not inner:  # paused (or closed) meanwhile
            _give_back(delivery)
            return None
        return delivery

    def buffered(self) -> list[Delivery]:
        inner = self._inner
        return [] if inner is None else inner.buffered()

    def wait_ready(self, timeout: float) -> bool:
        inner = self._inner
        return True if inner is None else inner.wait_ready(timeout)

    def pause(self) -> None:
        """Fetch nothing more; the consumer is closed on a thread of its own (giving back
        what it prefetched may wait for a get() in progress), not the caller's."""
        with self._lock:
            self._go.clear()
            inner, self._inner = self._inner, None
        if inner is not None:
            threading.Thread(target=_close, args=(inner, self.queue), daemon=True,
                             name=f"ivy-pause-{self.queue}").start()

    def resume(self) -> None:
        with self._lock:
            if not self._closed:
                self._go.set()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._go.set()  # gets waiting for a resume return None at once
            inner, self._inner = self._inner, None
        if inner is not None:
            inner.close()


def _give_back(delivery: Delivery) -> None:
    try:
        delivery.release()
    except Exception:
        log.warning("giving back a message of paused queue %s failed; it comes back when "
                    "its reservation ends", delivery.queue, exc_info=True)


def _close(consumer: Consumer, queue: str) -> None:
    try:
        consumer.close()
    except Exception:
        log.warning("closing the consumer of paused queue %s failed; what it prefetched comes "
                    "back when its reservation ends", queue, exc_info=True)


class Pauses:
    """A worker's view of which of its queues are paused, read from the notifier's store at
    start and every :data:`POLL_PAUSES` seconds by its heartbeat (:meth:`poll`)."""

    def __init__(self, notifier: KeyStore | None, queues: list[str], worker: str) -> None:
        self.notifier = notifier
        self.queues = frozenset(queues)
        self.worker = worker
        #: the worker's queues it saw paused at its last look
        self.paused: frozenset[str] = frozenset()
        #: looks at the store that got an answer (the tests wait on it)
        self.polls = 0
        self._keys = notifier is not None
        self._next = 0.0
        self._consumers: dict[str, PausableConsumer] = {}

    def consume(self, backend: QueueBackend, queue: str, *, prefetch: int,
                reserve_time: float) -> PausableConsumer:
        """The worker's consumer of ``queue``, not opened while it is paused (the first one
        looks at the store first)."""
        if self.polls == 0:
            self.poll(time.monotonic())
        consumer = PausableConsumer(backend, queue, prefetch, reserve_time,
                                    paused=queue in self.paused)
        self._consumers[queue] = consumer
        return consumer

    def holds(self, queue: str) -> bool:
        """Whether the worker sees ``queue`` paused."""
        return queue in self.paused

    def poll(self, now: float) -> None:
        """Look at the paused queues if :data:`POLL_PAUSES` seconds passed since the last
        look, and pause or resume the consumers whose queue changed. Never raises: a store
        that fails leaves things as they were until the next look."""
        if not self._keys or now < self._next or self.notifier is None:
            return
        self._next = now + POLL_PAUSES
        try:
            value = self.notifier.get_keys([PAUSED_KEY])[0]
        except NotImplementedError as exc:
            self._keys = False
            log.debug("worker %s: pausing queues is off: %s", self.worker, exc)
            return
        except Exception:
            log.warning("worker %s: could not read the paused queues", self.worker,
                        exc_info=True)
            return
        self.polls += 1
        paused = frozenset(parse(value)) & self.queues
        before, self.paused = self.paused, paused
        for queue in sorted(paused - before):
            log.info("worker %s: queue %s is paused; fetching nothing from it until it is "
                     "resumed", self.worker, queue)
            consumer = self._consumers.get(queue)
            if consumer is not None:
                consumer.pause()
        for queue in sorted(before - paused):
            log.info("worker %s: queue %s was resumed", self.worker, queue)
            consumer = self._consumers.get(queue)
            if consumer is not None:
                consumer.resume()
