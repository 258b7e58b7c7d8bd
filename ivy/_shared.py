"""Objects that every part of one process naming the same key shares, made on first use (the
embedded backends' in-process brokers and hubs, the AMQP notifier's record of its finals)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Shared(Generic[K, V]):
    """``get(key)``: the one object for ``key`` in this process, made by ``make()`` the first
    time, whichever thread asks first."""

    def __init__(self, make: Callable[[], V]) -> None:
        self._make = make
        self._made: dict[K, V] = {}
        self._lock = threading.Lock()

    def get(self, key: K) -> V:
        with self._lock:
            found = self._made.get(key)
            if found is None:
                found = self._made[key] = self._make()
            return found

    def values(self) -> list[V]:
        """The objects made so far."""
        with self._lock:
            return list(self._made.values())
