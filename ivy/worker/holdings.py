"""What a worker holds: each delivery it admitted, with its lease, when its heartbeat extends it
next, and its message once it runs."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from ivy.message import Message
from ivy.queues.base import Delivery


@dataclass
class Held:
    """A delivery a worker holds, when to extend its reservation next, and the message once
    it is running."""

    delivery: Delivery
    lease: float
    next_extend: float
    message: Message | None = None
    started: float = 0.0
    running_sent: bool = False


class Holdings:
    """The deliveries one worker holds; thread-safe. :attr:`lock` is the worker's own lock as
    well, so that admitting a delivery and stopping are each one step (ivy.worker.core)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self._emptied = threading.Condition(self.lock)
        self._held: dict[int, Held] = {}
        #: when a delivery was last admitted or ended, or listening began (None: not yet)
        self.active_at: float | None = None

    def __len__(self) -> int:
        with self.lock:
            return len(self._held)

    def add(self, delivery: Delivery, lease: float) -> None:
        """Hold ``delivery`` under ``lease``; the caller holds :attr:`lock`."""
        self.active_at = now = time.monotonic()
        self._held[id(delivery)] = Held(delivery, lease, now + lease / 3)

    def remove(self, delivery: Delivery) -> bool:
        """Forget a delivery that ended; True if none is held any more."""
        with self.lock:
            self._held.pop(id(delivery), None)
            self.active_at = time.monotonic()
            if self._held:
                return False
            self._emptied.notify_all()
            return True

    def clear(self) -> list[Held]:
        """Forget every delivery held (they were handed back); those it held."""
        with self.lock:
            held = list(self._held.values())
            self._held.clear()
            self._emptied.notify_all()
        return held

    def all(self) -> list[Held]:
        with self.lock:
            return list(self._held.values())

    def running(self, call_id: str) -> Held | None:
        """The delivery of the running call ``call_id`` (None: not held here)."""
        with self.lock:
            return next((h for h in self._held.values()
                         if h.message is not None and h.message.id == call_id), None)

    def messages(self) -> list[Message]:
        """The messages of the calls running now."""
        with self.lock:
            return [h.message for h in self._held.values() if h.message is not None]

    def started(self, delivery: Delivery, message: Message, lease: float) -> None:
        """``delivery`` started running ``message`` under ``lease``: extended on that lease
        from now on."""
        now = time.monotonic()
        with self.lock:
            held = self._held.get(id(delivery))
            if held is not None:
                held.message, held.started = message, now
                if lease != held.lease:
                    held.lease, held.next_extend = lease, now + lease / 3

    def due(self, now: float, running_after: float) -> tuple[list[Held], list[Held]]:
        """At ``now``, the leases a third of the way through (their next extend is set a
        third on), and the calls running for ``running_after`` s whose ``running`` status was
        not sent (marked sent)."""
        with self.lock:
            due = [h for h in self._held.values() if h.next_extend <= now]
            for h in due:
                h.next_extend = now + h.lease / 3
            running = [h for h in self._held.values() if h.message is not None
                       and not h.running_sent and now - h.started >= running_after]
            for h in running:
                h.running_sent = True
        return due, running

    def extend_again(self, held: Held, now: float) -> None:
        """Extend ``held`` on the next tick: this one's extend met an operation in progress."""
        with self.lock:
            held.next_extend = now

    def wait_empty(self, ready: Callable[[], bool], timeout: float | None) -> bool:
        """Wait until ``ready()`` (read under :attr:`lock`) and nothing is held; whether that
        came within ``timeout`` seconds."""
        with self._emptied:
            return self._emptied.wait_for(lambda: ready() and not self._held, timeout)

    def idle_for(self, seconds: float) -> bool:
        """Whether nothing is held, and nothing was admitted or ended for ``seconds`` since
        listening began."""
        with self.lock:
            return (self.active_at is not None and not self._held
                    and time.monotonic() - self.active_at >= seconds)
