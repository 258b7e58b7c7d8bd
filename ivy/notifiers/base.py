"""The notifier interface: carries task statuses and results back to producers."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Collection


class Subscription(ABC):
    """Receives the notifications of one channel. ``get`` returns [] when ``timeout`` passes."""

    @abstractmethod
    def get(self, timeout: float) -> list[bytes]: ...

    @abstractmethod
    def close(self) -> None:
        """Stop; may be called from another thread, and interrupts a get() in progress."""


class Notifier(ABC):
    """A notifier. A final notification is stored under its call id (the first one wins) as
    well as sent, so a producer that subscribes late, or lost its connection, still gets it."""

    url: str = ""

    @abstractmethod
    def publish(self, channel: str, call_id: str, body: bytes, *, final: bool) -> None:
        """Send ``body`` to ``channel``; when ``final``, also store it under ``call_id``."""

    @abstractmethod
    def subscribe(self, channel: str, pending: Callable[[], Collection[str]]) -> Subscription:
        """Receive what is published to ``channel``, and first the stored final notifications
        of the call ids that ``pending()`` returns (asked again on every reconnect)."""

    @abstractmethod
    def stored(self, call_id: str) -> bytes | None:
        """The stored final notification of ``call_id``, or None."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections; the notifier is not used afterwards."""
