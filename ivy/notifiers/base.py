"""The notifier interface: carries task statuses and results back to producers."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any


class Subscription(ABC):
    """Receives the notifications of one channel. ``get`` returns [] when ``timeout`` passes."""

    @abstractmethod
    def get(self, timeout: float) -> list[bytes]: ...

    @abstractmethod
    def close(self) -> None:
        """Stop; may be called from another thread, and interrupts a get() in progress."""


def beside(call_id: str, first: bytes | None, nonce: str | None) -> str | None:
    """Where a final notification of ``call_id`` echoing ``nonce`` is stored, given ``first``,
    the one stored under ``call_id`` already (None: none is): ``call_id`` when free; else,
    when ``nonce`` is set and ``first`` does not carry it, the key beside it,
    ``<call_id>:<nonce>`` (first wins there too); else None, a duplicate, neither stored nor
    sent. So a result forged under a known call id and stored first cannot keep the call's
    own result from its producer: that one is stored beside it and sent, and
    the producer, which drops notifications without its call's nonce, looks it up there
    (:meth:`Notifier.stored` with the nonce). A nonce is 20 random hex digits that only the
    call's message carries, so "``first`` carries it" means "``first`` is this call's"."""
    if first is None:
        return call_id
    if nonce is None or nonce.encode() in first:
        return None
    return beside_key(call_id, nonce)


def beside_key(call_id: str, nonce: str) -> str:
    """The key beside ``call_id`` for a final notification echoing ``nonce`` (:func:`beside`)."""
    return f"{call_id}:{nonce}"


