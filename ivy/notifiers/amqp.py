"""``amqp://`` / ``amqps://``: the RabbitMQ notifier (``pip install 'ivy-queue[amqp]'``): results in
reply queues, events on a fanout exchange, heartbeats in a stream (docs/internals/amqp.md)."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable, Collection, Mapping
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, Self

import pika
import pika.exceptions
from pika.channel import Channel
from pika.spec import BasicProperties

from ivy._amqp.link import Link
from ivy._shared import Shared
from ivy._urls import bool_option, driver_url, mask_url, split_hosts
from ivy.errors import ConfigurationError, PublishError
from ivy.notifiers import _amqp_workers
from ivy.notifiers._amqp_publish import Declarations, Outgoing, Publisher
from ivy.notifiers.base import Notifier, Subscription, beside, beside_key

log = logging.getLogger("ivy.amqp")

#: ivy's own query parameters, removed before the URL goes to pika
OPTIONS = ("reply_expires", "publish_timeout", "persistent", "reply_queue_type")
REPLY_QUEUE_TYPES = ("classic", "quorum")
DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"
#: seconds a reply queue outlives its last consumer (``x-expires``)
DEFAULT_REPLY_EXPIRES = 600.0
#: the fanout exchange of task events
EVENTS_EXCHANGE = "ivy.events"
#: final notifications remembered per process and vhost, for ``stored`` and the first-wins check
MAX_REMEMBERED = 100_000
#: ... and their bytes at most (large results would otherwise take GiB: 100,000 x 100 KiB)
MAX_REMEMBERED_BYTES = 64 * 1024 * 1024
#: the longest ``publish_event`` waits for the broker's confirm
EVENT_TIMEOUT = 5.0
#: unacknowledged notifications the broker sends a subscription ahead
PREFETCH = 1000


class _Finals:
    """The final notifications the AMQP notifiers of this process published to one vhost:
    call id -> the first one, oldest forgotten first."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.bodies: OrderedDict[str, bytes] = OrderedDict()
        self.nbytes = 0

    def remember(self, call_id: str, body: bytes) -> None:
        """Keep the first final notification of ``call_id``; forget the oldest beyond
        :data:`MAX_REMEMBERED` calls or :data:`MAX_REMEMBERED_BYTES` bytes. Under ``lock``."""
        if call_id in self.bodies:
            return
        self.bodies[call_id] = body
        self.nbytes += len(body)
        while len(self.bodies) > 1 and (len(self.bodies) > MAX_REMEMBERED
                                        or self.nbytes > MAX_REMEMBERED_BYTES):
            _, oldest = self.bodies.popitem(last=False)
            self.nbytes -= len(oldest)


#: by (host, port, vhost): notifiers of one broker in this process share what they published
_finals: Shared[tuple[str, int, str], _Finals] = Shared(_Finals)


def _finals_of(params: pika.URLParameters) -> _Finals:
    return _finals.get((str(params.host), int(params.port), str(params.virtual_host)))


class AMQPSubscription(Subscription):
    """Consumes one reply queue (or, for events, an exclusive queue bound to ``ivy.events``)
    on a connection of its own. ``get`` returns what arrived and acknowledges it."""

    def __init__(self, notifier: AMQPNotifier, queue: str | None, label: str) -> None:
        self._notifier = notifier
        self._queue = queue  # None: a server-named queue bound to the events exchange
        self._buffer: deque[tuple[int, int, bytes]] = deque()  # generation, tag, body
        self._cond = threading.Condition()
        self._closed = False
        self.ready = threading.Event()  # consuming (set again on every reconnect)
        self._declarations = Declarations(notifier.reply_arguments, float("inf"), label)
        self._link = Link(notifier.nodes, label, on_channel=self._start, on_lost=self._lost)
        self._link.start()

    def _start(self, channel: Channel) -> None:
        if self._closed:
            return
        generation = self._link.generation
        self._declarations.reset()

        def on_message(ch: Channel, method: Any, props: BasicProperties, body: bytes) -> None:
            with self._cond:
                self._buffer.append((generation, method.delivery_tag, body))
                self._cond.notify()

        def consume(queue: str) -> None:
            channel.basic_qos(prefetch_count=PREFETCH, callback=lambda _: channel.basic_consume(
                queue, on_message, auto_ack=self._queue is None,
                callback=lambda _: self.ready.set()))

        def cancelled(frame: Any) -> None:
            """The broker cancelled the consumer (its queue was deleted, or its node went
            away): start over on a new connection, which declares the queue again."""
            if self._closed:
                return
            log.warning("amqp %s: the broker cancelled the consumer of %s; reconnecting",
                        self._link.label, self._queue or "the events queue")
            channel.close()

        channel.add_on_cancel_callback(cancelled)
        if self._queue is not None:
            queue = self._queue
            self._declarations.then(channel, ("queue", queue), lambda: consume(queue))
            return

        def bind(frame: Any) -> None:
            name = frame.method.queue
            channel.queue_bind(name, EVENTS_EXCHANGE, callback=lambda _: consume(name))

        self._declarations.then(channel, ("exchange", EVENTS_EXCHANGE), lambda: (
            channel.queue_declare("", exclusive=True, auto_delete=True, callback=bind)))

    def _lost(self) -> None:
        """The connection or the consumer went. What was delivered and not read yet is kept
        and handed out: the broker delivers it again if its queue still exists, and the
        producer drops the second copy (the first result wins); if the queue was deleted,
        these copies are all that is left of those results."""
        self.ready.clear()
        self._declarations.failed(self._link.last_reason)
        self._link.last_reason = None

    def get(self, timeout: float) -> list[bytes]:
        with self._cond:
            if not self._buffer and not self._closed:
                self._cond.wait_for(lambda: bool(self._buffer) or self._closed, timeout)
            if self._closed:
                return []
            items, self._buffer = list(self._buffer), deque()
        if items and self._queue is not None:
            generation, tag = items[-1][0], items[-1][1]
            link = self._link

            def ack(channel: Channel) -> None:
                if link.generation == generation:
                    channel.basic_ack(tag, multiple=True)

            link.call(ack)
        return [body for _, _, body in items]

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._link.close()


