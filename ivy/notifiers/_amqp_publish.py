"""The publishing side of the AMQP notifier: one link with publisher confirms, declaring what it
publishes to before the first publish on each channel (docs/internals/amqp.md)."""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import pika
from pika.channel import Channel
from pika.spec import Basic, BasicProperties

from ivy._amqp.link import Link, pop_confirmed
from ivy._amqp.topology import Once, queue_named
from ivy._flags import Sent, complete
from ivy.errors import PublishError

log = logging.getLogger("ivy.amqp")

#: declarations remembered per channel before the stale ones are dropped
MAX_DECLARED = 10_000
#: returned bodies remembered at most until their confirms come (one channel)
MAX_RETURNS = 10_000
#: seconds a reply queue the broker refused (403 ACCESS_REFUSED, 405 RESOURCE_LOCKED: another
#: connection's exclusive queue) fails publishes at once, without touching the connection
REFUSED_FOR = 30.0
#: refused queues remembered at most (the oldest forgotten first)
MAX_REFUSED = 1_000
#: channel-closing replies about one queue that sending again would only repeat
_REFUSALS = (403, 405)
_seq = itertools.count()


@dataclass(eq=False)
class Outgoing:
    """One publish: to ``exchange`` with ``routing_key``; ``declare`` names what must exist
    first: ``("queue", name)`` (a reply queue), ``("stream", name)`` or ``("exchange", name)``
    (a fanout exchange)."""

    exchange: str
    routing_key: str
    body: bytes
    properties: BasicProperties
    declare: tuple[str, str]
    deadline: float
    future: Future[None] = field(default_factory=Sent)
    seq: int = field(default_factory=lambda: next(_seq))
    handed: bool = False
    cancelled: bool = False
    #: how many times the broker refused it
    nacks: int = 0


class Declarations:
    """What was declared on the current channel, and the queues to declare passively. Used
    only by the thread that holds the connection (pika is not thread-safe)."""

    def __init__(self, reply_arguments: dict[str, Any], refresh: float, label: str,
                 stream_arguments: dict[str, Any] | None = None) -> None:
        self.reply_arguments = reply_arguments
        self.stream_arguments = stream_arguments or {}
        self.label = label
        self.passive: set[str] = set()
        self._once = Once(fresh=refresh, limit=MAX_DECLARED)

    def reset(self) -> None:
        self._once.clear()

    def then(self, channel: Channel, key: tuple[str, str], fn: Callable[[], None]) -> None:
        """Run ``fn`` once ``key`` is declared (and recently enough) on ``channel``."""
        self._once.run(key, fn, lambda done: self._declare(channel, key, done))

    def _declare(self, channel: Channel, key: tuple[str, str],
                 done: Callable[[Any], None]) -> None:
        kind, name = key
        if kind == "exchange":
            channel.exchange_declare(name, exchange_type="fanout", durable=True,
                                     passive=name in self.passive, callback=done)
        elif name in self.passive:
            channel.queue_declare(name, passive=True, callback=done)
        elif kind == "stream":
            channel.queue_declare(name, durable=True, arguments=self.stream_arguments,
                                  callback=done)
        else:
            channel.queue_declare(name, durable=True, arguments=self.reply_arguments,
                                  callback=done)

    def failed(self, reason: BaseException | None) -> None:
        """A channel closed: a reply queue with other arguments is used as it is from now on;
        one that vanished is declared again."""
        mismatch = queue_named(reason, 406)
        if mismatch is not None and mismatch not in self.passive:
            log.warning("amqp %s: %r exists with other arguments than ivy declares; using it "
                        "as it is (%s). Give producers and workers the same reply_expires",
                        self.label, mismatch, reason)
            self.passive.add(mismatch)
        missing = queue_named(reason, 404)
        if missing is not None:
            self.passive.discard(missing)


