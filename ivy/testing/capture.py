"""``ivy.testing.capture(app)``: record what an app sends, and run nothing."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from ivy.message import Message
from ivy.queues.base import Consumer, DeadLetter, Delivery, QueueBackend
from ivy.testing._common import decode, queue_backend_of

if TYPE_CHECKING:
    from ivy.app import Ivy


@dataclass(frozen=True)
class SentCall:
    """One call an app sent while captured, read back from its encoded message as a worker
    would read it: arguments are what the task would receive (JSON: tuples became lists)."""

    id: str
    """The call id (``call.id``)."""
    name: str
    """The task name."""
    args: list[Any]
    """The positional arguments, as the task would receive them."""
    kwargs: dict[str, Any]
    """The keyword arguments, as the task would receive them."""
    queue: str
    """The queue name it was sent to."""
    eta: int | None
    """When it is due, in Unix milliseconds (None: at once)."""
    priority: int
    """The message's priority."""
    max_retries: int
    """How many times a failed run would be retried."""
    message: Message = field(repr=False, compare=False)
    """The whole decoded message (headers, workflow fields, ...)."""

    @property
    def eta_datetime(self) -> datetime | None:
        """:attr:`eta` as an aware UTC datetime (None: due at once)."""
        return None if self.eta is None else datetime.fromtimestamp(self.eta / 1000, UTC)

    def __str__(self) -> str:
        parts = [repr(a) for a in self.args] + [f"{k}={v!r}" for k, v in self.kwargs.items()]
        due = "" if self.eta is None else f", eta {self.eta_datetime:%Y-%m-%dT%H:%M:%S.%fZ}"
        return f"{self.name}({', '.join(parts)}) on queue {self.queue!r}{due} [{self.id}]"


_ANY: Any = object()


class Sent:
    """What :func:`capture` recorded: :attr:`calls`, in the order sent, and assertions."""

    def __init__(self, app: Ivy) -> None:
        self._app = app
        self._calls: list[SentCall] = []
        self._lock = threading.Lock()

    @property
    def calls(self) -> list[SentCall]:
        """The calls sent so far, oldest first (a copy)."""
        with self._lock:
            return list(self._calls)

    def __len__(self) -> int:
        with self._lock:
            return len(self._calls)

    def __iter__(self) -> Iterator[SentCall]:
        return iter(self.calls)

    def named(self, name: str) -> list[SentCall]:
        """The calls of one task.

        Args:
            name: the task's name.

        Returns:
            Its calls, oldest first.
        """
        return [c for c in self.calls if c.name == name]

    def clear(self) -> None:
        """Forget what was recorded so far."""
        with self._lock:
            self._calls.clear()

    def _record(self, call: SentCall) -> None:
        with self._lock:
            self._calls.append(call)

    def _normal(self, value: Any) -> Any:
        """``value`` after the round trip the arguments of a call make (tuples -> lists)."""
        serializer = self._app.serializer
        return serializer.loads(serializer.dumps(value))

    def assert_sent(self, name: str, args: Sequence[Any] | None = None,
                    kwargs: Mapping[str, Any] | None = None, times: int | None = None,
                    ) -> list[SentCall]:
        """Assert that task ``name`` was sent with ``args`` and ``kwargs`` (None: any),
        ``times`` times (None: at least once); return the matching calls. Arguments are
        compared after the same JSON round trip as the call's (a tuple equals a list), typed
        ones in their wire form when the app knows the task (:mod:`ivy.annotations`). The
        AssertionError lists every call sent, and for each call of ``name`` what differs.

        Args:
            name: the task's name.
            args: the positional arguments it was sent with; None: any.
            kwargs: the keyword arguments it was sent with; None: any.
            times: how many matching calls were sent; None: at least one.

        Returns:
            The matching calls, oldest first.

        Raises:
            AssertionError: not sent as said.
        """
        task = self._app.registry.get(name)
        codec = None if task is None else task.codec
        if codec is not None and codec.converts_args:  # typed values in their wire form
            encoded_args, encoded_kwargs = codec.encode_args(list(args or ()), dict(kwargs or {}))
            args = None if args is None else encoded_args
            kwargs = None if kwargs is None else encoded_kwargs
        want_args = _ANY if args is None else self._normal(list(args))
        want_kwargs = _ANY if kwargs is None else self._normal(dict(kwargs))
        calls = self.calls
        matching = [c for c in calls if c.name == name
                    and (want_args is _ANY or c.args == want_args)
                    and (want_kwargs is _ANY or c.kwargs == want_kwargs)]
        if (len(matching) == times) if times is not None else matching:
            return matching
        wanted = name + "(" + ", ".join(
            (["*any"] if want_args is _ANY else [repr(a) for a in want_args])
            + (["**any"] if want_kwargs is _ANY else [f"{k}={v!r}"
                                                       for k, v in want_kwargs.items()])) + ")"
        count = "at least once" if times is None else f"{times} time(s)"
        lines = [f"expected {wanted} sent {count}; {len(matching)} matching call(s) sent",
                 f"calls sent ({len(calls)}):" if calls else "no call was sent"]
        for call in calls:
            lines.append(f"  {'=' if call in matching else '-'} {call}")
            if call.name == name and call not in matching:
                if want_args is not _ANY and call.args != want_args:
                    lines.append(f"      args:   {call.args!r}\n      wanted: {want_args!r}")
                if want_kwargs is not _ANY and call.kwargs != want_kwargs:
                    lines.append(f"      kwargs: {call.kwargs!r}\n      wanted: {want_kwargs!r}")
        raise AssertionError("\n".join(lines))

    def assert_not_sent(self, name: str) -> None:
        """Assert that no call of task ``name`` was sent.

        Args:
            name: the task's name.

        Raises:
            AssertionError: one was; it lists every call sent.
        """
        self.assert_sent(name, times=0)


