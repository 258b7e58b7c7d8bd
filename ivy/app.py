"""Ivy: one registry of tasks, the producer side (delayed calls and their results) and the worker
side (listen), over one queue backend and one notifier per role."""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar, overload

from ivy.call import Call, ResultCallback, finished_adapter, result_callback_adapter
from ivy.config import Spec, make_notifier, make_queue_backend
from ivy.errors import (
    ConfigurationError,
    IvyError,
    MessageTooLarge,
    PublishError,
    SerializationError,
)
from ivy.message import (
    DEFAULT_MAX_DEPTH,
    DEFAULT_MAX_MESSAGE_BYTES,
    Message,
    Notification,
    decode_notification,
    deeper_than,
    new_id,
    now_ms,
    peek_id,
)
from ivy.notifiers.base import Notifier
from ivy.outbox import Outbox
from ivy.queues.base import QueueBackend
from ivy.results import DEFAULT_PENDING_TTL, ResultConsumer
from ivy.serialization import Serializer, Signer, check_arguments, get_serializer, signer_from
from ivy.task import Finished, Registry, Style, Task, merge_options
from ivy.worker import Worker, WorkerContext

log = logging.getLogger("ivy")
P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T", QueueBackend, Notifier)

CHANNEL_PREFIX = "ivy:notify:"


def merge_dicts(first: Mapping[str, Any] | None, second: Mapping[str, Any]) -> dict[str, Any]:
    """Two options dicts given in two places; the same key twice is refused."""
    if first is None:
        return dict(second)
    both = set(first) & set(second)
    if both:
        raise ConfigurationError(f"task options {sorted(both)} given twice: give them once")
    return {**first, **second}


