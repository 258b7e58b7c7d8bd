"""Unique sends: while a call with the same key is pending, or within ``unique_for`` seconds of
its send, another send of that key sends nothing and returns the first call (the design:
docs/internals/producer.md)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from ivy.call import Call
from ivy.message import new_id, now_ms
from ivy.notifiers.base import Notifier
from ivy.producer.roles import Sender
from ivy.stores import KeyStore
from ivy.timing.keys import UNIQUE_PREFIX, holder

log = logging.getLogger("ivy.unique")

#: Seconds between a follower's looks for the stored results of the calls it follows.
FOLLOW_INTERVAL = 0.2
#: Seconds a key is claimed for until its message is confirmed (at least; see claim_ttls).
SEND_CLAIM_TTL = 300.0

def task_key(name: str, args: Any, kwargs: Mapping[str, Any]) -> str:
    """The unique key of a call of task ``name`` with these arguments."""
    text = json.dumps([args, kwargs], sort_keys=True, separators=(",", ":"), default=repr)
    return f"task:{name}:{hashlib.sha256(text.encode()).hexdigest()[:32]}"


def check(unique_key: object, unique_for: object) -> None:
    if unique_key is not None and (not isinstance(unique_key, str) or not unique_key
                                   or len(unique_key) > 200):
        raise ValueError(f"unique_key {unique_key!r} must be a string of 1-200 characters, "
                         "such as 'report:daily'")
    if unique_for is not None and (isinstance(unique_for, bool) or not isinstance(
            unique_for, (int, float)) or unique_for < 0):
        raise ValueError(f"unique_for {unique_for!r} must be a number of seconds >= 0 (how "
                         "long after a send the same key sends nothing)")


class _KeyLocks:
    """A lock per key, made while a thread holds or waits for it: unique sends of one key
    take turns, and sends of other keys never wait behind them (a store round trip each,
    seconds while the store is unreachable)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: dict[str, tuple[threading.Lock, list[int]]] = {}

    @contextlib.contextmanager
    def hold(self, key: str) -> Iterator[None]:
        with self._lock:
            entry = self._held.get(key)
            if entry is None:
                entry = self._held[key] = (threading.Lock(), [0])
            entry[1][0] += 1
        try:
            with entry[0]:
                yield
        finally:
            with self._lock:
                entry[1][0] -= 1
                if not entry[1][0]:
                    del self._held[key]


_key_locks = _KeyLocks()


def _after_send(notifier: KeyStore, key: str, call: Call[Any], kept: float,
                future: Future[None]) -> None:
    """The send of a unique call completed: keep its key for good once the backend has the
    message, let it go at once if it was refused. Done on a thread of its own: a store
    round trip must not hold up the thread that completed the send (a broker connection's)."""
    if future.exception() is not None:
        _follow_ups().submit(_let_go, notifier, key, call.id, "a refused send")
    else:
        _follow_ups().submit(_keep, notifier, key, call, kept)


def _keep(notifier: KeyStore, key: str, call: Call[Any], kept: float) -> None:
    if call._settled.is_set():
        return  # its outcome is in: the worker has set the key's time already
    try:
        if not notifier.extend_key(UNIQUE_PREFIX + key, call.id, kept):
            # the worker released it already ("<id> done"), or it expired (a warning)
            held = notifier.get_keys([UNIQUE_PREFIX + key])[0]
            if held is None or holder(held) != call.id:
                log.warning("unique key %r of call %s expired before its message was "
                            "confirmed; another send of that key may send again", key, call.id)
    except Exception:
        log.warning("keeping unique key %r of call %s failed; it is held for %.0f s only",
                    key, call.id, SEND_CLAIM_TTL, exc_info=True)


def _let_go(notifier: KeyStore, key: str, call_id: str, after: str) -> None:
    try:
        notifier.release_key(UNIQUE_PREFIX + key, call_id, 0)
    except Exception:
        log.warning("releasing unique key %r after %s failed; it expires by itself", key,
                    after, exc_info=True)


_follow_ups_pool: ThreadPoolExecutor | None = None
_follow_ups_lock = threading.Lock()


def _follow_ups() -> ThreadPoolExecutor:
    global _follow_ups_pool
    with _follow_ups_lock:
        if _follow_ups_pool is None:
            _follow_ups_pool = ThreadPoolExecutor(1, thread_name_prefix="ivy-unique")
        return _follow_ups_pool


def claim_ttls(kept_at_least: float, unique_for: float, publish_timeout: object
               ) -> tuple[float, float]:
    """(seconds a key is claimed for until its message is confirmed, seconds it is kept
    once confirmed): a producer that dies between the two holds a key no longer than the
    first, which outlasts the queue backend's ``publish_timeout`` twice over."""
    kept = max(float(unique_for), kept_at_least)
    sending = max(SEND_CLAIM_TTL, 2 * publish_timeout
                  if isinstance(publish_timeout, (int, float)) else 0.0)
    return min(sending, kept), kept


