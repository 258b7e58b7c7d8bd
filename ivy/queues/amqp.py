"""``amqp://`` / ``amqps://``: RabbitMQ (or any AMQP 0-9-1 broker) as a queue backend, through pika.
The layout on the broker and how it works: docs/internals/amqp.md."""

from __future__ import annotations

import logging
import threading
from collections.abc import Collection, Sequence
from concurrent.futures import Future
from typing import Any, Self

import pika
import pika.exceptions

from ivy._amqp.link import Link
from ivy._amqp.topology import (
    DEFAULT_DELIVERY_LIMIT,
    QUEUE_TYPES,
    Declarer,
    dead_queue,
    delay_bucket,
    delay_queue,
)
from ivy._urls import bool_option, driver_url, join_hosts, mask_url, split_hosts
from ivy.errors import ConfigurationError, PublishError, QueueMismatch
from ivy.queues import _amqp_admin
from ivy.queues._amqp_consume import AMQPConsumer, AMQPDelivery
from ivy.queues._amqp_publisher import ConfirmedPublisher
from ivy.queues.base import (
    DEFAULT_DEAD_LETTER_TTL,
    DEFAULT_MAX_DELIVERIES,
    Consumer,
    DeadLetter,
    QueueBackend,
    Rewrite,
    dead_letter_ttl_option,
    max_deliveries_option,
)

__all__ = ["AMQPConsumer", "AMQPDelivery", "AMQPQueueBackend", "PublishError", "QueueMismatch",
           "delay_bucket"]

log = logging.getLogger("ivy.amqp")

#: ivy's own query parameters, removed before the URL goes to pika
OPTIONS = ("max_priority", "publish_timeout", "content_type", "exchange", "exchange_type",
           "queue_type", "delivery_limit", "persistent", "max_deliveries", "dead_letter_ttl")
EXCHANGE_TYPES = ("direct", "topic")




