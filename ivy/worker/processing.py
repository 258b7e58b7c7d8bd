"""One delivery, start to end: decode it, check it, defer it while its ``eta`` is later, pass it
through the gate, run it and settle it (docs/internals/workers.md)."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import random
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, TypeVar

from ivy.annotations import Arguments, BadArguments
from ivy.errors import MessageError
from ivy.message import NONCE, Message, decode_message, nonce_of, now_ms
from ivy.middleware import Pipeline
from ivy.queues.base import Delivery, QueueBackend, delivery_limit_reason
from ivy.serialization import Serializer, Signer, seal
from ivy.task import Registry, Task
from ivy.worker.continuation import WorkflowRecorder
from ivy.worker.execution import Executor, time_limit_failure
from ivy.worker.gate import Gate
from ivy.worker.runner import check_importable
from ivy.worker.settle import Settler

log = logging.getLogger("ivy.worker")


@dataclass(frozen=True)
class WorkerContext:
    """What a worker needs from its app, and nothing more: the tasks it may run, how bodies
    are encoded, checked and signed, the retry backoff, and per-task reservations.

    ``reserve_times`` maps a task name to the lease its running messages get; it overrides
    ``Task.reserve_time``, which overrides the worker's own ``reserve_time``.
    ``Ivy.worker_context()`` builds one from an app."""

    registry: Registry
    serializer: Serializer
    backoff: Callable[[int], float]
    max_message_bytes: int
    max_depth: int
    signer: Signer | None = None
    reserve_times: Mapping[str, float] = field(default_factory=dict)
    #: the app's middleware; the worker calls its task, retry and dead-letter hooks
    middleware: Pipeline = field(default_factory=Pipeline)
    #: seconds a message may be old (from ``created_ms``, or ``eta`` when later) when taken;
    #: an older one is dead-lettered. None: no limit (``Ivy(max_message_age=...)``)
    max_message_age: float | None = None
    #: whether a task that failed after its retries is dead-lettered, or only acknowledged
    #: once its error is stored (``Ivy(dead_letter_failures=...)``)
    dead_letter_failures: bool = True
    #: the hard time limit of tasks without their own ``time_limit`` (``ivy worker
    #: --time-limit``; None: none): ivy.worker.limits
    time_limit: float | None = None

    def __post_init__(self) -> None:
        # a private read-only copy: the caller's dict changing later does not reach the worker
        object.__setattr__(self, "reserve_times", MappingProxyType(dict(self.reserve_times)))

    def seal(self, body: bytes) -> bytes:
        """Sign an encoded message or notification when a signing key is configured."""
        return seal(self.signer, body)

#: Internal errors one body may meet on one worker: after the last it is dead-lettered, not
#: returned to its queue again. The returns wait ``backoff(1)``, ``backoff(2)``, ... (with
#: the default 1 s doubling, about 4-8 minutes in all), so that a notifier or backend that
#: is down for a while does not cost the call; a body that always fails does not loop.
MAX_INTERNAL_ERRORS = 10
#: bodies whose internal errors a worker keeps count of: the oldest count is forgotten first
REMEMBERED_BODIES = 1024
#: how much of an internal error's text a dead letter's reason keeps
_ERROR_CHARS = 500


K = TypeVar("K")
V = TypeVar("V")


def remember(bounded: OrderedDict[K, V], key: K, value: V, size: int) -> None:
    """Set ``bounded[key]`` as its newest entry, and forget the oldest beyond ``size``."""
    bounded[key] = value
    bounded.move_to_end(key)
    if len(bounded) > size:
        bounded.popitem(last=False)


class InternalErrors:
    """Counts the internal errors of each body (by queue and a digest of its bytes) on one
    worker; thread-safe, and bounded to the ``REMEMBERED_BODIES`` counted last."""

    def __init__(self, size: int = REMEMBERED_BODIES) -> None:
        self._size = size
        self._counts: OrderedDict[bytes, int] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, delivery: Delivery) -> int:
        """Count one more internal error of ``delivery``'s body; return its count."""
        digest = hashlib.blake2b(delivery.queue.encode("utf-8", "surrogatepass"),
                                 digest_size=16)
        digest.update(b"\0")
        digest.update(delivery.body)
        key = digest.digest()
        with self._lock:
            count = self._counts.pop(key, 0) + 1
            remember(self._counts, key, count, self._size)
            return count


