"""The publishing side of the AMQP notifier: one link with publisher confirms, declaring what it
publishes to before the first publish on each channel (docs/internals/amqp.md)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import pika
from pika.channel import Channel

from ivy._amqp.confirms import Confirms, Publish
from ivy._amqp.topology import Once, queue_named
from ivy._flags import complete
from ivy.errors import PublishError

log = logging.getLogger("ivy.amqp")

#: declarations remembered per channel before the stale ones are dropped
MAX_DECLARED = 10_000
#: seconds a reply queue the broker refused (403 ACCESS_REFUSED, 405 RESOURCE_LOCKED: another
#: connection's exclusive queue) fails publishes at once, without touching the connection
REFUSED_FOR = 30.0
#: refused queues remembered at most (the oldest forgotten first)
MAX_REFUSED = 1_000
#: channel-closing replies about one queue that sending again would only repeat
_REFUSALS = (403, 405)


@dataclass(eq=False)
class Outgoing(Publish):
    """One notification: ``declare`` names what must exist first: ``("queue", name)`` (a
    reply queue), ``("stream", name)`` or ``("exchange", name)`` (a fanout exchange, which may
    have no subscriber at all: not mandatory)."""

    declare: tuple[str, str] = ("queue", "")

    def __post_init__(self) -> None:
        self.mandatory = self.declare[0] != "exchange"


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


class Publisher(Confirms[Outgoing]):
    """Confirmed notifications over one link, opened on first use: a nacked or returned one
    is sent again until its deadline; a reply queue the broker refused fails the publishes to
    it for a while instead of closing channel after channel."""

    def __init__(self, params: pika.URLParameters | Sequence[pika.URLParameters], url: str,
                 label: str, declarations: Declarations) -> None:
        super().__init__(params, url, label)
        self.params = params
        self.declarations = declarations
        #: reply queues the broker refused, and until when publishes to them fail at once
        self._refused_queues: dict[str, tuple[float, str]] = {}

    def send(self, out: Outgoing) -> Future[None]:
        """Hand ``out`` to the connection; its future completes on the broker's confirm."""
        with self._lock:
            refused = self._refused_lately(out)
        if refused is not None:
            complete(out.future, PublishError(refused))
            return out.future
        self.submit([out])
        return out.future

    def _refused_lately(self, out: Outgoing) -> str | None:
        """Why ``out`` fails at once: its reply queue was refused by the broker lately (under
        the lock)."""
        kind, name = out.declare
        if kind != "queue" or not self._refused_queues:
            return None
        until, why = self._refused_queues.get(name, (0.0, ""))
        if until < time.monotonic():
            self._refused_queues.pop(name, None)
            return None
        return (f"the broker {self.url} refused the reply queue {name!r} lately ({why}); not "
                "sent")

    def _refused_now(self, reason: BaseException | None) -> list[tuple[Outgoing, str]]:
        """A channel closed by a refusal naming a reply queue (403, 405): what was sent to that
        queue fails now instead of being sent again on the next channel, where it would close
        that one too (and stall every other notification and heartbeat of the connection);
        publishes to it fail at once for ``REFUSED_FOR`` s. Under the lock; returns what
        fails, and why."""
        if getattr(reason, "reply_code", None) not in _REFUSALS:
            return []
        text = str(getattr(reason, "reply_text", ""))
        names = {o.declare[1] for o in self._unconfirmed.values()
                 if o.declare[0] == "queue" and f"'{o.declare[1]}'" in text}
        if not names:
            return []
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
        return [(o, f"the broker {self.url} refused the reply queue {o.declare[1]!r} ({why})")
                for o in self._unconfirmed.values()
                if o.declare[0] == "queue" and o.declare[1] in names]

    # -- the role's part of the engine ------------------------------------------------------

    def _declare(self, channel: Channel, p: Outgoing, now: Callable[[], None]) -> None:
        self.declarations.then(channel, p.declare, now)

    def _ready(self, channel: Channel) -> None:
        self.declarations.reset()

    def _lost(self, reason: BaseException | None) -> None:
        """Reply queues refused fail their notifications; those past their deadline fail;
        the others are sent again."""
        self.declarations.failed(reason)
        now = time.monotonic()
        with self._lock:
            failed = self._refused_now(reason)
            gone = {id(o) for o, _ in failed}
            failed += [(o, f"the connection to {self.url} was lost before the broker confirmed "
                           f"a notification to {o.routing_key or o.exchange!r}")
                       for o in self._unconfirmed.values()
                       if id(o) not in gone and (o.cancelled or o.future.done()
                                                 or o.deadline < now)]
        for out, why in failed:
            self._finish(out, PublishError(why))

    def _nacked_error(self, p: Outgoing) -> PublishError:
        return PublishError(f"the broker {self.url} refused (nack) a notification to "
                            f"{p.routing_key or p.exchange!r}"
                            + (f" {p.nacks + 1} times" if p.nacks else ""))

    def _unroutable_error(self, p: Outgoing) -> PublishError:
        return PublishError(f"the broker {self.url} returned a notification to "
                            f"{p.routing_key!r} as unroutable ({p.returned}) until its "
                            "deadline, even after declaring the queue again: is something "
                            "deleting it?")

    def _after_confirm(self, nacked: list[Outgoing], returned: list[Outgoing]) -> None:
        if returned:
            log.warning("amqp %s: %d notification(s) to %r came back unroutable (%s: the reply "
                        "queue was deleted?); declaring again and resending", self.label,
                        len(returned), returned[0].routing_key, returned[0].returned)
            self.declarations.reset()  # declared afresh before they are sent again
        if nacked:
            log.info("amqp %s: %d notification(s) to %r refused (nack), sending again (a "
                     "quorum queue without a leader for a moment, or full?)", self.label,
                     len(nacked), nacked[0].routing_key or nacked[0].exchange)
