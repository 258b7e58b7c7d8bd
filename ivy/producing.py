"""The producer's path of :class:`ivy.Ivy`: checking, encoding and handing over one call
(``send_task``, ``delayed_call``, ``delayed_calls``), a workflow (:mod:`ivy.workflows`) or a
unique send (:mod:`ivy.timing.unique`). The app keeps the state; these are its steps."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ivy import transactional
from ivy.call import Call, ResultCallback, finished_adapter, result_callback_adapter
from ivy.message import NONCE, Message, encode_call, new_id, new_nonce, now_ms
from ivy.task import Task
from ivy.workflows.canvas import Canvas

if TYPE_CHECKING:
    from ivy.app import Ivy

log = logging.getLogger("ivy")


@dataclass(slots=True)
class Outgoing:
    """One encoded call on its way to the queue backend."""

    call: Call[Any]
    message: Message
    queue: str
    body: bytes
    priority: int
    delay: float
    route: str | None


def send_task(
    app: Ivy, task: Any, args: Iterable[Any], kwargs: Mapping[str, Any] | None, *,
    queue: str | None, priority: int | None, delay: float | None, max_retries: int | None,
    callback: ResultCallback | None, confirm: bool, unique_key: str | None,
    unique_for: float | None, connection: Any = None,
) -> Call[Any]:
    """What :meth:`ivy.Ivy.send_task` documents: a workflow, a unique send or a plain call;
    with ``connection``, written in that connection's transaction (:mod:`ivy.transactional`)."""
    within = transactional.active(app)
    if connection is not None and within is not None and within.connection is not connection:
        raise ValueError("send_task(connection=...) inside 'with app.transaction(...)' of "
                         "another connection: send with the block's connection, or outside it")
    if connection is not None and within is None:
        with app.transaction(connection):
            return send_task(app, task, args, kwargs, queue=queue, priority=priority,
                             delay=delay, max_retries=max_retries, callback=callback,
                             confirm=confirm, unique_key=unique_key, unique_for=unique_for)
    if isinstance(task, Canvas):
        if unique_key is not None or unique_for is not None:
            raise ValueError("unique_key and unique_for apply to calls of one task, not to "
                             "workflows: send the workflow's first step unique instead")
        from ivy.workflows.sending import send_workflow

        return send_workflow(app, task, args, kwargs, queue=queue, priority=priority,
                             delay=delay, max_retries=max_retries, callback=callback,
                             confirm=confirm)

    def send(call_id: str | None = None, extra: dict[str, Any] | None = None) -> Call[Any]:
        out = app._prepare(task, args, kwargs, queue=queue, priority=priority,
                           delay=delay, max_retries=max_retries, callback=callback,
                           call_id=call_id, extra=extra)
        app._send([out], out.queue, out.priority, out.delay, out.route)
        if confirm:
            out.call.sent()
        return out.call

    registered = task if isinstance(task, Task) else (
        app.registry.get(task) if isinstance(task, str) else None)
    if unique_key is None and unique_for is None and (
            registered is None or registered.unique_for is None):
        if registered is None and not isinstance(task, str) and callable(task):
            registered = app.registry.resolve(task)  # a registered function
            if registered.unique_for is not None:
                return app.send_task(registered, args, kwargs, queue=queue,
                                     priority=priority, delay=delay,
                                     max_retries=max_retries, callback=callback,
                                     confirm=confirm)
        return send()
    from ivy.timing import unique

    unique.check(unique_key, unique_for)
    if registered is None and not (isinstance(task, str) and queue is not None):
        registered = app.registry.resolve(task)
    name = registered.name if registered is not None else str(task)
    target = queue or (registered.queue if registered is not None else "ivy")
    if unique_for is None:
        unique_for = registered.unique_for if registered is not None else None
    args = tuple(args)
    return unique.send_unique(app, name, target, args, dict(kwargs or {}),
                              unique_key=unique_key, unique_for=unique_for or 0.0,
                              send=send)


