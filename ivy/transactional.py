"""Enqueue inside the application's own PostgreSQL transaction: ``send_task(...,
connection=conn)`` and ``with app.transaction(conn):`` (docs/backends/postgresql.md, "Enqueue
inside your transaction")."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from contextvars import ContextVar, Token
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from ivy.call import Call
from ivy.errors import ConfigurationError, TransactionRolledBack
from ivy.message import Message

if TYPE_CHECKING:
    from ivy.queues.base import QueueBackend


class Outgoing(Protocol):
    """What this module needs of an encoded call (:class:`ivy.producer.Outgoing`)."""

    call: Call[Any]
    message: Message
    body: bytes
    queue: str
    priority: int
    delay: float


@runtime_checkable
class TransactionalQueue(Protocol):
    """The role a queue backend plays here: writing messages with a caller's connection."""

    def send_within(self, connection: Any, queue: str, bodies: list[bytes], *,
                    priority: int = 0, delay: float = 0.0) -> Future[None]: ...

    async def send_within_async(self, connection: Any, queue: str, bodies: list[bytes], *,
                                priority: int = 0, delay: float = 0.0) -> Future[None]: ...


def _is_async(connection: Any) -> bool:
    return inspect.iscoroutinefunction(getattr(connection, "execute", None))


def transactional(backend: QueueBackend) -> TransactionalQueue:
    """``backend`` as a :class:`TransactionalQueue`; ConfigurationError if it is not one."""
    if not isinstance(backend, TransactionalQueue):
        raise ConfigurationError(
            f"the queue backend {backend.url} cannot enqueue in your database transaction: "
            "only the PostgreSQL queue (postgresql://) can. Use it as the queue, or its relay "
            "to move committed messages to your broker")
    return backend


#: called for each call written (the app's tracking: sent future, failure, middleware)
Track = Callable[["Outgoing", "Future[None]"], None]


class Transaction:
    """What ``app.transaction(connection)`` returns: a context manager (``with`` for a
    ``psycopg.Connection``, ``async with`` for either kind) inside which the app's sends are
    written on ``connection``."""

    def __init__(self, owner: object, backend: QueueBackend, connection: Any,
                 track: Track) -> None:
        self._owner = owner
        self._backend = backend
        self.connection = connection
        self._track = track
        self._buffer: list[Outgoing] | None = None  # async mode: written at the block's end
        self._token: Token[Transaction | None] | None = None

    def __enter__(self) -> Transaction:
        if _is_async(self.connection):
            raise ConfigurationError(
                f"{self.connection!r} is an asynchronous connection: use "
                "'async with app.transaction(conn):'")
        transactional(self._backend)
        self._token = _active.set(self)
        return self

    def __exit__(self, *exc: object) -> None:
        self._leave()

    async def __aenter__(self) -> Transaction:
        transactional(self._backend)
        self._buffer = []
        self._token = _active.set(self)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        self._leave()
        kept, self._buffer = self._buffer or [], None
        if exc_type is not None:
            for out in kept:
                failed: Future[None] = Future()
                failed.set_exception(TransactionRolledBack(
                    f"the 'async with app.transaction(...)' block raised {exc_type.__name__} "
                    f"before call {out.call.id} was written: it was not enqueued"))
                self._track(out, failed)
            return
        backend = transactional(self._backend)
        for (queue, priority, delay), outs in _grouped(kept).items():
            bodies = [o.body for o in outs]
            if _is_async(self.connection):
                future = await backend.send_within_async(self.connection, queue, bodies,
                                                         priority=priority, delay=delay)
            else:
                future = backend.send_within(self.connection, queue, bodies,
                                             priority=priority, delay=delay)
            for out in outs:
                self._track(out, future)

    def _leave(self) -> None:
        if self._token is not None:
            _active.reset(self._token)
            self._token = None

    def send(self, outs: Sequence[Outgoing], queue: str, priority: int, delay: float) -> None:
        """Write ``outs`` on the connection now (kept for the block's end in async mode)."""
        if self._buffer is not None:
            self._buffer.extend(outs)
            return
        future = send_within(self._backend, self.connection, outs, queue, priority, delay)
        for out in outs:
            self._track(out, future)


def _grouped(outs: list[Outgoing]) -> dict[tuple[str, int, float], list[Outgoing]]:
    groups: dict[tuple[str, int, float], list[Outgoing]] = {}
    for out in outs:
        groups.setdefault((out.queue, out.priority, out.delay), []).append(out)
    return groups


def send_within(backend: QueueBackend, connection: Any, outs: Sequence[Outgoing], queue: str,
                priority: int, delay: float) -> Future[None]:
    """Write ``outs`` with ``connection`` (``send_task(..., connection=)``): one future for
    them all, completed when its transaction commits."""
    if _is_async(connection):
        raise ConfigurationError(
            f"connection={connection!r} is asynchronous: send inside "
            "'async with app.transaction(conn):' instead")
    return transactional(backend).send_within(connection, queue, [o.body for o in outs],
                                              priority=priority, delay=delay)


_active: ContextVar[Transaction | None] = ContextVar("ivy_transaction", default=None)


def active(owner: object) -> Transaction | None:
    """The transaction block of ``owner`` (an app) this thread or task is in, if any."""
    found = _active.get()
    return found if found is not None and found._owner is owner else None


def forget_on_failure(call: Call[Any], future: Future[None],
                      failed: Callable[[Call[Any], BaseException], None]) -> None:
    """Have ``failed(call, error)`` run if ``future`` fails (the transaction rolled back)."""
    def done(f: Future[None]) -> None:
        error = f.exception()
        if error is not None:
            failed(call, error)

    future.add_done_callback(done)
