"""The only code of ivy that goes around redis-py's public API: two speed-ups of the notifier.

* :class:`Commands`: a worker's commands (a store-and-publish or a publish per task) run on idle
  connections of our own, skipping the client's pool, retry wrapper and argument filtering,
  which cost twice the CPU of the command itself.
* :func:`read_pubsub`: a subscription reads its connection itself (``can_read`` and
  ``read_response(push_request=True)``) instead of ``PubSub.get_message``, whose retry and
  reconnect machinery costs a quarter of the subscriber's CPU per notification.

Both rely on redis-py's connection internals, so they are used only with the redis-py versions
they were tested with (:data:`TESTED_FROM` up to, not including, :data:`TESTED_BELOW`). With any
other version ivy uses the public API (``Redis.execute_command``, ``PubSub.get_message``),
and says so once in the log.
"""

from __future__ import annotations

import logging
import queue
import re
import threading
from typing import Any

import redis
import redis.exceptions

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
