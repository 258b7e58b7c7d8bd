"""``ivy.testing.FakeClock``: time that moves only when a test moves it."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from types import TracebackType
from typing import ClassVar

from ivy import _clock
from ivy.queues.memory import wake_all


def _seconds(when: float | datetime) -> float:
    if isinstance(when, datetime):
        if when.tzinfo is None:
            raise ValueError(f"{when!r} has no time zone: give an aware datetime, such as "
                             "datetime(2030, 1, 1, tzinfo=UTC)")
        return when.timestamp()
    if isinstance(when, bool) or not isinstance(when, (int, float)):
        raise TypeError(f"{when!r} is not a time: give Unix seconds or an aware datetime")
    return float(when)


class FakeClock:
    """A clock that stands still until :meth:`advance` moves it, installed for the whole
    process while active (``with FakeClock() as clock:``, or :meth:`install` /
    :meth:`uninstall`; one at a time).

    What it drives, and nothing more:

    * :func:`ivy.message.now_ms`, the clock of the times a message carries: ``created_ms``,
      ``eta`` (``send_task(delay=...)``), ``unique_until``, and the worker's checks of them
      (a call is deferred until its ``eta``; ``max_message_age``);
    * the memory queue backend's delays: delayed calls, retries waiting out their backoff,
      snoozes, rate-limited and ``eta`` deferrals come due when the clock reaches them,
      for :func:`ivy.testing.drain` and for workers (``advance`` wakes them);
    * periodic slots, for a scheduler given it: ``Scheduler(app, clock=clock)`` (the clock
      is callable, as ``time.time``), then ``clock.advance(30); scheduler.tick()``. A
      scheduler sends only the slots of the last 10 s of a late look (``LATE_GRACE``):
      advance slot by slot, ticking between.

    What it does not drive: ``time.time()`` and ``time.monotonic()`` themselves (your code,
    logging), reservations and their leases, task ``timeout``, ``pending_ttl``, what the
    notifier's store keeps for a time (cancels, unique keys, rate-limit slots, claims of
    slots), and the delays of the SQLite, Redis, RabbitMQ, SQS and IronMQ backends.

    Messages a worker took before the clock was installed, or put back with real time
    left, keep their real delays; delayed messages left when it is uninstalled come due that
    much later in real time as it was advanced beyond the real time that passed."""

    _installed: ClassVar[FakeClock | None] = None
    _install_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, start: float | datetime | None = None) -> None:
        """Make a clock standing at ``start``; it drives nothing until installed.

        Args:
            start: Unix seconds or an aware datetime; None: now.

        Raises:
            ValueError: a naive datetime.
            TypeError: a ``start`` that is not a time.
        """
        self._wall = time.time() if start is None else _seconds(start)
        self._delays = time.monotonic()
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<FakeClock {self.now():%Y-%m-%dT%H:%M:%S.%fZ}>"

    @classmethod
    def current(cls) -> FakeClock | None:
        """The clock installed now, if any.

        Returns:
            The installed clock, or None.
        """
        return cls._installed

    def time(self) -> float:
        """This clock's time.

        Returns:
            Unix seconds on this clock.
        """
        return self._wall

    def __call__(self) -> float:
        """:meth:`time`: a FakeClock goes where ``time.time`` would (``clock=``)."""
        return self._wall

    def now(self) -> datetime:
        """This clock's time as a datetime.

        Returns:
            An aware UTC datetime.
        """
        return datetime.fromtimestamp(self._wall, UTC)

    def _delays_now(self) -> float:
        return self._delays

    def advance(self, seconds: float) -> None:
        """Move the clock forward, and wake the memory backend's consumers: what became due
        is delivered.

        Args:
            seconds: how far, >= 0.

        Raises:
            ValueError: ``seconds`` is negative or not a number.
        """
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not (
                0 <= seconds < float("inf")):
            raise ValueError(f"advance({seconds!r}): give seconds >= 0 (a clock only goes "
                             "forward)")
        with self._lock:
            self._wall += seconds
            self._delays += seconds
        if FakeClock._installed is self:
            wake_all()

    def advance_to(self, when: float | datetime) -> None:
        """Move the clock forward to a time.

        Args:
            when: Unix seconds or an aware datetime, not before the clock's time.

        Raises:
            ValueError: ``when`` is before the clock's time, or a naive datetime.
            TypeError: ``when`` is not a time.
        """
        target = _seconds(when)
        if target < self._wall:
            raise ValueError(f"advance_to({when!r}) is before the clock's time "
                             f"{self.now():%Y-%m-%dT%H:%M:%S.%fZ}: a clock only goes forward")
        self.advance(target - self._wall)

    def install(self) -> FakeClock:
        """Drive ivy's clocks from this one, for the whole process, until :meth:`uninstall`.

        Returns:
            This clock (``clock = FakeClock().install()``).

        Raises:
            RuntimeError: another clock is installed.
        """
        with FakeClock._install_lock:
            if FakeClock._installed is not None:
                raise RuntimeError(f"{FakeClock._installed!r} is installed already: "
                                   "uninstall it first (one FakeClock at a time)")
            with self._lock:
                self._delays = time.monotonic()  # messages delayed so far keep their delays
            FakeClock._installed = self
            _clock.wall = self.time
            _clock.delays = self._delays_now
        return self

    def uninstall(self) -> None:
        """Give ivy the real clocks back (nothing if this clock is not installed)."""
        with FakeClock._install_lock:
            if FakeClock._installed is not self:
                return
            _clock.wall = time.time
            _clock.delays = time.monotonic
            FakeClock._installed = None
        wake_all()

    def __enter__(self) -> FakeClock:
        return self.install()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.uninstall()
