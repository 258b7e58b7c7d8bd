"""``memory://[name]``: an in-process queue backend, shared by the threads of one process that name
the same broker; for tests and background tasks of one program."""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections import deque
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any, Literal, Self

from ivy import _clock
from ivy._shared import Shared
from ivy.queues.base import (
    DEFAULT_DEAD_LETTER_TTL,
    DEFAULT_MAX_DELIVERIES,
    Consumer,
    DeadLetter,
    Delivery,
    QueueBackend,
    Rewrite,
    dead_letter_ttl_option,
    max_deliveries_option,
)


@dataclass(slots=True)
class _Entry:
    body: bytes
    priority: int
    count: int = 0
    token: int = 0  # reservation; 0 when not reserved
    #: when it became ready (time.monotonic()), for oldest_age
    ready_since: float = 0.0


class _Queue:
    def __init__(self) -> None:
        self.ready: list[tuple[int, int, _Entry]] = []  # (-priority, seq, entry): a heap
        #: (due on ivy._clock.delays, seq, entry): a heap
        self.delayed: list[tuple[float, int, _Entry]] = []
        self.reserved: dict[int, tuple[_Entry, float]] = {}
        self.leases: list[tuple[float, int]] = []  # (deadline, token); stale rows are skipped
        self.dead: deque[tuple[DeadLetter, int]] = deque(maxlen=10_000)  # with priorities


