"""``amqp://`` / ``amqps://``: RabbitMQ (or any AMQP 0-9-1 broker) through pika.

Layout on the broker, so that any AMQP client can take part (PROTOCOL.md):

* queue name Q is the durable queue ``Q``, published to through the default exchange with
  routing key Q, persistent messages, content type ``application/json``. Queues that ivy
  declares get ``x-max-priority`` 10 when a task registered for Q uses a priority
  (``?max_priority=N`` forces N for every queue, 0 none): RabbitMQ's priority queues cost about
  a fifth of the throughput, so queues without priorities are plain; a queue
  that already exists with other arguments is used as it is, without priorities.
* retries and delayed calls go to ``Q.delay.<ms>``: a queue whose ``x-message-ttl`` is the delay
  and whose dead-letter target is Q, so the broker does the waiting and no worker sleeps. Delays
  are rounded to two significant digits to bound the number of such queues, which expire when
  unused.
* dead letters go to ``Q.dead`` with the reason in the header ``x-ivy-reason``.

pika is not thread-safe: every connection lives on its own I/O thread (:class:`_Link`, a
``SelectConnection`` that reconnects with backoff), which holds the link's lock except while it
waits in its poll system call. Another thread with work for the connection (a publish, an ack)
runs it itself if it can take that lock at once (the loop is idle), and otherwise hands it over
through ``add_callback_threadsafe``: either way one thread at a time uses the connection.
Frames leave at once, those of one batch of operations in one write. Publishing uses publisher
confirms, pipelined: many threads can have publishes in flight on one channel, and each
``publish`` returns when the broker confirmed it.
A consumer's deliveries are acknowledged after the worker recorded the outcome; a delivery from a
connection that has since been lost is not acknowledged (the broker redelivers it).

Reservations: AMQP has none to extend. An unacknowledged message stays with its consumer until
the connection closes (RabbitMQ's ``consumer_timeout``, 30 minutes by default, bounds a task).
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Self

import pika
import pika.exceptions
from pika.adapters.select_connection import IOLoop
from pika.channel import Channel
from pika.spec import Basic, BasicProperties

from ivy.config import driver_url, mask_url
from ivy.errors import IvyError
from ivy.queues.base import Consumer, DeadLetter, Delivery, QueueBackend

log = logging.getLogger("ivy.amqp")

REASON_HEADER = "x-ivy-reason"
DELIVERY_HEADER = "x-ivy-delivery"
#: ivy's own query parameters, removed before the URL goes to pika
OPTIONS = ("max_priority", "publish_timeout", "content_type")
DEFAULT_PRIORITIES = 10


class PublishError(IvyError):
    """The broker refused a message, or did not confirm it in time."""


def delay_bucket(seconds: float) -> int:
    """Milliseconds, rounded up to two significant digits (1234 ms -> 1300 ms)."""
    ms = max(1, math.ceil(seconds * 1000))
    if ms < 100:
        return ms
    scale = 10 ** (len(str(ms)) - 2)
    return int(math.ceil(ms / scale) * scale)


class _Link:
    """One pika SelectConnection with one channel, on its own thread, reconnecting forever."""

    def __init__(self, params: pika.URLParameters, label: str, *,
                 on_channel: Callable[[Channel], None],
                 on_confirm: Callable[[Any], None] | None = None,
                 on_lost: Callable[[], None] | None = None) -> None:
        self.params = params
        self.label = label
        self._on_channel = on_channel
        self._on_confirm = on_confirm
        self._on_lost = on_lost
        self.generation = 0
        self.channel: Channel | None = None
        self.last_error: str = ""
        self.last_reason: BaseException | None = None
        self._conn: pika.SelectConnection | None = None
        self._ops: deque[Callable[[Channel], None]] = deque()
        self._kick_lock = threading.Lock()
        self._kick_pending = False
        #: held by the I/O thread except while it waits in poll(): whoever holds it may use
        #: the connection, so another thread can run an op itself instead of waking the loop
        self._io_lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"ivy-amqp-{label}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        backoff = 0.1
        while not self._stopping.is_set():
            opened_at = time.monotonic()
            try:
                ioloop = IOLoop()
                _unlock_while_polling(ioloop, self._io_lock)
                with self._io_lock:
                    conn = pika.SelectConnection(
                        self.params, on_open_callback=self._opened,
                        on_open_error_callback=self._open_failed, on_close_callback=self._closed,
                        custom_ioloop=ioloop)
                    self._conn = conn
                    try:
                        conn.ioloop.start()
                    finally:
                        self.channel = None
            except Exception as exc:  # pragma: no cover - pika raises little here
                self.last_error = repr(exc)
                log.exception("amqp %s: I/O loop failed", self.label)
            if self._on_lost is not None:
                self._on_lost()
            if self._stopping.is_set():
                break
            if time.monotonic() - opened_at > 10:
                backoff = 0.1
            log.warning("amqp %s: connection to %s lost (%s); reconnecting in %.1f s",
                        self.label, self.params_url, self.last_error, backoff)
            self._stopping.wait(backoff)
            backoff = min(backoff * 2, 10.0)

    @property
    def params_url(self) -> str:
        """Where the link connects, without credentials, for logs."""
        p = self.params
        return f"amqp://{p.host}:{p.port}/{p.virtual_host}"

    def _opened(self, conn: Any) -> None:
        _send_eagerly(conn)
        conn.channel(on_open_callback=self._channel_opened)

    def _open_failed(self, conn: Any, error: BaseException) -> None:
        self.last_error = repr(error)
        conn.ioloop.stop()

    def _closed(self, conn: Any, reason: BaseException) -> None:
        self.last_error = repr(reason)
        conn.ioloop.stop()

    def _channel_opened(self, channel: Channel) -> None:
        channel.add_on_close_callback(self._channel_closed)
        if self._on_confirm is not None:  # publisher confirms on
            channel.confirm_delivery(self._on_confirm, callback=lambda _: self._ready(channel))
        else:
            self._ready(channel)

    def _ready(self, channel: Channel) -> None:
        self.generation += 1
        self.channel = channel
        self._on_channel(channel)
        self._drain()

    def _channel_closed(self, channel: Channel, reason: BaseException) -> None:
        self.last_error = repr(reason)
        self.last_reason = reason
        self.channel = None
        conn = self._conn
        if conn is not None and conn.is_open:
            if not self._stopping.is_set():
                log.warning("amqp %s: channel closed (%s); reconnecting", self.label, reason)
            conn.close()

    def call(self, op: Callable[[Channel], None]) -> None:
        """Run ``op(channel)`` once a channel is open: at once in this thread when the I/O
        thread is idle in its poll and nothing is queued before ``op`` (see ``_io_lock``),
        else on the I/O thread. Wake-ups of the I/O loop are coalesced: one is pending at a
        time, and its drain runs every queued op."""
        if self.channel is not None and not self._ops and self._io_lock.acquire(blocking=False):
            try:
                channel = self.channel  # read again: the I/O thread may have replaced it
                if channel is not None and channel.is_open and not self._ops:
                    with _corked(self._conn):
                        self._apply(op, channel)
                    return
            finally:
                self._io_lock.release()
        with self._kick_lock:
            self._ops.append(op)
            if self._kick_pending:
                return
            self._kick_pending = True
        self.kick()

    def kick(self) -> None:
        conn = self._conn
        if conn is not None:
            try:
                conn.ioloop.add_callback_threadsafe(self._drain)
                return
            except Exception:  # the loop is shutting down; the next connection drains
                log.debug("amqp %s: could not schedule work", self.label, exc_info=True)
        with self._kick_lock:
            self._kick_pending = False

    def _drain(self) -> None:
        with self._kick_lock:
            self._kick_pending = False
        channel = self.channel
        if channel is None or not channel.is_open or not self._ops:
            return
        with _corked(self._conn):
            while channel.is_open and self._ops:
                self._apply(self._ops.popleft(), channel)

    def _apply(self, op: Callable[[Channel], None], channel: Channel) -> None:
        """Run one op; a failing op is logged and does not stop the others."""
        try:
            op(channel)
        except Exception:
            log.exception("amqp %s: operation failed", self.label)

    def close(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        conn = self._conn
        if conn is not None:
            try:
                conn.ioloop.add_callback_threadsafe(lambda: _close(conn))
            except Exception:
                log.debug("amqp %s: close scheduling failed", self.label, exc_info=True)
        self._thread.join(timeout)


class _UnlockedPoll:
    """The I/O loop's poller object, releasing the link's ``_io_lock`` while it waits."""

    def __init__(self, poller: Any, lock: threading.Lock) -> None:
        self._poller = poller
        self._lock = lock

    def poll(self, *args: Any) -> Any:
        self._lock.release()
        try:
            return self._poller.poll(*args)
        finally:
            self._lock.acquire()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._poller, name)


def _unlock_while_polling(ioloop: IOLoop, lock: threading.Lock) -> None:
    """Make ``ioloop`` hold ``lock`` except inside its poll system call. pika is not
    thread-safe, so the connection is only ever used by the thread holding the lock: its own
    I/O thread while it runs callbacks, or a thread that found the loop idle and runs a publish
    or an ack itself, which spares two thread switches (wake the loop, wait for it)."""
    poller = getattr(ioloop, "_poller", None)
    create = getattr(poller, "_create_poller", None)
    if poller is None or create is None:  # pragma: no cover - another pika layout
        return
    poller._create_poller = lambda: _UnlockedPoll(create(), lock)


def _send_eagerly(conn: Any) -> None:
    """Make a connection's frames leave at once. pika buffers every frame and sends it from the
    next turn of the I/O loop, one ``send`` per frame after switching write-readiness
    polling on and off (two ``epoll_ctl`` calls); a publish is three frames. Here the transport
    tries ``send`` first and leaves pika's buffering to what the socket did not take, and
    :func:`_corked` joins the frames of a batch of operations into one write."""
    transport = getattr(conn, "_transport", None)
    sock = getattr(transport, "_sock", None)
    buffered = getattr(transport, "write", None)
    if transport is None or sock is None or buffered is None or hasattr(sock, "do_handshake"):
        return  # not pika's plain TCP transport (TLS keeps pika's own path)
    active = transport._STATE_ACTIVE

    def write(data: bytes) -> None:
        if transport._tx_buffers or transport._state != active:
            buffered(data)
            return
        try:
            sent = sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:  # pika's own path meets the error again and closes the connection
            buffered(data)
            return
        if sent < len(data):
            buffered(data[sent:])

    transport.write = write
    emit = conn._adapter_emit_data
    cork: list[bytes] | None = None

    def emit_corked(data: bytes) -> None:
        if cork is not None:
            cork.append(data)
        else:
            emit(data)

    def flush() -> None:
        nonlocal cork
        frames, cork = cork, None
        if frames:
            emit(b"".join(frames))

    def start() -> None:
        nonlocal cork
        if cork is None:
            cork = []

    conn._adapter_emit_data = emit_corked
    conn._ivy_cork = (start, flush)


@contextmanager
def _corked(conn: Any) -> Iterator[None]:
    """Join the frames sent inside the block into one write (see :func:`_send_eagerly`)."""
    cork = getattr(conn, "_ivy_cork", None)
    if cork is None:
        yield
        return
    start, flush = cork
    start()
    try:
        yield
    finally:
        flush()


def _close(conn: Any) -> None:
    if conn.is_closed:
        conn.ioloop.stop()
    elif not conn.is_closing:
        conn.close()


@dataclass
class _Pending:
    """One publish waiting for its confirm."""

    queue: str
    routing_key: str
    body: bytes
    properties: BasicProperties
    done: threading.Event = field(default_factory=threading.Event)
    error: str | None = None
    cancelled: bool = False


class _Declarer:
    """Declares ivy's queues once per channel, on the I/O thread, queueing work until done."""

    def __init__(self, max_priority: int | None, hint: Callable[[str], bool],
                 seen: set[str] | None = None) -> None:
        self.max_priority = max_priority
        self.hint = hint
        self.plain: set[str] = set()  # queues found to exist with other arguments
        self.seen: set[str] = seen if seen is not None else set()  # every name ever declared
        self._declared: set[str] = set()
        self._waiting: dict[str, list[Callable[[], None]]] = {}

    def reset(self) -> None:
        self._declared.clear()
        self._waiting.clear()

    def arguments(self, name: str) -> dict[str, Any] | None:
        """What to declare ``name`` with; None = passive (use the queue as it is)."""
        if ".delay." in name:
            target, _, ms_text = name.rpartition(".delay.")
            ms = int(ms_text)
            return {"x-message-ttl": ms, "x-dead-letter-exchange": "",
                    "x-dead-letter-routing-key": target, "x-expires": ms + 60_000}
        if name.endswith(".dead"):
            return {}
        if name in self.plain:
            return None
        levels = self.max_priority
        if levels is None:
            levels = DEFAULT_PRIORITIES if self.hint(name) else 0
        return {"x-max-priority": levels} if levels else {}

    def then(self, channel: Channel, name: str, fn: Callable[[], None]) -> None:
        if name in self._declared:
            fn()
            return
        waiting = self._waiting.get(name)
        if waiting is not None:
            waiting.append(fn)
            return
        self._waiting[name] = [fn]
        args = self.arguments(name)

        def declared(_: Any) -> None:
            self._declared.add(name)
            self.seen.add(name)
            for f in self._waiting.pop(name, []):
                f()

        if args is None:
            channel.queue_declare(name, passive=True, callback=declared)
        else:
            channel.queue_declare(name, durable=True, arguments=args, callback=declared)

    def failed(self, reason: BaseException | None) -> None:
        """A channel closed; if a declaration met a queue with other arguments, use it plain."""
        text = str(getattr(reason, "reply_text", ""))
        match = re.search(r"for queue '(.*?)' in vhost", text)
        name = match.group(1) if match else None
        if (getattr(reason, "reply_code", None) == 406 and name is not None
                and ".delay." not in name and not name.endswith(".dead")):
            log.warning("amqp: queue %r exists with other arguments; using it as it is, "
                        "without priorities (%s)", name, reason)
            self.plain.add(name)


