"""The pika transport of the AMQP backend: one ``SelectConnection`` with one channel on its own
I/O thread, reconnecting with backoff, and a way for other threads to use it
(docs/internals/amqp.md)."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import pika
from pika.adapters.select_connection import IOLoop
from pika.channel import Channel

from ivy._amqp._pika_patches import corked, send_eagerly, unlock_while_polling
from ivy._process import Backoff

log = logging.getLogger("ivy.amqp")

T = TypeVar("T")


class Link:
    """One pika SelectConnection with one channel, on its own thread (from :meth:`start` on),
    reconnecting forever, to one node or to each of several in turn."""

    def __init__(self, params: pika.URLParameters | Sequence[pika.URLParameters], label: str, *,
                 on_channel: Callable[[Channel], None],
                 on_confirm: Callable[[Any], None] | None = None,
                 on_lost: Callable[[], None] | None = None) -> None:
        self.nodes: list[pika.URLParameters] = (
            list(params) if isinstance(params, Sequence) else [params])
        #: the node connected to, or tried, now
        self.params = self.nodes[0]
        #: whether the current connection attempt opened (else it counts as a failed one)
        self._opened_now = False
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
        #: whether the I/O loop lets go of ``_io_lock`` while it polls (a tested pika)
        self.shortcuts = False
        self._stopping = threading.Event()
        #: the connection was dropped by ``recycle``, not lost
        self._recycled = False
        self._thread = threading.Thread(target=self._run, name=f"ivy-amqp-{label}", daemon=True)

    def start(self) -> None:
        """Start connecting, on the link's own thread. Called by the owner once it holds the
        link: the callbacks may run at once (a refused node calls ``on_lost`` within
        milliseconds) and may read the owner's reference to it."""
        self._thread.start()

    def _run(self) -> None:
        backoff = Backoff()
        node = 0
        failed_in_row = 0  # connections that failed to open, one after the other
        while not self._stopping.is_set():
            opened_at = time.monotonic()
            self.params = self.nodes[node]
            self._opened_now = False
            try:
                ioloop = IOLoop()
                self.shortcuts = unlock_while_polling(ioloop, self._io_lock)
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
            if self._recycled:  # dropped on purpose (recycle): the next node, now
                self._recycled = False
                node = (node + 1) % len(self.nodes)
                continue
            lived = time.monotonic() - opened_at
            if lived > 10:
                backoff.reset()
            failed_in_row = 0 if self._opened_now else failed_in_row + 1
            lost = self.params_url
            node = (node + 1) % len(self.nodes)
            # the next node at once after a node that did not answer (until all failed in a
            # row) or after losing a connection that had worked for a while; else (a
            # connection that the broker keeps closing soon after it opened) with backoff
            if len(self.nodes) > 1 and (0 < failed_in_row < len(self.nodes)
                                        or (self._opened_now and lived > 10)):
                log.warning("amqp %s: connection to %s lost (%s); trying %s", self.label,
                            lost, self.last_error, self._url(self.nodes[node]))
                continue
            failed_in_row = 0
            log.warning("amqp %s: connection to %s lost (%s); reconnecting to %s in %.1f s",
                        self.label, lost, self.last_error, self._url(self.nodes[node]),
                        backoff.delay)
            backoff.wait(self._stopping)

    @property
    def params_url(self) -> str:
        """Where the link connects, without credentials, for logs."""
        return self._url(self.params)

    @staticmethod
    def _url(p: pika.URLParameters) -> str:
        return f"amqp://{p.host}:{p.port}/{p.virtual_host}"

    def _opened(self, conn: Any) -> None:
        self._opened_now = True
        send_eagerly(conn)
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
        if (self.shortcuts and self.channel is not None and not self._ops
                and self._io_lock.acquire(blocking=False)):
            try:
                channel = self.channel  # read again: the I/O thread may have replaced it
                if channel is not None and channel.is_open and not self._ops:
                    with corked(self._conn):
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

    def call_each(self, ops: list[Callable[[Channel], None]]) -> None:
        """:meth:`call` for several ops: they run in order, as one op (one hand-over)."""
        def run_all(channel: Channel) -> None:
            for op in ops:
                op(channel)

        self.call(run_all)

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
        with corked(self._conn):
            while channel.is_open and self._ops:
                self._apply(self._ops.popleft(), channel)

    def _apply(self, op: Callable[[Channel], None], channel: Channel) -> None:
        """Run one op; a failing op is logged and does not stop the others."""
        try:
            op(channel)
        except Exception:
            log.exception("amqp %s: operation failed", self.label)

    def recycle(self, channel: Channel, why: str) -> None:
        """Drop the connection of ``channel`` (once; a newer one is left alone) and connect
        again at once, to the next node: for a channel the broker keeps refusing (see the
        backend). Not a failure: no backoff before the next connection."""
        conn = self._conn

        def drop() -> None:
            if self.channel is channel and conn is not None and conn.is_open:
                log.warning("amqp %s: reconnecting (%s)", self.label, why)
                self._recycled = True
                conn.close()

        if conn is not None:
            try:
                conn.ioloop.add_callback_threadsafe(drop)
            except Exception:  # the loop is shutting down: it reconnects anyway
                log.debug("amqp %s: could not schedule a reconnect", self.label, exc_info=True)

    def close(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        conn = self._conn
        if conn is not None:
            try:
                conn.ioloop.add_callback_threadsafe(lambda: close_connection(conn))
            except Exception:
                log.debug("amqp %s: close scheduling failed", self.label, exc_info=True)
        self._thread.join(timeout)


def pop_confirmed(by_tag: dict[int, T], method: Any) -> list[T]:
    """Take out of ``by_tag`` (publish tag -> what was published, tags inserted in increasing
    order) the entries that a confirm (``Basic.Ack`` or ``Basic.Nack``) settles: every tag up
    to its ``delivery_tag`` when it is ``multiple``, else that one tag. The caller holds the
    lock that guards ``by_tag``."""
    settled: list[T] = []
    if method.multiple:
        while by_tag:
            tag = next(iter(by_tag))
            if tag > method.delivery_tag:
                break
            settled.append(by_tag.pop(tag))
    elif method.delivery_tag in by_tag:
        settled.append(by_tag.pop(method.delivery_tag))
    return settled


def close_connection(conn: Any) -> None:
    """Close ``conn`` from its I/O thread, or stop its loop if it is closed already."""
    if conn.is_closed:
        conn.ioloop.stop()
    elif not conn.is_closing:
        conn.close()