def prepare(
    app: Ivy, task: Any, args: Iterable[Any], kwargs: Mapping[str, Any] | None, *,
    queue: str | None = None, priority: int | None = None, delay: float | None = None,
    max_retries: int | None = None, callback: ResultCallback | None = None,
    call_id: str | None = None, extra: Mapping[str, Any] | None = None,
) -> Outgoing:
    """What :meth:`ivy.Ivy._prepare` documents: check and encode one call, and register it as
    pending."""
    app._check_open()
    args, kwargs = tuple(args), dict(kwargs or {})
    if callback is not None and not callable(callback):
        raise TypeError(f"callback {callback!r} is not callable: pass a function "
                        "callback(err, result)")
    if delay is not None and (not isinstance(delay, (int, float)) or delay < 0):
        raise ValueError(f"delay {delay!r} must be a number of seconds >= 0")
    registered: Task[Any, Any] | None = None
    codec = None
    if isinstance(task, str) and queue is not None and app.registry.get(task) is None:
        name = task
    else:
        registered = app.registry.resolve(task)
        name = registered.name
        if isinstance(task, Task) and app.registry.get(name) is None:
            # a task registered elsewhere (ivy.default, by @ivy.register_task in a module),
            # sent through this instance: this instance's own workers run it too. Workers of
            # other instances still need it registered (app.registry.add(task)).
            app.registry.add(task)
            log.info("task %r, registered on another ivy instance, is now known to this one "
                     "too (its workers run it)", name)
        try:
            registered.check_arguments(args, kwargs)
        except TypeError as exc:
            raise TypeError(f"wrong arguments for task {name!r}: {exc}") from None
        codec = registered.codec  # typed arguments and result (ivy.annotations)
        if codec is not None and codec.converts_args:
            args, kwargs = codec.encode_args(args, kwargs)
    target_queue = queue or (registered.queue if registered else "ivy")
    created = now_ms()
    nonce = new_nonce()  # binds the result to this call: PROTOCOL.md, "nonce"
    message = Message(
        id=call_id or new_id(), name=name, args=list(args), kwargs=kwargs, queue=target_queue,
        reply_to=app.channel,
        max_retries=max_retries if max_retries is not None else (
            registered.max_retries if registered else 0),
        priority=priority if priority is not None else (
            registered.priority if registered else 0),
        eta=created + int(delay * 1000) if delay else None, created_ms=created,
        extra={**extra, NONCE: nonce} if extra else {NONCE: nonce})
    if app.middleware:
        app.middleware.before_publish(message)
    body = encode_call(message, app.serializer, max_depth=app.max_depth,
                       max_bytes=app.max_message_bytes)
    call: Call[Any] = Call(message.id, name, target_queue)
    call.nonce = nonce
    call._canceller = app._canceller
    if codec is not None and codec.result is not None:
        call._decode = codec.decode_result
    if callback is not None:
        call.add_done_callback(result_callback_adapter(callback))
    if registered is not None and registered.finished is not None:
        call.add_done_callback(finished_adapter(registered.finished))
    app._current_results().add(call)
    return Outgoing(call, message, target_queue, app.seal(body), message.priority,
                    delay or 0.0, registered.route if registered is not None else None)


def hand_over(app: Ivy, outs: list[Outgoing], queue: str, priority: int, delay: float,
              route: str | None) -> None:
    """What :meth:`ivy.Ivy._send` documents: hand messages to the backend (or, inside
    ``app.transaction(conn)``, to that connection) and track their confirms."""
    within = transactional.active(app)
    if within is not None:
        try:
            within.send(outs, queue, priority, delay)
        except BaseException:
            app._forget([o.call for o in outs])
            raise
        return
    try:
        futures = app.queue_backend.send_many(queue, [o.body for o in outs],
                                              priority=priority, delay=delay, route=route)
    except BaseException:
        app._forget([o.call for o in outs])
        raise
    refused = [(out, error) for out, f in zip(outs, futures, strict=True)
               if f.done() and (error := f.exception()) is not None]
    if refused:
        app._forget([out.call for out, _ in refused])
        raise refused[0][1]
    for out, future in zip(outs, futures, strict=True):
        app._outbox.track(out.call, future)
        if app.middleware:
            app.middleware.after_publish(out.message)


def track_within(app: Ivy, out: transactional.Outgoing, future: Future[None]) -> None:
    """Follow a call written in the caller's transaction: sent when it commits, failed
    (and forgotten) when it rolls back. Not in the outbox: ``flush`` does not wait for it."""
    out.call._sending(future)
    transactional.forget_on_failure(out.call, future, app._send_failed)
    if app.middleware:
        app.middleware.after_publish(out.message)


def send_batch(app: Ivy, task: Any, arg_lists: Iterable[Iterable[Any]], *,
               callback: ResultCallback | None, delay: float | None) -> list[Call[Any]]:
    """What :meth:`ivy.Ivy.delayed_calls` documents."""
    batch: list[Outgoing] = []
    try:
        for args in arg_lists:
            batch.append(app._prepare(task, args, None, delay=delay, callback=callback))
    except BaseException:
        app._forget([o.call for o in batch])  # nothing was sent
        raise
    groups: dict[tuple[str, int, str | None], list[Outgoing]] = {}
    for out in batch:
        groups.setdefault((out.queue, out.priority, out.route), []).append(out)
    try:
        for (queue, priority, route), outs in groups.items():
            hand_over(app, outs, queue, priority, delay or 0.0, route)
    except BaseException:
        app._forget([o.call for o in batch])
        raise
    return [o.call for o in batch]


def cancel_call(app: Ivy, call_id: object, ttl: float) -> None:
    """``Ivy.cancel``: store the cancel (:mod:`ivy.timing.cancel`); settle a call of this
    process at once (its producer publishes the final ``cancelled`` notification: the first
    final one wins in the store)."""
    from ivy.timing import unique
    from ivy.timing.cancel import cancelled_notification, check_call_id, store_cancel

    call_id = check_call_id(call_id)
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or ttl <= 0:
        raise ValueError(f"ttl {ttl!r} must be a number of seconds > 0 (how long the cancel "
                         "is kept)")
    results = app._current_results()
    notifier = results.notifier
    assert notifier is not None
    store_cancel(notifier, call_id, ttl)
    unique.cancelled(app, notifier, call_id)
    for consumer in results.consumers():
        mine = next((c for c in consumer.pending() if c.id == call_id), None)
        if mine is not None:
            note = cancelled_notification(call_id, mine.task)
            note.nonce = mine.nonce  # so the worker's result, if it comes, is a duplicate
            consumer.notifier.publish(app.channel, call_id,
                                      app.seal(note.encode(app.serializer)), final=True,
                                      nonce=mine.nonce)
            return
