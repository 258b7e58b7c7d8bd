"""``ivy.testing.inline`` and ``ivy.testing.drain``: calls run in the test's own thread, by a
worker of the app that is never started: its own steps (decode, check, gate, run, record,
settle), without its threads."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections import deque
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from ivy.config import QUEUE_ENV
from ivy.errors import ConfigurationError, IvyError, MessageError, RemoteTaskError
from ivy.message import Message, nonce_of, wire_error
from ivy.middleware import Middleware, Pipeline
from ivy.queues.base import Consumer, DeadLetter, Delivery, QueueBackend, Rewrite
from ivy.queues.memory import MemoryQueueBackend, Queued
from ivy.testing._common import decode, queue_backend_of
from ivy.testing.capture import CaptureBackend
from ivy.testing.clock import FakeClock
from ivy.worker import Worker

if TYPE_CHECKING:
    from ivy.app import Ivy

#: Most calls :func:`inline` runs for one send (the send, the calls its tasks send, theirs...)
#: before it gives up with :class:`InlineLimitExceeded`: a task that sends itself forever.
MAX_INLINE_RUNS = 10_000
#: How many still-queued messages a :class:`DrainTimeout` names (it counts them all).
NAMED = 10


class DrainTimeout(IvyError, TimeoutError):
    """:func:`drain` ran out of time: ``queued`` describes what its queues still hold.

    Args:
        message: what happened, and what is still queued.
        queued: one line per message still queued.
    """

    def __init__(self, message: str, queued: list[str]) -> None:
        super().__init__(message)
        self.queued = queued
        """One line per message still queued: the task, the call id, the queue and its state."""


class InlineLimitExceeded(IvyError, RuntimeError):
    """One send under :func:`inline` led to more than :data:`MAX_INLINE_RUNS` runs."""


@dataclass
class _Seen:
    """What one delivery's processing showed: the messages whose tasks ran, failures not
    retried, dead letters."""

    ran: list[Message]
    failed: dict[str, tuple[Message, dict[str, str]]]
    dead: list[tuple[Message | None, str]]


class _Watch(Middleware):
    """Middleware of the local worker: records, per thread, what one delivery did."""

    def __init__(self) -> None:
        self._local = threading.local()

    def begin(self) -> _Seen:
        seen = self._local.seen = _Seen([], {}, [])
        return seen

    def _seen(self) -> _Seen:
        seen: _Seen | None = getattr(self._local, "seen", None)
        return seen if seen is not None else self.begin()

    def before_task(self, message: Message) -> None:
        self._seen().ran.append(message)

    def after_task(self, message: Message, result: Any, error: dict[str, str] | None) -> None:
        failed = self._seen().failed
        if error is None:
            failed.pop(message.id, None)
        else:
            failed[message.id] = (message, dict(error))

    def on_retry(self, message: Message, error: dict[str, str], delay: float) -> None:
        self._seen().failed.pop(message.id, None)  # not its last word

    def on_dead_letter(self, message: Message | None, reason: str) -> None:
        self._seen().dead.append((message, reason))


class _LocalWorker:
    """A worker of ``app`` on ``backend`` that is never started: :meth:`process` runs one
    delivery in the calling thread (async tasks on the worker's event loop thread, as in a
    worker), then settles the producer's calls it ended at once, from the notifier's store."""

    def __init__(self, app: Ivy, backend: QueueBackend) -> None:
        self.app = app
        self.watch = _Watch()
        context = app.worker_context()
        context = replace(context, middleware=Pipeline([*app.middleware.middleware,
                                                        self.watch]))
        self.notifier = app.start_notification_producer()
        self.worker = Worker(context, backend, self.notifier, ["ivy"],
                             reserve_time=app.reserve_time)
        context.middleware.on_worker_start(self.worker)

    def process(self, delivery: Delivery) -> RemoteTaskError | None:
        """Run ``delivery`` to its end; the error that ended its call, if one did (a
        cancel is not one)."""
        seen = self.watch.begin()
        self.worker.process(delivery)
        ended = [*seen.ran, *(m for m, _ in seen.dead if m is not None)]
        for message in ended:
            self._settle(message)
        for message, error in seen.failed.values():
            if error.get("type") != "TaskCancelled":
                return _remote(error, message)
        for letter, reason in seen.dead:
            return _remote(wire_error("MessageRejected", reason), letter)
        return None

    def _settle(self, message: Message) -> None:
        """Hand the final notification of ``message``, if stored, to the app's consumer now
        (the consumer's own copy, later, is a duplicate and ignored)."""
        if message.reply_to != self.app.channel:
            return
        body = self.notifier.stored(message.id, nonce_of(message))
        if body is not None:
            self.app.backends.results.dispatch(body)

    def close(self) -> None:
        self.worker.stop()


def _remote(error: Mapping[str, str], message: Message | None) -> RemoteTaskError:
    exc = RemoteTaskError.from_wire(dict(error), task=message.name if message else None,
                                    call_id=message.id if message else None)
    if message is not None:
        exc.add_note(f"in task {message.name!r}, call {message.id}, attempt "
                     f"{message.attempt + 1}" + (f":\n{exc.traceback}" if exc.traceback
                                                  else ""))
    return exc


def _is_memory(spec: object) -> bool:
    if spec is None:
        return os.environ.get(QUEUE_ENV, "").startswith("memory:")
    if isinstance(spec, str):
        return spec.startswith("memory:")
    if isinstance(spec, Mapping):
        return spec.get("type") == "memory" or str(spec.get("url", "")).startswith("memory:")
    return isinstance(spec, MemoryQueueBackend)


def memory_backend(app: Ivy, what: str) -> MemoryQueueBackend:
    """The memory queue backend of ``app`` (under :func:`inline`: the one it wraps); a
    ConfigurationError naming the fix for any other."""
    current = app.backends.queue_if_built
    if isinstance(current, InlineBackend):
        return current.target
    if isinstance(current, CaptureBackend):
        raise ConfigurationError(f"{what} inside ivy.testing.capture(): capture runs "
                                 "nothing; leave its block first")
    if current is None and not _is_memory(app.backends.queue_spec):
        raise ConfigurationError(
            f"{what} needs an app on the memory queue backend, and {app!r} sends to "
            f"{app.backends.queue_spec or 'the default queue backend'!r}: use the ivy_app fixture, "
            "or ivy.Ivy('memory://NAME', 'memory://NAME') with a name of the test's own")
    backend = app.queue_backend
    if not isinstance(backend, MemoryQueueBackend):
        raise ConfigurationError(
            f"{what} needs an app on the memory queue backend, not {backend.url}: use the "
            "ivy_app fixture, or ivy.Ivy('memory://NAME', 'memory://NAME')")
    return backend


# -- inline ----------------------------------------------------------------------------------


class _InlineDelivery(Delivery):
    """A message handed to :class:`InlineBackend`, run at once: a retry runs again at once,
    a deferral (``eta``, snooze, rate limit) and a dead letter go to the memory queue."""

    def __init__(self, backend: InlineBackend, queue: str, body: bytes, priority: int,
                 count: int) -> None:
        super().__init__()
        self._backend = backend
        self.queue = queue
        self.body = body
        self.priority = priority
        self.delivery_count = count

    def _ack(self) -> None:
        pass

    def _retry(self, delay: float, body: bytes | None) -> None:
        self._backend._pending.append((self.queue, self.body if body is None else body,
                                       self.priority, self.delivery_count + 1))

    def _defer(self, delay: float) -> None:
        self._backend.target.broker.put(self.queue, self.body, self.priority, delay,
                                        self.delivery_count - 1)

    def _release(self) -> None:
        self._defer(0.0)

    def _dead_letter(self, reason: str) -> None:
        self._backend.target.broker.bury(self.queue, self.body, self.priority, reason)

    def _extend(self, seconds: float) -> None:
        pass


class InlineBackend(QueueBackend):
    """The queue backend an app sends to under :func:`inline`: each body is run at once by a
    local worker; what must wait (a delay, an ``eta``) goes to ``target``, the app's memory
    queue backend, as do dead letters."""

    max_deliveries = None

    def __init__(self, app: Ivy, target: MemoryQueueBackend) -> None:
        self.url = f"inline+{target.url}"
        self.target = target
        #: messages to run: (queue, body, priority, delivery count)
        self._pending: deque[tuple[str, bytes, int, int]] = deque()
        self._lock = threading.Lock()
        self._running = False
        self.worker = _LocalWorker(app, self)
        #: the calls run so far
        self.ran = 0

    def publish(self, queue: str, body: bytes, *, priority: int = 0, delay: float = 0.0,
                route: str | None = None) -> None:
        if delay > 0:  # due later: for drain() or a worker, when the clock gets there
            self.target.publish(queue, body, priority=priority, delay=delay)
            return
        self._pending.append((queue, body, priority, 1))
        while True:
            with self._lock:
                if self._running or not self._pending:
                    return  # a run in progress takes it (sent by a task it runs)
                self._running = True
            try:
                self._run()
            finally:
                with self._lock:
                    self._running = False

    def _run(self) -> None:
        ran = 0
        while self._pending:
            if ran >= MAX_INLINE_RUNS:
                left = len(self._pending)
                while self._pending:  # kept, not lost: drain() shows them
                    queue, body, priority, count = self._pending.popleft()
                    self.target.broker.put(queue, body, priority, 0.0, count - 1)
                raise InlineLimitExceeded(
                    f"one send ran {ran} calls under ivy.testing.inline() and {left} more "
                    "were waiting (moved to the memory queue): a task that sends calls "
                    "forever? Test it with ivy.testing.drain(app, timeout=...)")
            queue, body, priority, count = self._pending.popleft()
            self.worker.process(_InlineDelivery(self, queue, body, priority, count))
            ran += 1
            self.ran += 1

    def consume(self, queue: str, *, prefetch: int = 1, reserve_time: float = 30.0) -> Consumer:
        return self.target.consume(queue, prefetch=prefetch, reserve_time=reserve_time)

    def size(self, queue: str) -> int:
        return self.target.size(queue)

    def dead_letters(self, queue: str, limit: int = 100) -> list[DeadLetter]:
        return self.target.dead_letters(queue, limit)

    def requeue_dead(self, queue: str, ids: Collection[str] | None = None, *,
                     rewrite: Rewrite | None = None) -> int:
        return self.target.requeue_dead(queue, ids, rewrite=rewrite)

    def purge_dead(self, queue: str) -> int:
        return self.target.purge_dead(queue)

    def queues(self) -> list[str]:
        return self.target.queues()

    def close(self) -> None:
        self.worker.close()


@contextlib.contextmanager
def inline(app: Ivy) -> Iterator[None]:
    """Run each call ``app`` sends inside the block at once, in the sending thread:

        with ivy.testing.inline(app):
            call = app.delayed_call(add, 1, 2)
        assert call.result(timeout=1) == 3

    The call goes the whole way a call goes, without the queue: checked and encoded as the
    producer does (JSON types, ``max_message_bytes``, ``max_depth``, signing), then decoded
    and checked as a worker does (signature, schema, known task, arguments), run by a worker
    of the app (its middleware, retry policy, cancels and rate limits), and its outcome
    published on the app's notifier and handed to the call before the send returns: its
    ``result()``, callbacks, ``finished`` and ``await`` behave as in production, and an
    error comes back as :class:`ivy.RemoteTaskError`. An argument production would refuse
    is refused at the send.

    Retries run at once, one after another, without waiting out their backoff. Calls that
    tasks send run after the task that sent them (not inside it), in the same thread; so do
    calls another thread sends meanwhile. What must wait goes to the app's memory queue,
    where :func:`drain` (or a worker) runs it: calls sent with a ``delay`` (or an ``eta``),
    snoozes, rate-limited calls. Dead letters land in the app's memory queue too
    (``app.dead_letters(queue)``). A task's ``timeout`` is not enforced (no heartbeat runs
    here). One send that leads to more than :data:`MAX_INLINE_RUNS` runs raises
    :class:`InlineLimitExceeded`.

    Needs an app on the memory queue backend (the ``ivy_app`` fixture).

    Args:
        app: the app whose sends run at once.

    Yields:
        Nothing: the block's sends run as they are made.

    Raises:
        ivy.ConfigurationError: ``app`` is not on the memory queue backend, or is inside
            :func:`capture`.
        InlineLimitExceeded: one send led to more than :data:`MAX_INLINE_RUNS` runs.
    """
    backend = InlineBackend(app, memory_backend(app, "ivy.testing.inline()"))
    try:
        with queue_backend_of(app, backend):
            yield
    finally:
        backend.close()


# -- drain -----------------------------------------------------------------------------------


def _describe(app: Ivy, queue: str, item: Queued) -> str:
    try:
        message = decode(app, item.body)
        what = f"{message.name} [{message.id}]"
    except MessageError as exc:
        what = f"an undecodable message ({exc.reason[:80]})"
    where = {"ready": "ready", "reserved": "running elsewhere",
             "delayed": f"due in {item.due_in:.3g} s"}[item.state]
    return f"{what} on queue {queue!r}, {where}"


def drain(app: Ivy, timeout: float = 10.0, *, queues: Iterable[str] | None = None,
          raise_errors: bool = True) -> int:
    """Run what ``app``'s memory queues hold until they are empty; return how many messages
    were processed:

        app.delayed_call(add, 1, 2)
        ivy.testing.drain(app, timeout=5)

    Runs in the calling thread, by a worker of the app (as :func:`inline` does), on
    ``queues`` (default: the queues of the tasks registered on the app, as ``listen()``).
    What the runs send is run too: calls sent by tasks, workflow steps, retries, delayed
    calls. Nothing waits out a delay: when only delayed messages are left, the clock jumps
    to the next one (the installed :class:`FakeClock`, which stays moved; else a FakeClock
    of the drain's own, for its duration). Messages running on another worker are waited
    for.

    With ``raise_errors`` (the default) the first call that ends in an error (its last
    attempt failed, it was discarded, or its message was dead-lettered as unrunnable)
    stops the drain and raises as :class:`ivy.RemoteTaskError`, the remote traceback in
    its notes; what is left stays queued. It never hangs: after ``timeout`` seconds it
    raises :class:`DrainTimeout`, which names what is still queued.

    Args:
        app: the app whose memory queues are drained.
        timeout: seconds the drain may take, > 0.
        queues: the queues to drain; None: those of the tasks registered on the app
            (``ivy`` if none).
        raise_errors: stop at the first call that ends in an error, and raise it.

    Returns:
        How many messages were processed.

    Raises:
        ivy.RemoteTaskError: a call ended in an error (with ``raise_errors``).
        DrainTimeout: ``timeout`` passed with messages still queued.
        ValueError: a ``timeout`` that is not a number of seconds > 0.
        ivy.ConfigurationError: ``app`` is not on the memory queue backend, or is inside
            :func:`capture`.
    """
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
        raise ValueError(f"timeout {timeout!r} must be a number of seconds > 0")
    backend = memory_backend(app, "ivy.testing.drain()")
    names = list(dict.fromkeys(queues)) if queues is not None else sorted(
        {t.queue for t in app.registry.tasks()}
    ) or ["ivy"]
    deadline = time.monotonic() + timeout
    own_clock = None if FakeClock.current() is not None else FakeClock().install()
    clock = FakeClock.current()
    assert clock is not None
    worker = _LocalWorker(app, backend)
    consumers = {name: backend.consume(name, reserve_time=app.reserve_time)
                 for name in names}
    pause = threading.Event()
    processed = 0
    try:
        while True:
            got = False
            for consumer in consumers.values():
                delivery = consumer.get(0)
                if delivery is None:
                    continue
                got = True
                processed += 1
                error = worker.process(delivery)
                if error is not None and raise_errors:
                    raise error
                if time.monotonic() > deadline:
                    break
            if time.monotonic() > deadline:
                raise _timed_out(app, backend, names, timeout, processed)
            if got:
                continue
            held = {name: backend.queued(name) for name in names}
            items = [item for found in held.values() for item in found]
            if not items:
                return processed
            if any(item.state == "ready" for item in items):
                continue
            delayed = [item.due_in for item in items if item.state == "delayed"]
            if delayed:
                clock.advance(min(delayed) + 0.001)
            else:  # all running on another worker: let it finish them
                pause.wait(0.002)
    finally:
        for consumer in consumers.values():
            consumer.close()
        worker.close()
        if own_clock is not None:
            own_clock.uninstall()


def _timed_out(app: Ivy, backend: MemoryQueueBackend, names: list[str], timeout: float,
               processed: int) -> DrainTimeout:
    queued = [_describe(app, name, item) for name in names for item in backend.queued(name)]
    shown = "\n".join(f"  {line}" for line in queued[:NAMED])
    more = f"\n  ... and {len(queued) - NAMED} more" if len(queued) > NAMED else ""
    return DrainTimeout(
        f"ivy.testing.drain(): the queues {', '.join(map(repr, names))} were not empty after "
        f"{timeout:g} s ({processed} messages processed); {len(queued)} still queued:\n"
        f"{shown}{more}\nA task that sends calls forever, or a call that waits for another "
        "one? Raise timeout= if the work is just long.", queued)