class Processor:
    """Runs one delivery to its end for a worker (ack, retry or dead letter), with the parts
    the worker made: its ``executor`` runs task bodies, its ``gate`` admits (cancels, rate
    limits), its ``recorder`` publishes outcomes and continues workflows, its ``settler``
    acks, retries or dead-letters. ``started(delivery, message, lease)`` tells the worker a
    delivery it holds started running, under that lease (its heartbeat extends it). Counts
    the deliveries it processed and the failed ones; thread-safe."""

    def __init__(self, context: WorkerContext, backend: QueueBackend, name: str, *,
                 reserve_time: float, executor: Executor, gate: Gate,
                 recorder: WorkflowRecorder, settler: Settler,
                 started: Callable[[Delivery, Message, float], None]) -> None:
        self.context = context
        self.backend = backend
        self.name = name
        self.reserve_time = reserve_time
        self._executor = executor
        executor.on_progress = recorder.progress  # ivy.current().progress() publishes here
        executor.serializer = context.serializer  # hard time limits (ivy.worker.runner)
        executor.time_limit = context.time_limit
        if executor.watch is None:  # limited calls run in runner processes: refused now,
            for task in context.registry.tasks():  # not at the first call
                if task.time_limit or context.time_limit:
                    check_importable(task.name, task.func)
        self._gate = gate
        self._recorder = recorder
        self._settler = settler
        self._started = started
        #: deliveries processed, and task runs that failed or messages dead-lettered
        self.processed = 0
        self.failed = 0
        self._lock = threading.Lock()
        #: internal errors per body, so that none is returned to its queue forever
        self._internal_errors = InternalErrors()
        #: messages back from a dead worker, spread once before they run
        self._suspects = Suspects()

    def process(self, delivery: Delivery) -> None:
        """What :meth:`ivy.Worker.process` documents: run one delivery to its end (ack, retry
        or dead letter); never raises."""
        message: Message | None = None
        try:
            if delivery.uncounted:  # its lost delivery is counted once it is back in the queue
                delivery.defer(0.0)
                return
            # decoded first, so that an internal error after it still names the call
            message = self._decode(delivery)
            admitted = None if message is None else self._admit(delivery, message)
            if message is not None and admitted is not None:
                self._run(delivery, *admitted, message)
        except Exception as exc:
            self._internal_error(delivery, message, exc)
        finally:
            with self._lock:
                self.processed += 1

    def _decode(self, delivery: Delivery) -> Message | None:
        """The delivery's message, or None once it was dead-lettered as undecodable."""
        ctx = self.context
        try:
            return decode_message(delivery.body, ctx.serializer,
                                  max_bytes=ctx.max_message_bytes, max_depth=ctx.max_depth,
                                  signer=ctx.signer)
        except MessageError as exc:
            self.reject(delivery, exc.reason, exc.fields)
        except Exception as exc:  # a serializer's bug, or one of ours: never returned to loop
            log.exception("worker %s: decoding a message of %s raised", self.name,
                          delivery.queue)
            self.reject(delivery, f"message could not be decoded: {_error(exc)}", {})
        return None

    def _admit(self, delivery: Delivery, message: Message
               ) -> tuple[Task[Any, Any], Arguments | None] | None:
        """Check a decoded message; its task and its arguments, decoded by their
        annotations (None: as they travel), if it is to run now, else None (it was deferred,
        spread, dead-lettered or held back by the gate)."""
        ctx = self.context
        if message.queue is not None and message.queue != delivery.queue:
            # a body sent to one queue put into another (a replay, or a confused deputy): the
            # queue is inside the signature of a signed body, so this holds in signed mode
            self.reject(delivery, f"message for queue {_short(message.queue)!r} delivered "
                        f"on queue {delivery.queue!r}: refused (replayed or misrouted)",
                        _fields(message), message)
            return None
        too_old = _too_old(ctx.max_message_age, message)
        if too_old is not None:  # a replay outside its window, or a message left too long
            self.reject(delivery, too_old, _fields(message), message)
            return None
        exhausted = delivery.exhausted or lost_deliveries(self.backend, delivery, message)
        if exhausted is not None:  # it killed or hung worker after worker
            self.reject(delivery, exhausted, _fields(message), message)
            return None
        if self._suspects.spread(self.backend, delivery, message):
            return None
        # Backends that retry by redelivering the same body (SQS) count attempts for us;
        # a redelivery after a crash counts as an attempt too (poison-message protection).
        message.attempt = max(message.attempt, delivery.delivery_count - 1)
        task = ctx.registry.get(message.name)
        if task is None:
            reason = ctx.registry.not_registered_message(message.name, delivery.queue)
            self.reject(delivery, reason, _fields(message), message)
            return None
        try:
            task.check_arguments(message.args, message.kwargs)
        except TypeError as exc:
            self.reject(delivery, f"wrong arguments for task {task.name!r}: {exc}",
                        _fields(message), message)
            return None
        arguments = None
        codec = task.codec  # typed arguments (ivy.annotations): None for most tasks
        if codec is not None and codec.converts_args:
            try:
                arguments = codec.decode_args(message.args, message.kwargs)
            except BadArguments as exc:
                self.reject(delivery, f"bad arguments for task {task.name!r}: {exc}",
                            _fields(message), message)
                return None
        if message.eta is not None and message.eta > now_ms() + 5:
            delivery.defer((message.eta - now_ms()) / 1000)  # not an attempt
            return None
        if not self._gate.admit(delivery, task, message):  # cancelled, rate-limited
            return None
        return task, arguments

    def lease(self, task: Task[Any, Any]) -> float:
        """What :meth:`ivy.Worker.lease` documents: how long a running message of ``task``
        stays reserved between extends."""
        lease = self.context.reserve_times.get(task.name)
        if lease is None:
            lease = task.reserve_time
        return self.reserve_time if lease is None else float(lease)

    def _run(self, delivery: Delivery, task: Task[Any, Any], arguments: Arguments | None,
             message: Message) -> None:
        """Run an admitted message's task (with its decoded ``arguments``, if any; its
        lease set for the heartbeat) and settle it."""
        lease = self.lease(task)
        self._started(delivery, message, lease)
        if lease != self.reserve_time:
            delivery.extend(lease)
        middleware = self.context.middleware
        if middleware:
            middleware.before_task(message)
        # a workflow step that ran to its end before a crash is not run again
        replayed = self._recorder.replay(message) if message.extra else None
        ok, value = replayed or self._executor.run(task, message, arguments)
        self._settle(delivery, task, message, ok, value)

    def time_out(self, delivery: Delivery, message: Message, limit: float) -> None:
        """Settle a call that passed its hard time ``limit`` while its thread still runs it
        (ivy.worker.limits: the process is about to be replaced): as a run that failed with
        :class:`ivy.TaskTimeout`, retried if its task's policy says so."""
        task = self.context.registry.get(message.name)
        if task is None:  # it ran, so it is registered: never seen
            return
        failed = time_limit_failure(task, limit, "its worker process is replaced")
        self._settle(delivery, task, message, False, failed)

    def _settle(self, delivery: Delivery, task: Task[Any, Any], message: Message, ok: bool,
                value: Any) -> None:
        """After a run: the middleware's ``after_task``, then ack, retry or dead letter."""
        middleware = self.context.middleware
        if middleware:
            middleware.after_task(message, value if ok else None, None if ok else value)
        if delivery.ended is not None:  # handed back while it ran: it runs again elsewhere
            log.info("worker %s: call %s [%s] ended after its message was handed back to its "
                     "queue; this outcome is dropped", self.name, message.name, message.id)
            return
        if self._gate.settle_cancelled(delivery, message, ok, value):
            return
        if ok:
            self._settler.succeeded(delivery, message, value)
            return
        with self._lock:
            self.failed += 1
        self._settler.failed(delivery, task, message, value)

    def reject(self, delivery: Delivery, reason: str, fields: dict[str, Any],
               message: Message | None = None) -> None:
        """Dead-letter a message that cannot run, and tell its producer when we can."""
        with self._lock:
            self.failed += 1
        self._settler.reject(delivery, reason, fields, message)

    def _internal_error(self, delivery: Delivery, message: Message | None,
                        exc: Exception) -> None:
        """Return a delivery whose processing raised to its queue, or dead-letter it once its
        body met ``MAX_INTERNAL_ERRORS`` of them on this worker."""
        count = self._internal_errors.add(delivery)
        if count < MAX_INTERNAL_ERRORS:
            log.exception("worker %s: internal error %d of at most %d on a message of %s; "
                          "returning it to the queue", self.name, count, MAX_INTERNAL_ERRORS,
                          delivery.queue)
            if message is not None:
                self._suspects.returned(delivery, message)
            with logged("returning a message after an internal error"):
                delivery.retry(self.context.backoff(count))
            return
        log.exception("worker %s: internal error %d on a message of %s; dead-lettering it",
                      self.name, count, delivery.queue)
        reason = (f"internal error {count} times on worker {self.name}; the last: "
                  f"{_error(exc)}")
        with logged("dead-lettering a message after internal errors"):
            self.reject(delivery, reason, _fields(message) if message else {}, message)