class AMQPQueueBackend(QueueBackend):
    """A queue backend on RabbitMQ. ``url`` is an AMQP URL, plus ivy's options
    ``max_priority`` (default: 10 for queues whose tasks use priorities, none for the others),
    ``publish_timeout`` (seconds, default 15)."""

    def __init__(self, url: str = "amqp://guest:guest@127.0.0.1:5672/%2F", *,
                 max_priority: int | None = None, publish_timeout: float = 15.0,
                 content_type: str = "application/json") -> None:
        self.params = pika.URLParameters(
            driver_url(url, OPTIONS, {"heartbeat": "30", "socket_timeout": "10"}))
        self.url = mask_url(url)
        self.max_priority = max_priority
        self.publish_timeout = publish_timeout
        self.content_type = content_type
        self._declarer = _Declarer(max_priority, lambda q: self.priority_hint(q))
        self._pending: dict[int, _Pending] = {}
        self._tag = 0
        self._lock = threading.Lock()
        self._consumers: list[AMQPConsumer] = []
        self._publisher: _Link | None = None

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Self:
        url = str(config.get("url") or "amqp://guest:guest@127.0.0.1:5672/%2F")
        levels = config.get("max_priority")
        return cls(url, max_priority=None if levels in (None, "") else int(levels),
                   publish_timeout=float(config.get("publish_timeout", 15.0)),
                   content_type=str(config.get("content_type", "application/json")))

    # -- publishing ----------------------------------------------------------------------------

    def _link(self) -> _Link:
        with self._lock:
            if self._publisher is None:
                self._publisher = _Link(self.params, "publish", on_channel=self._publisher_ready,
                                        on_confirm=self._confirmed, on_lost=self._publisher_lost)
            return self._publisher

    def _publisher_ready(self, channel: Channel) -> None:
        self._tag = 0
        self._declarer.reset()

    def _publisher_lost(self) -> None:
        """Unconfirmed publishes are sent again on the next connection (at least once)."""
        with self._lock:
            pending, self._pending = list(self._pending.values()), {}
        link = self._publisher
        if link is None:
            return
        self._declarer.failed(link.last_reason)
        link.last_reason = None
        for p in pending:
            if not p.cancelled and not p.done.is_set():
                link._ops.append(self._sender(p))

    def _sender(self, p: _Pending) -> Callable[[Channel], None]:
        def send(channel: Channel) -> None:
            if p.cancelled:
                return

            def now() -> None:
                if p.cancelled or not channel.is_open:
                    return
                self._tag += 1
                with self._lock:
                    self._pending[self._tag] = p
                channel.basic_publish("", p.routing_key, p.body, p.properties)

            if p.routing_key == p.queue:
                self._declarer.then(channel, p.queue, now)
            else:  # a delay queue dead-letters into the queue, which must exist first
                self._declarer.then(channel, p.queue, lambda: self._declarer.then(
                    channel, p.routing_key, now))

        return send

    def _confirmed(self, frame: Any) -> None:
        method = frame.method
        ok = isinstance(method, Basic.Ack)
        settled: list[_Pending] = []
        with self._lock:
            if method.multiple:  # tags are inserted in increasing order: settle from the front
                while self._pending:
                    tag = next(iter(self._pending))
                    if tag > method.delivery_tag:
                        break
                    settled.append(self._pending.pop(tag))
            elif method.delivery_tag in self._pending:
                settled.append(self._pending.pop(method.delivery_tag))
        for p in settled:
            if not ok:
                p.error = f"the broker refused (nack) the message for queue {p.queue!r}"
            p.done.set()

    def send(self, routing_key: str, bodies: list[bytes], *, queue: str, priority: int = 0,
             headers: dict[str, Any] | None = None) -> None:
        """Publish with confirms, all bodies pipelined; return when every one was confirmed,
        raise PublishError if one was refused or not confirmed in time."""
        props = BasicProperties(delivery_mode=2, content_type=self.content_type,
                                priority=priority or None, headers=headers or None)
        batch = [_Pending(queue, routing_key, body, props) for body in bodies]
        link = self._link()
        senders = [self._sender(p) for p in batch]

        def send_all(channel: Channel) -> None:
            for send in senders:
                send(channel)

        link.call(send_all)
        deadline = time.monotonic() + self.publish_timeout
        for p in batch:
            if not p.done.wait(max(0.0, deadline - time.monotonic())):
                for q in batch:
                    q.cancelled = True
                unconfirmed = sum(not q.done.is_set() for q in batch)
                raise PublishError(
                    f"no confirm from {self.url} for {unconfirmed} of {len(batch)} message(s) "
                    f"to queue {queue!r} within {self.publish_timeout} s (last connection "
                    f"error: {link.last_error or 'none'}); is RabbitMQ running and reachable? "
                    "Unconfirmed messages may or may not have been queued")
        refused = [p.error for p in batch if p.error is not None]
        if refused:
            raise PublishError(f"{len(refused)} of {len(batch)} message(s): {refused[0]}")

    def publish(self, queue: str, body: bytes, *, priority: int = 0, delay: float = 0.0,
                route: str | None = None) -> None:
        self.publish_many(queue, [body], priority=priority, delay=delay)

    def publish_many(self, queue: str, bodies: list[bytes], *, priority: int = 0,
                     delay: float = 0.0, route: str | None = None) -> None:
        target = f"{queue}.delay.{delay_bucket(delay)}" if delay > 0 else queue
        self.send(target, bodies, queue=queue, priority=priority)

    # -- consuming -------------------------------------------------------------------------

    def consume(self, queue: str, *, prefetch: int = 1, reserve_time: float = 30.0) -> Consumer:
        consumer = AMQPConsumer(self, queue, prefetch)
        with self._lock:
            self._consumers.append(consumer)
        return consumer

    # -- management (short-lived blocking connections; rare) ----------------------------------

    def _blocking(self) -> pika.BlockingConnection:
        return pika.BlockingConnection(self.params)

    def size(self, queue: str) -> int:
        conn = self._blocking()
        try:
            channel = conn.channel()
            try:
                frame = channel.queue_declare(queue, passive=True)
            except pika.exceptions.ChannelClosedByBroker as exc:
                if exc.reply_code == 404:
                    return 0
                raise
            return int(frame.method.message_count)
        finally:
            conn.close()

    def dead_letters(self, queue: str, limit: int = 100) -> list[DeadLetter]:
        """Peek at ``Q.dead``: read up to ``limit`` and put them all back."""
        conn = self._blocking()
        found: list[DeadLetter] = []
        try:
            channel = conn.channel()
            try:
                channel.queue_declare(f"{queue}.dead", passive=True)
            except pika.exceptions.ChannelClosedByBroker:
                return []
            for _ in range(limit):
                method, props, body = channel.basic_get(f"{queue}.dead", auto_ack=False)
                if method is None:
                    break
                headers = props.headers or {}
                reason = headers.get(REASON_HEADER, "")
                if isinstance(reason, bytes):
                    reason = reason.decode("utf-8", "replace")
                stamp = headers.get("x-ivy-dead-at", 0)
                found.append(DeadLetter(queue, body, str(reason),
                                        float(stamp) if isinstance(stamp, int) else 0.0))
            channel.close()  # every unacked message goes back, in order
        finally:
            conn.close()
        return found

    def queues(self) -> list[str]:
        """The main queues this process declared (AMQP cannot list queues without the
        management plugin)."""
        return sorted(n for n in self._declarer.seen if ".delay." not in n
                      and not n.endswith(".dead"))

    def delete_queues(self, names: list[str]) -> None:
        """Delete queues (with their messages); for tests and tools."""
        conn = self._blocking()
        try:
            channel = conn.channel()
            for name in names:
                channel.queue_delete(name)
        finally:
            conn.close()

    def close(self) -> None:
        with self._lock:
            consumers, self._consumers = self._consumers, []
            publisher, self._publisher = self._publisher, None
        for c in consumers:
            c.shutdown()
        if publisher is not None:
            publisher.close()


