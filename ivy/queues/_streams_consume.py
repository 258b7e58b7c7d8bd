"""The consuming side of the Redis Streams queue: a consumer's reads, leases and claims, and
what ends a delivery (ack, retry, dead letter, release) or extends its lease."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
import uuid
from collections import deque
from typing import Any, Protocol

import redis
import redis.exceptions

from ivy.queues._streams_ack import Ack, Acker
from ivy.queues._streams_keys import (
    BLOCK_SECONDS,
    FORGET_IDLE_MS,
    GROUP,
    ORPHAN_CHECK_SECONDS,
    SHORT_BLOCK_SECONDS,
    Keys,
    ms,
    read_entries,
    tag,
)
from ivy.queues.base import Consumer, Delivery, delivery_limit_reason

log = logging.getLogger("ivy.redis_streams")


class Backend(Protocol):
    """What a consumer and its deliveries use of the backend that made them."""

    url: str
    client: redis.Redis
    acker: Acker
    max_deliveries: int
    dead_letter_ttl: float | None

    def script(self, name: str) -> Any: ...

    def ensure_group(self, queue: str, *, again: bool = False) -> None: ...


class StreamsDelivery(Delivery):
    def __init__(self, consumer: StreamsConsumer, entry_id: str, body: bytes, before: int,
                 pel: int, priority: str) -> None:
        super().__init__()
        self._consumer = consumer
        self._id = entry_id
        self._pel = pel
        self.priority = priority
        self.queue = consumer.queue
        self.body = body
        self.delivery_count = before + pel
        limit = consumer.backend.max_deliveries
        if pel > limit:
            self.exhausted = delivery_limit_reason(pel - 1, limit)

    def _settle(self, action: str, arg: str | int, deliveries: int,
                last: bytes | None = None) -> None:
        """Run the settle script; ``last`` is its optional last argument: a retry's new body,
        or a dead letter's TTL in ms (empty: none)."""
        c = self._consumer
        args: list[Any] = [GROUP, c.name, self._id, self._pel, action, arg, deliveries, tag(),
                           self.priority]
        if last is not None:
            args.append(last)
        keys = [c.keys.level(self.priority), c.keys.leases, c.keys.delayed, c.keys.dead]
        if not c.backend.script("settle")(keys=keys, args=args):
            log.warning("%s of a message of %s (entry %s) skipped: its reservation ran out and "
                        "another delivery of it is under way", action, self.queue, self._id)

    def _ack(self) -> None:
        """Handed to the backend's acker, which writes it with the others waiting: the ack
        follows the recorded outcome, and a worker killed before it is written gets its
        message back when the lease ends (at least once)."""
        c = self._consumer
        c.backend.acker.submit(Ack(self.queue, c.name, self._id, self._pel, self.priority))

    def _retry(self, delay: float, body: bytes | None) -> None:
        self._settle("retry", ms(delay), self.delivery_count, body)
        self._consumer.delayed_soon(delay)

    def _defer(self, delay: float) -> None:
        self._settle("retry", ms(delay), self.delivery_count - 1)
        self._consumer.delayed_soon(delay)

    def _release(self) -> None:
        self._defer(0.0)

    def _dead_letter(self, reason: str) -> None:
        ttl = self._consumer.backend.dead_letter_ttl
        self._settle("dead", reason, self.delivery_count,
                     b"" if ttl is None else str(ms(ttl)).encode())

    def _extend(self, seconds: float) -> None:
        c = self._consumer
        if not c.backend.script("extend")(keys=[c.keys.level(self.priority), c.keys.leases],
                                          args=[GROUP, c.name, self._id, self._pel,
                                                ms(seconds), self.priority]):
            log.warning("the reservation of a message of %s (entry %s) ran out before it was "
                        "extended; another worker may run it too", self.queue, self._id)


