"""``redis://`` / ``rediss://``: the Redis notifier (``pip install 'ivy-queue[redis]'``).

Redis pub/sub alone loses what a disconnected producer misses, so a final notification is also
stored under ``ivy:result:<call id>`` with a TTL (``?result_ttl=`` seconds, default one day):
one Lua script sets the key only if it is absent and, if it was, publishes the notification, so
the first result wins and a duplicate is never sent. ``running`` statuses are published only.

A subscription reads the stored notifications of every pending call each time Redis confirms
its (re)subscription, so a Redis restart or a dropped connection delays a result but never loses
it (given that Redis keeps its data across the restart: use AOF persistence in production).
"""

from __future__ import annotations

import hashlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Collection
from typing import Any, Self

import redis
import redis.exceptions

from ivy.config import driver_url, mask_url
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
        self._pubsub.subscribe(channel)

    def get(self, timeout: float) -> list[bytes]:
        """Wait up to ``timeout`` seconds; return a notification as soon as one arrives (a
        round trip's result should not wait for another look at the socket), or the stored
        ones of pending calls after a (re)subscription."""
        deadline = time.monotonic() + timeout
        wait = timeout
        while not self._closed.is_set():
            try:
                reply = self._read(wait)
            except (redis.exceptions.ConnectionError, ValueError, AttributeError, OSError):
                if self._closed.is_set():
                    return []
                raise
            if reply is None:
                return []
            kind = reply[0] if reply else None
            if kind == b"message":
                return [reply[2]]
            if kind == b"subscribe":  # first subscription or a reconnect: catch up
                found = self._notifier.stored_many(list(self._pending()))
                if found:
                    return found
            wait = deadline - time.monotonic()
            if wait <= 0:
                return []
        return []

    def _read(self, wait: float) -> list[Any] | None:
        """The next pub/sub reply on the subscription's connection ([] for another kind of
        reply), or None after ``wait`` seconds.
        It is read from the connection itself: redis-py's get_message wraps each read in
        retry and reconnect machinery (a quarter of the subscriber's CPU per notification,
        20-40 us of a round trip here), and reconnecting is ours to do anyway: the app opens a
        new subscription, whose confirmation starts a catch-up."""
        pubsub = self._pubsub
        conn = pubsub.connection
        if conn is None:
            raise redis.exceptions.ConnectionError("the subscription has no connection")
        pubsub.check_health()  # a PING now and then, so that a dead peer is found
        if not conn.can_read(timeout=wait):
            return None
        reply = conn.read_response(push_request=True)  # RESP3 sends messages as pushes
        # anything else is a command's reply (the health check's PING): passed over
        return reply if isinstance(reply, list) else []

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
        # redis-py connections (their methods are untyped)
        self._idle: queue.SimpleQueue[Any] = queue.SimpleQueue()

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Self:
        url = str(config.get("url") or "redis://127.0.0.1:6379/0")
        return cls(url, result_ttl=int(config.get("result_ttl", 86400)))

    def publish(self, channel: str, call_id: str, body: bytes, *, final: bool) -> None:
        if final:
            store = ("EVALSHA", self._sha, 1, KEY_PREFIX + call_id, body, self.result_ttl,
                     channel)
            try:
                self._command(*store)
            except redis.exceptions.NoScriptError:  # a new or flushed server
                self.client.script_load(STORE_AND_PUBLISH)
                self._command(*store)
        else:
            self._command("PUBLISH", channel, body)

    def _command(self, *args: Any) -> Any:
        """One command on a connection of our own. A worker sends a command or two per task,
        and redis-py's client path (pool, retry wrapper, argument filtering) costs twice the
        CPU of the command itself, so the worker's commands skip it: an idle connection is
        taken, used and put back. A broken connection is reconnected once; a second failure
        raises (the worker retries its record with a backoff)."""
        try:
            conn = self._idle.get_nowait()
        except queue.Empty:
            pool = self.client.connection_pool
            conn = pool.connection_class(**pool.connection_kwargs)
        clean = False  # the connection is idle again: no reply left half-read
        try:
            for attempt in (0, 1):
                try:
                    conn.send_command(*args)
                    reply = conn.read_response()
                except redis.exceptions.ResponseError:
                    clean = True
                    raise
                except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError,
                        OSError):
                    conn.disconnect()
                    if attempt:
                        raise
                    continue
                clean = True
                return reply
        finally:
            if not clean:
                conn.disconnect()
            self._idle.put(conn)
        return None  # pragma: no cover - the loop returns or raises

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
        while True:
            try:
                self._idle.get_nowait().disconnect()
            except queue.Empty:
                break
        self.client.close()
