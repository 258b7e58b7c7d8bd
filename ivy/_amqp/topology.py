"""Queue topology of the AMQP backend: what ivy declares on the broker, and with which arguments
(docs/internals/amqp.md, "Topology")."""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Callable, Hashable
from typing import Any

from pika.channel import Channel

log = logging.getLogger("ivy.amqp")

DEFAULT_PRIORITIES = 10
#: headers ivy puts on messages it moves (PROTOCOL.md)
REASON_HEADER = "x-ivy-reason"
DEAD_AT_HEADER = "x-ivy-dead-at"
DEAD_ID_HEADER = "x-ivy-dead-id"
DELIVERY_HEADER = "x-ivy-delivery"
#: set by quorum queues: how many times the broker delivered the message before this time
BROKER_DELIVERY_HEADER = "x-delivery-count"
QUEUE_TYPES = ("classic", "quorum")
#: x-delivery-limit of quorum queues unless configured (RabbitMQ 4.0's own default)
DEFAULT_DELIVERY_LIMIT = 20
#: a delay queue expires this long (ms) after its TTL past its last declaration...
DELAY_GRACE_MS = 60_000
#: ...so a publisher declares it again when its declaration is this old (seconds)
DELAY_REFRESH = 15.0


def is_helper_queue(name: str) -> bool:
    """Whether ``name`` is a delay queue or a dead-letter queue (not a main queue)."""
    return ".delay." in name or name.endswith(".dead")


def delay_queue(queue: str, delay: float) -> str:
    """The queue whose messages are dead-lettered into ``queue`` after ``delay`` seconds."""
    return f"{queue}.delay.{delay_bucket(delay)}"


def dead_queue(queue: str) -> str:
    """Where ``queue``'s dead letters go."""
    return f"{queue}.dead"


def delay_bucket(seconds: float) -> int:
    """Milliseconds, rounded up to two significant digits (1234 ms -> 1300 ms)."""
    ms = max(1, math.ceil(seconds * 1000))
    if ms < 100:
        return ms
    scale = 10 ** (len(str(ms)) - 2)
    return int(math.ceil(ms / scale) * scale)


def queue_named(reason: BaseException | None, code: int) -> str | None:
    """The queue or exchange a channel-closing error with AMQP reply ``code`` is about."""
    if getattr(reason, "reply_code", None) != code:
        return None
    match = re.search(r"(?:queue|exchange) '(.*?)' in vhost",
                      str(getattr(reason, "reply_text", "")))
    return match.group(1) if match else None


class Once:
    """Keyed asynchronous steps on one channel (a declaration, a binding): :meth:`run` calls
    ``fn`` at once if ``key``'s step is done, else queues it, and the first caller starts the
    step with ``start(done)``; the broker's answer runs every queued ``fn``. With ``fresh``
    seconds, a step done longer ago counts as not done (it is sent again), and at most
    ``limit`` keys are remembered (the stale ones are forgotten first). Used only by the thread
    that holds the connection (pika is not thread-safe)."""

    def __init__(self, fresh: float | None = None, limit: int = 10_000) -> None:
        self.fresh = fresh
        self.limit = limit
        self._done: dict[Hashable, float] = {}
        self._waiting: dict[Hashable, list[Callable[[], None]]] = {}

    def clear(self) -> None:
        self._done.clear()
        self._waiting.clear()

    def forget(self) -> None:
        """Count every step as not done (the steps in progress still run their waiters)."""
        self._done.clear()

    def done(self, key: Hashable) -> bool:
        at = self._done.get(key)
        return at is not None and (self.fresh is None or time.monotonic() - at < self.fresh)

    def mark(self, key: Hashable) -> None:
        if self.fresh is not None and len(self._done) >= self.limit:
            stale = time.monotonic() - self.fresh
            self._done = {k: t for k, t in self._done.items() if t > stale}
        self._done[key] = time.monotonic()

    def run(self, key: Hashable, fn: Callable[[], None],
            start: Callable[[Callable[[Any], None]], None]) -> None:
        if self.done(key):
            fn()
            return
        waiting = self._waiting.get(key)
        if waiting is not None:
            waiting.append(fn)
            return
        self._waiting[key] = [fn]

        def finished(_: Any) -> None:
            self.mark(key)
            for f in self._waiting.pop(key, []):
                f()

        start(finished)


