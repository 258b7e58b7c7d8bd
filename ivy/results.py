"""The producer's side of the result path: :class:`Results` holds the notification consumers,
each of which settles the pending calls of one notifier (docs/internals/results.md)."""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from ivy._process import Backoff
from ivy.call import Call, callback_pool
from ivy.errors import MessageError
from ivy.message import Notification, wire_error
from ivy.notifiers.base import Notifier, Subscription

log = logging.getLogger("ivy.results")


def require_nonce() -> bool:
    """Whether final notifications without their call's nonce are dropped (read when a
    producer starts receiving): yes, unless ``IVY_REQUIRE_NONCE=0``, for workers that do not
    echo nonces (written before protocol v1 asked them to); then a notification without a
    nonce settles its call, and only one with another call's nonce is dropped."""
    return os.environ.get("IVY_REQUIRE_NONCE", "").strip().lower() not in (
        "0", "false", "no", "off")


def _bound(call: Call[Any], note: Notification, strict: bool = True) -> bool:
    """Whether a final notification may settle ``call``: it echoes the call's nonce, or the
    call has none (sent without, or by an older producer). One with another nonce never does;
    one without a nonce does unless ``strict``, except a ``cancelled`` one (what the
    producer's own ``cancel()`` publishes: it carries no value)."""
    if call.nonce is None or note.nonce == call.nonce:
        return True
    if note.nonce is not None:
        return False
    return not strict or note.status == "cancelled"


def _describe(exc: BaseException | None) -> str:
    return "unknown error" if exc is None else f"{type(exc).__name__}: {exc}"

#: Longest a call waits for its result before it is settled with ``ResultExpired``.
DEFAULT_PENDING_TTL = 86_400.0
#: How often the consumer looks for expired calls.
SWEEP_SECONDS = 1.0
#: Longest :meth:`ResultConsumer.start` waits for the subscription (a notifier that does not
#: answer delays nothing longer: final results are read back on subscribe anyway).
SUBSCRIBE_WAIT = 2.0


