"""One delivery, start to end: decode it, check it (known task, right arguments, not
exhausted), defer it while its ``eta`` is later, pass it through the gate (cancels, rate
limits), run it and settle it. The worker's per-message steps, apart from its threads
(:mod:`ivy.worker`): the worker keeps the state, these are its steps.

Outcomes: a task body runs in :mod:`ivy.execution` (styles, timeouts), its outcome is
published by :mod:`ivy.outcomes` (within the producer's limits), and :mod:`ivy.settle`
decides what becomes of the delivery (ack, retry, dead letter). A call whose ``eta`` is later
than its delivery is deferred, which does not count as an attempt.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from ivy.errors import MessageError
from ivy.message import Message, decode_message, now_ms
from ivy.queues.base import Delivery
from ivy.task import Task

if TYPE_CHECKING:
    from ivy.worker import Worker

log = logging.getLogger("ivy.worker")


def process(worker: Worker, delivery: Delivery) -> None:
    """What :meth:`ivy.Worker.process` documents: run one delivery to its end (ack, retry or
    dead letter); never raises."""
    message: Message | None = None
    try:
        try:
            ctx = worker.context
            message = decode_message(delivery.body, ctx.serializer,
                                     max_bytes=ctx.max_message_bytes,
                                     max_depth=ctx.max_depth, signer=ctx.signer)
        except MessageError as exc:
            reject(worker, delivery, exc.reason, exc.fields)
            return
        if delivery.exhausted is not None:  # it killed or hung worker after worker
            reject(worker, delivery, delivery.exhausted, _fields(message), message)
            return
        # Backends that retry by redelivering the same body (SQS) count attempts for us;
        # a redelivery after a crash counts as an attempt too (poison-message protection).
        message.attempt = max(message.attempt, delivery.delivery_count - 1)
        task = worker.context.registry.get(message.name)
        if task is None:
            reason = worker.context.registry.not_registered_message(message.name, delivery.queue)
            reject(worker, delivery, reason, _fields(message), message)
            return
        try:
            task.check_arguments(message.args, message.kwargs)
        except TypeError as exc:
            reject(worker, delivery, f"wrong arguments for task {task.name!r}: {exc}",
                   _fields(message), message)
            return
        if message.eta is not None and message.eta > now_ms() + 5:
            delivery.defer((message.eta - now_ms()) / 1000)  # not an attempt
            return
        if not worker._gate.admit(delivery, task, message):  # cancelled, rate-limited
            return
        run(worker, delivery, task, message)
    except Exception:
        log.exception("worker %s: internal error on a message of %s; returning it to the "
                      "queue", worker.name, delivery.queue)
        with logged("returning a message after an internal error"):
            delivery.retry(worker.context.backoff(0))
    finally:
        with worker._lock:
            worker.processed += 1


def lease(worker: Worker, task: Task[Any, Any]) -> float:
    """What :meth:`ivy.Worker.lease` documents: how long a running message of ``task`` stays
    reserved between extends."""
    lease = worker.context.reserve_times.get(task.name)
    if lease is None:
        lease = task.reserve_time
    return worker.reserve_time if lease is None else float(lease)


def run(worker: Worker, delivery: Delivery, task: Task[Any, Any], message: Message) -> None:
    """Run an admitted message's task (its lease set for the heartbeat) and settle it."""
    now = time.monotonic()
    lease = worker.lease(task)
    with worker._lock:
        held = worker._held.get(id(delivery))
        if held is not None:
            held.message, held.started = message, now
            if lease != held.lease:
                held.lease, held.next_extend = lease, now + lease / 3
    if lease != worker.reserve_time:
        delivery.extend(lease)
    middleware = worker.context.middleware
    if middleware:
        middleware.before_task(message)
    # a workflow step that ran to its end before a crash is not run again
    replayed = worker._recorder.replay(message) if message.extra else None
    ok, value = replayed or worker._executor.run(task, message)
    if middleware:
        middleware.after_task(message, value if ok else None, None if ok else value)
    if worker._gate.settle_cancelled(delivery, message, ok, value):
        return
    if ok:
        worker._settler.succeeded(delivery, message, value)
        return
    with worker._lock:
        worker.failed += 1
    worker._settler.failed(delivery, task, message, value)


def reject(worker: Worker, delivery: Delivery, reason: str, fields: dict[str, Any],
           message: Message | None = None) -> None:
    """Dead-letter a message that cannot run, and tell its producer when we can."""
    with worker._lock:
        worker.failed += 1
    worker._settler.reject(delivery, reason, fields, message)


def _fields(message: Message) -> dict[str, Any]:
    fields = {"id": message.id, "name": message.name, "reply_to": message.reply_to}
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