class Publisher:
    """Confirmed publishes over one :class:`Link`, opened on first use."""

    def __init__(self, params: pika.URLParameters | Sequence[pika.URLParameters], url: str,
                 label: str, declarations: Declarations) -> None:
        self.params = params
        self.url = url
        self.label = label
        self.declarations = declarations
        self._lock = threading.Lock()
        self._link: Link | None = None
        self._tag = 0
        self._by_tag: dict[int, Outgoing] = {}
        #: handed or queued, not confirmed yet, in the order they were sent
        self._unconfirmed: dict[int, Outgoing] = {}
        #: refused publishes to send again, and the timer that will
        self._refused: list[Outgoing] = []
        self._resender: threading.Timer | None = None
        #: bodies the broker returned as unroutable on this channel, and why: each return
        #: comes before the confirm of its publish, which looks it up (I/O thread only)
        self._returns: dict[bytes, str] = {}
        #: reply queues the broker refused, and until when publishes to them fail at once
        self._refused_queues: dict[str, tuple[float, str]] = {}

    @property
    def last_error(self) -> str:
        link = self._link
        return (link.last_error if link is not None else "") or "none"

    def link(self) -> Link:
        with self._lock:
            if self._link is None:
                self._link = Link(self.params, self.label, on_channel=self._ready,
                                  on_confirm=self._confirmed, on_lost=self._lost)
                self._link.start()
            return self._link

    def send(self, out: Outgoing) -> Future[None]:
        """Hand ``out`` to the connection; its future completes on the broker's confirm."""
        link = self.link()
        with self._lock:
            refused = self._refusal(out)
            if refused is None:
                self._unconfirmed[out.seq] = out
        if refused is not None:
            complete(out.future, PublishError(refused))
            return out.future
        link.call(self._sender(out))
        return out.future

    def _refusal(self, out: Outgoing) -> str | None:
        """Why ``out`` fails at once: its reply queue was refused by the broker lately (under
        ``_lock``)."""
        kind, name = out.declare
        if kind != "queue" or not self._refused_queues:
            return None
        until, why = self._refused_queues.get(name, (0.0, ""))
        if until < time.monotonic():
            self._refused_queues.pop(name, None)
            return None
        return (f"the broker {self.url} refused the reply queue {name!r} lately ({why}); not "
                "sent")

    def _fail_refused(self, reason: BaseException | None) -> None:
        """A channel closed by a refusal naming a reply queue (403, 405): what was sent to that
        queue fails now instead of being sent again on the next channel, where it would close
        that one too (and stall every other notification and heartbeat of the connection);
        publishes to it fail at once for ``REFUSED_FOR`` s. Under ``_lock``."""
        if getattr(reason, "reply_code", None) not in _REFUSALS:
            return
        text = str(getattr(reason, "reply_text", ""))
        names = {o.declare[1] for o in self._unconfirmed.values()
                 if o.declare[0] == "queue" and f"'{o.declare[1]}'" in text}
        if not names:
            return
        why = f"{getattr(reason, 'reply_code', '')} {text}"
        log.warning("amqp %s: the broker refused the reply queue(s) %s (%s); their "
                    "notifications fail, the others are sent again", self.label,
                    ", ".join(repr(n) for n in sorted(names)), why)
        until = time.monotonic() + REFUSED_FOR
        for name in names:
            self._refused_queues.pop(name, None)
            self._refused_queues[name] = (until, why)
        while len(self._refused_queues) > MAX_REFUSED:
            del self._refused_queues[next(iter(self._refused_queues))]
        for seq in [s for s, o in self._unconfirmed.items()
                    if o.declare[0] == "queue" and o.declare[1] in names]:
            out = self._unconfirmed.pop(seq)
            complete(out.future, PublishError(
                f"the broker {self.url} refused the reply queue {out.declare[1]!r} ({why})"))

    def cancel(self, out: Outgoing) -> None:
        """Give up on ``out`` (its caller stopped waiting): it is not sent again."""
        out.cancelled = True
        with self._lock:
            self._unconfirmed.pop(out.seq, None)

    def _ready(self, channel: Channel) -> None:
        self._tag = 0
        self.declarations.reset()
        self._returns.clear()
        channel.add_on_return_callback(self._returned)

    def _returned(self, channel: Channel, method: Any, properties: BasicProperties,
                  body: bytes) -> None:
        """The broker returned a notification no queue took: its reply queue was deleted
        after this channel declared it. Its confirm, which comes next, sends it again after
        declaring afresh (until its deadline) instead of counting it as delivered."""
        if len(self._returns) < MAX_RETURNS:
            self._returns[body] = f"{method.reply_code} {method.reply_text}"

    def _lost(self) -> None:
        """What reached the lost channel unconfirmed is sent again on the next one."""
        link = self._link
        if link is None:
            return
        reason = link.last_reason
        self.declarations.failed(reason)
        link.last_reason = None
        now = time.monotonic()
        with self._lock:
            self._by_tag = {}
            self._fail_refused(reason)
            for seq in [s for s, o in self._unconfirmed.items()
                        if o.cancelled or o.future.done() or o.deadline < now]:
                out = self._unconfirmed.pop(seq)
                complete(out.future, PublishError(
                    f"the connection to {self.url} was lost before the broker confirmed a "
                    f"notification to {out.routing_key or out.exchange!r}"))
            resend = [o for o in self._unconfirmed.values() if o.handed]
        for out in resend:
            out.handed = False
            link._ops.append(self._sender(out))

    def _sender(self, out: Outgoing) -> Callable[[Channel], None]:
        def send(channel: Channel) -> None:
            if out.cancelled or out.future.done():
                return
            out.handed = True

            def now() -> None:
                if out.cancelled or out.future.done() or not channel.is_open:
                    return
                self._tag += 1
                with self._lock:
                    self._by_tag[self._tag] = out
                # to a reply queue or stream, mandatory: one that no queue takes comes back
                # (see _returned) instead of being confirmed and lost. Not to the events
                # exchange, which may have no subscriber at all.
                channel.basic_publish(out.exchange, out.routing_key, out.body, out.properties,
                                      mandatory=out.declare[0] != "exchange")

            self.declarations.then(channel, out.declare, now)

        return send

    def _confirmed(self, frame: Any) -> None:
        method = frame.method
        ok = isinstance(method, Basic.Ack)
        now = time.monotonic()
        again: list[Outgoing] = []  # refused, to send again before their deadline
        ended: list[Outgoing] = []
        returned: list[tuple[Outgoing, str]] = []
        with self._lock:
            for out in pop_confirmed(self._by_tag, method):
                why = self._returns.pop(out.body, None) if self._returns else None
                if why is not None:
                    if not out.cancelled and now < out.deadline:
                        out.handed = False
                        again.append(out)
                    else:
                        self._unconfirmed.pop(out.seq, None)
                    returned.append((out, why))
                elif not ok and not out.cancelled and now < out.deadline:
                    out.handed = False  # on no channel now: a lost connection does not resend it
                    out.nacks += 1
                    again.append(out)
                else:
                    self._unconfirmed.pop(out.seq, None)
                    ended.append(out)
            self._refused.extend(again)
            if again and self._resender is None:
                self._resender = threading.Timer(0.25, self._send_refused)
                self._resender.daemon = True
                self._resender.start()
        for out in ended:
            complete(out.future, None if ok else PublishError(
                f"the broker {self.url} refused (nack) a notification to "
                f"{out.routing_key or out.exchange!r}"
                + (f" {out.nacks + 1} times" if out.nacks else "")))
        if returned:
            for out, why in returned:
                if out not in again:
                    complete(out.future, PublishError(
                        f"the broker {self.url} returned a notification to "
                        f"{out.routing_key!r} as unroutable ({why}) until its deadline, even "
                        "after declaring the queue again: is something deleting it?"))
            log.warning("amqp %s: %d notification(s) to %r came back unroutable (%s: the reply "
                        "queue was deleted?); declaring again and resending", self.label,
                        len(returned), returned[0][0].routing_key, returned[0][1])
            self.declarations.reset()  # declared afresh before they are sent again
        nacked = [o for o in again if all(o is not r for r, _ in returned)]
        if nacked:
            log.info("amqp %s: %d notification(s) to %r refused (nack), sending again (a "
                     "quorum queue without a leader for a moment, or full?)", self.label,
                     len(nacked), nacked[0].routing_key or nacked[0].exchange)

    def _send_refused(self) -> None:
        with self._lock:
            again, self._refused, self._resender = self._refused, [], None
            link = self._link
        if link is not None:
            link.call_each([self._sender(out) for out in again])

    def close(self) -> None:
        with self._lock:
            link, self._link = self._link, None
        if link is not None:
            link.close()