class ResultConsumer:
    """Receives the notifications of ``channel`` from ``notifier`` on its own thread."""

    def __init__(
        self, notifier: Notifier, channel: str, *,
        decode: Callable[[bytes], Notification],
        peek_id: Callable[[bytes], str | None],
        pending_ttl: float = DEFAULT_PENDING_TTL,
        on_stopped: Callable[[ResultConsumer], None] | None = None,
    ) -> None:
        self.notifier = notifier
        self.channel = channel
        self.pending_ttl = pending_ttl
        self._decode = decode
        self._on_stopped = on_stopped
        self._peek_id = peek_id
        self._calls: dict[str, Call[Any]] = {}  # each with its _expires
        #: drop final notifications without their call's nonce (see :func:`require_nonce`)
        self.require_nonce = require_nonce()
        self._lock = threading.Lock()
        #: final notifications being settled (their calls out of _calls, callbacks not yet
        #: handed over), for the exit's wait
        self._settling = 0
        self._settled_all = threading.Condition(self._lock)
        self._retiring = False
        #: set under the lock when a retired consumer stops: it takes no call after that
        self._stopped = False
        self._closing = threading.Event()
        self._subscription: Subscription | None = None
        self._subscribed = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ivy-notifications",
                                        daemon=True)
        self._next_sweep = time.monotonic() + SWEEP_SECONDS

    def __repr__(self) -> str:
        return f"<ResultConsumer {self.notifier.url} pending={len(self._calls)}>"

    def start(self) -> ResultConsumer:
        """Start the thread, and wait (up to :data:`SUBSCRIBE_WAIT` s) until it subscribed:
        the statuses and progress of the calls sent next are then not published before
        anyone listens (only final results are read back on subscribe)."""
        self._thread.start()
        self._subscribed.wait(SUBSCRIBE_WAIT)
        return self

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    # -- the table of pending calls -----------------------------------------------------------

    def add(self, call: Call[Any]) -> None:
        with self._lock:
            if self._stopped:
                raise RuntimeError("this notification consumer has stopped")
            call._expires = time.monotonic() + self.pending_ttl
            self._calls[call.id] = call

    def forget(self, calls: list[Call[Any]]) -> None:
        with self._lock:
            for call in calls:
                self._calls.pop(call.id, None)

    def pending_ids(self) -> list[str]:
        with self._lock:
            return list(self._calls)

    def pending(self) -> list[Call[Any]]:
        with self._lock:
            return list(self._calls.values())

    def wait_settled(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s until no call is between its final notification and its
        callbacks' hand-over; whether none is."""
        with self._lock:
            return self._settled_all.wait_for(lambda: not self._settling, max(timeout, 0.0))

    # -- lifecycle -----------------------------------------------------------------------------

    def retire(self) -> None:
        """Take no new calls; stop once the calls held have settled or expired."""
        self._retiring = True

    def close(self, timeout: float = 5.0) -> None:
        """Stop now: pending calls get nothing more from this consumer. The notifier stays
        open (its owner closes it)."""
        self._closing.set()
        subscription = self._subscription
        if subscription is not None:
            subscription.close()  # interrupts a get() in progress
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    # -- the thread ----------------------------------------------------------------------------

    def _run(self) -> None:
        backoff = Backoff()
        subscription: Subscription | None = None
        while not self._closing.is_set():
            if self._retiring:
                with self._lock:  # add() takes the same lock: no call lands after this
                    self._stopped = not self._calls
                if self._stopped:
                    break
            try:
                if subscription is None:
                    subscription = self.notifier.subscribe(self.channel, self.pending_ids)
                    self._subscription = subscription
                    self._subscribed.set()
                bodies = subscription.get(0.5)
                backoff.reset()
            except Exception:
                if self._closing.is_set():
                    break
                # a lost connection is expected now and then: one line, the traceback at debug
                log.warning("notification consumer: %s failed (%s); resubscribing in %.1f s",
                            self.notifier.url, _describe(sys.exc_info()[1]), backoff.delay)
                log.debug("notification consumer failure", exc_info=True)
                if subscription is not None:
                    try:
                        subscription.close()
                    except Exception:
                        log.debug("closing a failed subscription raised", exc_info=True)
                subscription = self._subscription = None
                backoff.wait(self._closing)
                continue
            for body in bodies:
                try:
                    self.dispatch(body)
                except Exception:  # a bug here must not end result delivery
                    log.exception("notification consumer: dispatching a notification failed")
            if time.monotonic() >= self._next_sweep:
                self._sweep()
        if subscription is not None:
            subscription.close()
        if self._retiring and not self._closing.is_set():
            log.info("notification consumer on %s: every call it held has settled; stopping",
                     self.notifier.url)
            if self._on_stopped is not None:
                try:
                    self._on_stopped(self)
                except Exception:
                    log.exception("notification consumer: closing a retired notifier failed")

    def dispatch(self, body: bytes) -> None:
        """Settle (or mark running) the call a notification body is about."""
        try:
            note = self._decode(body)
        except MessageError as exc:
            call_id = exc.fields.get("id") or self._peek_id(body)
            with self._lock:
                call = self._calls.get(call_id) if isinstance(call_id, str) else None
            if call is not None:
                call._reject(exc.reason)
            log.warning("notification consumer: ignoring a bad notification%s: %s",
                        f" for call {call_id}" if call is not None else "", exc.reason)
            return
        with self._lock:
            call = self._calls.get(note.id)
            bound = call is None or not note.final or _bound(call, note, self.require_nonce)
            settling = call is not None and note.final and bound
            if settling:
                del self._calls[note.id]
                self._settling += 1  # until its callbacks are on their threads (see below)
        if call is None:
            return
        if not bound:
            log.warning("notification consumer: ignoring a %s notification for call %s "
                        "without its nonce (forged, or from a worker that does not echo "
                        "nonces: see IVY_REQUIRE_NONCE)", note.status, note.id)
            self._look_beside(call, body)
            return
        if note.final:
            try:
                call._settle(note)
            finally:  # its callbacks are on their threads now: the exit's wait sees them
                with self._lock:
                    self._settling -= 1
                    self._settled_all.notify_all()
        elif note.status == "progress":
            if call.nonce is None or note.nonce == call.nonce:
                call._progress(note)
        else:
            call._running(note)

    def _look_beside(self, call: Call[Any], body: bytes) -> None:
        """A final notification without ``call``'s nonce came first (a forged one stored
        under a known call id, or one on the (re)subscribe catch-up): the call's own may be
        stored beside it (:func:`ivy.notifiers.base.beside`); if it is, settle with it."""
        if call.nonce is None:
            return
        try:
            own = self.notifier.stored(call.id, call.nonce)
        except Exception:
            log.warning("notification consumer: looking up the result of call %s beside a "
                        "forged one failed", call.id, exc_info=True)
            return
        if own is not None and own != body:
            self.dispatch(own)

    def _sweep(self) -> None:
        now = time.monotonic()
        self._next_sweep = now + SWEEP_SECONDS
        with self._lock:
            expired = [call for call in self._calls.values() if call._expires <= now]
            for call in expired:
                del self._calls[call.id]
        for call in expired:
            log.warning("call %s of %r: no result within %s s; it is forgotten (settled with "
                        "ResultExpired)", call.id, call.task, self.pending_ttl)
            call._settle(Notification(call.id, "errored", call.task, error=wire_error(
                "ResultExpired",
                f"no result for call {call.id} of {call.task!r} within {self.pending_ttl} s "
                "(pending_ttl): the producer stopped waiting. The task may still run; raise "
                "Ivy(pending_ttl=...) for longer calls")))

    def fail_pending(self, error_type: str, message: str) -> None:
        """Settle every pending call with a local error (the producer is closing)."""
        with self._lock:
            calls = list(self._calls.values())
            self._calls.clear()
        for call in calls:
            call._settle(Notification(call.id, "errored", call.task,
                                      error=wire_error(error_type, message)))


class Results:
    """The producer's notification consumers: the current one, which new calls wait on, and
    those retired by a switch of notifier, still delivering the calls sent before it. A retired
    consumer that settled every call it held stops, and ``on_retired(notifier)`` lets the app
    close that notifier if nothing else uses it."""

    def __init__(self, channel: str, *, decode: Callable[[bytes], Notification],
                 peek_id: Callable[[bytes], str | None], pending_ttl: float,
                 on_retired: Callable[[Notifier], None]) -> None:
        self.channel = channel
        self._decode = decode
        self._peek_id = peek_id
        self._pending_ttl = pending_ttl
        self._on_retired = on_retired
        self._lock = threading.Lock()
        self.current: ResultConsumer | None = None
        self.retired: list[ResultConsumer] = []

    @property
    def notifier(self) -> Notifier | None:
        current = self.current
        return None if current is None else current.notifier

    def start(self, notifier: Notifier) -> None:
        """Receive through ``notifier`` from now on; the current consumer, if any, retires."""
        consumer = ResultConsumer(notifier, self.channel, decode=self._decode,
                                  peek_id=self._peek_id, pending_ttl=self._pending_ttl,
                                  on_stopped=self._stopped)
        with self._lock:
            old, self.current = self.current, consumer
            if old is not None:
                log.info("notification consumer: switching from %s to %s; calls sent so far "
                         "are still delivered through the old one", old.notifier.url,
                         notifier.url)
                old.retire()
                self.retired.append(old)
        consumer.start()

    def _stopped(self, consumer: ResultConsumer) -> None:
        with self._lock:
            if consumer in self.retired:
                self.retired.remove(consumer)
        self._on_retired(consumer.notifier)

    def consumers(self) -> list[ResultConsumer]:
        with self._lock:
            return [*self.retired, *([self.current] if self.current is not None else [])]

    def add(self, call: Call[Any]) -> None:
        """Hold ``call`` in the current consumer. Under the lock that a switch of notifier
        takes, so that a call never lands in a consumer that retired meanwhile (and may have
        stopped, having nothing left to wait for)."""
        with self._lock:
            current = self.current
            if current is None:
                raise RuntimeError("no notification consumer started")
            current.add(call)

    def forget(self, calls: list[Call[Any]]) -> None:
        for consumer in self.consumers():
            consumer.forget(calls)

    def pending_ids(self) -> list[str]:
        return [i for consumer in self.consumers() for i in consumer.pending_ids()]

    def dispatch(self, body: bytes) -> None:
        for consumer in self.consumers():
            consumer.dispatch(body)

    def wait_for_callbacks(self, timeout: float, at_exit: bool = False) -> list[Call[Any]]:
        """Wait up to ``timeout`` seconds for the pending calls that have callbacks to
        complete; return (and log) those still pending. ``at_exit``: say so first, as a
        warning, since the process seems to hang otherwise."""
        deadline = time.monotonic() + timeout
        waiting = [c for consumer in self.consumers() for c in consumer.pending()
                   if c.has_callbacks]
        if waiting and at_exit:
            log.warning("waiting up to %.0f s for %d callback(s) of calls not settled yet; "
                        "Ctrl-C to skip", timeout, len(waiting))
        elif waiting:
            log.info("waiting up to %.0f s for %d call(s) whose callbacks have not run yet",
                     timeout, len(waiting))
        for call in waiting:
            call._done.wait(max(0.0, deadline - time.monotonic()))
        # and the callbacks of calls that settled a moment ago, already on their threads
        for consumer in self.consumers():
            consumer.wait_settled(deadline - time.monotonic())
        callback_pool().wait_idle(deadline - time.monotonic())
        left = [c for c in waiting if not c.done()]
        if left:
            log.warning("%d call(s) still had no result after %.0f s; their callbacks will not "
                        "run in this process: %s", len(left), timeout,
                        ", ".join(c.id for c in left[:5]))
        return left

    def close(self, error_type: str, message: str) -> None:
        """Stop every consumer and settle the calls still waiting with a local error."""
        with self._lock:
            consumers = [*self.retired, *([self.current] if self.current is not None else [])]
            self.current, self.retired = None, []
        for consumer in consumers:
            consumer.close()
            consumer.fail_pending(error_type, message)
