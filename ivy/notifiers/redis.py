"""``redis://`` / ``rediss://``: the Redis notifier (``pip install 'ivy-queue[redis]'``).

Redis pub/sub alone loses what a disconnected producer misses, so a final notification is also
stored under ``ivy:result:<call id>`` with a TTL (``?result_ttl=`` seconds, default one day):
one Lua script sets the key only if it is absent and, if it was, publishes the notification, so
the first result wins and a duplicate is never sent. ``running`` statuses are published only.

A subscription reads the stored notifications of every pending call each time Redis confirms
its (re)subscription, so a Redis restart or a dropped connection delays a result but never loses
it (given that Redis keeps its data across the restart: use AOF persistence in production).

The worker's commands and the subscription's reads skip parts of redis-py for speed; that code
is in :mod:`ivy.notifiers._redis_direct`, used only with the redis-py versions it was tested
with (the public API otherwise).
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Collection
from typing import Any, Self

import redis
import redis.exceptions

from ivy.config import driver_url, mask_url
from ivy.notifiers._redis_direct import Commands, read_pubsub
from ivy.notifiers.base import Notifier, Subscription

log = logging.getLogger("ivy.redis")

KEY_PREFIX = "ivy:result:"
OPTIONS = ("result_ttl",)
# KEYS[1] result key; ARGV[1] body, ARGV[2] ttl seconds, ARGV[3] channel
STORE_AND_PUBLISH = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2]) then
    redis.call('PUBLISH', ARGV[3], ARGV[1])
    return 1
end
return 0
"""


class RedisSubscription(Subscription):
    def __init__(self, notifier: RedisNotifier, channel: str,
                 pending: Callable[[], Collection[str]]) -> None:
        self._notifier = notifier
        self._pending = pending
        self._closed = threading.Event()
        self._pubsub = notifier.client.pubsub()  # type: ignore[no-untyped-call]
        self._direct = notifier._commands.direct
        self._pubsub.subscribe(channel)

    def get(self, timeout: float) -> list[bytes]:
        """Wait up to ``timeout`` seconds; return a notification as soon as one arrives (a
        round trip's result should not wait for another look at the socket), or the stored
        ones of pending calls after a (re)subscription."""
        deadline = time.monotonic() + timeout
        wait = timeout
        while not self._closed.is_set():
            try:
                reply = read_pubsub(self._pubsub, wait, direct=self._direct)
            except (redis.exceptions.ConnectionError, ValueError, AttributeError, OSError):
                if self._closed.is_set():
                    return []
                raise
            if reply is None:
                return []
            kind, data = reply
            if kind == "message":
                return [data]
            if kind == "subscribe":  # first subscription or a reconnect: catch up
                found = self._notifier.stored_many(list(self._pending()))
                if found:
                    return found
            wait = deadline - time.monotonic()
            if wait <= 0:
                return []
        return []

    def close(self) -> None:
        self._closed.set()
        try:
            self._pubsub.close()
        except Exception:
            log.debug("closing a Redis subscription raised", exc_info=True)


class RedisNotifier(Notifier):
    def __init__(self, url: str = "redis://127.0.0.1:6379/0", *,
                 result_ttl: int = 86400) -> None:
        clean = driver_url(url, OPTIONS)
        self.url = mask_url(url)
        self.result_ttl = int(result_ttl)
        self.client: redis.Redis = redis.Redis.from_url(
            clean, socket_timeout=10, socket_connect_timeout=5, health_check_interval=10)
        # the name Redis gives the script (EVALSHA), not a security use of SHA-1
        self._sha = hashlib.sha1(STORE_AND_PUBLISH.encode(), usedforsecurity=False).hexdigest()
        # a worker sends a command or two per task: on connections of its own (_redis_direct)
        self._commands = Commands(self.client)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Self:
        url = str(config.get("url") or "redis://127.0.0.1:6379/0")
        return cls(url, result_ttl=int(config.get("result_ttl", 86400)))

    def publish(self, channel: str, call_id: str, body: bytes, *, final: bool) -> None:
        if final:
            store = ("EVALSHA", self._sha, 1, KEY_PREFIX + call_id, body, self.result_ttl,
                     channel)
            try:
                self._commands(*store)
            except redis.exceptions.NoScriptError:  # a new or flushed server
                self.client.script_load(STORE_AND_PUBLISH)
                self._commands(*store)
        else:
            self._commands("PUBLISH", channel, body)

    def subscribe(self, channel: str, pending: Callable[[], Collection[str]]) -> Subscription:
        return RedisSubscription(self, channel, pending)

    def stored(self, call_id: str) -> bytes | None:
        value = self.client.get(KEY_PREFIX + call_id)
        return value if isinstance(value, bytes) else None

    def stored_many(self, call_ids: list[str]) -> list[bytes]:
        found: list[bytes] = []
        for start in range(0, len(call_ids), 500):
            chunk = call_ids[start:start + 500]
            values = self.client.mget([KEY_PREFIX + i for i in chunk])
            found.extend(v for v in values if isinstance(v, bytes))
        return found

    def close(self) -> None:
        self._commands.close()
        self.client.close()
