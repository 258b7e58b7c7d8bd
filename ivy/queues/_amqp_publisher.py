"""Publishing for the AMQP queue backend with publisher confirms, pipelined: a future per message,
sent again after a lost connection or a refusal (docs/internals/amqp.md)."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import pika
from pika.channel import Channel
from pika.spec import Basic, BasicProperties

from ivy._amqp.link import Link, pop_confirmed
from ivy._amqp.topology import Declarer
from ivy._flags import Sent, complete
from ivy.errors import PublishError, QueueMismatch

log = logging.getLogger("ivy.amqp")
#: at most one new publishing connection per this many seconds because of refusals, and how
#: long a refusing channel waits for its publishes in flight to be settled before it is
#: dropped anyway
RECYCLE_EVERY = 1.0
QUIET_MAX = 2.0
#: returned bodies remembered at most until their confirms come (one channel)
MAX_RETURNS = 10_000


@dataclass(slots=True)
class _Pending:
    """One publish waiting for its confirm; ``future`` completes with it."""

    queue: str
    routing_key: str
    body: bytes
    properties: BasicProperties
    exchange: str
    deadline: float
    future: Future[None] = field(default_factory=Sent)
    cancelled: bool = False
    #: True once its op ran on a channel (it is published, or waits for a declaration there)
    handed: bool = False
    #: how many times the broker refused it (quorum queues: sent again until the deadline)
    nacks: int = 0
    #: why the broker last returned it as unroutable ("" = never)
    returned: str = ""


class ConfirmedPublisher:
    """The publishing connection of one AMQP queue backend and the confirms it waits for.
    ``mismatch(queue)`` is the backend's error for a queue that exists with other arguments
    (or None); ``declarer`` declares queues (and the exchange) before their first publish."""

    def __init__(self, nodes: Sequence[pika.URLParameters], url: str, declarer: Declarer, *,
                 mismatch: Callable[[str], QueueMismatch | None], publish_timeout: float,
                 content_type: str, persistent: bool) -> None:
        self.nodes = list(nodes)
        self.url = url
        self._declarer = declarer
        self._mismatch = mismatch
        self.publish_timeout = publish_timeout
        self.content_type = content_type
        self.persistent = persistent
        self._pending: dict[int, _Pending] = {}
        self._tag = 0
        self._lock = threading.Lock()
        self._publisher: Link | None = None
        #: the last connection error of the link ``close`` dropped, for the watchdog's errors
        self._closed_error = ""
        #: publishes not confirmed yet, oldest first, for the timeout watchdog
        self._unconfirmed: deque[_Pending] = deque()
        self._watchdog: threading.Thread | None = None
        #: nacked publishes to send again (quorum queues), and the timer that will
        self._nacked: list[_Pending] = []
        self._resender: threading.Timer | None = None
        #: a channel that keeps refusing is dropped, but only once every publish on it is
        #: settled (else accepted ones would be sent twice): meanwhile new publishes wait in
        #: ``_held`` (see ``_quiesce``)
        self._quiet: Channel | None = None
        self._quiet_since = 0.0
        #: the quiet channel's drop was asked for (it stays quiet until the next channel)
        self._dropping = False
        self._held: list[_Pending] = []
        self._last_recycle = 0.0
        #: bodies the broker returned as unroutable on this channel, and why: each return
        #: comes before the confirm of its publish, which looks it up (I/O thread only)
        self._returns: dict[bytes, str] = {}

    def link(self) -> Link:
        link = self._publisher  # made once (until close): no lock once it exists
        if link is not None:
            return link
        with self._lock:
            if self._publisher is None:
                self._publisher = Link(self.nodes, "publish", on_channel=self._publisher_ready,
                                        on_confirm=self._confirmed, on_lost=self._publisher_lost)
                self._publisher.start()
            return self._publisher

    def _publisher_ready(self, channel: Channel) -> None:
        self._tag = 0
        self._declarer.reset()
        self._returns.clear()
        channel.add_on_return_callback(self._returned)
        with self._lock:
            self._quiet, self._dropping = None, False
            held, self._held = self._held, []
        link = self._publisher
        if link is not None:  # the I/O thread drains them on this channel next
            link._ops.extend(self._sender(p) for p in held)

    def _publisher_lost(self) -> None:
        """Publishes that reached the lost channel and were not confirmed (including those
        still waiting there for their queue's declaration) are sent again on the next
        connection: at least once. Those not handed to a channel yet are still queued."""
        with self._lock:
            self._pending = {}
            resend = [p for p in self._unconfirmed
                      if p.handed and not p.cancelled and not p.future.done()]
        link = self._publisher
        if link is None:
            return
        self._declarer.failed(link.last_reason)
        link.last_reason = None
        for p in resend:
            p.handed = False
            link._ops.append(self._sender(p))

    def _sender(self, p: _Pending) -> Callable[[Channel], None]:
        def send(channel: Channel) -> None:
            if p.cancelled or p.future.done():
                return
            mismatch = self._mismatch(p.queue)
            if mismatch is not None:
                complete(p.future, mismatch)
                return
            p.handed = True

            def now() -> None:
                if p.cancelled or p.future.done() or not channel.is_open:
                    return
                with self._lock:
                    if channel is self._quiet:  # about to be dropped: on the next one
                        p.handed = False
                        self._held.append(p)
                        self._arm()
                        return
                    self._tag += 1
                    self._pending[self._tag] = p
                # mandatory: a message no queue takes comes back (see _returned) instead of
                # being confirmed and dropped
                channel.basic_publish(p.exchange, p.routing_key, p.body, p.properties,
                                      mandatory=True)

            if p.exchange:  # the exchange, and the queue bound to it with this routing key
                self._declarer.routed(channel, p.queue, p.routing_key, now)
            elif p.routing_key == p.queue:
                self._declarer.then(channel, p.queue, now)
            else:  # a delay queue dead-letters into the queue, which must exist first
                self._declarer.then(channel, p.queue, lambda: self._declarer.then(
                    channel, p.routing_key, now))

        return send

    def _returned(self, channel: Channel, method: Any, properties: BasicProperties,
                  body: bytes) -> None:
        """The broker returned a publish that no queue took (the queue, or its binding, was
        deleted after this channel declared it): its confirm, which comes next, sends it
        again after declaring afresh (until its deadline), instead of counting it as sent."""
        if len(self._returns) < MAX_RETURNS:
            self._returns[body] = f"{method.reply_code} {method.reply_text}"

    def _confirmed(self, frame: Any) -> None:
        method = frame.method
        ok = isinstance(method, Basic.Ack)
        with self._lock:
            settled = pop_confirmed(self._pending, method)
            drop = self._quiet is not None and not self._pending
        retry: list[_Pending] = []
        returned: list[_Pending] = []
        for p in settled:
            why = self._returns.pop(p.body, None) if self._returns else None
            if why is not None:
                p.returned = why
                if time.monotonic() < p.deadline:
                    p.handed = False
                    returned.append(p)
                else:
                    complete(p.future, self._unroutable(p))
            elif ok:
                complete(p.future, None)
            elif self._declarer.quorum and time.monotonic() < p.deadline:
                p.nacks += 1  # no leader for a moment (a node stopped, an election): again
                p.handed = False  # on no channel now: a lost connection does not resend it
                retry.append(p)
            else:
                complete(p.future, PublishError(
                    f"the broker {self.url} refused (nack) the message for queue {p.queue!r}"))
        if retry:
            # a channel opened during an election can go on refusing: after a second refusal
            # of one message, a new connection (at most one a second; a full queue refuses
            # on any)
            if (any(p.nacks >= 2 for p in retry)
                    and time.monotonic() - self._last_recycle > RECYCLE_EVERY):
                drop = self._quiesce() or drop
            self._send_again_soon(retry)
        if returned:
            log.warning("amqp %s: %d publish(es) to queue %r came back unroutable (%s: the "
                        "queue or its binding was deleted?); declaring again and resending",
                        self.url, len(returned), returned[0].queue, returned[0].returned)
            self._declarer.forget()
            self._send_again_soon(returned, quiet=True)
        if drop:
            self._recycle()

    def _unroutable(self, p: _Pending) -> PublishError:
        return PublishError(
            f"the broker {self.url} returned the message for queue {p.queue!r} as unroutable "
            f"({p.returned}) until publish_timeout ({self.publish_timeout} s), even after "
            "declaring the queue again: is something deleting it, or its binding?")

    def _quiesce(self) -> bool:
        """Stop publishing on the current channel so that it can be dropped once every
        publish on it is settled; True when none is in flight (drop it now)."""
        link = self._publisher
        with self._lock:
            if link is None or link.channel is None or self._quiet is not None:
                return False
            self._quiet = link.channel
            self._quiet_since = time.monotonic()
            return not self._pending

    def _recycle(self) -> None:
        """Drop the quiesced channel's connection (every publish on it is settled, or it
        waited longer than ``QUIET_MAX``), once: the channel stays quiet until the next one
        is ready, so nothing is published on it between now and the drop, and the held
        publishes go out on the next one."""
        link = self._publisher
        with self._lock:
            quiet = self._quiet
            if quiet is None or self._dropping:
                return
            self._dropping = True
            self._last_recycle = time.monotonic()
        if link is not None:
            link.recycle(quiet, "a quorum queue refused publishes")

    def _send_again_soon(self, nacked: list[_Pending], quiet: bool = False) -> None:
        """Publish ``nacked`` again in a quarter of a second (one timer for all that come
        meanwhile), on whatever connection is open then."""
        if not quiet:
            log.info("amqp %s: %d publish(es) to queue %r refused (nack), sending again (a "
                     "quorum queue without a leader for a moment?)", self.url, len(nacked),
                     nacked[0].queue)
        with self._lock:
            self._nacked.extend(nacked)
            self._arm()

    def _arm(self) -> None:
        """Start the timer that sends nacked publishes again (with ``_lock`` held)."""
        if self._resender is None:
            self._resender = threading.Timer(0.25, self._resend_nacked)
            self._resender.daemon = True
            self._resender.start()

    def _resend_nacked(self) -> None:
        with self._lock:
            again, self._nacked, self._resender = self._nacked, [], None
            link = self._publisher
            stuck = (self._quiet is not None and not self._dropping
                     and time.monotonic() - self._quiet_since > QUIET_MAX)
        if stuck:  # confirms that never come: drop it anyway (those are sent again)
            self._recycle()
        with self._lock:
            if self._quiet is not None and not self._dropping:  # look again in a while
                self._arm()
        if link is not None:
            link.call_each([self._sender(p) for p in again])

    def _watch(self) -> None:
        """Fail publishes left unconfirmed past ``publish_timeout``; ends when none is left."""
        while True:
            with self._lock:
                while self._unconfirmed and self._unconfirmed[0].future.done():
                    self._unconfirmed.popleft()
                if not self._unconfirmed:
                    self._watchdog = None
                    return
                oldest = self._unconfirmed[0]
            wait = oldest.deadline - time.monotonic()
            if wait > 0:
                time.sleep(min(wait, 0.25))
                continue
            oldest.cancelled = True  # not sent again after a reconnect
            link = self._publisher
            if oldest.returned:
                complete(oldest.future, self._unroutable(oldest))
                continue
            if oldest.nacks:
                complete(oldest.future, PublishError(
                    f"the broker {self.url} refused (nack) the message for queue "
                    f"{oldest.queue!r} {oldest.nacks} times within {self.publish_timeout} s "
                    "(a quorum queue without a leader or a quorum, or a full queue)"))
                continue
            complete(oldest.future, PublishError(
                f"no confirm from {self.url} for a message to queue {oldest.queue!r} within "
                f"{self.publish_timeout} s (last connection error: "
                f"{(link.last_error if link else self._closed_error) or 'none'}); is RabbitMQ "
                "running and reachable? It may or may not have been queued"))

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
        batch = [_Pending(queue, routing_key, body, props, exchange, deadline)
                 for body in bodies]
        link = self.link()
        with self._lock:
            self._unconfirmed.extend(batch)
            if self._watchdog is None:
                self._watchdog = threading.Thread(target=self._watch, daemon=True,
                                                  name="ivy-amqp-confirms")
                self._watchdog.start()
        link.call_each([self._sender(p) for p in batch])
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

    def close(self) -> None:
        with self._lock:
            publisher, self._publisher = self._publisher, None
        if publisher is not None:
            self._closed_error = publisher.last_error
            publisher.close()