class AMQPQueueBackend(QueueBackend):
    """A queue backend on RabbitMQ. ``url`` is an AMQP URL, naming one node or several
    (``amqp://user:pw@host1:5672,host2:5672/vhost``; or ``nodes``, a list of ``host:port``
    that replaces the URL's host), plus ivy's options ``max_priority`` (default: 10 for queues
    whose tasks use priorities, none for the others), ``publish_timeout`` (seconds, default
    15), ``exchange`` (default none: the default exchange), ``exchange_type`` (``direct``, the
    default, or ``topic``), ``queue_type`` (``classic``, the default, or ``quorum``) and
    ``delivery_limit`` (quorum queues' ``x-delivery-limit``, default 20; 0 for none),
    ``max_deliveries`` (classic queues: the deliveries of a message that may end without an
    outcome, its worker dead or its connection lost, before it is dead-lettered, default 10:
    each redelivery is put back with its count in the ``x-ivy-delivery`` header before it
    runs, see :attr:`ivy.queues.base.QueueBackend.max_deliveries`) and ``persistent``
    (default true: messages survive a RabbitMQ restart; false publishes them transient,
    ``delivery_mode=1``, which shortens a round trip by ~0.2 ms, since RabbitMQ confirms a
    persistent message only once it is written or consumed and acknowledged, and loses the
    messages queued when the broker restarts; classic queues only). ``dead_letter_ttl``
    (:attr:`ivy.queues.base.QueueBackend.dead_letter_ttl`) is each dead letter's per-message
    TTL (``expiration``): RabbitMQ drops it from ``Q.dead`` when it expires at the head of the
    queue, and a listing deletes the expired ones it reads. The dead letters that a quorum
    queue makes itself at its ``delivery_limit`` carry no TTL; listings delete them too."""

    def __init__(self, url: str = "amqp://guest:guest@127.0.0.1:5672/%2F", *,
                 max_priority: int | None = None, publish_timeout: float = 15.0,
                 content_type: str = "application/json", exchange: str | None = None,
                 exchange_type: str = "direct", queue_type: str = "classic",
                 delivery_limit: int | None = DEFAULT_DELIVERY_LIMIT,
                 nodes: Sequence[str] | None = None, persistent: bool = True,
                 max_deliveries: int = DEFAULT_MAX_DELIVERIES,
                 dead_letter_ttl: float | str | None = DEFAULT_DEAD_LETTER_TTL) -> None:
        if exchange_type not in EXCHANGE_TYPES:
            raise ConfigurationError(
                f"exchange_type {exchange_type!r} for the AMQP queue backend {mask_url(url)} "
                f"is not supported: use one of {', '.join(EXCHANGE_TYPES)} "
                "(e.g. ?exchange=ivy&exchange_type=topic)")
        if queue_type not in QUEUE_TYPES:
            raise ConfigurationError(
                f"queue_type {queue_type!r} for the AMQP queue backend {mask_url(url)} is not "
                f"supported: use one of {', '.join(QUEUE_TYPES)} (e.g. ?queue_type=quorum)")
        if queue_type == "quorum" and max_priority:
            raise ConfigurationError(
                f"max_priority={max_priority} with queue_type=quorum for {mask_url(url)}: "
                "quorum queues have no priority levels; drop max_priority, or use "
                "queue_type=classic for priority queues")
        if queue_type == "quorum" and not persistent:
            raise ConfigurationError(
                f"persistent=false with queue_type=quorum for {mask_url(url)}: quorum queues "
                "keep every message on disk on each replica; drop persistent=false, or use "
                "queue_type=classic for transient messages")
        if delivery_limit is not None and delivery_limit < 0:
            raise ConfigurationError(
                f"delivery_limit={delivery_limit} for {mask_url(url)} must be >= 0 (0: none)")
        if nodes is not None:
            url = join_hosts(url, nodes)
        #: one connection parameter set per node, in the order given: links try them in turn
        self.nodes = [pika.URLParameters(driver_url(
            u, OPTIONS, {"heartbeat": "30", "socket_timeout": "10"})) for u in split_hosts(url)]
        self.params = self.nodes[0]
        self.url = mask_url(url)
        self.queue_type = queue_type
        # a quorum queue counts redeliveries itself and dead-letters at its delivery_limit
        limit = max_deliveries_option(max_deliveries,
                                      f"the AMQP queue backend {self.url}")
        self.max_deliveries = None if queue_type == "quorum" else limit
        self.dead_letter_ttl = dead_letter_ttl_option(dead_letter_ttl,
                                                      f"the AMQP queue backend {self.url}")
        #: quorum queues deliver in order: a message's priority is kept, not used (PROTOCOL.md)
        self.supports_priority = queue_type != "quorum"
        self._priority_noted = False
        self.max_priority = max_priority
        self.publish_timeout = publish_timeout
        #: whether messages are published persistent (``delivery_mode`` 2) or transient (1)
        self.persistent = persistent
        self.content_type = content_type
        #: the exchange that publishes go through ("" = the default exchange, routes ignored)
        self.exchange = exchange or ""
        self.exchange_type = exchange_type
        self._declarer = Declarer(max_priority, lambda q: self.priority_hint(q),
                                  exchange=self.exchange, exchange_type=exchange_type,
                                  routes=lambda q: self.routes_hint(q), queue_type=queue_type,
                                  delivery_limit=delivery_limit or None)
        self._lock = threading.Lock()
        self._consumers: list[AMQPConsumer] = []
        self._publishing = ConfirmedPublisher(
            self.nodes, self.url, self._declarer, mismatch=self.mismatch,
            publish_timeout=publish_timeout, content_type=content_type, persistent=persistent)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Self:
        url = str(config.get("url") or "amqp://guest:guest@127.0.0.1:5672/%2F")
        levels = config.get("max_priority")
        limit = config.get("delivery_limit")
        nodes = config.get("nodes")
        if nodes is not None and (isinstance(nodes, str) or not isinstance(nodes, Sequence)):
            raise ConfigurationError(
                f"nodes {nodes!r} for {mask_url(url)}: give a list of 'host:port' strings, "
                "such as ['rabbit1:5672', 'rabbit2:5672']")
        try:
            return cls(url, max_priority=None if levels in (None, "") else int(levels),
                       publish_timeout=float(config.get("publish_timeout", 15.0)),
                       content_type=str(config.get("content_type", "application/json")),
                       exchange=str(config.get("exchange") or "") or None,
                       exchange_type=str(config.get("exchange_type") or "direct"),
                       queue_type=str(config.get("queue_type") or "classic"),
                       delivery_limit=(DEFAULT_DELIVERY_LIMIT if limit in (None, "")
                                       else int(limit)),
                       nodes=None if nodes is None else [str(n) for n in nodes],
                       persistent=bool_option(config, "persistent", True,
                                              f"the AMQP queue backend {mask_url(url)}"),
                       max_deliveries=config.get("max_deliveries", DEFAULT_MAX_DELIVERIES),
                       dead_letter_ttl=config.get("dead_letter_ttl", DEFAULT_DEAD_LETTER_TTL))
        except ValueError as exc:
            if isinstance(exc, ConfigurationError):
                raise
            raise ConfigurationError(
                f"AMQP option for {mask_url(url)}: {exc} (max_priority, delivery_limit are "
                "whole numbers, publish_timeout seconds)") from None

    # -- publishing ----------------------------------------------------------------------------

    # -- publishing: ivy.queues._amqp_publisher ------------------------------------------------

    def _link(self) -> Link:
        return self._publishing.link()

    def send_async(self, routing_key: str, bodies: list[bytes], *, queue: str,
                   priority: int = 0, headers: dict[str, Any] | None = None,
                   exchange: str = "", expiration: float | None = None
                   ) -> list[Future[None]]:
        """Hand bodies to the publishing connection and return at once, a future per body
        (see :meth:`ConfirmedPublisher.send_async`)."""
        return self._publishing.send_async(routing_key, bodies, queue=queue, priority=priority,
                                           headers=headers, exchange=exchange,
                                           expiration=expiration)

    def send(self, routing_key: str, bodies: list[bytes], *, queue: str, priority: int = 0,
             headers: dict[str, Any] | None = None, exchange: str = "",
             expiration: float | None = None) -> None:
        """:meth:`send_async`, then wait: return when every body was confirmed, raise
        PublishError if one was refused or not confirmed in time."""
        self._publishing.send(routing_key, bodies, queue=queue, priority=priority,
                              headers=headers, exchange=exchange,
                              expiration=expiration)


    @property
    def declarer(self) -> Declarer:
        """The queue declarations of this backend, which each consumer copies."""
        return self._declarer

    def mismatch(self, queue: str) -> QueueMismatch | None:
        """The error for ``queue`` if it exists on the broker with other arguments than a
        quorum queue of ivy's (found by a declaration that failed), else None."""
        text = self._declarer.mismatched.get(queue)
        if text is None:
            return None
        vhost = self.params.virtual_host
        return QueueMismatch(
            f"queue {queue!r} on {self.url} exists with other arguments than ivy declares it "
            "with for queue_type=quorum (it is a classic queue, or has other quorum settings):"
            f" the broker says {text!r} (406 PRECONDITION_FAILED). "
            f"Delete it (rabbitmqctl delete_queue {queue} -p {vhost}; move its messages first "
            "if they matter), or keep using it as it is with queue_type=classic")

    def _note_priority(self, priority: int) -> None:
        if priority and not self.supports_priority and not self._priority_noted:
            self._priority_noted = True
            log.info("amqp %s: quorum queues deliver in order; a call's priority (%d) is kept "
                     "on the message but does not put it first (RabbitMQ 4's quorum queues: "
                     "priorities above 4 go first)", self.url, priority)

    def _route(self, queue: str, delay: float, route: str | None) -> tuple[str, str]:
        """(exchange, routing key): with an exchange, the exchange with routing key ``route``
        or ``queue``; else (and for a delay, whose queue dead-letters straight into ``queue``)
        the queue itself through the default exchange."""
        if delay > 0:
            return "", delay_queue(queue, delay)
        if self.exchange:
            return self.exchange, route or queue
        return "", queue

    def publish(self, queue: str, body: bytes, *, priority: int = 0, delay: float = 0.0,
                route: str | None = None) -> None:
        self.publish_many(queue, [body], priority=priority, delay=delay, route=route)

    def publish_many(self, queue: str, bodies: list[bytes], *, priority: int = 0,
                     delay: float = 0.0, route: str | None = None) -> None:
        exchange, key = self._route(queue, delay, route)
        self._note_priority(priority)
        self.send(key, bodies, queue=queue, priority=priority, exchange=exchange)

    def send_many(self, queue: str, bodies: list[bytes], *, priority: int = 0,
                  delay: float = 0.0, route: str | None = None) -> list[Future[None]]:
        """Asynchronous publishes: confirms are tracked, not waited for."""
        exchange, key = self._route(queue, delay, route)
        self._note_priority(priority)
        return self.send_async(key, bodies, queue=queue, priority=priority, exchange=exchange)

    # -- consuming -------------------------------------------------------------------------

    def consume(self, queue: str, *, prefetch: int = 1, reserve_time: float = 30.0) -> Consumer:
        """Start consuming ``queue``. With quorum queues, the queue is declared first, here, so
        that one existing with other arguments raises :class:`ivy.QueueMismatch` now (when no
        node answers yet, the consumer declares it once connected, and ``get`` raises)."""
        if self._declarer.quorum:
            try:
                self._declare_now(queue)
            except pika.exceptions.AMQPConnectionError as exc:
                log.warning("amqp %s: could not declare queue %r yet (%r); the consumer will "
                            "once a node answers", self.url, queue, exc)
        consumer = AMQPConsumer(self, queue, prefetch)
        with self._lock:
            self._consumers.append(consumer)
        return consumer

    def _declare_now(self, queue: str) -> None:
        """Declare ``Q.dead`` and ``queue`` on a short-lived connection; raise QueueMismatch
        if ``queue`` exists with other arguments (a dead-letter queue that does is used as it
        is, as the I/O path does)."""
        for name in (dead_queue(queue), queue):
            args = self._declarer.arguments(name)
            refused = None if args is None else _amqp_admin.declare(self.nodes, name, args)
            if refused is not None and name == queue:
                self._declarer.mismatched[queue] = refused
                raise self.mismatch(queue) or QueueMismatch(refused)
            if refused is not None:
                self._declarer.plain.add(name)

    # -- management: short-lived blocking connections, in ivy.queues._amqp_admin --------------

    def size(self, queue: str) -> int:
        return _amqp_admin.size(self.nodes, queue)

    def dead_letters(self, queue: str, limit: int = 100) -> list[DeadLetter]:
        """Peek at ``Q.dead``: read up to ``limit`` and put them back (the expired deleted)."""
        return _amqp_admin.dead_letters(self.nodes, queue, limit, self.dead_letter_cutoff())

    def requeue_dead(self, queue: str, ids: Collection[str] | None = None, *,
                     rewrite: Rewrite | None = None) -> int:
        """Publish each chosen dead letter to ``queue`` (default exchange, its priority kept,
        no delivery count), then acknowledge it in ``Q.dead`` once the broker confirmed the
        copy: at least once. Looks at no more messages than ``Q.dead`` held at the start, so
        letters dead again meanwhile are not requeued twice."""

        def send(body: bytes, priority: int) -> Future[None]:
            [future] = self.send_async(queue, [body], queue=queue, priority=priority)
            return future

        return _amqp_admin.requeue_dead(self.nodes, queue, ids, rewrite, send)

    def purge_dead(self, queue: str) -> int:
        return _amqp_admin.purge_dead(self.nodes, queue)

    def queues(self) -> list[str]:
        """The main queues this process declared (AMQP cannot list queues without the
        management plugin)."""
        return sorted(n for n in self._declarer.seen if ".delay." not in n
                      and not n.endswith(".dead"))

    def delete_queues(self, names: list[str]) -> None:
        """Delete queues (with their messages); for tests and tools."""
        _amqp_admin.delete_queues(self.nodes, names)

    def close(self) -> None:
        with self._lock:
            consumers, self._consumers = self._consumers, []
        for c in consumers:
            c.shutdown()
        self._publishing.close()