class AMQPDelivery(Delivery):
    def __init__(self, consumer: AMQPConsumer, generation: int, tag: int, body: bytes,
                 headers: dict[str, Any], redelivered: bool) -> None:
        super().__init__()
        self._consumer = consumer
        self._generation = generation
        self._tag = tag
        self.queue = consumer.queue
        self.body = body
        earlier = headers.get(DELIVERY_HEADER, 0)
        self.delivery_count = (earlier if isinstance(earlier, int) else 0) + 1 + int(redelivered)
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
        tag = self._tag
        self._settle(lambda ch: ch.basic_nack(tag, requeue=True))

    def _retry(self, delay: float, body: bytes | None) -> None:
        backend = self._consumer.backend
        headers = {DELIVERY_HEADER: self.delivery_count}
        target = (f"{self.queue}.delay.{delay_bucket(delay)}" if delay > 0 else self.queue)
        backend.send(target, [body if body is not None else self.body], queue=self.queue,
                     headers=headers)
        self._ack()

    def _dead_letter(self, reason: str) -> None:
        backend = self._consumer.backend
        backend.send(f"{self.queue}.dead", [self.body], queue=self.queue,
                     headers={REASON_HEADER: reason[:4000], DELIVERY_HEADER: self.delivery_count,
                              "x-ivy-dead-at": int(time.time())})
        self._ack()

    def _extend(self, seconds: float) -> None:
        """Nothing to do: an unacknowledged AMQP message stays reserved while we are connected."""


