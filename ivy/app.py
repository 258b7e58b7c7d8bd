"""Ivy: one registry of tasks, the producer side (delayed calls and their results) and the worker
side (listen), over one queue backend and one notifier per role."""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar, overload

from ivy.call import Call, ResultCallback, finished_adapter, result_callback_adapter
from ivy.config import Spec, make_notifier, make_queue_backend
from ivy.errors import ConfigurationError, MessageError, MessageTooLarge, SerializationError
from ivy.message import (
    DEFAULT_MAX_DEPTH,
    DEFAULT_MAX_MESSAGE_BYTES,
    Message,
    decode_notification,
    deeper_than,
    new_id,
    now_ms,
)
from ivy.notifiers.base import Notifier, Subscription
from ivy.queues.base import QueueBackend
from ivy.serialization import Serializer, check_arguments, get_serializer, signer_from
from ivy.task import Finished, Registry, Style, Task
from ivy.worker import Worker, WorkerContext

log = logging.getLogger("ivy")
P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T", QueueBackend, Notifier)

CHANNEL_PREFIX = "ivy:notify:"


@dataclass(slots=True)
class _Outgoing:
    call: Call[Any]
    queue: str
    body: bytes
    priority: int
    delay: float


class Ivy:
    """The ivy API as an object. The module-level functions use one default instance.

    ``queue`` and ``notifier`` are URLs, dicts or backend objects; left out, they come from
    ``IVY_QUEUE_URL`` / ``IVY_NOTIFIER_URL`` or default to the SQLite file ``ivy.db``.
    """

    def __init__(
        self,
        queue: Spec = None,
        notifier: Spec = None,
        *,
        serializer: str | Serializer = "json",
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        retry_base_delay: float = 1.0,
        retry_max_delay: float = 300.0,
        reserve_time: float = 30.0,
        max_depth: int = DEFAULT_MAX_DEPTH,
        signing_key: str | bytes | list[str | bytes] | None = None,
    ) -> None:
        self.registry = Registry()
        self.max_depth = max_depth
        #: HMAC signer from ``signing_key`` or IVY_SIGNING_KEY; None: messages are not signed
        self.signer = signer_from(signing_key)
        self.serializer = get_serializer(serializer)
        self.max_message_bytes = max_message_bytes
        self.retry_base_delay = retry_base_delay
        self.retry_max_delay = retry_max_delay
        self.reserve_time = reserve_time
        self.producer_id = new_id()
        self.channel = CHANNEL_PREFIX + self.producer_id
        self._queue_spec = queue
        self._notifier_spec = notifier
        self._queue: QueueBackend | None = None
        self._consumer_notifier: Notifier | None = None
        self._producer_notifier: Notifier | None = None
        self._owned: list[QueueBackend | Notifier] = []
        self._calls: dict[str, Call[Any]] = {}
        self._calls_lock = threading.Lock()
        self._lock = threading.RLock()
        self._consumer_thread: threading.Thread | None = None
        self._subscription: Subscription | None = None
        self._closing = threading.Event()
        self._workers: list[Worker] = []

    def __enter__(self) -> Ivy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- registry ----------------------------------------------------------------------------

    @overload
    def register_task(
        self, func: Callable[P, R], finished: Finished | None = None, *, name: str | None = ...,
        queue: str = ..., priority: int = ..., retry: bool = ..., max_retries: int = ...,
        reserve_time: float | None = ..., timeout: float | None = ..., style: Style | None = ...,
    ) -> Task[P, R]: ...

    @overload
    def register_task(
        self, func: None = None, finished: Finished | None = None, *, name: str | None = ...,
        queue: str = ..., priority: int = ..., retry: bool = ..., max_retries: int = ...,
        reserve_time: float | None = ..., timeout: float | None = ..., style: Style | None = ...,
    ) -> Callable[[Callable[P, R]], Task[P, R]]: ...

    def register_task(
        self, func: Callable[..., Any] | None = None, finished: Finished | None = None, *,
        name: str | None = None, queue: str = "ivy", priority: int = 0, retry: bool = False,
        max_retries: int = 0, reserve_time: float | None = None, timeout: float | None = None,
        style: Style | None = None,
    ) -> Any:
        """Register ``func`` under a unique dotted ``name`` (default ``module.qualname``).

        Works directly, ``register_task(func, finished, name=...)`` as in the original, or as a
        decorator, ``@register_task(name=...)``. Returns a :class:`Task`, which still calls the
        function locally when called. ``finished(result)`` runs in the producer whenever a call
        of this task succeeds.
        """

        def register(f: Callable[..., Any]) -> Task[Any, Any]:
            if isinstance(f, Task):
                f = f.func
            if not callable(f):
                raise ConfigurationError(f"register_task needs a function, got {f!r}")
            task_name = name or f"{f.__module__}.{f.__qualname__}"
            task: Task[Any, Any] = Task(
                f, name=task_name, queue=queue, finished=finished, priority=priority,
                retry=retry, max_retries=max_retries, reserve_time=reserve_time,
                timeout=timeout, style=style)
            self.registry.add(task)
            return task

        if func is None:
            return register
        return register(func)

    # -- configuration -----------------------------------------------------------------------

    def setup_queue(self, spec: Spec = None) -> QueueBackend:
        """Choose the queue backend producers send to (URL, dict or backend object)."""
        with self._lock:
            backend = self._own(make_queue_backend(spec))
            self._queue = backend
            self._queue_spec = spec
            return backend

    @property
    def queue_backend(self) -> QueueBackend:
        with self._lock:
            if self._queue is None:
                self._queue = self._own(make_queue_backend(self._queue_spec))
            return self._queue

    def start_notification_consumer(self, spec: Spec = None) -> None:
        """Producer side: receive statuses and results of this process's calls. Called on the
        first delayed call with the default notifier if not called before."""
        with self._lock:
            if self._consumer_thread is not None:
                if spec is not None:
                    log.warning("notification consumer already started; %r ignored", spec)
                return
            self._consumer_notifier = self._notifier_for(spec)
            self._consumer_thread = threading.Thread(
                target=self._consume_notifications, args=(self._consumer_notifier,),
                name="ivy-notifications", daemon=True)
            self._consumer_thread.start()

    def start_notification_producer(self, spec: Spec = None) -> Notifier:
        """Worker side: the notifier that carries statuses and results back to producers."""
        with self._lock:
            self._producer_notifier = self._notifier_for(spec)
            return self._producer_notifier

    def _notifier_for(self, spec: Spec) -> Notifier:
        spec = spec if spec is not None else self._notifier_spec
        for existing in (self._consumer_notifier, self._producer_notifier):
            if existing is not None and (spec is None or spec is existing):
                return existing
        return self._own(make_notifier(spec))

    def _own(self, thing: T) -> T:
        self._owned.append(thing)
        if isinstance(thing, QueueBackend):
            thing.priority_hint = self.queue_uses_priority  # type: ignore[method-assign]
        return thing

    def queue_uses_priority(self, queue: str) -> bool:
        """Whether a task registered here for ``queue`` has a priority above 0."""
        return any(t is not None and t.queue == queue and t.priority > 0
                   for t in map(self.registry.get, self.registry.names()))

    def backoff(self, attempt: int) -> float:
        """Seconds before retry ``attempt + 1``: exponential, capped, with jitter (50-100%)."""
        delay: float = min(self.retry_max_delay, self.retry_base_delay * 2.0 ** attempt)
        return delay * random.uniform(0.5, 1.0)

    # -- producer ----------------------------------------------------------------------------

    def delayed_call(self, task: Any, *args: Any, callback: ResultCallback | None = None,
                     **kwargs: Any) -> Call[Any]:
        """Call ``task`` (a Task, a registered function or a task name) on a worker.

        As in the original, a callable last positional argument is taken as the error-first
        ``callback(err, result)`` when ``callback=`` is not given.
        """
        if callback is None and args and callable(args[-1]) and not isinstance(args[-1], Task):
            callback, args = args[-1], args[:-1]
        return self.send_task(task, args, kwargs, callback=callback)

    def send_task(
        self, task: Any, args: Iterable[Any] = (), kwargs: Mapping[str, Any] | None = None, *,
        queue: str | None = None, priority: int | None = None, delay: float | None = None,
        max_retries: int | None = None, callback: ResultCallback | None = None,
    ) -> Call[Any]:
        """The full form of :meth:`delayed_call`, with per-call options. ``task`` may name a
        task that this process does not register when ``queue`` is given (the worker must).
        Returns once the queue backend has the message (RabbitMQ: confirmed)."""
        out = self._prepare(task, args, kwargs, queue=queue, priority=priority, delay=delay,
                            max_retries=max_retries, callback=callback)
        try:
            self.queue_backend.publish(out.queue, out.body, priority=out.priority,
                                       delay=out.delay)
        except BaseException:
            self._forget([out.call])
            raise
        return out.call

    def delayed_calls(
        self, task: Any, arg_lists: Iterable[Iterable[Any]], *,
        callback: ResultCallback | None = None, delay: float | None = None,
    ) -> list[Call[Any]]:
        """Call ``task`` once per argument list, sending the whole batch at once: on RabbitMQ
        the publishes are pipelined and this returns when all were confirmed; on SQLite they
        are one transaction. ``callback`` runs for each call."""
        batch: list[_Outgoing] = []
        try:
            for args in arg_lists:
                batch.append(self._prepare(task, args, None, delay=delay, callback=callback))
        except BaseException:
            self._forget([o.call for o in batch])  # nothing was sent
            raise
        groups: dict[tuple[str, int], list[_Outgoing]] = {}
        for out in batch:
            groups.setdefault((out.queue, out.priority), []).append(out)
        try:
            for (queue, priority), outs in groups.items():
                self.queue_backend.publish_many(queue, [o.body for o in outs],
                                                priority=priority, delay=delay or 0.0)
        except BaseException:
            self._forget([o.call for o in batch])
            raise
        return [o.call for o in batch]

    def _prepare(
        self, task: Any, args: Iterable[Any], kwargs: Mapping[str, Any] | None, *,
        queue: str | None = None, priority: int | None = None, delay: float | None = None,
        max_retries: int | None = None, callback: ResultCallback | None = None,
    ) -> _Outgoing:
        """Check and encode one call, and register it as pending."""
        args, kwargs = tuple(args), dict(kwargs or {})
        if callback is not None and not callable(callback):
            raise TypeError(f"callback {callback!r} is not callable: pass a function "
                            "callback(err, result)")
        if delay is not None and (not isinstance(delay, (int, float)) or delay < 0):
            raise ValueError(f"delay {delay!r} must be a number of seconds >= 0")
        registered: Task[Any, Any] | None = None
        if isinstance(task, str) and queue is not None and self.registry.get(task) is None:
            name = task
        else:
            registered = self.registry.resolve(task)
            name = registered.name
            try:
                registered.check_arguments(args, kwargs)
            except TypeError as exc:
                raise TypeError(f"wrong arguments for task {name!r}: {exc}") from None
        target_queue = queue or (registered.queue if registered else "ivy")
        created = now_ms()
        message = Message(
            id=new_id(), name=name, args=list(args), kwargs=kwargs, queue=target_queue,
            reply_to=self.channel,
            max_retries=max_retries if max_retries is not None else (
                registered.max_retries if registered else 0),
            priority=priority if priority is not None else (
                registered.priority if registered else 0),
            eta=created + int(delay * 1000) if delay else None, created_ms=created)
        try:
            body = message.encode(self.serializer)
        except SerializationError:
            check_arguments(self.serializer, args, kwargs, name)
            raise
        # [args, kwargs] adds one level, which the envelope's own bracket in body covers
        if deeper_than(body, [message.args, message.kwargs], self.max_depth + 1):
            raise SerializationError(
                f"the arguments of the call to {name!r} nest deeper than {self.max_depth} "
                "levels: flatten them, or raise Ivy(max_depth=...)")
        if len(body) > self.max_message_bytes:
            raise MessageTooLarge(
                f"the call to {name!r} is {len(body)} bytes once encoded, over the limit of "
                f"{self.max_message_bytes} bytes: pass a reference (a URL, a key) instead of "
                "the data, or raise Ivy(max_message_bytes=...)")
        call: Call[Any] = Call(message.id, name, target_queue)
        if callback is not None:
            call.add_done_callback(result_callback_adapter(callback))
        if registered is not None and registered.finished is not None:
            call.add_done_callback(finished_adapter(registered.finished))
        if self._consumer_thread is None:
            self.start_notification_consumer()
        with self._calls_lock:
            self._calls[call.id] = call
        return _Outgoing(call, target_queue, self.seal(body), message.priority, delay or 0.0)

    def seal(self, body: bytes) -> bytes:
        """Sign an encoded message or notification when a signing key is configured."""
        return body if self.signer is None else self.signer.sign(body)

    def _forget(self, calls: list[Call[Any]]) -> None:
        with self._calls_lock:
            for call in calls:
                self._calls.pop(call.id, None)

    def pending_calls(self) -> list[str]:
        """Ids of calls sent by this process and not settled yet."""
        with self._calls_lock:
            return list(self._calls)

    def _consume_notifications(self, notifier: Notifier) -> None:
        backoff = 0.1
        subscription: Subscription | None = None
        while not self._closing.is_set():
            try:
                if subscription is None:
                    subscription = notifier.subscribe(self.channel, self.pending_calls)
                    self._subscription = subscription
                bodies = subscription.get(0.5)
                backoff = 0.1
            except Exception:
                if self._closing.is_set():
                    break
                log.exception("notification consumer: %s failed; resubscribing in %.1f s",
                              notifier.url, backoff)
                if subscription is not None:
                    try:
                        subscription.close()
                    except Exception:
                        log.debug("closing a failed subscription raised", exc_info=True)
                subscription = self._subscription = None
                self._closing.wait(backoff)
                backoff = min(backoff * 2, 10.0)
                continue
            for body in bodies:
                self._dispatch(body)
        if subscription is not None:
            subscription.close()

    def _dispatch(self, body: bytes) -> None:
        try:
            note = decode_notification(body, self.serializer, max_bytes=self.max_message_bytes,
                                       max_depth=self.max_depth, signer=self.signer)
        except MessageError as exc:
            log.warning("notification consumer: ignoring a bad notification: %s", exc.reason)
            return
        with self._calls_lock:
            call = self._calls.get(note.id)
            if call is not None and note.final:
                del self._calls[note.id]
        if call is None:
            return
        if note.final:
            call._settle(note)
        else:
            call._running(note)

    # -- worker ------------------------------------------------------------------------------

    def listen(
        self, queue_url: Spec = None, *, queue: str | Iterable[str] | None = None,
        concurrency: int = 1, block: bool = True, reserve_time: float | None = None,
        notifier: Spec = None,
    ) -> Worker:
        """Run a worker on ``queue`` (a name or several; default: the queues of the registered
        tasks). Blocks until SIGTERM/SIGINT; ``block=False`` returns the running worker, whose
        ``stop()`` ends it gracefully. The original's dict form, with ``queue`` inside, works."""
        if isinstance(queue_url, Mapping) and "queue" in queue_url:
            queue_url = dict(queue_url)
            queue = queue or queue_url.pop("queue")
        backend = self._own(make_queue_backend(queue_url)) if queue_url is not None else (
            self.queue_backend)
        if notifier is not None or self._producer_notifier is None:
            self.start_notification_producer(notifier)
        if queue is None:
            names = sorted({t.queue for t in (self.registry.get(n) for n in self.registry.names())
                            if t is not None}) or ["ivy"]
        elif isinstance(queue, str):
            names = [queue]
        else:
            names = list(queue)
        worker = Worker(self.worker_context(), backend, self._producer_notifier, names,
                        concurrency=concurrency, reserve_time=reserve_time or self.reserve_time)
        self._workers.append(worker)
        worker.start()
        if block:
            worker.run_forever()
        return worker

    def worker_context(self, reserve_times: Mapping[str, float] | None = None) -> WorkerContext:
        """What a worker of this app needs: its registry, serializer, limits, signer (read
        now) and backoff, with ``reserve_times`` (task name -> lease in seconds) overriding the
        tasks' own ``reserve_time``."""
        return WorkerContext(
            registry=self.registry, serializer=self.serializer, backoff=self.backoff,
            max_message_bytes=self.max_message_bytes, max_depth=self.max_depth,
            signer=self.signer, reserve_times=reserve_times or {})

    def close(self) -> None:
        """Stop workers and the notification consumer; close the backends this object built."""
        for worker in self._workers:
            worker.stop()
        self._closing.set()
        subscription = self._subscription
        if subscription is not None:
            subscription.close()  # interrupts a get() in progress
        if self._consumer_thread is not None:
            self._consumer_thread.join(5)
        for thing in reversed(self._owned):
            try:
                thing.close()
            except Exception:
                log.debug("closing %r raised", thing, exc_info=True)
        self._owned.clear()

