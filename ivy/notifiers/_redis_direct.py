"""The Redis notifier's speed-ups, which go around redis-py's public API with the redis-py
versions they were tested with: a worker's commands on connections of its own, a result writer
that stores in batches, and a subscription's reads (docs/internals/redis.md)."""

from __future__ import annotations

import logging
import queue
import re
import threading
from collections.abc import Callable
from typing import Any

import redis
import redis.exceptions

from ivy._batch_thread import BatchThread
from ivy._redis_scripts import evalsha_many

log = logging.getLogger("ivy.redis")

#: the redis-py versions these shortcuts were tested with: TESTED_FROM <= version < TESTED_BELOW
TESTED_FROM = (5, 0)
TESTED_BELOW = (9, 0)


def _version(text: str) -> tuple[int, ...]:
    """``"8.1.0"`` -> ``(8, 1, 0)``; a suffix such as ``b1`` or ``.dev0`` is left out."""
    return tuple(int(part) for part in re.findall(r"\d+", text.split("+")[0])[:3])


#: the installed redis-py's version, read once (tests replace it to check the fallback)
REDIS_VERSION = _version(getattr(redis, "__version__", "0"))
_fallback_logged = threading.Event()


def enabled() -> bool:
    """Whether the installed redis-py is one the shortcuts were tested with; logs once if not."""
    if TESTED_FROM <= REDIS_VERSION < TESTED_BELOW:
        return True
    if not _fallback_logged.is_set():
        _fallback_logged.set()
        log.info("redis: redis-py %s is outside the versions ivy's connection shortcuts were "
                 "tested with (%s to below %s); using redis-py's public API (correct, "
                 "somewhat slower)", ".".join(map(str, REDIS_VERSION)),
                 ".".join(map(str, TESTED_FROM)), ".".join(map(str, TESTED_BELOW)))
    return False