class StreamsConsumer(Consumer):
    def __init__(self, backend: Backend, queue: str, prefetch: int,
                 reserve_time: float) -> None:
        self.backend = backend
        self.queue = queue
        self.keys = Keys(queue)
        self.name = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._prefetch = max(1, prefetch)
        self._lease = ms(reserve_time)
        self._buffer: deque[StreamsDelivery] = deque()
        self._lock = threading.Lock()  # several executor threads share one consumer
        self._closed = threading.Event()
        self._next_orphan_check = 0.0
        self._failing = False
        self._levels: list[str] = ["0"]  # the priorities with a stream, highest first
        #: until when blocking reads stay short: a message this consumer's deliveries put in
        #: the delayed set falls due then, and a read already blocking would not see it move
        self._short_reads_until = 0.0
        backend.ensure_group(queue)

    def buffered(self) -> list[Delivery]:
        return list(tuple(self._buffer))  # a tuple of a deque is taken whole, under the GIL

    def get(self, timeout: float) -> Delivery | None:
        deadline = time.monotonic() + timeout
        if not self._lock.acquire(timeout=max(timeout, 0.001)):
            return None
        try:
            while not self._closed.is_set():
                if self._buffer:
                    return self._buffer.popleft()
                try:
                    wake = self._fetch()
                    if self._buffer:
                        continue
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return None
                    wait = min(remaining, BLOCK_SECONDS)
                    if time.monotonic() < self._short_reads_until:
                        wait = min(wait, SHORT_BLOCK_SECONDS)
                    if wake >= 0:
                        wait = min(wait, max(wake / 1000, 0.001))
                    self._block(wait)
                    self._recovered()
                except redis.exceptions.ConnectionError as exc:  # TimeoutError is one too
                    self._failed(exc)
                    self._closed.wait(min(max(deadline - time.monotonic(), 0.0), 0.5))
                    if time.monotonic() >= deadline:
                        return None
            return None
        finally:
            self._lock.release()

    def delayed_soon(self, delay: float) -> None:
        """A delivery of this consumer went back to the delayed set for ``delay`` seconds
        (a retry, or a deferral such as a rate limit's): until it is due, block in short reads
        so that the executors waiting on this consumer's lock take it on time."""
        if delay > 0:
            self._short_reads_until = max(self._short_reads_until,
                                          time.monotonic() + delay + BLOCK_SECONDS)

    def _failed(self, exc: Exception) -> None:
        if not self._failing:
            self._failing = True
            log.warning("consumer of %s on %s: Redis is unreachable (%s); retrying",
                        self.queue, self.backend.url, exc)

    def _recovered(self) -> None:
        if self._failing:
            self._failing = False
            log.warning("consumer of %s on %s: Redis is back", self.queue, self.backend.url)

    def _fetch(self) -> int:
        """Move due messages, claim expired leases, read new entries, all in one script;
        return the ms until the next delayed message or lease falls due (-1: none)."""
        now = time.monotonic()
        orphans = now >= self._next_orphan_check
        if orphans:
            self._next_orphan_check = now + ORPHAN_CHECK_SECONDS
        args = [GROUP, self.name, self._prefetch, self._lease, int(orphans),
                max(self._lease, 1000), FORGET_IDLE_MS]
        try:
            out = self.backend.script("fetch")(keys=self.keys.all, args=args)
        except redis.exceptions.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            self.backend.ensure_group(self.queue, again=True)  # Redis lost its data
            out = self.backend.script("fetch")(keys=self.keys.all, args=args)
        wake, levels, entries = out
        self._levels = [p.decode() for p in levels]
        for i in range(0, len(entries), 5):
            self._buffer.append(StreamsDelivery(self, entries[i].decode(), entries[i + 1],
                                                int(entries[i + 2]), int(entries[i + 3]),
                                                entries[i + 4].decode()))
        return int(wake)

    def _block(self, seconds: float) -> None:
        """One blocking read of new entries of every priority's stream, which are then
        leased (a priority whose first message comes during the read is seen by the next)."""
        streams = {self.keys.level(p): p for p in self._levels}
        try:
            read: Any = self.backend.client.xreadgroup(
                GROUP, self.name, dict.fromkeys(streams, ">"), count=self._prefetch,
                block=max(ms(seconds), 1))
        except redis.exceptions.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            self.backend.ensure_group(self.queue, again=True)
            return
        entries = [(streams[name.decode()], *e) for name, batch in read or []
                   for e in read_entries(batch)]
        if not entries:
            return
        entries.sort(key=lambda e: -int(e[0]))  # the highest priority first, FIFO within one
        self.backend.script("lease")(keys=[self.keys.leases],
                                     args=[self._lease, *(f"{p}:{i}" for p, i, _ in entries)])
        for priority, entry_id, fields in entries:
            body = fields.get(b"b")
            if body is None:  # not ivy's: the next fetch claims it once its lease ends
                continue
            self._buffer.append(StreamsDelivery(self, entry_id, body,
                                                int(fields.get(b"n", 0)), 1, priority))

    def close(self) -> None:
        self._closed.set()
        with self._lock:  # a get() in progress returns within BLOCK_SECONDS
            while self._buffer:
                delivery = self._buffer.popleft()
                try:
                    delivery.release()
                except redis.exceptions.RedisError:
                    log.warning("consumer of %s: a prefetched message could not be given back; "
                                "it comes back when its reservation ends", self.queue)
            self.backend.acker.flush()  # what it acked leaves before it leaves the group
            with contextlib.suppress(redis.exceptions.RedisError):
                self.backend.script("forget")(keys=[self.keys.stream, self.keys.levels],
                                              args=[GROUP, self.name])
