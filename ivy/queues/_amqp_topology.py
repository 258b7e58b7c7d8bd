"""Queue topology of the AMQP backend: what ivy declares on the broker, and with which
arguments (the layout is described in :mod:`ivy.queues.amqp`).

* queue Q: durable, ``x-max-priority`` when its tasks use priorities;
* ``Q.delay.<ms>``: messages wait there for their TTL, then are dead-lettered into Q;
* ``Q.dead``: plain and durable.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable
from typing import Any

from pika.channel import Channel

log = logging.getLogger("ivy.amqp")

DEFAULT_PRIORITIES = 10


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


class Declarer:
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
