"""``redis://`` / ``rediss://`` as a QUEUE URL: ivy's queues on Redis Streams
(``pip install 'ivy-queue[redis]'``). The same URL as a notifier URL is the Redis notifier
(:mod:`ivy.notifiers.redis`); the two are independent and may share one server.

* Queue name Q is the stream ``ivy:{Q}`` (and one per priority above 0) with one consumer
  group, ``ivy``; each consumer (one per worker and queue) reads as its own group member. Keys
  are listed in :mod:`ivy.queues._streams_lua`; every read-then-write is one Lua script, so
  there is no lock.
* Ack = ``XACK`` then ``XDEL`` in one script: the stream holds only messages waiting or
  reserved, never a growing log of finished ones (taskiq-redis #114), and nothing is trimmed
  with ``MAXLEN``, which would drop messages not yet run.
* Reservations: each delivered entry has a lease end in ``ivy:{Q}:leases`` (server time). A
  consumer that polls claims, with ``XCLAIM``, the entries whose lease ended: the holder died,
  hung, or sat on it. ``extend()`` pushes the lease out and resets the entry's idle time
  (``XCLAIM ... JUSTID``, which keeps the delivery counter), so a long task that runs keeps
  its message (taskiq-redis #101). A lease lives per entry because the reservation time is the
  holder's (a task's ``reserve_time``), which ``XAUTOCLAIM``'s one ``min-idle-time`` per call
  cannot express. Entries pending without a lease (a consumer killed between its blocking read
  and the lease) are found with ``XPENDING ... IDLE`` once a second and claimed the same way.
  Ack, retry and dead letter check in the script that the entry is still this delivery's (same
  consumer, same delivery counter), so a late ack from a holder whose lease ran out does not
  delete a message another worker runs now.
* Poison messages: a message whose lease ran out ``max_deliveries`` times (default 10; URL
  option ``?max_deliveries=N``: it kills or hangs every worker that takes it) is handed out
  once more marked :attr:`~ivy.queues.base.Delivery.exhausted`, and the worker dead-letters it
  with the reason (and tells its producer) instead of running it.
* Attempts: ``delivery_count`` = the deliveries of earlier entries of the message (field ``n``:
  a retry or a delayed message is a new entry) + the entry's own delivery counter in the
  pending entries list. A defer and a release (a call whose ``eta`` is later, an unstarted
  prefetched message given back) do not count.
* Delayed messages and retries wait in the sorted set ``ivy:{Q}:delayed``; whichever consumer
  polls moves those that are due into the stream, in the same script as its read, so no
  separate mover process exists or can die. A released message goes to the end of the stream.
* Dead letters: the stream ``ivy:{Q}.dead`` (body, reason, time, deliveries); a dead letter's id
  is its entry id. Requeueing (by id or all) and purging are single scripts: atomic.
* Priorities (0-255): one stream per priority in use (``ivy:{Q}`` for 0, ``ivy:{Q}:p<P>``
  above), each with the group; a consumer reads them highest first, FIFO within one, and a
  message keeps its priority through a retry, a delay and a dead letter (requeueing restores
  it unless ``rewrite`` gives another). A consumer that waits in a blocking read learns of a
  priority used for the first time meanwhile on its next poll (within ``BLOCK_SECONDS``).
* Blocking reads (``XREADGROUP ... BLOCK``) wait at most ``BLOCK_SECONDS`` at a time, on a
  connection of their own from the pool, so other threads' commands never wait behind them and
  ``close()`` is seen within that time. Connection errors are retried by redis-py with backoff
  (a Redis restart); a consumer that still cannot reach Redis logs once and keeps polling.
  Data survives a restart only with persistence (``appendonly yes``) on the server.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Collection
from concurrent.futures import Future
from typing import Any, Self

import redis
import redis.exceptions
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from ivy._urls import driver_url, mask_url
from ivy.errors import ConfigurationError, PublishError
from ivy.queues import _streams_lua as lua
from ivy.queues._batching import BatchSender, Outgoing
from ivy.queues.base import (
    DEFAULT_DEAD_LETTER_TTL,
    DEFAULT_MAX_DELIVERIES,
    Consumer,
    DeadLetter,
    Delivery,
    QueueBackend,
    Rewrite,
    dead_letter_ttl_option,
    delivery_limit_reason,
    max_deliveries_option,
)

log = logging.getLogger("ivy.redis_streams")

OPTIONS = ("max_deliveries", "dead_letter_ttl")
GROUP = "ivy"
#: the highest priority (the wire protocol's)
MAX_PRIORITY = 255
#: the longest one blocking read waits
BLOCK_SECONDS = 0.5
#: the longest one waits while a message this consumer delayed is about to fall due
SHORT_BLOCK_SECONDS = 0.05
#: how often a consumer looks for pending entries that have no lease
ORPHAN_CHECK_SECONDS = 1.0
#: consumers holding nothing and idle this long are removed from the group (SIGKILLed workers)
FORGET_IDLE_MS = 3_600_000
_ENTRY_ID = re.compile(r"^\d+-\d+$")


class Keys:
    """The Redis keys of one queue name."""

    def __init__(self, queue: str) -> None:
        self.stream = f"ivy:{{{queue}}}"
        self.leases = f"{self.stream}:leases"
        self.delayed = f"{self.stream}:delayed"
        self.dead = f"{self.stream}.dead"
        self.levels = f"{self.stream}:levels"

    def level(self, priority: str | int) -> str:
        """The stream of ``priority``."""
        return self.stream if str(priority) == "0" else f"{self.stream}:p{priority}"

    @property
    def all(self) -> list[str]:
        return [self.stream, self.leases, self.delayed, self.dead, self.levels]


Entry = tuple[str, dict[bytes, bytes]]


def _entries(raw: Any) -> list[Entry]:
    """Stream entries as redis-py returns them (ids as bytes) -> (id, fields)."""
    return [(entry_id.decode(), fields) for entry_id, fields in raw or []]


def _tag() -> str:
    return uuid.uuid4().hex[:16]


def _ms(seconds: float) -> int:
    return max(int(seconds * 1000), 0)


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
        args: list[Any] = [GROUP, c.name, self._id, self._pel, action, arg, deliveries, _tag(),
                           self.priority]
        if last is not None:
            args.append(last)
        keys = [c.keys.level(self.priority), c.keys.leases, c.keys.delayed, c.keys.dead]
        if not c.backend.script("settle")(keys=keys, args=args):
            log.warning("%s of a message of %s (entry %s) skipped: its reservation ran out and "
                        "another delivery of it is under way", action, self.queue, self._id)

    def _ack(self) -> None:
        self._settle("ack", "", 0)

    def _retry(self, delay: float, body: bytes | None) -> None:
        self._settle("retry", _ms(delay), self.delivery_count, body)
        self._consumer.delayed_soon(delay)

    def _defer(self, delay: float) -> None:
        self._settle("retry", _ms(delay), self.delivery_count - 1)
        self._consumer.delayed_soon(delay)

    def _release(self) -> None:
        self._defer(0.0)

    def _dead_letter(self, reason: str) -> None:
        ttl = self._consumer.backend.dead_letter_ttl
        self._settle("dead", reason, self.delivery_count,
                     b"" if ttl is None else str(_ms(ttl)).encode())

    def _extend(self, seconds: float) -> None:
        c = self._consumer
        if not c.backend.script("extend")(keys=[c.keys.level(self.priority), c.keys.leases],
                                          args=[GROUP, c.name, self._id, self._pel,
                                                _ms(seconds), self.priority]):
            log.warning("the reservation of a message of %s (entry %s) ran out before it was "
                        "extended; another worker may run it too", self.queue, self._id)


class StreamsConsumer(Consumer):
    def __init__(self, backend: RedisStreamsQueueBackend, queue: str, prefetch: int,
                 reserve_time: float) -> None:
        self.backend = backend
        self.queue = queue
        self.keys = Keys(queue)
        self.name = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._prefetch = max(1, prefetch)
        self._lease = _ms(reserve_time)
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
                block=max(_ms(seconds), 1))
        except redis.exceptions.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            self.backend.ensure_group(self.queue, again=True)
            return
        entries = [(streams[name.decode()], *e) for name, batch in read or []
                   for e in _entries(batch)]
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
            with contextlib.suppress(redis.exceptions.RedisError):
                self.backend.script("forget")(keys=[self.keys.stream, self.keys.levels],
                                              args=[GROUP, self.name])


class RedisStreamsQueueBackend(QueueBackend):

    def __init__(self, url: str = "redis://127.0.0.1:6379/0", *,
                 max_deliveries: int = DEFAULT_MAX_DELIVERIES,
                 dead_letter_ttl: float | str | None = DEFAULT_DEAD_LETTER_TTL) -> None:
        self.url = mask_url(url)
        #: an entry delivered past it (its pending entries list count) comes marked
        #: ``exhausted``; the worker's check counts across entries too (a defer or a retry
        #: is a new entry; ``delivery_count`` carries on)
        self.max_deliveries: int = max_deliveries_option(
            max_deliveries, f"the Redis Streams queue {self.url}")
        self.dead_letter_ttl = dead_letter_ttl_option(
            dead_letter_ttl, f"the Redis Streams queue {self.url}")
        self.client: redis.Redis = redis.Redis.from_url(
            driver_url(url, OPTIONS), socket_timeout=BLOCK_SECONDS + 10, socket_connect_timeout=5,
            health_check_interval=30,
            retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), 8),
            retry_on_error=[redis.exceptions.ConnectionError, redis.exceptions.TimeoutError])
        self._scripts = {name: self.client.register_script(getattr(lua, name.upper()))
                         for name in ("fetch", "lease", "settle", "extend", "publish_level",
                                      "publish_delayed", "requeue", "purge", "forget", "size")}
        self._groups: set[str] = set()
        self._known: set[str] = set()
        self._lock = threading.Lock()
        self._sender = BatchSender(self._write, max_batch=1000, name="ivy-redis-streams-send")

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Self:
        url = str(config.get("url") or "redis://127.0.0.1:6379/0")
        return cls(url, max_deliveries=config.get("max_deliveries", DEFAULT_MAX_DELIVERIES),
                   dead_letter_ttl=config.get("dead_letter_ttl", DEFAULT_DEAD_LETTER_TTL))

    def script(self, name: str) -> Any:
        """A registered Lua script (redis-py loads it again after a restart: NOSCRIPT)."""
        return self._scripts[name]

    def ensure_group(self, queue: str, *, again: bool = False) -> None:
        """Create the stream and its consumer group if missing (reading from the start, so
        messages published before the first worker are delivered)."""
        if queue in self._groups and not again:
            return
        keys = Keys(queue)
        streams = [keys.stream]
        if again:  # after a loss of data: every priority's stream
            members: Any = self.client.smembers(keys.levels)
            streams += [keys.level(p.decode()) for p in members]
        for stream in streams:
            try:
                self.client.xgroup_create(stream, GROUP, id="0", mkstream=True)
            except redis.exceptions.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
        self._remember(queue)
        self._groups.add(queue)

    def _remember(self, queue: str) -> None:
        if queue not in self._known:
            self.client.sadd("ivy:queues", queue)
            self._known.add(queue)

    # -- publishing ----------------------------------------------------------------------------

    def _check(self, queue: str, priority: int) -> None:
        if not 0 <= priority <= MAX_PRIORITY:
            raise ConfigurationError(
                f"priority {priority!r} for a message of queue {queue!r} on the Redis Streams "
                f"queue ({self.url}): priorities are whole numbers from 0 to {MAX_PRIORITY}")

    def publish(self, queue: str, body: bytes, *, priority: int = 0, delay: float = 0.0,
                route: str | None = None) -> None:
        self.publish_many(queue, [body], priority=priority, delay=delay)

    def publish_many(self, queue: str, bodies: list[bytes], *, priority: int = 0,
                     delay: float = 0.0, route: str | None = None) -> None:
        self._check(queue, priority)
        self._remember(queue)
        pipe = self.client.pipeline(transaction=False)
        self._publish(pipe, queue, bodies, priority, delay)
        pipe.execute()

    def _publish(self, pipe: Any, queue: str, bodies: list[bytes], priority: int,
                 delay: float) -> None:
        """Add the commands that publish ``bodies`` to ``pipe``: one for a single body."""
        keys = Keys(queue)
        if delay > 0:
            args: list[Any] = [_ms(delay), priority]
            for body in bodies:
                args += [_tag(), body]
            self.script("publish_delayed")(keys=[keys.delayed], args=args, client=pipe)
        elif priority:
            self.script("publish_level")(keys=[keys.stream, keys.levels],
                                         args=[GROUP, priority, *bodies], client=pipe)
        else:
            for body in bodies:
                pipe.xadd(keys.stream, {"b": body})

    def send_many(self, queue: str, bodies: list[bytes], *, priority: int = 0,
                  delay: float = 0.0, route: str | None = None) -> list[Future[None]]:
        """Asynchronous sends: a background thread writes what producers hand it meanwhile in
        one pipeline; each future completes once Redis has the message."""
        self._check(queue, priority)
        return self._sender.send(queue, bodies, priority=priority, delay=delay, route=route)

    def _write(self, batch: list[Outgoing]) -> list[BaseException | None]:
        """One pipeline for the batch; a failure becomes :class:`ivy.PublishError` naming
        the queue and the server."""
        try:
            pipe = self.client.pipeline(transaction=False)
            for item in batch:
                self._remember(item.queue)
                self._publish(pipe, item.queue, [item.body], item.priority, item.delay)
            results = pipe.execute(raise_on_error=False)
        except redis.exceptions.RedisError as exc:
            results = [exc] * len(batch)
        return [PublishError(f"the Redis Streams queue {self.url} did not take a message for "
                             f"queue {item.queue!r}: {type(result).__name__}: {result}")
                if isinstance(result, BaseException) else None
                for item, result in zip(batch, results, strict=True)]

    # -- consuming and managing ----------------------------------------------------------------

    def consume(self, queue: str, *, prefetch: int = 1, reserve_time: float = 30.0) -> Consumer:
        return StreamsConsumer(self, queue, prefetch, reserve_time)

    def size(self, queue: str) -> int:
        keys = Keys(queue)
        return int(self.script("size")(keys=[keys.stream, keys.levels, keys.delayed]))

    def dead_letters(self, queue: str, limit: int = 100) -> list[DeadLetter]:
        entries = _entries(self.client.xrevrange(Keys(queue).dead, count=limit))
        return self.live_dead_letters([
            DeadLetter(queue, fields.get(b"b", b""), fields.get(b"r", b"").decode(),
                       int(fields.get(b"t", 0)) / 1000, entry_id)
            for entry_id, fields in reversed(entries)])

    def requeue_dead(self, queue: str, ids: Collection[str] | None = None, *,
                     rewrite: Rewrite | None = None) -> int:
        """Atomic per call: one script deletes each chosen dead letter that is still there
        and adds its (rewritten) body to the stream of its priority: the one ``rewrite`` gives,
        else the one it had."""
        keys = Keys(queue)
        if ids is None:
            entries = _entries(self.client.xrange(keys.dead))
        else:
            pipe = self.client.pipeline(transaction=False)
            wanted = sorted({i for i in ids if _ENTRY_ID.match(i)},
                            key=lambda i: tuple(map(int, i.split("-"))))
            for entry_id in wanted:
                pipe.xrange(keys.dead, entry_id, entry_id)
            entries = [e for found in pipe.execute() for e in _entries(found)]
        args: list[Any] = [GROUP]
        for entry_id, fields in entries:
            body, priority = fields.get(b"b", b""), int(fields.get(b"p", 0))
            if rewrite is not None:
                body, new = rewrite(body)
                priority = priority if new is None else new
            self._check(queue, priority)
            args += [entry_id, body, priority]
        if len(args) == 1:
            return 0
        self._remember(queue)
        return int(self.script("requeue")(keys=[keys.dead, keys.stream, keys.levels],
                                          args=args))

    def purge_dead(self, queue: str) -> int:
        return int(self.script("purge")(keys=[Keys(queue).dead]))

    def queues(self) -> list[str]:
        members: Any = self.client.smembers("ivy:queues")
        return sorted(q.decode() for q in members)

    def delete_queues(self, queues: Collection[str]) -> None:
        """Delete the named queues with their delayed messages and dead letters (tests)."""
        for queue in queues:
            keys = Keys(queue)
            members: Any = self.client.smembers(keys.levels)
            self.client.delete(*keys.all, *(keys.level(p.decode()) for p in members))
            self.client.srem("ivy:queues", queue)
            self._groups.discard(queue)
            self._known.discard(queue)

    def close(self) -> None:
        self._sender.close()
        self.client.close()
