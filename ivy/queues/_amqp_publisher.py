"""Publishing for the AMQP queue backend with publisher confirms, pipelined: a future per message,
sent again after a lost connection or a refusal (docs/internals/amqp.md)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import pika
from pika.channel import Channel
from pika.spec import BasicProperties

from ivy._amqp.confirms import Confirms, Publish
from ivy._amqp.topology import Declarer
from ivy.errors import PublishError, QueueMismatch

log = logging.getLogger("ivy.amqp")
#: at most one new publishing connection per this many seconds because of refusals, and how
#: long a refusing channel waits for its publishes in flight to be settled before it is
#: dropped anyway
RECYCLE_EVERY = 1.0
QUIET_MAX = 2.0


@dataclass(eq=False)
class _Pending(Publish):
    """One message for ``queue`` waiting for its confirm."""

    queue: str = ""


class ConfirmedPublisher(Confirms[_Pending]):
    """The publishing connection of one AMQP queue backend and the confirms it waits for.
    ``mismatch(queue)`` is the backend's error for a queue that exists with other arguments
    (or None); ``declarer`` declares queues (and the exchange) before their first publish.
    Nacks are sent again on quorum queues (a leader election) until ``publish_timeout``; a
    channel that keeps refusing is dropped once every publish on it is settled."""

    def __init__(self, nodes: Sequence[pika.URLParameters], url: str, declarer: Declarer, *,
                 mismatch: Callable[[str], QueueMismatch | None], publish_timeout: float,
                 content_type: str, persistent: bool) -> None:
        super().__init__(list(nodes), url, "publish")
        self._declarer = declarer
        self._mismatch = mismatch
        self.publish_timeout = publish_timeout
        self.content_type = content_type
        self.persistent = persistent
        self._watchdog: threading.Thread | None = None
        #: a channel that keeps refusing is dropped, but only once every publish on it is
        #: settled (else accepted ones would be sent twice): meanwhile new publishes wait in
        #: ``_held`` (see ``_quiesce``)
        self._quiet: Channel | None = None
        self._quiet_since = 0.0
        #: the quiet channel's drop was asked for (it stays quiet until the next channel)
        self._dropping = False
        self._held: list[_Pending] = []
        self._last_recycle = 0.0

    # -- the role's part of the engine ------------------------------------------------------

    def _ready(self, channel: Channel) -> None:
        self._declarer.reset()
        with self._lock:
            self._quiet, self._dropping = None, False
            held, self._held = self._held, []
        link = self._link
        if link is not None:  # the I/O thread drains them on this channel next
            link._ops.extend(self._sender(p) for p in held)

    def _lost(self, reason: BaseException | None) -> None:
        self._declarer.failed(reason)

    def _refusal(self, p: _Pending) -> BaseException | None:
        return self._mismatch(p.queue)

    def _holds(self, channel: Channel, p: _Pending) -> bool:
        if channel is not self._quiet:
            return False
        self._held.append(p)  # about to be dropped: on the next one
        self._arm()
        return True

    def _declare(self, channel: Channel, p: _Pending, now: Callable[[], None]) -> None:
        if p.exchange:  # the exchange, and the queue bound to it with this routing key
            self._declarer.routed(channel, p.queue, p.routing_key, now)
        elif p.routing_key == p.queue:
            self._declarer.then(channel, p.queue, now)
        else:  # a delay queue dead-letters into the queue, which must exist first
            self._declarer.then(channel, p.queue, lambda: self._declarer.then(
                channel, p.routing_key, now))

    def _retries(self, p: _Pending) -> bool:
        # a quorum queue without a leader for a moment (a node stopped, an election)
        return self._declarer.quorum and time.monotonic() < p.deadline

    def _nacked_error(self, p: _Pending) -> PublishError:
        return PublishError(
            f"the broker {self.url} refused (nack) the message for queue {p.queue!r}")

    def _unroutable_error(self, p: _Pending) -> PublishError:
        return PublishError(
            f"the broker {self.url} returned the message for queue {p.queue!r} as unroutable "
            f"({p.returned}) until publish_timeout ({self.publish_timeout} s), even after "
            "declaring the queue again: is something deleting it, or its binding?")

    def _after_confirm(self, nacked: list[_Pending], returned: list[_Pending]) -> None:
        with self._lock:
            drop = self._quiet is not None and not self._by_tag
        if nacked:
            # a channel opened during an election can go on refusing: after a second refusal
            # of one message, a new connection (at most one a second; a full queue refuses
            # on any)
            if (any(p.nacks >= 2 for p in nacked)
                    and time.monotonic() - self._last_recycle > RECYCLE_EVERY):
                drop = self._quiesce() or drop
            log.info("amqp %s: %d publish(es) to queue %r refused (nack), sending again (a "
                     "quorum queue without a leader for a moment?)", self.url, len(nacked),
                     nacked[0].queue)
        if returned:
            log.warning("amqp %s: %d publish(es) to queue %r came back unroutable (%s: the "
                        "queue or its binding was deleted?); declaring again and resending",
                        self.url, len(returned), returned[0].queue, returned[0].returned)
            self._declarer.forget()
        if drop:
            self._recycle()

    def _before_resend(self) -> None:
        with self._lock:
            stuck = (self._quiet is not None and not self._dropping
                     and time.monotonic() - self._quiet_since > QUIET_MAX)
        if stuck:  # confirms that never come: drop it anyway (those are sent again)
            self._recycle()
        with self._lock:
            if self._quiet is not None and not self._dropping:  # look again in a while
                self._arm()

    # -- a channel that keeps refusing -------------------------------------------------------

    def _quiesce(self) -> bool:
        """Stop publishing on the current channel so that it can be dropped once every
        publish on it is settled; True when none is in flight (drop it now)."""
        link = self._link
        with self._lock:
            if link is None or link.channel is None or self._quiet is not None:
                return False
            self._quiet = link.channel
            self._quiet_since = time.monotonic()
            return not self._by_tag

    def _recycle(self) -> None:
        """Drop the quiesced channel's connection (every publish on it is settled, or it
        waited longer than ``QUIET_MAX``), once: the channel stays quiet until the next one
        is ready, so nothing is published on it between now and the drop, and the held
        publishes go out on the next one."""
        link = self._link
        with self._lock:
            quiet = self._quiet
            if quiet is None or self._dropping:
                return
            self._dropping = True
            self._last_recycle = time.monotonic()
        if link is not None:
            link.recycle(quiet, "a quorum queue refused publishes")

    # -- the deadline ------------------------------------------------------------------------

    def _watch(self) -> None:
        """Fail publishes left unconfirmed past ``publish_timeout``; ends when none is left."""
        while True:
            with self._lock:
                oldest = next(iter(self._unconfirmed.values()), None)
                if oldest is None:
                    self._watchdog = None
                    return
            wait = oldest.deadline - time.monotonic()
            if wait > 0:
                time.sleep(min(wait, 0.25))
                continue
            oldest.cancelled = True  # not sent again after a reconnect
            if oldest.returned:
                self._finish(oldest, self._unroutable_error(oldest))
            elif oldest.nacks:
                self._finish(oldest, PublishError(
                    f"the broker {self.url} refused (nack) the message for queue "
                    f"{oldest.queue!r} {oldest.nacks} times within {self.publish_timeout} s "
                    "(a quorum queue without a leader or a quorum, or a full queue)"))
            else:
                self._finish(oldest, PublishError(
                    f"no confirm from {self.url} for a message to queue {oldest.queue!r} "
                    f"within {self.publish_timeout} s (last connection error: "
                    f"{self.last_error}); is RabbitMQ running and reachable? It may or may "
                    "not have been queued"))

    # -- the API of the backend ---------------------------------------------------------------

    def send_async(self, routing_key: str, bodies: list[bytes], *, queue: str,
                   priority: int = 0, headers: dict[str, Any] | None = None,
                   exchange: str = "", expiration: float | None = None
                   ) -> list[Future[None]]:
        """Hand bodies to the publishing connection for ``exchange`` (default: the default
        exchange, straight to the queue named ``routing_key``), each message expiring after
        ``expiration`` s when given, and return at once, a future per body: it completes when
        the broker confirmed the message, or fails with PublishError
        (refused, or no confirm within ``publish_timeout``). A connection lost before the
        confirm sends the message again on the next one: at least once."""
        props = BasicProperties(delivery_mode=2 if self.persistent else 1,
                                content_type=self.content_type,
                                priority=priority or None, headers=headers or None,
                                expiration=None if expiration is None else
                                str(max(1, round(expiration * 1000))))
        deadline = time.monotonic() + self.publish_timeout
        batch = [_Pending(exchange, routing_key, body, props, deadline, queue=queue)
                 for body in bodies]
        self.submit(batch)
        with self._lock:
            if self._watchdog is None:
                self._watchdog = threading.Thread(target=self._watch, daemon=True,
                                                  name="ivy-amqp-confirms")
                self._watchdog.start()
        return [p.future for p in batch]

    def send(self, routing_key: str, bodies: list[bytes], *, queue: str, priority: int = 0,
             headers: dict[str, Any] | None = None, exchange: str = "",
             expiration: float | None = None) -> None:
        """:meth:`send_async`, then wait: return when every body was confirmed, raise
        PublishError if one was refused or not confirmed in time."""
        futures = self.send_async(routing_key, bodies, queue=queue, priority=priority,
                                  headers=headers, exchange=exchange,
                                  expiration=expiration)
        errors = [exc for exc in (f.exception() for f in futures) if exc is not None]
        if errors:
            raise PublishError(f"{len(errors)} of {len(futures)} message(s): {errors[0]}")