class AMQPNotifier(Notifier):
    """A notifier on RabbitMQ. ``url`` is an AMQP URL, plus ivy's options ``reply_expires``
    (seconds a reply queue outlives its producer, default 600), ``publish_timeout`` (seconds a
    final notification may wait for the broker's confirm, default 15), ``persistent``
    (default true; false sends notifications as transient messages: faster, but a RabbitMQ
    restart loses the results waiting in reply queues) and ``reply_queue_type`` (``classic``,
    the default, or ``quorum``: replicated, for clusters)."""

    def __init__(self, url: str = DEFAULT_URL, *, reply_expires: float = DEFAULT_REPLY_EXPIRES,
                 publish_timeout: float = 15.0, persistent: bool = True,
                 reply_queue_type: str = "classic") -> None:
        if reply_queue_type not in REPLY_QUEUE_TYPES:
            raise ConfigurationError(
                f"reply_queue_type {reply_queue_type!r} for the AMQP notifier {mask_url(url)} "
                f"is not supported: use one of {', '.join(REPLY_QUEUE_TYPES)} "
                "(e.g. ?reply_queue_type=quorum)")
        for name, value in (("reply_expires", reply_expires),
                            ("publish_timeout", publish_timeout)):
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
                raise ConfigurationError(
                    f"{name} {value!r} for the AMQP notifier {mask_url(url)} must be a number "
                    f"of seconds > 0 (e.g. ?{name}=600)")
        if reply_expires < 1:
            raise ConfigurationError(
                f"reply_expires {reply_expires!r} for the AMQP notifier {mask_url(url)} is "
                "below RabbitMQ's minimum x-expires of 1 s: use ?reply_expires=600 or more")
        #: one connection's parameters per node (``amqp://u:p@host1:5672,host2:5672/vhost``):
        #: links take the first node that answers and fail over to the next, as the queue
        #: backend's do
        self.nodes = [pika.URLParameters(driver_url(
            u, OPTIONS, {"heartbeat": "30", "socket_timeout": "10"})) for u in split_hosts(url)]
        self.params = self.nodes[0]
        self.url = mask_url(url)
        self.reply_expires = float(reply_expires)
        #: whether notifications are persistent messages (they survive a RabbitMQ restart)
        self.persistent = bool(persistent)
        self.publish_timeout = float(publish_timeout)
        #: the arguments of every reply queue
        self.reply_arguments: dict[str, Any] = {"x-expires": int(self.reply_expires * 1000)}
        if reply_queue_type == "quorum":
            self.reply_arguments["x-queue-type"] = "quorum"
        self._publisher = Publisher(
            self.nodes, self.url, "notify",
            Declarations(self.reply_arguments, self.reply_expires / 4, "notify",
                         stream_arguments=_amqp_workers.STREAM_ARGUMENTS))
        self._finals = _finals_of(self.params)
        self._lock = threading.Lock()
        self._subscriptions: list[AMQPSubscription] = []

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Self:
        url = str(config.get("url") or DEFAULT_URL)
        return cls(url, reply_expires=_seconds(config, "reply_expires", DEFAULT_REPLY_EXPIRES),
                   publish_timeout=_seconds(config, "publish_timeout", 15.0),
                   persistent=bool_option(config, "persistent", True, "the AMQP notifier"),
                   reply_queue_type=str(config.get("reply_queue_type") or "classic"))

    def publish(self, channel: str, call_id: str, body: bytes, *, final: bool,
                nonce: str | None = None) -> None:
        """Send ``body`` to the reply queue ``channel``. A final notification waits for the
        broker's confirm (PublishError after ``publish_timeout``) and is remembered; a second
        final one of the same call is not sent, unless it echoes a nonce the first does not
        carry (:func:`ivy.notifiers.base.beside`). A ``running`` status is not waited for."""
        if channel.startswith("amq.") or not 0 < len(channel.encode("utf-8")) <= 255:
            # never declared: the broker would close the shared channel (ACCESS_REFUSED or a
            # syntax error), stalling every other notification and heartbeat of this worker
            raise PublishError(f"{channel[:80]!r} cannot be a reply queue (a name of the "
                               "broker's, or not 1 to 255 bytes)")
        finals = self._finals
        key = call_id
        if final:
            with finals.lock:
                found = beside(call_id, finals.bodies.get(call_id), nonce)
                if found is None or found in finals.bodies:
                    return  # the first final notification wins
                key = found
        out = Outgoing("", channel, body, BasicProperties(
            delivery_mode=2 if self.persistent else 1, content_type="application/json"),
            deadline=time.monotonic() + self.publish_timeout, declare=("queue", channel))
        if not final:
            self._publisher.send(out)
            return
        self._wait(out, self.publish_timeout, f"the result of call {call_id} to {channel!r}")
        with finals.lock:
            finals.remember(key, body)

    def _wait(self, out: Outgoing, timeout: float, what: str) -> None:
        """Send ``out`` and wait for the broker's confirm; PublishError after ``timeout``."""
        future = self._publisher.send(out)
        try:
            future.result(timeout)
        except FutureTimeout:
            self._publisher.cancel(out)
            raise PublishError(
                f"no confirm from {self.url} for {what} within {timeout} s (last connection "
                f"error: {self._publisher.last_error}); is RabbitMQ running and reachable? It "
                "may or may not have been queued") from None

    def subscribe(self, channel: str, pending: Callable[[], Collection[str]]) -> Subscription:
        """Consume the reply queue ``channel`` (declared now if it is not there). Every result
        still in it is delivered, so ``pending`` is not needed (docs/internals/amqp.md)."""
        return self._track(AMQPSubscription(self, channel, f"reply-{channel[-8:]}"))

    def stored(self, call_id: str, nonce: str | None = None) -> bytes | None:
        """The first final notification of ``call_id`` that an AMQP notifier of this process
        published to this vhost (with ``nonce``, the one beside it for that nonce first), if
        it is still remembered; None otherwise (AMQP has no keyed store: docs/internals/amqp.md)."""
        with self._finals.lock:
            found = None if nonce is None else self._finals.bodies.get(beside_key(call_id, nonce))
            return found if found is not None else self._finals.bodies.get(call_id)

    def publish_event(self, body: bytes) -> None:
        timeout = min(self.publish_timeout, EVENT_TIMEOUT)
        out = Outgoing(EVENTS_EXCHANGE, "", body, BasicProperties(content_type="application/json"),
                       deadline=time.monotonic() + timeout, declare=("exchange", EVENTS_EXCHANGE))
        self._wait(out, timeout, f"a task event to the exchange {EVENTS_EXCHANGE!r}")

    def subscribe_events(self) -> Subscription:
        """An exclusive queue bound to ``ivy.events``; returns once the broker confirmed the
        binding and the consumer (ConnectionError after ``publish_timeout`` seconds)."""
        sub = AMQPSubscription(self, None, f"events-{uuid.uuid4().hex[:6]}")
        if not sub.ready.wait(self.publish_timeout):
            sub.close()
            raise ConnectionError(
                f"could not subscribe to the task events of {self.url} within "
                f"{self.publish_timeout} s (last connection error: "
                f"{sub._link.last_error or 'none'}); is RabbitMQ running and reachable?")
        return self._track(sub)

    def _track(self, sub: AMQPSubscription) -> AMQPSubscription:
        with self._lock:
            self._subscriptions = [s for s in self._subscriptions if not s._closed]
            self._subscriptions.append(sub)
        return sub

    def put_worker(self, name: str, info: Mapping[str, Any], ttl: float) -> None:
        self._append_worker(_amqp_workers.heartbeat(name, dict(info), ttl), name)

    def remove_worker(self, name: str) -> None:
        self._append_worker(_amqp_workers.removal(name), name)

    def _append_worker(self, body: bytes, name: str) -> None:
        stream = _amqp_workers.STREAM
        out = Outgoing("", stream, body, BasicProperties(delivery_mode=2),
                       deadline=time.monotonic() + self.publish_timeout,
                       declare=("stream", stream))
        self._wait(out, self.publish_timeout, f"the heartbeat of worker {name!r}")

    def workers(self) -> list[dict[str, Any]]:
        """The heartbeats of the workers alive, read from the stream ``ivy.workers`` on a
        short-lived connection."""
        last: Exception | None = None
        for node in self.nodes:  # the first node that answers
            try:
                return _amqp_workers.read_alive(node)
            except pika.exceptions.AMQPConnectionError as exc:
                last = exc
        assert last is not None
        raise last

    def close(self) -> None:
        with self._lock:
            subscriptions, self._subscriptions = self._subscriptions, []
        for sub in subscriptions:
            sub.close()
        self._publisher.close()



def _seconds(config: dict[str, Any], name: str, default: float) -> float:
    value = config.get(name, default)
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ConfigurationError(
            f"{name} {value!r} for the AMQP notifier must be a number of seconds "
            f"(e.g. ?{name}={default:g})") from None