class Notifier(ABC):
    """A notifier. A final notification is stored under its call id (the first one wins) as
    well as sent, so a producer that subscribes late, or lost its connection, still gets it.
    One that echoes a nonce the stored one does not carry is stored beside it (see
    :func:`beside`) and sent too."""

    url: str = ""

    @abstractmethod
    def publish(self, channel: str, call_id: str, body: bytes, *, final: bool,
                nonce: str | None = None) -> None:
        """Send ``body`` to ``channel``; when ``final``, also store it under ``call_id`` (the
        first wins), or beside it when it echoes a ``nonce`` the first does not carry
        (:func:`beside`). A final notification that is not stored is not sent either."""

    def publish_then(self, channel: str, call_id: str, body: bytes, *, final: bool,
                     then: Callable[[], None], nonce: str | None = None) -> None:
        """:meth:`publish`, then ``then()`` once the notification is stored: a worker acks a
        message that way, never before its outcome is kept. The default publishes here and
        calls ``then`` here, raising what either raises. A notifier that stores in the
        background (SQLite) may return at once and call ``then`` later from its own thread,
        logging what ``then`` raises, and not at all if the notification could not be
        stored (its message is then delivered again when its lease ends)."""
        self.publish(channel, call_id, body, final=final, nonce=nonce)
        then()

    @abstractmethod
    def subscribe(self, channel: str, pending: Callable[[], Collection[str]]) -> Subscription:
        """Receive what is published to ``channel``, and first the stored final notifications
        of the call ids that ``pending()`` returns (asked again on every reconnect)."""

    @abstractmethod
    def stored(self, call_id: str, nonce: str | None = None) -> bytes | None:
        """The stored final notification of ``call_id``, or None; with ``nonce``, the one
        stored beside it for that nonce (:func:`beside`) if there is one."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections; the notifier is not used afterwards."""

    # -- live workers and task events (``ivy inspect``, ``ivy events``) ----------------------
    # Shared state that several processes read lives in the notifier's store, so it works the
    # same on memory, SQLite and Redis. The defaults raise: a notifier of your own opts in.

    def put_worker(self, name: str, info: Mapping[str, Any], ttl: float) -> None:
        """Write (or refresh) the heartbeat of worker ``name``: ``info`` is a JSON object,
        kept for ``ttl`` seconds unless written again (a killed worker's entry expires)."""
        raise NotImplementedError(self._unsupported("keep worker heartbeats"))

    def remove_worker(self, name: str) -> None:
        """Forget worker ``name`` at once (it stopped)."""
        raise NotImplementedError(self._unsupported("keep worker heartbeats"))

    def workers(self) -> list[dict[str, Any]]:
        """The heartbeats of the workers alive (not expired), ordered by name."""
        raise NotImplementedError(self._unsupported("keep worker heartbeats"))

    def publish_event(self, body: bytes) -> None:
        """Send a task event (a JSON object) to every events subscription open now; an event
        nobody listens to is gone (a live stream, not a log)."""
        raise NotImplementedError(self._unsupported("carry task events"))

    def publish_events(self, bodies: list[bytes]) -> None:
        """Send several task events, in order (a worker's events middleware batches them).
        The default publishes them one by one; a notifier may send them in one go."""
        for body in bodies:
            self.publish_event(body)

    def subscribe_events(self) -> Subscription:
        """Receive the task events published from now on: once this returns, nothing
        published afterwards is missed while the subscription stays open."""
        raise NotImplementedError(self._unsupported("carry task events"))

    def _unsupported(self, what: str) -> str:
        return (f"notifier {type(self).__name__} ({self.url or 'no URL'}) cannot {what}: use a "
                "memory://, sqlite:// or redis:// notifier, or implement put_worker, "
                "remove_worker, workers, publish_event and subscribe_events")

    # -- workflow store (groups/chords) --
    # Groups and chords collect their members' results here, one atomic record per member, so
    # that a member re-run after a crash does not count twice (ivy.worker.continuation).

    def workflow_record(self, key: str, index: int, value: bytes,
                        ttl: float) -> tuple[bool, int]:
        """Store ``value`` as member ``index`` of ``key`` unless that member is stored already
        (the first wins), and count the members of ``key``, in one atomic step: return
        (whether this call stored it, how many members ``key`` has now). ``key`` is kept for
        ``ttl`` seconds after its last record."""
        raise NotImplementedError(self._unsupported_workflows())

    def workflow_members(self, key: str) -> dict[int, bytes]:
        """The members stored under ``key``: index -> value (empty when none, or expired)."""
        raise NotImplementedError(self._unsupported_workflows())

    @property
    def keeps_workflows(self) -> bool:
        """Whether this notifier implements the workflow store (checked before a workflow
        is sent, so that one it cannot join is refused rather than left waiting)."""
        cls = type(self)
        return (cls.workflow_record is not Notifier.workflow_record
                and cls.workflow_members is not Notifier.workflow_members)

    def _unsupported_workflows(self) -> str:
        return (f"notifier {type(self).__name__} ({self.url or 'no URL'}) cannot keep "
                "workflow state: use a memory://, sqlite:// or redis:// notifier, or implement "
                "workflow_record and workflow_members")

    # -- keys, claims and counters (schedules, unique, cancel, rate limits) --
    # Small atomic operations on the notifier's store (:mod:`ivy.timing` builds on them), so
    # that schedules, unique sends, cancels and rate limits hold across every process that
    # shares the notifier. Keys are strings; a notifier keeps them in its own namespace.

    def claim_key(self, key: str, value: str, ttl: float) -> str | None:
        """Set ``key`` to ``value`` for ``ttl`` seconds if it holds nothing (or expired):
        None if this call set it, else the value it holds (left unchanged)."""
        raise NotImplementedError(self._unsupported_keys())

    def get_keys(self, keys: Sequence[str]) -> list[str | None]:
        """The values of ``keys`` (None where absent or expired), in order."""
        raise NotImplementedError(self._unsupported_keys())

    def release_key(self, key: str, value: str, ttl: float, new_value: str | None = None
                    ) -> bool:
        """If ``key`` holds ``value``: keep it ``ttl`` more seconds (delete it when ``ttl``
        <= 0), holding ``new_value`` from now on when one is given, and return True;
        otherwise change nothing and return False."""
        raise NotImplementedError(self._unsupported_keys())

    def extend_key(self, key: str, value: str, ttl: float) -> bool:
        """If ``key`` holds ``value``: keep it at least ``ttl`` more seconds, never less than
        it had left, and return True; otherwise change nothing and return False. The
        default is :meth:`release_key`, which may cut the time left: a notifier of your own
        should keep the longer of the two."""
        return self.release_key(key, value, ttl)

    def take_rate_slot(self, key: str, interval: float, burst: int) -> float:
        """One step of a GCRA rate limiter (a token bucket of ``burst`` tokens refilled one
        per ``interval`` seconds) kept under ``key``, as :func:`gcra_step` computes it: 0.0
        if a slot was taken, else the seconds until one frees (nothing taken)."""
        raise NotImplementedError(self._unsupported_keys())

    def reserve_rate_slot(self, key: str, interval: float, burst: int, holder: str) -> float:
        """:meth:`take_rate_slot` for a caller that will come back: over the limit, it
        reserves the next free slot (one GCRA step, :func:`gcra_reserve`) instead of taking
        none, and returns the seconds until that slot; 0.0 when it may run now. The
        reservation is kept under ``<key>:<holder>`` until its time (and a grace of
        :data:`HOLD_GRACE` s or the wait, whichever is longer): asked again by the same
        ``holder``, it answers the time left, or 0.0 once the slot's time has come (the
        reservation is then used up), and takes no other slot. So a backlog is deferred
        once, each message to a slot of its own, instead of coming back all at once. The
        default takes no reservations (:meth:`take_rate_slot`)."""
        return self.take_rate_slot(key, interval, burst)

    def _unsupported_keys(self) -> str:
        return (f"notifier {type(self).__name__} ({self.url or 'no URL'}) keeps no keys, so "
                "periodic tasks, unique sends, cancels and rate limits cannot use it: use a "
                "memory://, sqlite:// or redis:// notifier, or implement claim_key, get_keys, "
                "release_key and take_rate_slot")


