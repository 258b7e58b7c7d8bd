"""The acks of a Redis Streams queue, written in batches on a thread of their own: an ack
returns at once, and a worker's executors never wait a round trip for it."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import redis
import redis.exceptions

from ivy._batch_thread import BatchThread
from ivy._redis_scripts import evalsha_many
from ivy.queues._streams_keys import GROUP, Keys

log = logging.getLogger("ivy.redis_streams")

#: most acks written in one round trip
MAX_BATCH = 1000
#: how long a write that fails for want of Redis is tried again before its acks are given up
#: (their messages then come back when their leases end, and may run again)
RETRY_FOR = 30.0
#: a thread with nothing to write ends after this many seconds (the next ack starts one)
IDLE = 5.0


@dataclass(slots=True)
class Ack:
    """One delivery to acknowledge: its queue, its consumer, the entry and its counter."""

    queue: str
    consumer: str
    entry_id: str
    pel: int
    priority: str


class Acker(BatchThread[Ack]):
    """Writes the acks handed to :meth:`submit`: what comes while a write is in progress
    goes in the next one, one script call per queue and consumer, all in one pipeline. While
    the thread is idle an ack is written at once, alone: batching adds no wait."""

    def __init__(self, client: redis.Redis, script: Any, url: str) -> None:
        super().__init__(name="ivy-redis-streams-ack", max_batch=MAX_BATCH, idle=IDLE)
        self._client = client
        self._script = script  # redis-py's Script of ack.lua: its sha and its text
        self._url = url

    def submit(self, ack: Ack) -> None:
        self._enqueue([ack])

    def _refusal(self) -> Exception:
        return redis.exceptions.ConnectionError(
            f"the Redis Streams queue {self._url} is closed: ack not sent")

    def _write_batch(self, batch: list[Ack]) -> None:
        try:
            self._write(batch)
        except Exception:  # never let the thread die with acks waiting
            log.exception("writing %d ack(s) to %s failed; their messages come back when "
                          "their leases end", len(batch), self._url)

    def _write(self, batch: list[Ack]) -> None:
        """One pipeline for ``batch``; tried again while Redis cannot be reached, up to
        :data:`RETRY_FOR` s (or until the queue closes)."""
        groups: dict[tuple[str, str], list[Ack]] = {}
        for ack in batch:
            groups.setdefault((ack.queue, ack.consumer), []).append(ack)
        calls = []
        for (queue, consumer), acks in groups.items():
            keys = Keys(queue)
            args: list[Any] = [GROUP, consumer]
            for ack in acks:
                args += [ack.entry_id, ack.pel, ack.priority]
            calls.append((queue, [2, keys.stream, keys.leases, *args]))
        # redis-py's TimeoutError is a ConnectionError too
        self._try_for(lambda: self._send(calls), redis.exceptions.ConnectionError, RETRY_FOR,
                      f"{len(batch)} ack(s)", self._url, log)

    def _pipeline(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        pipe: Any = self._client.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command)
        return list(pipe.execute(raise_on_error=False))

    def _send(self, calls: list[tuple[str, list[Any]]]) -> None:
        results = evalsha_many(self._pipeline,
                               lambda: self._client.script_load(self._script.script),
                               self._script.sha, [args for _, args in calls])
        for (queue, _), result in zip(calls, results, strict=True):
            if isinstance(result, redis.exceptions.ConnectionError):
                raise result
            if isinstance(result, Exception):
                log.error("acks of messages of %s on %s failed (%s); their messages come "
                          "back when their leases end", queue, self._url, result)
            elif result:
                log.warning("ack of %d message(s) of %s skipped (entries %s): their "
                            "reservation ran out and another delivery of them is under way",
                            len(result), queue, ", ".join(i.decode() for i in result))

    def _closed_late(self, timeout: float) -> None:
        log.warning("acks to %s still unwritten after %g s at close; their messages come "
                    "back when their leases end", self._url, timeout)