@dataclass(slots=True)
class _Outgoing:
    call: Call[Any]
    queue: str
    body: bytes
    priority: int
    delay: float
    route: str | None


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
        pending_ttl: float = DEFAULT_PENDING_TTL,
        exit_timeout: float = 30.0,
    ) -> None:
        self.registry = Registry()
        self.max_depth = max_depth
        # An explicit key is checked now; IVY_SIGNING_KEY on first use, so that `import ivy`
        # (which builds the default instance) never fails on a bad environment.
        self._signer: Signer | None = signer_from(signing_key) if signing_key is not None else None
        self._signer_known = signing_key is not None
        if not isinstance(pending_ttl, (int, float)) or pending_ttl <= 0:
            raise ConfigurationError(f"pending_ttl {pending_ttl!r} must be a number of seconds "
                                     "> 0 (how long a call may wait for its result)")
        #: seconds a call waits for its result before it is settled with ResultExpired
        self.pending_ttl = float(pending_ttl)
        #: seconds the interpreter's exit waits for pending calls that have callbacks
        self.exit_timeout = exit_timeout
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
        self._consumer_spec: Spec = None
        self._producer_notifier: Notifier | None = None
        self._producer_spec: Spec = None
        self._owned: list[QueueBackend | Notifier] = []
        self._lock = threading.RLock()
        #: the consumer new calls wait on, and older ones still delivering calls sent before a
        #: switch of notifier
        self._results: ResultConsumer | None = None
        self._retired: list[ResultConsumer] = []
        self._closed = False
        self._workers: list[Worker] = []
        self._outbox = Outbox(self._send_failed)

    def __repr__(self) -> str:
        return f"<Ivy {self.producer_id}{' closed' if self._closed else ''}>"

    @property
    def signer(self) -> Signer | None:
        """HMAC signer from ``signing_key`` or IVY_SIGNING_KEY; None: messages are not signed.
        A malformed IVY_SIGNING_KEY raises :class:`ivy.ConfigurationError` here, on first use."""
        if not self._signer_known:
            try:
                self._signer = signer_from(None)
            except ConfigurationError as exc:
                raise ConfigurationError(
                    f"IVY_SIGNING_KEY is malformed: {exc}. Set it to one key, or several "
                    "separated by commas (the first signs), or unset it") from None
            self._signer_known = True
        return self._signer

    def __enter__(self) -> Ivy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- registry ----------------------------------------------------------------------------

    @overload
    def register_task(
        self, func: Callable[P, R], finished: Finished | Mapping[str, Any] | None = None,
        options: Mapping[str, Any] | None = None, *, name: str | None = ...,
        queue: str | None = ..., priority: int | None = ..., retry: bool | None = ...,
        max_retries: int | None = ..., reserve_time: float | None = ...,
        timeout: float | None = ..., style: Style | None = ..., route: str | None = ...,
    ) -> Task[P, R]: ...

    @overload
    def register_task(
        self, func: Mapping[str, Any] | None = None, finished: Finished | None = None,
        options: Mapping[str, Any] | None = None, *, name: str | None = ...,
        queue: str | None = ..., priority: int | None = ..., retry: bool | None = ...,
        max_retries: int | None = ..., reserve_time: float | None = ...,
        timeout: float | None = ..., style: Style | None = ..., route: str | None = ...,
    ) -> Callable[[Callable[P, R]], Task[P, R]]: ...

    def register_task(
        self, func: Callable[..., Any] | Mapping[str, Any] | None = None,
        finished: Finished | Mapping[str, Any] | None = None,
        options: Mapping[str, Any] | None = None, *,
        name: str | None = None, queue: str | None = None, priority: int | None = None,
        retry: bool | None = None, max_retries: int | None = None,
        reserve_time: float | None = None, timeout: float | None = None,
        style: Style | None = None, route: str | None = None,
    ) -> Any:
        """Register ``func`` under a unique dotted ``name`` (default ``module.qualname``).

        Works directly, ``register_task(func, finished, name=...)``, as a decorator,
        ``@register_task(name=...)``, and in the original's form with an options dict and its
        camelCase keys: ``register_task(func, finished, {"name": "pkg.f", "queue": "pkg",
        "retry": True, "maxRetries": 10, "route": "pkg.route1", "reserveTime": 3600})``.
        Keywords and the dict may be mixed as long as they agree. Defaults: queue ``ivy``,
        priority 0, no retries. Returns a :class:`Task`, which still calls the function
        locally when called. ``finished(result)`` runs in the producer whenever a call of this
        task succeeds.
        """
        if isinstance(func, Mapping):  # @register_task({...})
            options = merge_dicts(options, func)
            func = None
        if isinstance(finished, Mapping):  # register_task(func, {...})
            options = merge_dicts(options, finished)
            finished = None
        given = merge_options(options, {
            "name": name, "queue": queue, "priority": priority, "retry": retry,
            "max_retries": max_retries, "reserve_time": reserve_time, "timeout": timeout,
            "style": style, "route": route})
        finished_fn: Finished | None = finished

        def register(f: Callable[..., Any]) -> Task[Any, Any]:
            if isinstance(f, Task):
                f = f.func
            if not callable(f):
                raise ConfigurationError(f"register_task needs a function, got {f!r}")
            task: Task[Any, Any] = Task(
                f, name=given["name"] or f"{f.__module__}.{f.__qualname__}",
                queue=given["queue"] if given["queue"] is not None else "ivy",
                finished=finished_fn,
                priority=given["priority"] if given["priority"] is not None else 0,
                retry=bool(given["retry"]),
                max_retries=given["max_retries"] if given["max_retries"] is not None else 0,
                reserve_time=given["reserve_time"], timeout=given["timeout"],
                style=given["style"], route=given["route"])
            self.registry.add(task)
            return task

        if func is None:
            return register
        return register(func)

    # -- configuration -----------------------------------------------------------------------

    def setup_queue(self, spec: Spec = None) -> QueueBackend:
        """Choose the queue backend producers send to (URL, dict or backend object)."""
        with self._lock:
            self._check_open()
            backend = self._own(spec, make_queue_backend)
            self._queue = backend
            self._queue_spec = spec
            return backend

    @property
    def queue_backend(self) -> QueueBackend:
        with self._lock:
            if self._queue is None:
                self._check_open()
                self._queue = self._own(self._queue_spec, make_queue_backend)
            return self._queue

    def start_notification_consumer(self, spec: Spec = None) -> None:
        """Producer side: receive statuses and results of this process's calls. Called on the
        first delayed call with the default notifier if not called before.

        Called again with another notifier, it switches: new calls wait on the new one, and
        calls already sent are still delivered through the old one, which closes once they are
        all settled (README, "Semantics")."""
        with self._lock:
            self._check_open()
            current = self._results
            if current is not None and (spec is None or spec is current.notifier
                                        or spec == self._consumer_spec):
                return
            notifier = self._notifier_for(spec)
            if current is not None:
                if notifier is current.notifier:
                    return
                log.info("notification consumer: switching from %s to %s; calls sent so far "
                         "are still delivered through the old one", current.notifier.url,
                         notifier.url)
                current.retire()
                self._retired.append(current)
            self._consumer_notifier = notifier
            self._consumer_spec = spec
            self._results = ResultConsumer(
                notifier, self.channel, decode=self._decode_notification,
                peek_id=lambda body: peek_id(body, self.serializer, self.max_message_bytes),
                pending_ttl=self.pending_ttl, on_stopped=self._consumer_stopped).start()

    def _decode_notification(self, body: bytes) -> Notification:
        return decode_notification(body, self.serializer, max_bytes=self.max_message_bytes,
                                   max_depth=self.max_depth, signer=self.signer)

    def _consumer_stopped(self, consumer: ResultConsumer) -> None:
        """A retired consumer has settled every call it held: close its notifier unless it is
        still in use here, or was handed in by the caller."""
        with self._lock:
            if consumer in self._retired:
                self._retired.remove(consumer)
            notifier = consumer.notifier
            in_use = notifier is self._producer_notifier or notifier is self._consumer_notifier
            if in_use or not any(thing is notifier for thing in self._owned):
                return
            self._owned = [thing for thing in self._owned if thing is not notifier]
        try:
            notifier.close()
        except Exception:
            log.debug("closing %s raised", notifier.url, exc_info=True)

    def start_notification_producer(self, spec: Spec = None) -> Notifier:
        """Worker side: the notifier that carries statuses and results back to producers."""
        with self._lock:
            self._check_open()
            self._producer_notifier = self._notifier_for(spec)
            self._producer_spec = spec
            return self._producer_notifier

    def _notifier_for(self, spec: Spec) -> Notifier:
        spec = spec if spec is not None else self._notifier_spec
        for existing, existing_spec in ((self._consumer_notifier, self._consumer_spec),
                                        (self._producer_notifier, self._producer_spec)):
            if existing is not None and (spec is None or spec is existing
                                         or spec == existing_spec):
                return existing
        return self._own(spec, make_notifier)

    def _own(self, spec: Spec, make: Callable[[Spec], T]) -> T:
        """Build a backend from ``spec``; ivy closes what it built, never an object the caller
        passed in (that one the caller closes)."""
        thing = make(spec)
        if thing is not spec:
            self._owned.append(thing)
        if isinstance(thing, QueueBackend):
            thing.priority_hint = self.queue_uses_priority  # type: ignore[method-assign]
            thing.routes_hint = self.queue_routes  # type: ignore[method-assign]
        return thing

    def queue_routes(self, queue: str) -> list[str]:
        """The routes of the tasks registered here for ``queue`` (AMQP binds them)."""
        return sorted({t.route for t in map(self.registry.get, self.registry.names())
                       if t is not None and t.queue == queue and t.route})

    def _check_open(self) -> None:
        if self._closed:
            raise IvyError(f"{self!r} was closed: make a new ivy.Ivy() to send or listen "
                           "again")

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
        confirm: bool = False,
    ) -> Call[Any]:
        """The full form of :meth:`delayed_call`, with per-call options. ``task`` may name a
        task that this process does not register when ``queue`` is given (the worker must).

        Returns once the message is handed to the queue backend; on RabbitMQ its publisher
        confirm is tracked, not waited for (see :mod:`ivy.outbox`): a refusal fails the call
        with :class:`ivy.PublishError`. ``confirm=True`` waits for the confirm and raises
        :class:`ivy.PublishError` instead, as ``call.sent()`` does."""
        out = self._prepare(task, args, kwargs, queue=queue, priority=priority, delay=delay,
                            max_retries=max_retries, callback=callback)
        self._send([out], out.queue, out.priority, out.delay, out.route)
        if confirm:
            out.call.sent()
        return out.call

    def _send(self, outs: list[_Outgoing], queue: str, priority: int, delay: float,
              route: str | None) -> None:
        """Hand messages to the backend and track their confirms. What the backend refuses at
        once (a synchronous backend's error, an oversized SQS message) raises here, and those
        calls are forgotten: nothing was sent for them."""
        try:
            futures = self.queue_backend.send_many(queue, [o.body for o in outs],
                                                   priority=priority, delay=delay, route=route)
        except BaseException:
            self._forget([o.call for o in outs])
            raise
        failed = [f.exception() for f in futures if f.done() and f.exception() is not None]
        if failed:
            self._forget([o.call for o, f in zip(outs, futures, strict=True)
                          if f.done() and f.exception() is not None])
            error = failed[0]
            assert error is not None
            raise error
        for out, future in zip(outs, futures, strict=True):
            self._outbox.track(out.call, future)

    def _send_failed(self, call: Call[Any], error: BaseException) -> None:
        """A message was not taken: the call fails with PublishError, and waits no more."""
        self._forget([call])
        call._fail(error if isinstance(error, PublishError) else PublishError(
            f"the message of call {call.id} of {call.task!r} was not taken: {error}"))

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every message sent so far is confirmed by the queue backend; raise
        :class:`ivy.PublishError` if some were refused since the last flush (their calls
        failed with it too), :class:`ivy.PublishTimeout` if ``timeout`` passes first."""
        self._outbox.flush(timeout)

    def delayed_calls(
        self, task: Any, arg_lists: Iterable[Iterable[Any]], *,
        callback: ResultCallback | None = None, delay: float | None = None,
    ) -> list[Call[Any]]:
        """Call ``task`` once per argument list, sending the whole batch at once: on RabbitMQ
        the publishes are pipelined (their confirms tracked as for :meth:`send_task`); on
        SQLite they are one transaction. ``callback`` runs for each call."""
        batch: list[_Outgoing] = []
        try:
            for args in arg_lists:
                batch.append(self._prepare(task, args, None, delay=delay, callback=callback))
        except BaseException:
            self._forget([o.call for o in batch])  # nothing was sent
            raise
        groups: dict[tuple[str, int, str | None], list[_Outgoing]] = {}
        for out in batch:
            groups.setdefault((out.queue, out.priority, out.route), []).append(out)
        try:
            for (queue, priority, route), outs in groups.items():
                self._send(outs, queue, priority, delay or 0.0, route)
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
        self._check_open()
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
        self._current_results().add(call)
        return _Outgoing(call, target_queue, self.seal(body), message.priority, delay or 0.0,
                         registered.route if registered is not None else None)

    def seal(self, body: bytes) -> bytes:
        """Sign an encoded message or notification when a signing key is configured."""
        return body if self.signer is None else self.signer.sign(body)

    def _current_results(self) -> ResultConsumer:
        """The consumer that new calls wait on (started with the default notifier if none)."""
        results = self._results
        if results is None:
            self.start_notification_consumer()
            results = self._results
            assert results is not None
        return results

    def wait_for_callbacks(self, timeout: float) -> list[Call[Any]]:
        """Wait up to ``timeout`` seconds for the pending calls that have a callback (or a
        task's ``finished``) to complete; return those still pending. The default instance
        does this at interpreter exit, bounded by ``exit_timeout``: a script that sends a call
        with a callback and ends, as the original's example does, sees its callback run."""
        deadline = time.monotonic() + timeout
        waiting = [c for consumer in self._consumers() for c in consumer.pending()
                   if c.has_callbacks]
        if waiting:
            log.info("waiting up to %.0f s for %d call(s) whose callbacks have not run yet",
                     timeout, len(waiting))
        for call in waiting:
            call._done.wait(max(0.0, deadline - time.monotonic()))
        left = [c for c in waiting if not c.done()]
        if left:
            log.warning("%d call(s) still had no result after %.0f s; their callbacks will not "
                        "run in this process: %s", len(left), timeout,
                        ", ".join(c.id for c in left[:5]))
        return left

    def _flush_quietly(self, timeout: float) -> None:
        """Flush before closing or exiting: log, never raise."""
        try:
            self._outbox.flush(timeout)
        except PublishError as exc:
            log.error("closing: %s", exc)

    def _consumers(self) -> list[ResultConsumer]:
        with self._lock:
            return [*self._retired, *([self._results] if self._results is not None else [])]

    def _forget(self, calls: list[Call[Any]]) -> None:
        for consumer in self._consumers():
            consumer.forget(calls)

    def pending_calls(self) -> list[str]:
        """Ids of calls sent by this process and not settled yet."""
        return [i for consumer in self._consumers() for i in consumer.pending_ids()]

    def _dispatch(self, body: bytes) -> None:
        """Hand one notification body to the consumers (as if it had arrived)."""
        for consumer in self._consumers():
            consumer.dispatch(body)

    # -- worker ------------------------------------------------------------------------------

    def listen(
        self, queue_url: Spec = None, *, queue: str | Iterable[str] | None = None,
        concurrency: int = 1, block: bool = True, reserve_time: float | None = None,
        notifier: Spec = None, max_messages: int | None = None,
    ) -> Worker:
        """Run a worker on ``queue`` (a name or several; default: the queues of the registered
        tasks). Blocks until SIGTERM/SIGINT; ``block=False`` returns the running worker, whose
        ``stop()`` ends it gracefully. With ``max_messages`` it stops by itself after that
        many messages (see :class:`ivy.Worker`).

        The original's dict form works: ``queue`` inside it names the queue, and
        ``messages: {"pkg.task": {"reserveTime": 3600}}`` sets a task's reservation (seconds
        its message stays reserved, extended while it runs), over the task's own
        ``reserve_time`` and the worker's ``reserve_time``."""
        self._check_open()
        reserve_times: dict[str, float] = {}
        if isinstance(queue_url, Mapping):
            queue_url = dict(queue_url)
            if "queue" in queue_url:
                queue = queue or queue_url.pop("queue")
            reserve_times = self._message_options(queue_url.pop("messages", None))
        backend = self._own(queue_url, make_queue_backend) if queue_url is not None else (
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
        worker = Worker(self.worker_context(reserve_times), backend, self._producer_notifier, names,
                        concurrency=concurrency, reserve_time=reserve_time or self.reserve_time,
                        max_messages=max_messages)
        self._workers.append(worker)
        worker.start()
        if block:
            worker.run_forever()
        return worker

    def _message_options(self, messages: Any) -> dict[str, float]:
        """``listen({"messages": {name: {"reserveTime": s}}})`` -> {name: s}."""
        if messages is None:
            return {}
        if not isinstance(messages, Mapping):
            raise ConfigurationError(
                f"listen's 'messages' must map task names to options, such as "
                f"{{'pkg.task': {{'reserveTime': 3600}}}}, got {messages!r}")
        reserve_times: dict[str, float] = {}
        for name, options in messages.items():
            if not isinstance(options, Mapping) or not set(options) <= {
                    "reserveTime", "reserve_time"}:
                raise ConfigurationError(
                    f"listen's messages[{name!r}] = {options!r}: the one option per task is "
                    "'reserveTime' (seconds), as in {'reserveTime': 3600}")
            values = set(options.values())
            value = next(iter(values)) if len(values) == 1 else None
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
                raise ConfigurationError(
                    f"listen's messages[{name!r}] reserveTime {options!r} must be one number "
                    "of seconds > 0")
            if self.registry.get(name) is None:
                log.warning("listen: messages names task %r, which is not registered here "
                            "(registered: %s)", name, ", ".join(self.registry.names()))
            reserve_times[name] = float(value)
        return reserve_times

    def worker_context(self, reserve_times: Mapping[str, float] | None = None) -> WorkerContext:
        """What a worker of this app needs: its registry, serializer, limits, signer (read
        now) and backoff, with ``reserve_times`` (task name -> lease in seconds) overriding the
        tasks' own ``reserve_time``."""
        return WorkerContext(
            registry=self.registry, serializer=self.serializer, backoff=self.backoff,
            max_message_bytes=self.max_message_bytes, max_depth=self.max_depth,
            signer=self.signer, reserve_times=reserve_times or {})

    def close(self, timeout: float = 10.0) -> None:
        """Wait up to ``timeout`` seconds for unconfirmed messages (logging what stays
        unconfirmed), stop workers and the notification consumers, and close the backends this
        object built (not the backend objects handed in: their owner closes them). Calls still
        waiting are settled with an ``IvyClosed`` error, so no ``result()`` hangs; using the
        object after this raises :class:`ivy.IvyError`."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            workers, self._workers = self._workers, []
            consumers = self._consumers()
            self._results, self._retired = None, []
        self._flush_quietly(timeout)
        for worker in workers:
            worker.stop()
        for consumer in consumers:
            consumer.close()
            consumer.fail_pending("IvyClosed", f"{self!r} was closed before the result of "
                                  "this call arrived; the task may still run")
        for thing in reversed(self._owned):
            try:
                thing.close()
            except Exception:
                log.debug("closing %r raised", thing, exc_info=True)
        self._owned.clear()
