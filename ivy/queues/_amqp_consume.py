"""The consuming side of the AMQP backend: a consumer per queue on a connection of its own, and its
deliveries, acknowledged after the worker recorded the outcome."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import pika
from pika.channel import Channel
from pika.spec import BasicProperties

from ivy._amqp.link import Link
from ivy._amqp.topology import (
    BROKER_DELIVERY_HEADER,
    DEAD_AT_HEADER,
    DEAD_ID_HEADER,
    DELIVERY_HEADER,
    REASON_HEADER,
    Declarer,
    dead_queue,
    delay_queue,
)
from ivy.errors import QueueMismatch
from ivy.queues.base import Consumer, Delivery

log = logging.getLogger("ivy.amqp")

#: Longest a closing classic-queue consumer waits for the broker to stop its consumer before it
#: puts back its unstarted deliveries.
CANCEL_WAIT = 5.0

class ConsumingBackend(Protocol):
    """What a consumer needs of its backend (:class:`ivy.queues.amqp.AMQPQueueBackend`)."""

    @property
    def nodes(self) -> Sequence[pika.URLParameters]:
        """The broker's nodes, to connect to in turn."""

    @property
    def dead_letter_ttl(self) -> float | None:
        """Seconds a dead letter is kept (its per-message TTL)."""

    @property
    def declarer(self) -> Declarer:
        """The backend's queue declarations, which each consumer copies."""

    def send(self, routing_key: str, bodies: list[bytes], *, queue: str, priority: int = 0,
             headers: dict[str, Any] | None = None, exchange: str = "",
             expiration: float | None = None) -> None:
        """Publish and wait for the broker's confirms."""

    def mismatch(self, queue: str) -> QueueMismatch | None:
        """The error for ``queue`` if the broker has it with other arguments."""


class AMQPDelivery(Delivery):
    """A message received by an :class:`AMQPConsumer`. ``delivery_count`` is the count carried
    in the ``x-ivy-delivery`` header by a message that ivy put back, plus one, plus the
    broker's redeliveries: a quorum queue's ``x-delivery-count`` (every return counted), else
    one if the broker marks it redelivered (its consumer's connection was lost)."""

    def __init__(self, consumer: AMQPConsumer, generation: int, tag: int, body: bytes,
                 props: BasicProperties, redelivered: bool) -> None:
        super().__init__()
        self._consumer = consumer
        self._generation = generation
        self._tag = tag
        self.queue = consumer.queue
        self.body = body
        #: the message's AMQP priority (0 when it has none), kept when it is put back
        self.priority: int = props.priority or 0
        headers = props.headers or {}
        earlier = headers.get(DELIVERY_HEADER, 0)
        returned = headers.get(BROKER_DELIVERY_HEADER) if consumer._declarer.quorum else None
        if not isinstance(returned, int) or returned < 0:
            returned = int(redelivered)
        self.delivery_count = (earlier if isinstance(earlier, int) else 0) + 1 + returned
        # a classic queue's redelivery (its consumer's connection was lost before an
        # outcome) is counted nowhere but in our header: the worker puts it back first
        self.uncounted = bool(redelivered) and not consumer._declarer.quorum
        self._done = False

    def _settle(self, op: Callable[[Channel], None]) -> None:
        if self._done:
            return
        self._done = True
        self._consumer._settle(self._generation, op)

    def _ack(self) -> None:
        tag = self._tag
        self._settle(lambda ch: ch.basic_ack(tag))

    def _release(self) -> None:
        """An unstarted delivery given back: a quorum queue's requeue is not counted as a
        delivery (its ``x-delivery-count`` is); a classic one would come back marked
        ``redelivered``, as after a lost consumer, so it is put back with its count instead."""
        if self._consumer._declarer.quorum:
            tag = self._tag
            self._settle(lambda ch: ch.basic_nack(tag, requeue=True))
        else:
            self._defer(0.0)

    def _retry(self, delay: float, body: bytes | None) -> None:
        self._put_back(delay, body if body is not None else self.body, self.delivery_count)

    def _defer(self, delay: float) -> None:
        """Put back with the count of the deliveries before this one: the next delivery has
        this one's ``delivery_count``."""
        self._put_back(delay, self.body, self.delivery_count - 1)

    def _put_back(self, delay: float, body: bytes, delivered: int) -> None:
        """Publish a copy (:meth:`_copy`), then ack this one."""
        self._copy(delay, body, delivered)
        self._ack()

    def _copy(self, delay: float, body: bytes, delivered: int) -> None:
        """Publish a copy with its priority and the count of its deliveries, straight to the
        queue or through a delay queue (the default exchange, never the routes of an
        exchange); return once it is confirmed."""
        target = delay_queue(self.queue, delay) if delay > 0 else self.queue
        self._consumer.backend.send(target, [body], queue=self.queue, priority=self.priority,
                                    headers={DELIVERY_HEADER: delivered})

    def _dead_letter(self, reason: str) -> None:
        backend = self._consumer.backend
        backend.send(dead_queue(self.queue), [self.body], queue=self.queue, priority=self.priority,
                     headers={REASON_HEADER: reason[:4000], DELIVERY_HEADER: self.delivery_count,
                              DEAD_AT_HEADER: int(time.time()),
                              DEAD_ID_HEADER: uuid.uuid4().hex},
                     expiration=backend.dead_letter_ttl)
        self._ack()

    def _extend(self, seconds: float) -> None:
        """Nothing to do: an unacknowledged AMQP message stays reserved while we are connected."""