class _NothingConsumer(Consumer):
    """A consumer of a captured queue: it never receives anything."""

    def __init__(self) -> None:
        self._closed = threading.Event()

    def get(self, timeout: float) -> Delivery | None:
        self._closed.wait(timeout)
        return None

    def close(self) -> None:
        self._closed.set()


class CaptureBackend(QueueBackend):
    """A queue backend that decodes each body it is handed (as a worker of the app would)
    into a :class:`SentCall` of ``sent``, and delivers nothing."""

    max_deliveries = None

    def __init__(self, app: Ivy, sent: Sent) -> None:
        self.url = "capture://"
        self._app = app
        self.sent = sent

    def publish(self, queue: str, body: bytes, *, priority: int = 0, delay: float = 0.0,
                route: str | None = None) -> None:
        message = decode(self._app, body)
        self.sent._record(SentCall(
            id=message.id, name=message.name, args=message.args, kwargs=message.kwargs,
            queue=message.queue or queue, eta=message.eta, priority=message.priority,
            max_retries=message.max_retries, message=message))

    def consume(self, queue: str, *, prefetch: int = 1, reserve_time: float = 30.0) -> Consumer:
        return _NothingConsumer()

    def size(self, queue: str) -> int:
        return sum(1 for c in self.sent.calls if c.queue == queue)

    def dead_letters(self, queue: str, limit: int = 100) -> list[DeadLetter]:
        return []

    def queues(self) -> list[str]:
        return sorted({c.queue for c in self.sent.calls})


@contextlib.contextmanager
def capture(app: Ivy) -> Iterator[Sent]:
    """Record the calls ``app`` sends inside the block, and run none of them:

        with ivy.testing.capture(app) as sent:
            signup("ada@example.com")            # code that sends calls
        sent.assert_sent("mail.welcome", args=["ada@example.com"], times=1)

    Each call is checked and encoded as in production, then decoded as a worker would read
    it (signature, size and depth limits, schema), so a call production would refuse fails
    here too. The calls stay pending (``call.result()`` waits, and times out): nothing runs
    them. Workflows record their first steps, unique sends their one call. The app's
    notifier is used as on any send (give tests a memory app: the ``ivy_app`` fixture);
    workers started on the app before the block keep their own queue backend.

    Args:
        app: the app whose sends are recorded.

    Yields:
        What was sent, filled as the block sends.
    """
    sent = Sent(app)
    with queue_backend_of(app, CaptureBackend(app, sent)):
        yield sent