class UniqueSends:
    """The unique sends of one producer: the calls it sent under a key, the key each holds,
    and a follower for the calls of other producers that a send of this one returned.

    Parameters:
        sender: The producer: its results, registry, backend and canceller.
    """

    def __init__(self, sender: Sender) -> None:
        self._sender = sender
        #: call id -> the Call made here for that id (the object a repeated send returns)
        self._calls: weakref.WeakValueDictionary[str, Call[Any]] = (
            weakref.WeakValueDictionary())
        #: the unique key each call sent here holds
        self._keys: weakref.WeakKeyDictionary[Call[Any], str] = weakref.WeakKeyDictionary()
        self._follower: _Follower | None = None
        self._lock = threading.Lock()

    def send(self, name: str, queue: str, args: tuple[Any, ...], kwargs: Mapping[str, Any],
             *, unique_key: str | None, unique_for: float,
             send: Callable[[str, dict[str, Any]], Call[Any]]) -> Call[Any]:
        """Send through ``send(call_id, extra message fields)`` unless the key is held;
        return the new call, or the call that holds the key. Unique sends of one key in one
        process take turns, so that threads racing for it all get the same Call object."""
        key = unique_key if unique_key is not None else task_key(name, list(args), kwargs)
        with _key_locks.hold(key):
            return self._send(key, name, queue, unique_for=unique_for, send=send)

    def _send(self, key: str, name: str, queue: str, *, unique_for: float,
              send: Callable[[str, dict[str, Any]], Call[Any]]) -> Call[Any]:
        notifier = self._sender.results().notifier
        assert notifier is not None
        call_id = new_id()
        sending, kept = claim_ttls(self._sender.settings.pending_ttl, unique_for,
                                   getattr(self._sender.sources.queue, "publish_timeout", 0.0))
        held = notifier.claim_key(UNIQUE_PREFIX + key, call_id, sending)
        if held is not None:
            log.debug("unique key %r is held by call %s: nothing sent", key, held)
            return self._existing(notifier, holder(held), name, queue)
        extra = {"unique_key": key, "unique_until": now_ms() + int(unique_for * 1000)}
        try:
            call = send(call_id, extra)
        except BaseException:
            _let_go(notifier, key, call_id, "a failed send")
            raise
        self._calls[call.id] = call
        self._keys[call] = key
        future = call._send
        if future is None:  # nothing to wait for: the backend has it
            _keep(notifier, key, call, kept)
        else:
            future.add_done_callback(lambda f: _after_send(notifier, key, call, kept, f))
        return call

    def cancelled(self, notifier: KeyStore, call_id: str) -> None:
        """A call of this producer was cancelled: if it holds a unique key, let the key go
        now, so that the next send of that key sends again."""
        call = self._calls.get(call_id)
        key = None if call is None else self._keys.get(call)
        if key is not None:
            notifier.release_key(UNIQUE_PREFIX + key, call_id, 0)

    def _existing(self, notifier: Notifier, call_id: str, name: str, queue: str
                  ) -> Call[Any]:
        call = self._calls.get(call_id)
        if call is not None:
            return call
        call = Call(call_id, name, queue)
        call._canceller = self._sender.canceller
        registered = self._sender.settings.registry.get(name)  # its result decoded if typed
        codec = None if registered is None else registered.codec
        if codec is not None and codec.result is not None:
            call._decode = codec.decode_result
        results = self._sender.results()
        results.add(call)
        self._calls[call_id] = call
        with self._lock:
            if self._follower is None:
                self._follower = _Follower(self._sender, notifier)
            follower = self._follower
        follower.follow(call)
        return call


class _Follower:
    """Looks up the stored final notifications of calls another producer sent, and hands
    them to this producer's consumers as if they had arrived on its channel. One daemon
    thread per producer, running while it follows calls."""

    def __init__(self, sender: Sender, notifier: Notifier) -> None:
        self._sender = weakref.ref(sender)
        self._notifier = notifier
        self._calls: dict[str, Call[Any]] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def follow(self, call: Call[Any]) -> None:
        with self._lock:
            self._calls[call.id] = call
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="ivy-unique-follower",
                                                daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            time.sleep(FOLLOW_INTERVAL)
            sender = self._sender()
            with self._lock:
                for call_id in [i for i, c in self._calls.items() if c._settled.is_set()]:
                    del self._calls[call_id]
                ids = list(self._calls)
                if not ids or sender is None or sender.sources.closed:
                    self._thread = None
                    return
            for call_id in ids:
                try:
                    body = self._notifier.stored(call_id)
                except Exception:
                    log.warning("reading the stored result of %s failed", call_id,
                                exc_info=True)
                    continue
                if body is not None:
                    sender.sources.results.dispatch(body)
            del sender