class AMQPConsumer(Consumer):
    def __init__(self, backend: ConsumingBackend, queue: str, prefetch: int) -> None:
        self.backend = backend
        self.queue = queue
        self.prefetch = max(1, prefetch)
        self._buffer: deque[AMQPDelivery] = deque()
        #: classic queues: deliveries that arrived after close() began (it gives them back)
        self._late: list[AMQPDelivery] = []
        self._cond = threading.Condition()
        self._closed = False
        self._outstanding = 0
        self._tag: str | None = None
        self._declarer = backend.declarer.copy()
        #: set once the first basic.consume went out on a connection (wait_ready)
        self._ready = threading.Event()
        self._link = Link(backend.nodes, f"consume-{queue}",
                           on_channel=self._start, on_lost=self._lost)
        self._link.start()

    def _start(self, channel: Channel) -> None:
        self._declarer.reset()
        if self._closed:
            return
        generation = self._link.generation

        def on_message(ch: Channel, method: Any, props: BasicProperties, body: bytes) -> None:
            delivery = AMQPDelivery(self, generation, method.delivery_tag, body, props,
                                    bool(method.redelivered))
            with self._cond:
                if self._closed:
                    if self._declarer.quorum:
                        ch.basic_nack(method.delivery_tag, requeue=True)
                    else:  # given back by close() with the others (not marked redelivered)
                        self._late.append(delivery)
                    return
                self._buffer.append(delivery)
                self._cond.notify()

        def consume() -> None:
            channel.basic_qos(prefetch_count=self.prefetch)
            self._tag = channel.basic_consume(self.queue, on_message)
            self._ready.set()

        def cancelled(frame: Any) -> None:
            """The broker cancelled the consumer (its queue was deleted, or its node went
            away): start over on a new connection, which declares the queue again."""
            if self._closed:
                return
            log.warning("amqp consumer of %s: the broker cancelled it; reconnecting",
                        self.queue)
            channel.close()

        channel.add_on_cancel_callback(cancelled)
        if self._declarer.exchange:  # bound with its name and its tasks' routes
            self._declarer.routed(channel, self.queue, self.queue, consume)
        else:
            self._declarer.then(channel, self.queue, consume)

    def _lost(self) -> None:
        """Deliveries of a lost connection come back from the broker; drop our copies."""
        self._declarer.failed(self._link.last_reason)
        self._link.last_reason = None
        with self._cond:
            self._buffer.clear()

    def wait_ready(self, timeout: float) -> bool:
        return self._ready.wait(timeout)

    def get(self, timeout: float) -> Delivery | None:
        mismatch = self.backend.mismatch(self.queue)
        if mismatch is not None:  # the queue was replaced by one with other arguments
            raise mismatch
        with self._cond:
            if not self._buffer and not self._closed:
                self._cond.wait_for(lambda: bool(self._buffer) or self._closed, timeout)
            if self._closed or not self._buffer:
                return None
            self._outstanding += 1
            return self._buffer.popleft()

    def _settle(self, generation: int, op: Callable[[Channel], None]) -> None:
        def run(channel: Channel) -> None:
            if self._link.generation == generation:
                op(channel)

        self._link.call(run)
        self._one_less()

    def _one_less(self) -> None:
        """A delivery (or close()'s giving back) was settled: once closed and none is left,
        shut the connection, after the settles queued before (the link runs them in order)."""
        with self._cond:
            self._outstanding -= 1
            finished = self._closed and self._outstanding <= 0
        if finished:
            self._link.call(lambda ch: threading.Thread(target=self.shutdown, daemon=True).start())

    def close(self) -> None:
        """Stop consuming and give back unstarted deliveries now; the connection stays open
        until the deliveries in progress are settled."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            unstarted, self._buffer = list(self._buffer), deque()
            # close() itself counts until its settles are queued: the connection must not
            # shut before them (the last in-flight ack may come while it puts back)
            self._outstanding += 1
            self._cond.notify_all()
        tag = self._tag
        stopped = threading.Event()

        def cancel(channel: Channel) -> None:
            if tag is not None and channel.is_open:
                channel.basic_cancel(tag, callback=lambda _frame: stopped.set())
            else:
                stopped.set()

        self._link.call(cancel)
        put_back: list[AMQPDelivery] = []
        if not self._declarer.quorum:
            # the copies must not come back to this consumer: put back once it has stopped,
            # with what reached it after close() began
            stopped.wait(CANCEL_WAIT)
            with self._cond:
                unstarted += self._late
                self._late = []
            put_back = self._put_back_unstarted(unstarted)

        def settle(channel: Channel) -> None:
            for d in unstarted:
                if d._generation == self._link.generation:
                    if d in put_back:
                        channel.basic_ack(d._tag)
                    else:
                        channel.basic_nack(d._tag, requeue=True)

        self._link.call(settle)
        self._one_less()

    def _put_back_unstarted(self, unstarted: list[AMQPDelivery]) -> list[AMQPDelivery]:
        """On a classic queue, publish a copy of each unstarted delivery with its count (the
        originals are then acked): a requeue would mark them ``redelivered``, which counts as
        a lost delivery. Those whose copy was not confirmed are requeued as they are."""
        if self._declarer.quorum or not unstarted:
            return []
        done: list[AMQPDelivery] = []
        for d in unstarted:
            try:
                d._copy(0.0, d.body, d.delivery_count - 1)
            except Exception:
                log.warning("amqp consumer of %s: putting back an unstarted message failed; "
                            "requeueing it (it counts as a lost delivery)", self.queue,
                            exc_info=True)
                continue
            done.append(d)
        return done

    def shutdown(self) -> None:
        """Close the connection (what is still unacknowledged goes back to the queue)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._link.close()