class AMQPConsumer(Consumer):
    def __init__(self, backend: AMQPQueueBackend, queue: str, prefetch: int) -> None:
        self.backend = backend
        self.queue = queue
        self.prefetch = max(1, prefetch)
        self._buffer: deque[AMQPDelivery] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._outstanding = 0
        self._tag: str | None = None
        self._declarer = _Declarer(backend.max_priority, backend._declarer.hint,
                                   backend._declarer.seen)
        self._declarer.plain = backend._declarer.plain
        self._link = _Link(backend.params, f"consume-{queue}",
                           on_channel=self._start, on_lost=self._lost)

    def _start(self, channel: Channel) -> None:
        self._declarer.reset()
        if self._closed:
            return
        generation = self._link.generation

        def on_message(ch: Channel, method: Any, props: BasicProperties, body: bytes) -> None:
            delivery = AMQPDelivery(self, generation, method.delivery_tag, body,
                                    props.headers or {}, bool(method.redelivered))
            with self._cond:
                if self._closed:
                    ch.basic_nack(method.delivery_tag, requeue=True)
                    return
                self._buffer.append(delivery)
                self._cond.notify()

        def consume() -> None:
            channel.basic_qos(prefetch_count=self.prefetch)
            self._tag = channel.basic_consume(self.queue, on_message)

        self._declarer.then(channel, self.queue, consume)

    def _lost(self) -> None:
        """Deliveries of a lost connection come back from the broker; drop our copies."""
        self._declarer.failed(self._link.last_reason)
        self._link.last_reason = None
        with self._cond:
            self._buffer.clear()

    def get(self, timeout: float) -> Delivery | None:
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
            idle = self._outstanding <= 0
            self._cond.notify_all()
        tag = self._tag

        def cancel(channel: Channel) -> None:
            if tag is not None:
                channel.basic_cancel(tag)
            for d in unstarted:
                if d._generation == self._link.generation:
                    channel.basic_nack(d._tag, requeue=True)

        self._link.call(cancel)
        if idle:
            self._link.call(lambda ch: threading.Thread(target=self.shutdown, daemon=True).start())

    def shutdown(self) -> None:
        """Close the connection (what is still unacknowledged goes back to the queue)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._link.close()