#: A suspect (a message that lost a delivery: it was held by a worker that died) is deferred
#: once per worker by up to this many seconds before it runs (see Suspects).
SUSPECT_SPREAD = 2.0


class Suspects:
    """Spreads the messages that come back from a dead worker. Those held together by the
    worker a poison message killed come back together, and would be taken together again and
    die with it again, until they all reach the delivery limit with it. Deferring each of
    them once, by a random delay up to :data:`SUSPECT_SPREAD` s (a defer: no attempt, no
    delivery counted), scatters them, so that only the poison message keeps losing its
    deliveries. Counted per (call id, lost deliveries) on this worker, bounded; only where the
    backend counts lost deliveries (``counts_lost_deliveries``)."""

    def __init__(self, size: int = REMEMBERED_BODIES) -> None:
        self._size = size
        self._seen: OrderedDict[tuple[str, int], None] = OrderedDict()
        self._returned: OrderedDict[str, int] = OrderedDict()  # call id -> next delivery
        self._lock = threading.Lock()

    def spread(self, backend: QueueBackend, delivery: Delivery, message: Message) -> bool:
        """True if ``delivery`` was deferred to spread it (nothing more to do with it)."""
        if not backend.counts_lost_deliveries:
            return False
        lost = lost_count(delivery, message)
        if lost <= 0:
            return False
        key = (message.id, lost)
        with self._lock:
            if self._returned.pop(message.id, None) == delivery.delivery_count:
                return False  # this worker put it back itself (see returned)
            if key in self._seen:
                return False
            remember(self._seen, key, None, self._size)
        delivery.defer(random.uniform(0.0, SUSPECT_SPREAD))
        return True

    def returned(self, delivery: Delivery, message: Message) -> None:
        """``delivery`` goes back to its queue after an internal error, with no outcome: its
        next delivery here counts one more lost delivery, but nothing died, so it is not
        spread."""
        with self._lock:
            remember(self._returned, message.id, delivery.delivery_count + 1, self._size)