class MemoryBroker:
    """The shared state behind every ``memory://name`` backend of a process."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.queues: dict[str, _Queue] = {}
        self._seq = itertools.count(1)
        #: the dead_letter_ttl of the backend made last on this broker
        self.dead_letter_ttl: float | None = DEFAULT_DEAD_LETTER_TTL

    def queue(self, name: str) -> _Queue:
        q = self.queues.get(name)
        if q is None:
            q = self.queues[name] = _Queue()
        return q

    def put(self, name: str, body: bytes, priority: int, delay: float, count: int = 0) -> None:
        with self.cond:
            q = self.queue(name)
            seq = next(self._seq)
            entry = _Entry(body, priority, count)
            if delay > 0:
                heapq.heappush(q.delayed, (_clock.delays() + delay, seq, entry))
                self.cond.notify_all()  # a waiter may need to shorten its wait
            else:
                entry.ready_since = _clock.delays()
                heapq.heappush(q.ready, (-priority, seq, entry))
                self.cond.notify()

    def _promote(self, q: _Queue, now: float) -> float | None:
        """Move due delayed entries and expired reservations to ready; return the seconds
        until the next is due. Delays are timed on ``ivy._clock.delays``, leases on ``now``."""
        delays_now = _clock.delays()
        while q.delayed and q.delayed[0][0] <= delays_now:
            due, seq, entry = heapq.heappop(q.delayed)
            entry.ready_since = due
            heapq.heappush(q.ready, (-entry.priority, seq, entry))
        while q.leases and q.leases[0][0] <= now:
            _, token = heapq.heappop(q.leases)
            held = q.reserved.get(token)
            if held is not None and held[1] <= now:
                del q.reserved[token]
                held[0].token = 0
                held[0].ready_since = delays_now
                heapq.heappush(q.ready, (-held[0].priority, next(self._seq), held[0]))
                self.cond.notify()
        times = [t[0] - delays_now for t in q.delayed[:1]] + [t[0] - now for t in q.leases[:1]]
        return min(times) if times else None

    def take(self, name: str, timeout: float, reserve: float,
             closed: Callable[[], bool]) -> _Entry | None:
        deadline = time.monotonic() + timeout
        with self.cond:
            q = self.queue(name)
            while not closed():
                now = time.monotonic()
                next_due = self._promote(q, now)
                if q.ready:
                    entry = heapq.heappop(q.ready)[2]
                    entry.count += 1
                    entry.token = next(self._seq)
                    q.reserved[entry.token] = (entry, now + reserve)
                    heapq.heappush(q.leases, (now + reserve, entry.token))
                    return entry
                if now >= deadline:
                    return None
                wait = deadline - now
                if next_due is not None:
                    wait = min(wait, max(next_due, 0.0))
                self.cond.wait(wait)
            return None

    def finish(self, name: str, token: int) -> _Entry | None:
        """End reservation ``token``; None if it had expired (the entry went back to the queue)."""
        with self.cond:
            held = self.queue(name).reserved.pop(token, None)
            if held is None:
                return None
            held[0].token = 0
            return held[0]

    def bury(self, name: str, body: bytes, priority: int, reason: str) -> None:
        """Add a dead letter to queue ``name``, dropping its expired ones."""
        with self.cond:
            letter = DeadLetter(name, body, reason, time.time(), str(next(self._seq)))
            dead = self.queue(name).dead
            dead.append((letter, priority))
            ttl = self.dead_letter_ttl
            while ttl is not None and dead[0][0].time < letter.time - ttl:
                dead.popleft()  # expired (oldest first)

    def queued(self, name: str) -> list[Queued]:
        """What queue ``name`` holds now, ready ones first (in delivery order), then delayed
        ones (soonest first), then reserved ones."""
        with self.cond:
            q = self.queue(name)
            now = _clock.delays()
            return ([Queued(e.body, "ready", 0.0) for _, _, e in sorted(q.ready)]
                    + [Queued(e.body, "delayed", max(due - now, 0.0))
                       for due, _, e in sorted(q.delayed)]
                    + [Queued(e.body, "reserved", 0.0) for e, _ in q.reserved.values()])

    def oldest_age(self, name: str) -> float:
        """Seconds the longest-waiting ready message of queue ``name`` has waited (0.0)."""
        with self.cond:
            q = self.queue(name)
            self._promote(q, time.monotonic())
            now = _clock.delays()
            return max((now - e.ready_since for _, _, e in q.ready), default=0.0)

    def wake(self) -> None:
        """Wake every consumer waiting on this broker, to look again at its delayed
        messages (``ivy._clock.delays`` moved)."""
        with self.cond:
            self.cond.notify_all()

    def extend(self, name: str, token: int, seconds: float) -> None:
        with self.cond:
            q = self.queue(name)
            held = q.reserved.get(token)
            if held is not None:
                deadline = time.monotonic() + seconds
                q.reserved[token] = (held[0], deadline)
                heapq.heappush(q.leases, (deadline, token))


@dataclass(frozen=True, slots=True)
class Queued:
    """A message held by a memory queue (:meth:`MemoryQueueBackend.queued`): its body,
    whether it is ready, delayed or reserved, and the seconds until a delayed one is due."""

    body: bytes
    state: Literal["ready", "delayed", "reserved"]
    due_in: float


#: the brokers of this process, by name: backends with the same name share one
_brokers: Shared[str, MemoryBroker] = Shared(MemoryBroker)


def wake_all() -> None:
    """Wake the consumers of every memory broker of the process (the delay clock moved)."""
    for broker in _brokers.values():
        broker.wake()


class MemoryDelivery(Delivery):
    def __init__(self, broker: MemoryBroker, queue: str, entry: _Entry) -> None:
        super().__init__()
        self._broker = broker
        self._entry = entry
        self._token = entry.token
        self.queue = queue
        self.body = entry.body
        self.delivery_count = entry.count

    def _ack(self) -> None:
        self._broker.finish(self.queue, self._token)

    def _retry(self, delay: float, body: bytes | None) -> None:
        if self._broker.finish(self.queue, self._token):
            self._broker.put(self.queue, body if body is not None else self.body,
                             self._entry.priority, delay, self._entry.count)

    def _release(self) -> None:
        self._defer(0.0)

    def _defer(self, delay: float) -> None:
        """Back to the queue for ``delay`` s, this delivery uncounted (not an attempt)."""
        if self._broker.finish(self.queue, self._token):
            self._broker.put(self.queue, self.body, self._entry.priority, delay,
                             self._entry.count - 1)

    def _dead_letter(self, reason: str) -> None:
        if self._broker.finish(self.queue, self._token):
            self._broker.bury(self.queue, self.body, self._entry.priority, reason)

    def _extend(self, seconds: float) -> None:
        self._broker.extend(self.queue, self._token, seconds)


class MemoryConsumer(Consumer):
    def __init__(self, broker: MemoryBroker, queue: str, reserve_time: float) -> None:
        self._broker = broker
        self._queue = queue
        self._reserve = reserve_time
        self._closed = False

    def get(self, timeout: float) -> Delivery | None:
        if self._closed:
            return None
        entry = self._broker.take(self._queue, timeout, self._reserve, lambda: self._closed)
        return None if entry is None else MemoryDelivery(self._broker, self._queue, entry)

    def close(self) -> None:
        # nothing is prefetched: a delivery is taken only when asked for
        with self._broker.cond:
            self._closed = True
            self._broker.cond.notify_all()


class MemoryQueueBackend(QueueBackend):
    """Poison messages: as on SQLite, an entry's count goes up with every delivery and a
    retry keeps it; ``max_deliveries`` (default 10, URL option ``?max_deliveries=N``) lost
    deliveries dead-letter it (:attr:`ivy.queues.base.QueueBackend.max_deliveries`)."""

    def __init__(self, name: str = "default", *,
                 max_deliveries: int = DEFAULT_MAX_DELIVERIES,
                 dead_letter_ttl: float | str | None = DEFAULT_DEAD_LETTER_TTL) -> None:
        self.name = name or "default"
        self.url = f"memory://{self.name}"
        self.broker = _brokers.get(self.name)
        self.max_deliveries = max_deliveries_option(max_deliveries,
                                                    f"the memory queue {self.url}")
        self.dead_letter_ttl = dead_letter_ttl_option(dead_letter_ttl,
                                                      f"the memory queue {self.url}")

    @property
    def dead_letter_ttl(self) -> float | None:
        """What :attr:`ivy.queues.base.QueueBackend.dead_letter_ttl` says, kept by the
        broker (every ``memory://name`` backend of the process shares it: the last made
        sets it); each new dead letter of a queue drops its expired ones."""
        return self.broker.dead_letter_ttl

    @dead_letter_ttl.setter
    def dead_letter_ttl(self, value: float | None) -> None:
        self.broker.dead_letter_ttl = value

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Self:
        name = str(config.get("name") or "default")
        return cls(name, max_deliveries=config.get("max_deliveries", DEFAULT_MAX_DELIVERIES),
                   dead_letter_ttl=config.get("dead_letter_ttl", DEFAULT_DEAD_LETTER_TTL))

    def publish(self, queue: str, body: bytes, *, priority: int = 0, delay: float = 0.0,
                route: str | None = None) -> None:
        self.broker.put(queue, body, priority, delay)

    def consume(self, queue: str, *, prefetch: int = 1, reserve_time: float = 30.0) -> Consumer:
        return MemoryConsumer(self.broker, queue, reserve_time)

    def queued(self, queue: str) -> list[Queued]:
        """What ``queue`` holds now (for :mod:`ivy.testing`): ready, delayed, reserved."""
        return self.broker.queued(queue)

    def oldest_age(self, queue: str) -> float | None:
        """From when each ready message became ready (sent, due, or its lease lost)."""
        return self.broker.oldest_age(queue)

    def size(self, queue: str) -> int:
        with self.broker.cond:
            q = self.broker.queue(queue)
            return len(q.ready) + len(q.delayed) + len(q.reserved)

    def dead_letters(self, queue: str, limit: int = 100) -> list[DeadLetter]:
        with self.broker.cond:
            return self.live_dead_letters(
                [letter for letter, _ in self.broker.queue(queue).dead][-limit:])

    def requeue_dead(self, queue: str, ids: Collection[str] | None = None, *,
                     rewrite: Rewrite | None = None) -> int:
        """Atomic: the dead letters leave and the messages arrive under one lock."""
        wanted = None if ids is None else set(ids)
        with self.broker.cond:
            q = self.broker.queue(queue)
            chosen = [(d, p) for d, p in q.dead if wanted is None or d.id in wanted]
            back = [rewrite(d.body) if rewrite else (d.body, None) for d, _ in chosen]
            q.dead = deque(((d, p) for d, p in q.dead if wanted is not None
                            and d.id not in wanted), maxlen=q.dead.maxlen)
            for (_, priority), (body, given) in zip(chosen, back, strict=True):
                self.broker.put(queue, body, priority if given is None else given, 0.0)
            return len(chosen)

    def purge_dead(self, queue: str) -> int:
        with self.broker.cond:
            q = self.broker.queue(queue)
            count = len(q.dead)
            q.dead.clear()
            return count

    def queues(self) -> list[str]:
        with self.broker.cond:
            return sorted(self.broker.queues)
