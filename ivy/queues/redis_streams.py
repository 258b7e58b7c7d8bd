"""``redis://`` / ``rediss://`` as a QUEUE URL: ivy's queues on Redis Streams
(``pip install 'ivy-queue[redis]'``); how it keeps its guarantees: docs/internals/redis.md.
The same URL as a notifier URL is the Redis notifier (:mod:`ivy.notifiers.redis`)."""

from __future__ import annotations

import threading
from collections.abc import Collection
from concurrent.futures import Future
from typing import Any, Self

import redis
import redis.exceptions
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from ivy._urls import driver_url, mask_url
from ivy.errors import ConfigurationError, PublishError
from ivy.queues._batching import BatchSender, Outgoing
from ivy.queues._streams_ack import Acker
from ivy.queues._streams_consume import StreamsConsumer, StreamsDelivery
from ivy.queues._streams_keys import (
    BLOCK_SECONDS,
    ENTRY_ID,
    GROUP,
    MAX_PRIORITY,
    Keys,
    ms,
    read_entries,
    tag,
)
from ivy.queues._streams_lua import HELPERS, source
from ivy.queues.base import (
    DEFAULT_DEAD_LETTER_TTL,
    DEFAULT_MAX_DELIVERIES,
    Consumer,
    DeadLetter,
    QueueBackend,
    Rewrite,
    dead_letter_ttl_option,
    max_deliveries_option,
)

__all__ = ["GROUP", "MAX_PRIORITY", "Keys", "RedisStreamsQueueBackend", "StreamsConsumer",
           "StreamsDelivery"]

OPTIONS = ("max_deliveries", "dead_letter_ttl")


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
        self._scripts = {name: self.client.register_script(source(name)) for name in HELPERS}
        #: writes the deliveries' acks in batches, on a thread of its own
        self.acker = Acker(self.client, self._scripts["ack"], self.url)
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
            args: list[Any] = [ms(delay), priority]
            for body in bodies:
                args += [tag(), body]
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
        self.acker.flush()  # what this process acked is not counted
        keys = Keys(queue)
        return int(self.script("size")(keys=[keys.stream, keys.levels, keys.delayed]))

    def dead_letters(self, queue: str, limit: int = 100) -> list[DeadLetter]:
        entries = read_entries(self.client.xrevrange(Keys(queue).dead, count=limit))
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
            entries = read_entries(self.client.xrange(keys.dead))
        else:
            pipe = self.client.pipeline(transaction=False)
            wanted = sorted({i for i in ids if ENTRY_ID.match(i)},
                            key=lambda i: tuple(map(int, i.split("-"))))
            for entry_id in wanted:
                pipe.xrange(keys.dead, entry_id, entry_id)
            entries = [e for found in pipe.execute() for e in read_entries(found)]
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
        self.acker.flush()
        for queue in queues:
            keys = Keys(queue)
            members: Any = self.client.smembers(keys.levels)
            self.client.delete(*keys.all, *(keys.level(p.decode()) for p in members))
            self.client.srem("ivy:queues", queue)
            self._groups.discard(queue)
            self._known.discard(queue)

    def close(self) -> None:
        self._sender.close()
        self.acker.close()
        self.client.close()
