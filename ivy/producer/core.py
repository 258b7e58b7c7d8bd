"""The producer: checks, encodes and hands over calls (one, a batch, a workflow, a unique
send, or inside the application's transaction), and follows their confirms and results."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future
from typing import Any

from ivy import transactional
from ivy.call import Call, ResultCallback, finished_adapter, result_callback_adapter
from ivy.errors import PublishError
from ivy.message import NONCE, Message, encode_call, new_id, new_nonce, now_ms
from ivy.outbox import Outbox
from ivy.producer import unique
from ivy.producer.roles import Outgoing, Settings, Sources
from ivy.producer.workflows import send_workflow, signature_call
from ivy.results import Results
from ivy.task import Task
from ivy.timing.cancel import cancelled_notification, check_call_id, store_cancel
from ivy.workflows.canvas import Canvas, Signature

log = logging.getLogger("ivy")


class Producer:
    """Sends the calls of one app and keeps what follows a send: the confirms (its outbox),
    the results (the consumers of its sources), the unique keys its calls hold.

    Parameters:
        settings: The app's settings (registry, serializer, middleware, limits, channel,
            sealing), read at each send.
        sources: The app's backends: the queue sent to, the result consumers, whether it is
            closed.
    """

    def __init__(self, settings: Settings, sources: Sources) -> None:
        self.settings = settings
        self.sources = sources
        #: the sends not confirmed yet (:meth:`flush` waits for them)
        self.outbox = Outbox(self.send_failed)
        self.unique = unique.UniqueSends(self)
        #: what each call's ``cancel()`` calls: one bound method for all of them
        self.canceller: Callable[[str], None] = self.cancel

    def results(self) -> Results:
        """The consumers, one of which new calls wait on (the default notifier's, started
        now, if none is)."""
        results = self.sources.results
        if results.current is None:
            self.sources.start_consumer()
        return results

    def send_task(
        self, task: Any, args: Iterable[Any] = (), kwargs: Mapping[str, Any] | None = None,
        *, queue: str | None = None, priority: int | None = None, delay: float | None = None,
        max_retries: int | None = None, callback: ResultCallback | None = None,
        confirm: bool = False, unique_key: str | None = None, unique_for: float | None = None,
        connection: Any = None,
    ) -> Call[Any]:
        """What :meth:`ivy.Ivy.send_task` documents: a workflow, a unique send or a plain
        call; with ``connection``, written in that connection's transaction."""
        within = transactional.active(self)
        if connection is not None and within is not None and (
                within.connection is not connection):
            raise ValueError("send_task(connection=...) inside 'with app.transaction(...)' of "
                             "another connection: send with the block's connection, or "
                             "outside it")
        if connection is not None and within is None:
            with self.transaction(connection):
                return self.send_task(task, args, kwargs, queue=queue, priority=priority,
                                      delay=delay, max_retries=max_retries,
                                      callback=callback, confirm=confirm,
                                      unique_key=unique_key, unique_for=unique_for)
        if isinstance(task, Canvas):
            if unique_key is not None or unique_for is not None:
                raise ValueError("unique_key and unique_for apply to calls of one task, not to "
                                 "workflows: send the workflow's first step unique instead")
            if isinstance(task, Signature):  # a lone signature: the plain call it describes
                call = signature_call(self.settings.registry, task, args, kwargs, queue=queue,
                                      priority=priority, max_retries=max_retries)
                return self.send_task(call.pop("task"), delay=delay, callback=callback,
                                      confirm=confirm, **call)
            return send_workflow(self, task, args, kwargs, queue=queue, priority=priority,
                                 delay=delay, max_retries=max_retries, callback=callback,
                                 confirm=confirm)

        def send(call_id: str | None = None, extra: dict[str, Any] | None = None) -> Call[Any]:
            out = self.prepare(task, args, kwargs, queue=queue, priority=priority,
                               delay=delay, max_retries=max_retries, callback=callback,
                               call_id=call_id, extra=extra)
            self.hand_over([out], out.queue, out.priority, out.delay, out.route)
            if confirm:
                out.call.sent()
            return out.call

        registry = self.settings.registry
        registered = task if isinstance(task, Task) else (
            registry.get(task) if isinstance(task, str) else None)
        if unique_key is None and unique_for is None and (
                registered is None or registered.unique_for is None):
            if registered is None and not isinstance(task, str) and callable(task):
                registered = registry.resolve(task)  # a registered function
                if registered.unique_for is not None:
                    return self.send_task(registered, args, kwargs, queue=queue,
                                          priority=priority, delay=delay,
                                          max_retries=max_retries, callback=callback,
                                          confirm=confirm)
            return send()
        unique.check(unique_key, unique_for)
        if registered is None and not (isinstance(task, str) and queue is not None):
            registered = registry.resolve(task)
        name = registered.name if registered is not None else str(task)
        target = queue or (registered.queue if registered is not None else "ivy")
        if unique_for is None:
            unique_for = registered.unique_for if registered is not None else None
        return self.unique.send(name, target, tuple(args), dict(kwargs or {}),
                                unique_key=unique_key, unique_for=unique_for or 0.0,
                                send=send)

    def prepare(
        self, task: Any, args: Iterable[Any], kwargs: Mapping[str, Any] | None, *,
        queue: str | None = None, priority: int | None = None, delay: float | None = None,
        max_retries: int | None = None, callback: ResultCallback | None = None,
        call_id: str | None = None, extra: Mapping[str, Any] | None = None,
    ) -> Outgoing:
        """Check and encode one call, and register it as pending (nothing is sent: hand it
        to :meth:`hand_over`, or :meth:`forget` it). ``extra`` holds message fields beyond
        the core ones (``unique_key``, ...).

        Raises:
            TypeError: A callback that is not callable; arguments the task's signature refuses.
            ValueError: A negative ``delay``.
            ivy.TaskNotRegistered: ``task`` is not registered here and no ``queue`` names
                where it goes.
        """
        self.sources.check_open()
        settings = self.settings
        registry = settings.registry
        args, kwargs = tuple(args), dict(kwargs or {})
        if callback is not None and not callable(callback):
            raise TypeError(f"callback {callback!r} is not callable: pass a function "
                            "callback(err, result)")
        if delay is not None and (not isinstance(delay, (int, float)) or delay < 0):
            raise ValueError(f"delay {delay!r} must be a number of seconds >= 0")
        registered: Task[Any, Any] | None = None
        codec = None
        if isinstance(task, str) and queue is not None and registry.get(task) is None:
            name = task
        else:
            registered = registry.resolve(task)
            name = registered.name
            if isinstance(task, Task) and registry.get(name) is None:
                # a task registered elsewhere (ivy.default, by @ivy.register_task in a
                # module), sent through this app: this app's own workers run it too. Workers
                # of other apps still need it registered (app.registry.add(task)).
                registry.add(task)
                log.info("task %r, registered on another ivy instance, is now known to this "
                         "one too (its workers run it)", name)
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
            id=call_id or new_id(), name=name, args=list(args), kwargs=kwargs,
            queue=target_queue, reply_to=settings.channel,
            max_retries=max_retries if max_retries is not None else (
                registered.max_retries if registered else 0),
            priority=priority if priority is not None else (
                registered.priority if registered else 0),
            eta=created + int(delay * 1000) if delay else None, created_ms=created,
            extra={**extra, NONCE: nonce} if extra else {NONCE: nonce})
        if settings.middleware:
            settings.middleware.before_publish(message)
        body = encode_call(message, settings.serializer, max_depth=settings.max_depth,
                           max_bytes=settings.max_message_bytes)
        call: Call[Any] = Call(message.id, name, target_queue)
        call.nonce = nonce
        call._canceller = self.canceller
        if codec is not None and codec.result is not None:
            call._decode = codec.decode_result
        if callback is not None:
            call.add_done_callback(result_callback_adapter(callback))
        if registered is not None and registered.finished is not None:
            call.add_done_callback(finished_adapter(registered.finished))
        self.results().add(call)
        return Outgoing(call, message, target_queue, settings.seal(body), message.priority,
                        delay or 0.0, registered.route if registered is not None else None)

    def hand_over(self, outs: list[Outgoing], queue: str, priority: int, delay: float,
                  route: str | None) -> None:
        """Hand prepared messages to the backend (or, inside ``app.transaction(conn)``, to
        that connection) and track their confirms. What the backend refuses at once raises
        here, and those calls are forgotten: nothing was sent for them."""
        within = transactional.active(self)
        if within is not None:
            try:
                within.send(outs, queue, priority, delay)
            except BaseException:
                self.forget([o.call for o in outs])
                raise
            return
        try:
            futures = self.sources.queue.send_many(queue, [o.body for o in outs],
                                                   priority=priority, delay=delay, route=route)
        except BaseException:
            self.forget([o.call for o in outs])
            raise
        refused = [(out, error) for out, f in zip(outs, futures, strict=True)
                   if f.done() and (error := f.exception()) is not None]
        if refused:
            self.forget([out.call for out, _ in refused])
            raise refused[0][1]
        middleware = self.settings.middleware
        for out, future in zip(outs, futures, strict=True):
            self.outbox.track(out.call, future)
            if middleware:
                middleware.after_publish(out.message)

    def transaction(self, connection: Any) -> transactional.Transaction:
        """What :meth:`ivy.Ivy.transaction` documents."""
        return transactional.Transaction(self, self.sources.queue, connection,
                                         self._track_within)

    def _track_within(self, out: transactional.Outgoing, future: Future[None]) -> None:
        """Follow a call written in the caller's transaction: sent when it commits, failed
        (and forgotten) when it rolls back. Not in the outbox: ``flush`` does not wait."""
        out.call._sending(future)
        transactional.forget_on_failure(out.call, future, self.send_failed)
        if self.settings.middleware:
            self.settings.middleware.after_publish(out.message)

    def send_batch(self, task: Any, arg_lists: Iterable[Iterable[Any]], *,
                   callback: ResultCallback | None, delay: float | None) -> list[Call[Any]]:
        """What :meth:`ivy.Ivy.delayed_calls` documents."""
        batch: list[Outgoing] = []
        try:
            for args in arg_lists:
                batch.append(self.prepare(task, args, None, delay=delay, callback=callback))
        except BaseException:
            self.forget([o.call for o in batch])  # nothing was sent
            raise
        groups: dict[tuple[str, int, str | None], list[Outgoing]] = {}
        for out in batch:
            groups.setdefault((out.queue, out.priority, out.route), []).append(out)
        try:
            for (queue, priority, route), outs in groups.items():
                self.hand_over(outs, queue, priority, delay or 0.0, route)
        except BaseException:
            self.forget([o.call for o in batch])
            raise
        return [o.call for o in batch]

    def send_failed(self, call: Call[Any], error: BaseException) -> None:
        """A message was not taken: the call fails with PublishError, and waits no more."""
        self.forget([call])
        call._fail(error if isinstance(error, PublishError) else PublishError(
            f"the message of call {call.id} of {call.task!r} was not taken: {error}"))

    def forget(self, calls: list[Call[Any]]) -> None:
        """Stop waiting for the results of ``calls`` (nothing was sent for them)."""
        self.sources.results.forget(calls)

    def cancel(self, call_id: object, ttl: float | None = None) -> None:
        """What :meth:`ivy.Ivy.cancel` documents: store the cancel for ``ttl`` seconds
        (default: the app's ``pending_ttl``); settle a call of this producer at once (it
        publishes the final ``cancelled`` notification: the first final one wins)."""
        call_id = check_call_id(call_id)
        if ttl is None:
            ttl = self.settings.pending_ttl
        if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or ttl <= 0:
            raise ValueError(f"ttl {ttl!r} must be a number of seconds > 0 (how long the "
                             "cancel is kept)")
        results = self.results()
        notifier = results.notifier
        assert notifier is not None
        store_cancel(notifier, call_id, ttl)
        self.unique.cancelled(notifier, call_id)
        settings = self.settings
        for consumer in results.consumers():
            mine = next((c for c in consumer.pending() if c.id == call_id), None)
            if mine is not None:
                note = cancelled_notification(call_id, mine.task)
                note.nonce = mine.nonce  # so the worker's result, if it comes, is a duplicate
                consumer.notifier.publish(settings.channel, call_id,
                                          settings.seal(note.encode(settings.serializer)),
                                          final=True, nonce=mine.nonce)
                return

    def flush(self, timeout: float | None = None) -> None:
        """What :meth:`ivy.Ivy.flush` documents."""
        self.outbox.flush(timeout)

    def flush_quietly(self, timeout: float) -> None:
        """Flush before closing or exiting: log, never raise."""
        try:
            self.outbox.flush(timeout)
        except PublishError as exc:
            log.error("closing: %s", exc)