class Commands:
    """Runs commands for a notifier: on idle connections of its own with a tested redis-py,
    else through the client. A broken connection is reconnected once; a second failure raises
    (the worker retries its record with a backoff)."""

    def __init__(self, client: redis.Redis) -> None:
        self._client = client
        #: whether commands skip the client (decided once, for the life of the notifier)
        self.direct = enabled()
        # redis-py connections (their methods are untyped)
        self.idle: queue.SimpleQueue[Any] = queue.SimpleQueue()

    def __call__(self, *args: Any) -> Any:
        if not self.direct:
            return self._client.execute_command(*args)  # type: ignore[no-untyped-call]
        try:
            conn = self.idle.get_nowait()
        except queue.Empty:
            pool = self._client.connection_pool
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
            self.idle.put(conn)
        return None  # pragma: no cover - the loop returns or raises

    def pipeline(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """Send ``commands`` at once and read their replies (one round trip); a command the
        server refused has its :class:`redis.exceptions.ResponseError` as its reply. A broken
        connection raises (nothing was read: the caller may send them all again)."""
        if not self.direct:
            pipe: Any = self._client.pipeline(transaction=False)
            for args in commands:
                pipe.execute_command(*args)
            return list(pipe.execute(raise_on_error=False))
        try:
            conn = self.idle.get_nowait()
        except queue.Empty:
            pool = self._client.connection_pool
            conn = pool.connection_class(**pool.connection_kwargs)
        replies: list[Any] = []
        try:
            conn.send_packed_command(conn.pack_commands(commands))
            for _ in commands:
                try:
                    replies.append(conn.read_response())
                except redis.exceptions.ResponseError as exc:
                    replies.append(exc)
        except BaseException:
            conn.disconnect()
            raise
        finally:
            self.idle.put(conn)
        return replies

    def close(self) -> None:
        while True:
            try:
                self.idle.get_nowait().disconnect()
            except queue.Empty:
                break


def read_pubsub(pubsub: Any, wait: float, *, direct: bool) -> tuple[str, Any] | None:
    """The next reply on a subscription, as (kind, data): ``("message", body)``,
    ``("subscribe", channel)`` (a first subscription or a resubscription after a reconnect),
    or ``("", None)`` for anything else; None after ``wait`` seconds.
    With ``direct`` (a tested redis-py, see :func:`enabled`) the connection is read itself and
    reconnecting is the caller's to do: the app opens a new subscription, whose confirmation
    starts a catch-up."""
    if not direct:
        message = pubsub.get_message(timeout=wait)
        if message is None:
            return None
        return str(message.get("type", "")), message.get("data")
    conn = pubsub.connection
    if conn is None:
        raise redis.exceptions.ConnectionError("the subscription has no connection")
    pubsub.check_health()  # a PING now and then, so that a dead peer is found
    if not conn.can_read(timeout=wait):
        return None
    reply = conn.read_response(push_request=True)  # RESP3 sends messages as pushes
    # anything else is a command's reply (the health check's PING): passed over
    if not isinstance(reply, list) or len(reply) < 3:
        return "", None
    kind = reply[0]
    return (kind.decode() if isinstance(kind, bytes) else str(kind)), reply[2]


#: most results stored in one round trip
MAX_BATCH = 500
#: longest pause between two tries of a batch that cannot reach Redis
RETRY_MAX = 5.0
#: a writer thread with nothing to write ends after this many seconds (the next result starts one)
IDLE = 5.0

Stored = tuple[tuple[Any, ...], Callable[[], None]]


class ResultWriter(BatchThread[Stored]):
    """Stores a worker's results (each a store-and-publish script call) on a thread of its own:
    what workers hand it while it writes goes in the next write, pipelined (one round trip), and
    each one's ``then`` (the worker's ack) is called after it, in order. A result handed over
    while nothing is being written is written at once by the caller's thread, with no thread
    hop: batching adds no wait.

    A batch that cannot reach Redis (restarting, a connection killed) is tried again, 0.1 s
    doubling to 5 s apart, holding its ``then`` back: a message is acknowledged only once its
    result is stored. A result the server refuses is logged and left out (its message comes
    back when its lease ends). :meth:`close` writes what waits first, within its timeout."""

    def __init__(self, commands: Commands, script: str, sha: str, *, name: str) -> None:
        super().__init__(name=name, max_batch=MAX_BATCH, idle=IDLE)
        self._commands = commands
        self._script = script
        self._sha = sha

    def _load(self) -> None:
        self._commands("SCRIPT", "LOAD", self._script)

    def submit(self, args: tuple[Any, ...], then: Callable[[], None]) -> None:
        """Store with the script's arguments ``args`` soon; ``then()`` once stored."""
        item = (args, then)
        if not self._claim_or_enqueue([item]):
            return
        try:  # idle: written here, at once
            try:
                stored = self._write([item], retry=False)
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError):
                self._hand_over([item])  # the thread waits Redis out, not the caller
                return
            self._then(stored)
        finally:
            self._release()

    def _refusal(self) -> Exception:
        return redis.exceptions.ConnectionError(f"{self._name}: the notifier is closed")

    def _then(self, stored: list[Stored]) -> None:
        for _, then in stored:
            try:
                then()
            except Exception:
                log.exception("%s: what followed a stored result raised", self._name)

    def _write_batch(self, batch: list[Stored]) -> None:
        self._then(self._write(batch))

    def _write(self, batch: list[Stored], *, retry: bool = True) -> list[Stored]:
        """Store ``batch``; what was stored (a duplicate counts: the first result is kept).
        Without ``retry``, a failure to reach Redis raises instead of waiting it out."""
        pause = 0.1
        while True:
            try:
                replies = evalsha_many(self._commands.pipeline, self._load, self._sha,
                                       [args for args, _ in batch])
                break
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError,
                    OSError) as exc:
                if not retry:
                    raise
                if self.closed:
                    log.error("%s: %d result(s) not stored at close (%s); their messages "
                              "come back when their leases end", self._name, len(batch), exc)
                    return []
                log.warning("%s: storing %d result(s) failed (%s); trying again in %.1f s",
                            self._name, len(batch), exc, pause)
                self._wait_closed(pause)
                pause = min(pause * 2, RETRY_MAX)
        stored = []
        for item, reply in zip(batch, replies, strict=True):
            if isinstance(reply, Exception):
                log.error("%s: the server refused a result (%s); its message comes back when "
                          "its lease ends", self._name, reply)
            else:
                stored.append(item)
        return stored

    def _closed_late(self, timeout: float) -> None:
        log.warning("%s: results still unwritten after %g s at close; their messages come "
                    "back when their leases end", self._name, timeout)