#: Seconds a reserved rate slot is kept past its time, at least (see reserve_rate_slot).
HOLD_GRACE = 60.0
#: A reserved slot this close (seconds) counts as come.
HOLD_EARLY = 0.001


def gcra_reserve(tat: float | None, now: float, interval: float, burst: int
                 ) -> tuple[float, float]:
    """:func:`gcra_step` that always takes a slot: ``(new tat, seconds until the slot)``
    (0.0: now). Reserving moves the limiter on, so the next caller's slot is the one after."""
    start, wait = _gcra_start(tat, now, interval, burst)
    return start + interval, wait if wait > 1e-9 else 0.0


def _gcra_start(tat: float | None, now: float, interval: float, burst: int
                ) -> tuple[float, float]:
    """Where the next slot starts (an idle limiter starts afresh at ``now``) and the seconds
    until it is free, for :func:`gcra_step` and :func:`gcra_reserve`."""
    start = now if tat is None or tat < now - 2 * interval else tat
    return start, start - now - (burst - 1) * interval


def hold_ttl(wait: float) -> float:
    """How long a reservation ``wait`` seconds ahead is kept."""
    return wait + max(HOLD_GRACE, wait)


def gcra_step(tat: float | None, now: float, interval: float, burst: int) -> tuple[float, float]:
    """The generic cell rate algorithm, for notifiers that keep the "theoretical arrival
    time" ``tat`` of a rate limit themselves: ``(new tat, 0.0)`` when a slot is taken at
    ``now``, ``(tat, seconds to wait)`` when none is free. A backlog takes one slot per
    ``interval``; a caller up to two ``interval`` late keeps its place in that rhythm (so
    the latency of deferred messages does not lower the rate: with one interval, 3 worker
    processes reached 92-99% of the limit, with two 99-100%), and an idle limiter starts
    afresh. Over any span T at most ``burst + 2 + T / interval`` slots are taken."""
    start, wait = _gcra_start(tat, now, interval, burst)
    if wait > 1e-9:  # not a rounding error
        return start, wait
    return start + interval, 0.0