def _too_old(max_age: float | None, message: Message) -> str | None:
    """The reason to dead-letter ``message`` if it is older than ``max_age`` seconds: counted
    from its send (``created_ms``) or its ``eta`` when later, both inside a signed body."""
    if max_age is None or message.created_ms is None:
        return None
    since = max(message.created_ms, message.eta or 0)
    age = (now_ms() - since) / 1000
    if age <= max_age:
        return None
    return (f"too old: sent {age:.0f} s ago, and max_message_age is {max_age:g} s (a replay, "
            "or a message left in its queue too long)")


def lost_count(delivery: Delivery, message: Message) -> int:
    """The deliveries of ``message`` that ended without an outcome: those of its
    ``delivery_count`` that its ``attempt`` (the retries its workers made) does not account
    for (meaningful where the backend ``counts_lost_deliveries``)."""
    return delivery.delivery_count - 1 - message.attempt


def lost_deliveries(backend: QueueBackend, delivery: Delivery, message: Message
                    ) -> str | None:
    """The reason to dead-letter a poison message, if its deliveries without an outcome
    (:func:`lost_count`) reached the backend's ``max_deliveries``."""
    limit = backend.max_deliveries
    if limit is None:
        return None
    lost = lost_count(delivery, message)
    return delivery_limit_reason(lost, limit) if lost >= limit else None


def _short(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _error(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= _ERROR_CHARS else text[:_ERROR_CHARS - 3] + "..."


def _fields(message: Message) -> dict[str, Any]:
    fields = {"id": message.id, "name": message.name, "reply_to": message.reply_to}
    nonce = nonce_of(message)
    if nonce is not None:
        fields[NONCE] = nonce
    if "workflow" in message.extra:  # a workflow step: its workflow fails (ivy.workflows)
        fields["workflow"] = message.extra["workflow"]
    return fields


@contextlib.contextmanager
def logged(what: str) -> Iterator[None]:
    """Log and swallow an exception: for steps whose failure must not stop the worker."""
    try:
        yield
    except Exception:
        log.exception("worker: %s failed", what)