class Declarer:
    """Declares ivy's queues (and, where the backend names one, its exchange and the bindings
    of its queues) once per channel, on the I/O thread, queueing work until done."""

    def __init__(self, max_priority: int | None, hint: Callable[[str], bool],
                 seen: set[str] | None = None, *, exchange: str = "",
                 exchange_type: str = "direct",
                 routes: Callable[[str], list[str]] = lambda queue: [],
                 queue_type: str = "classic",
                 delivery_limit: int | None = DEFAULT_DELIVERY_LIMIT) -> None:
        self.max_priority = max_priority
        self.hint = hint
        self.exchange = exchange
        self.exchange_type = exchange_type
        self.routes = routes
        self.queue_type = queue_type
        self.delivery_limit = delivery_limit
        self.plain: set[str] = set()  # queues found with other arguments: used as they are
        #: quorum main queues found to exist with other arguments -> the broker's reply text
        self.mismatched: dict[str, str] = {}
        self.seen: set[str] = seen if seen is not None else set()  # every name ever declared
        # queue names, and ("exchange",), ("bind", queue, key), ("routed", queue, key)
        self._once = Once()
        #: delay queues: declared again once their declaration is DELAY_REFRESH seconds old
        self._delays = Once(fresh=DELAY_REFRESH)

    def copy(self) -> Declarer:
        """A declarer for another channel, with the same options, sharing what was learned
        about existing queues."""
        other = Declarer(self.max_priority, self.hint, self.seen, exchange=self.exchange,
                         exchange_type=self.exchange_type, routes=self.routes,
                         queue_type=self.queue_type, delivery_limit=self.delivery_limit)
        other.plain = self.plain
        other.mismatched = self.mismatched
        return other

    @property
    def quorum(self) -> bool:
        return self.queue_type == "quorum"

    def reset(self) -> None:
        """A new channel: nothing is declared on it yet."""
        self._once.clear()
        self._delays.clear()

    def forget(self) -> None:
        """Declare again what is published to next on this channel (a publish came back
        unroutable: a queue or binding was deleted meanwhile). Declarations in progress go
        on."""
        self._once.forget()
        self._delays.forget()

    def arguments(self, name: str) -> dict[str, Any] | None:
        """What to declare ``name`` with; None = passive (use the queue as it is)."""
        if name in self.plain:
            return None
        quorum: dict[str, Any] = {"x-queue-type": "quorum"} if self.quorum else {}
        # quorum: what RabbitMQ dead-letters is kept until the target queue confirmed it
        safely: dict[str, Any] = ({"x-dead-letter-strategy": "at-least-once",
                                   "x-overflow": "reject-publish"} if self.quorum else {})
        if ".delay." in name:
            target, _, ms_text = name.rpartition(".delay.")
            ms = int(ms_text)
            return {**quorum, "x-message-ttl": ms, "x-dead-letter-exchange": "",
                    "x-dead-letter-routing-key": target, "x-expires": ms + DELAY_GRACE_MS,
                    **safely}
        if name.endswith(".dead"):
            return quorum
        if self.quorum:  # no priorities: quorum queues refuse x-max-priority
            limit = {"x-delivery-limit": self.delivery_limit} if self.delivery_limit else {}
            return {**quorum, "x-dead-letter-exchange": "",
                    "x-dead-letter-routing-key": dead_queue(name), **safely, **limit}
        levels = self.max_priority
        if levels is None:
            levels = DEFAULT_PRIORITIES if self.hint(name) else 0
        return {"x-max-priority": levels} if levels else {}

    def then(self, channel: Channel, name: str, fn: Callable[[], None]) -> None:
        """Run ``fn`` once the queue ``name`` was declared on ``channel`` (a delay queue:
        declared within the last ``DELAY_REFRESH`` seconds)."""
        once = self._delays if ".delay." in name else self._once
        if once.done(name):
            fn()
            return
        args = self.arguments(name)

        def start(done: Callable[[Any], None]) -> None:
            def declared(frame: Any) -> None:
                self.seen.add(name)
                self.mismatched.pop(name, None)  # deleted and declared anew meanwhile
                done(frame)

            def declare() -> None:
                if args is None:
                    channel.queue_declare(name, passive=True, callback=declared)
                else:
                    channel.queue_declare(name, durable=True, arguments=args, callback=declared)

            if self.quorum and args is not None and not is_helper_queue(name):
                self.then(channel, dead_queue(name), declare)  # the target of its dead letters
            else:
                declare()

        once.run(name, fn, start)

    def routed(self, channel: Channel, queue: str, key: str, fn: Callable[[], None]) -> None:
        """Run ``fn`` once ``queue`` and the exchange were declared and ``queue`` is bound to
        the exchange with its own name, the routes of its tasks and ``key``, so that what is
        published to the exchange with ``key`` lands in ``queue``."""
        ready = ("routed", queue, key)
        if self._once.done(ready):
            fn()
            return
        exchange = self.exchange
        keys = sorted({queue, key, *self.routes(queue)})

        def bind_all() -> None:
            left = len(keys)

            def bound() -> None:
                nonlocal left
                left -= 1
                if left == 0:
                    self._once.mark(ready)
                    fn()

            for k in keys:
                self._once.run(("bind", queue, k), bound, binder(k))

        def binder(k: str) -> Callable[[Callable[[Any], None]], None]:
            return lambda done: channel.queue_bind(queue, exchange, routing_key=k, callback=done)

        def declare_exchange(done: Callable[[Any], None]) -> None:
            channel.exchange_declare(exchange, exchange_type=self.exchange_type, durable=True,
                                     callback=done)

        self.then(channel, queue,
                  lambda: self._once.run(("exchange",), bind_all, declare_exchange))

    def failed(self, reason: BaseException | None) -> None:
        """A channel closed. A queue used as it was that is gone (404) is declared with
        ivy's arguments from then on. If a declaration met a queue with other arguments (406
        PRECONDITION_FAILED): a delay or dead-letter queue, and a classic main queue, are used
        as they are; a main queue that should be a quorum queue is remembered as mismatched,
        with the broker's text (what is published to it or consumed from it fails)."""
        text = str(getattr(reason, "reply_text", ""))
        code = getattr(reason, "reply_code", None)
        gone = queue_named(reason, 404)
        if gone is not None and gone in self.plain:
            # a queue used as it was (declared passively) is gone, an expired delay queue of
            # another ivy, say: declare it with ivy's arguments from now on
            log.info("amqp: queue %r, used as it was, is gone; declaring it anew", gone)
            self.plain.discard(gone)
            return
        match = re.search(r"for queue '(.*?)' in vhost", text)
        name = match.group(1) if match else None
        if code != 406 or name is None:
            return
        if self.quorum and not is_helper_queue(name):
            log.error("amqp: queue %r cannot be declared as a quorum queue: %s", name, text)
            self.mismatched[name] = text
            return
        log.warning("amqp: queue %r exists with other arguments; using it as it is%s (%s)",
                    name, "" if is_helper_queue(name) else ", without priorities", reason)
        self.plain.add(name)
