"""Ivy: the settings, the registry of tasks and the composition of one app: its backends, its
producer (:mod:`ivy.producer`) and the workers it starts."""

from __future__ import annotations

import dataclasses
import logging
import random
from collections.abc import Collection, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from ivy.app.backends import Backends
from ivy.app.registering import Registering
from ivy.app.workers import Workers, check_time_limit, message_options, queue_names
from ivy.call import Call, ResultCallback
from ivy.config import Spec, make_queue_backend
from ivy.errors import ConfigurationError
from ivy.message import (
    DEFAULT_MAX_DEPTH,
    DEFAULT_MAX_MESSAGE_BYTES,
    Notification,
    decode_notification,
    new_id,
    peek_id,
)
from ivy.middleware import Middleware, Pipeline
from ivy.notifiers.base import Notifier
from ivy.producer import Producer
from ivy.queues.base import QueueBackend
from ivy.results import DEFAULT_PENDING_TTL, Results
from ivy.serialization import Serializer, Signer, get_serializer, seal, signer_from
from ivy.task import Registry, Task
from ivy.timing import pause
from ivy.timing.schedule import Schedules
from ivy.transactional import Transaction
from ivy.worker import Worker, WorkerContext
from ivy.worker.monitor import HEARTBEAT_INTERVAL

if TYPE_CHECKING:
    from ivy.deadletters import DeadLetterInfo

log = logging.getLogger("ivy")

CHANNEL_PREFIX = "ivy:notify:"
#: The retry backoff doubles this many times at most (``Ivy.backoff``): 2**32 times the base
#: delay is past any ``retry_max_delay``, and 2.0 ** 1100 would raise OverflowError.
MAX_BACKOFF_EXPONENT = 32


class Ivy(Registering):
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
        middleware: Iterable[Middleware] = (),
        max_message_age: float | None = None,
        dead_letter_failures: bool = True,
    ) -> None:
        """Make an app: its settings now, its backends on first use.

        Args:
            queue: the queue backend producers send to and workers consume (a URL, a dict or
                a backend object); None: ``IVY_QUEUE_URL``, else the SQLite file ``ivy.db``.
            notifier: the notifier that carries statuses and results back (a URL, a dict or a
                backend object); None: ``IVY_NOTIFIER_URL``, else the SQLite file ``ivy.db``.
            serializer: the message format: ``"json"`` (the default, the wire protocol's) or
                a :class:`ivy.serialization.Serializer`.
            max_message_bytes: the largest encoded message or notification sent or accepted.
            retry_base_delay: seconds before the first retry; the delay doubles on each one
                (with jitter: 50-100% of it).
            retry_max_delay: the longest delay between retries, in seconds.
            reserve_time: seconds a worker's message stays reserved (extended while its task
                runs) when neither the task nor ``listen`` sets one.
            max_depth: how deeply arguments and results may nest.
            signing_key: the HMAC key that signs messages (several: the first signs, all
                verify); None: ``IVY_SIGNING_KEY``, read on first use, else unsigned.
            pending_ttl: seconds a call waits for its result before it is settled with
                ``ResultExpired``; also how long a cancel is kept by default.
            exit_timeout: seconds the interpreter's exit waits for the default instance's
                unconfirmed messages and for pending calls that have callbacks.
            middleware: middleware to call, in order (see :meth:`add_middleware`).
            max_message_age: seconds a message may be old (from its send, or its eta) when a
                worker of this app takes it; older ones are dead-lettered. None: no limit.
            dead_letter_failures: whether a worker dead-letters a task that failed after its
                retries (False: its error is stored and the message acknowledged).

        Raises:
            ivy.ConfigurationError: a ``pending_ttl`` or ``max_message_age`` that is not a
                number of seconds > 0, an unknown ``serializer``, or a malformed
                ``signing_key``.
        """
        self.registry = Registry()
        #: periodic tasks (ivy.timing.schedule): what a Scheduler of this app sends
        self.schedules = Schedules()
        #: the middleware, in order (see :mod:`ivy.middleware`)
        self.middleware = Pipeline(middleware)
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
        if max_message_age is not None and (
                isinstance(max_message_age, bool) or not isinstance(max_message_age, (int, float))
                or not max_message_age > 0):
            raise ConfigurationError(
                f"max_message_age {max_message_age!r} must be a number of seconds > 0, or None "
                "(no limit): how old a message may be when a worker takes it")
        #: seconds a message may be old (from its send, or its eta) when a worker of this app
        #: takes it; older ones are dead-lettered (a replay's window). None: no limit
        self.max_message_age = None if max_message_age is None else float(max_message_age)
        #: whether a worker of this app dead-letters a task that failed after its retries
        #: (False: its error is stored and the message acknowledged, as for a task without
        #: retries; the dead letters then hold only messages that could not run)
        self.dead_letter_failures = bool(dead_letter_failures)
        self.serializer = get_serializer(serializer)
        self.max_message_bytes = max_message_bytes
        self.retry_base_delay = retry_base_delay
        self.retry_max_delay = retry_max_delay
        self.reserve_time = reserve_time
        self.producer_id = new_id()
        self.channel = CHANNEL_PREFIX + self.producer_id
        results = Results(
            self.channel, decode=self._decode_notification,
            peek_id=lambda body: peek_id(body, self.serializer, self.max_message_bytes),
            pending_ttl=self.pending_ttl,
            on_retired=lambda notifier: self.backends.notifier_retired(notifier))
        #: the queue backend, the notifiers of both roles and the result consumers
        self.backends = Backends(queue, notifier, name=f"<Ivy {self.producer_id}>",
                                 results=results, uses_priority=self.queue_uses_priority,
                                 routes=self.queue_routes)
        #: sends this app's calls and follows their confirms and results
        self.producer = Producer(self, self.backends)
        self._workers = Workers()

    def add_middleware(self, middleware: Middleware) -> None:
        """Add ``middleware`` after those already there.

        Producers and running workers of this app call it from then on (a worker started with
        ``events=True`` keeps the list it started with).

        Args:
            middleware: a :class:`ivy.Middleware`.
        """
        self.middleware.add(middleware)

    def __repr__(self) -> str:
        return f"<Ivy {self.producer_id}{' closed' if self.closed else ''}>"

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self.backends.closed

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

    # -- configuration -----------------------------------------------------------------------

    def setup_queue(self, spec: Spec = None) -> QueueBackend:
        """Choose the queue backend producers send to.

        Args:
            spec: a URL, a dict or a backend object; None: the app's default
                (``IVY_QUEUE_URL``, else the SQLite file ``ivy.db``).

        Returns:
            The queue backend, which this app now owns unless it was handed in.

        Raises:
            ivy.ConfigurationError: a malformed URL, an unknown scheme, or a backend whose
                package is missing.
            ivy.IvyError: the app was closed.
        """
        return self.backends.setup_queue(spec)

    @property
    def queue_backend(self) -> QueueBackend:
        """The queue backend producers send to, built on first use."""
        return self.backends.queue

    def start_notification_consumer(self, spec: Spec = None) -> None:
        """Producer side: receive statuses and results of this process's calls.

        Called on the first delayed call with the default notifier if not called before.

        Called again with another notifier, it switches: new calls wait on the new one, and
        calls already sent are still delivered through the old one, which closes once they are
        all settled (README, "Semantics").

        Args:
            spec: the notifier: a URL, a dict or a notifier object; None: the app's default
                (``IVY_NOTIFIER_URL``, else the SQLite file ``ivy.db``).

        Raises:
            ivy.ConfigurationError: a malformed URL, an unknown scheme, or a notifier whose
                package is missing.
            ivy.IvyError: the app was closed.
        """
        self.backends.start_consumer(spec)

    def _decode_notification(self, body: bytes) -> Notification:
        return decode_notification(body, self.serializer, max_bytes=self.max_message_bytes,
                                   max_depth=self.max_depth, signer=self.signer)

    def start_notification_producer(self, spec: Spec = None) -> Notifier:
        """Worker side: choose the notifier that carries statuses and results back to producers.

        Args:
            spec: the notifier: a URL, a dict or a notifier object; None: the app's default
                (``IVY_NOTIFIER_URL``, else the SQLite file ``ivy.db``).

        Returns:
            The notifier the workers of this app report through.

        Raises:
            ivy.ConfigurationError: a malformed URL, an unknown scheme, or a notifier whose
                package is missing.
            ivy.IvyError: the app was closed.
        """
        return self.backends.start_producer(spec)

    def queue_routes(self, queue: str) -> list[str]:
        """The routes of the tasks registered here for ``queue`` (AMQP binds them)."""
        return sorted({t.route for t in map(self.registry.get, self.registry.names())
                       if t is not None and t.queue == queue and t.route})

    def queue_uses_priority(self, queue: str) -> bool:
        """Whether a task registered here for ``queue`` has a priority above 0."""
        return any(t is not None and t.queue == queue and t.priority > 0
                   for t in map(self.registry.get, self.registry.names()))

    def backoff(self, attempt: int) -> float:
        """Seconds before retry ``attempt + 1``: exponential, capped, with jitter (50-100%).
        The exponent stops at ``MAX_BACKOFF_EXPONENT``: an attempt number from the wire
        (1100, say) never overflows the arithmetic."""
        exponent = min(max(attempt, 0), MAX_BACKOFF_EXPONENT)
        delay: float = min(self.retry_max_delay, self.retry_base_delay * 2.0 ** exponent)
        return delay * random.uniform(0.5, 1.0)

    # -- producer ----------------------------------------------------------------------------

    def delayed_call(self, task: Any, *args: Any, callback: ResultCallback | None = None,
                     **kwargs: Any) -> Call[Any]:
        """Call ``task`` on a worker.

        As in the original, a callable last positional argument is taken as the error-first
        ``callback(err, result)`` when ``callback=`` is not given.

        Args:
            task: a :class:`ivy.Task`, a registered function or a registered task's name; or
                a signature or workflow (see :meth:`send_task`).
            *args: the task's positional arguments (JSON values).
            callback: ``callback(err, result)``, run in this process once the call settles.
            **kwargs: the task's keyword arguments (JSON values).

        Returns:
            The call's handle, once its message is handed to the queue backend.

        Raises:
            ivy.TaskNotRegistered: ``task`` is not registered in this process.
            TypeError: arguments the task's signature refuses, or a callback that is not
                callable.
            ivy.SerializationError: an argument JSON cannot carry.
            ivy.MessageTooLarge: the message is over ``max_message_bytes``.
            ivy.PublishError: the queue backend refused the message at once.
            ivy.IvyError: the app was closed.
        """
        if callback is None and args and callable(args[-1]) and not isinstance(args[-1], Task):
            callback, args = args[-1], args[:-1]
        return self.send_task(task, args, kwargs, callback=callback)

    def send_task(
        self, task: Any, args: Iterable[Any] = (), kwargs: Mapping[str, Any] | None = None, *,
        queue: str | None = None, priority: int | None = None, delay: float | None = None,
        max_retries: int | None = None, callback: ResultCallback | None = None,
        confirm: bool = False, unique_key: str | None = None, unique_for: float | None = None,
        connection: Any = None,
    ) -> Call[Any]:
        """Call ``task`` on a worker: the full form of :meth:`delayed_call`, with per-call options.

        ``task`` may name a task that this process does not register when ``queue`` is given
        (the worker must).

        Returns once the message is handed to the queue backend; on RabbitMQ its publisher
        confirm is tracked, not waited for (see :mod:`ivy.outbox`): a refusal fails the call
        with :class:`ivy.PublishError`. ``confirm=True`` waits for the confirm and raises
        :class:`ivy.PublishError` instead, as ``call.sent()`` does.

        ``task`` may also be a signature or a workflow (``ivy.chain``, ``ivy.group``,
        ``ivy.chord``): see :mod:`ivy.workflows`.

        ``unique_key`` (or a task registered with ``unique_for``): while a call with the same
        key is pending, or within ``unique_for`` seconds of its send, this sends nothing and
        returns that call (see :mod:`ivy.producer.unique`).

        ``connection`` (a psycopg 3 connection to the PostgreSQL queue's database): the
        message is written in that connection's transaction, visible to workers once it
        commits (see :mod:`ivy.transactional`).

        Args:
            task: a :class:`ivy.Task`, a registered function, a task name, a signature or a
                workflow.
            args: the task's positional arguments (JSON values).
            kwargs: the task's keyword arguments (JSON values); None: none.
            queue: the queue to send to; None: the task's own (``ivy`` for an unregistered
                name).
            priority: the message's priority; None: the task's own.
            delay: seconds before the message may run; None: at once.
            max_retries: how many times a failed run is retried; None: the task's own.
            callback: ``callback(err, result)``, run in this process once the call settles.
            confirm: wait for the queue backend to confirm the message before returning.
            unique_key: the key of a unique send; None: none, unless the task has
                ``unique_for`` (its name and arguments are the key).
            unique_for: seconds after a send within which a send with the same key returns the
                first call; None: the task's ``unique_for``.
            connection: a psycopg 3 connection to the PostgreSQL queue's database, whose
                transaction the message is written in; None: sent at once.

        Returns:
            The call's handle (with a unique send, the pending call of the same key).

        Raises:
            ivy.TaskNotRegistered: ``task`` is not registered here and no ``queue`` names
                where it goes.
            TypeError: arguments the task's signature refuses, or a callback that is not
                callable.
            ValueError: a negative ``delay``; a malformed ``unique_key`` or ``unique_for``, or
                either with a workflow; a ``connection`` other than that of the enclosing
                :meth:`transaction`.
            ivy.SerializationError: an argument JSON cannot carry.
            ivy.MessageTooLarge: the message is over ``max_message_bytes``.
            ivy.PublishError: the queue backend refused the message (at once, or with
                ``confirm=True`` when it confirms).
            ivy.ConfigurationError: a workflow sent through a notifier that cannot run one.
            ivy.IvyError: the app was closed.
        """
        return self.producer.send_task(
            task, args, kwargs, queue=queue, priority=priority, delay=delay,
            max_retries=max_retries, callback=callback, confirm=confirm,
            unique_key=unique_key, unique_for=unique_for, connection=connection)

    def transaction(self, connection: Any) -> Transaction:
        """Send this app's calls within a database transaction of yours.

        ``with app.transaction(conn):`` (``async with`` for a psycopg AsyncConnection):
        every send of this app inside is written in ``conn``'s transaction, visible to workers
        once it commits; a rollback fails those calls (see :mod:`ivy.transactional`).

        Args:
            connection: a psycopg 3 connection (or AsyncConnection) to the PostgreSQL queue's
                database.

        Returns:
            The context manager of the block.
        """
        return self.producer.transaction(connection)

    def cancel(self, call: Call[Any] | str, *, ttl: float | None = None) -> None:
        """Cancel a call sent by any producer sharing this app's notifier.

        Queued, it never runs; running, it is stopped (see :mod:`ivy.timing.cancel`). A call
        of this process settles at once with status ``cancelled`` unless its outcome was
        recorded first.

        Args:
            call: a :class:`Call` or a call's id.
            ttl: seconds the cancel is kept in the notifier's store; None: ``pending_ttl``.

        Raises:
            ValueError: a malformed call id, or a ``ttl`` that is not a number of seconds > 0.
        """
        self.producer.cancel(call.id if isinstance(call, Call) else call, ttl)

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every message sent so far is confirmed by the queue backend.

        Args:
            timeout: seconds to wait at most; None: no limit.

        Raises:
            ivy.PublishError: some messages were refused since the last flush (their calls
                failed with it too).
            ivy.PublishTimeout: ``timeout`` passed first.
        """
        self.producer.flush(timeout)

    def delayed_calls(
        self, task: Any, arg_lists: Iterable[Iterable[Any]], *,
        callback: ResultCallback | None = None, delay: float | None = None,
    ) -> list[Call[Any]]:
        """Call ``task`` once per argument list, sending the whole batch at once.

        On RabbitMQ the publishes are pipelined (their confirms tracked as for
        :meth:`send_task`); on SQLite they are one transaction. If one call cannot be
        prepared, none is sent.

        Args:
            task: a :class:`ivy.Task`, a registered function or a registered task's name.
            arg_lists: the positional arguments of each call.
            callback: ``callback(err, result)``, run for each call once it settles.
            delay: seconds before the messages may run; None: at once.

        Returns:
            The calls' handles, in the order of ``arg_lists``.

        Raises:
            ivy.TaskNotRegistered: ``task`` is not registered in this process.
            TypeError: arguments the task's signature refuses, or a callback that is not
                callable.
            ValueError: a negative ``delay``.
            ivy.SerializationError: an argument JSON cannot carry.
            ivy.MessageTooLarge: a message is over ``max_message_bytes``.
            ivy.PublishError: the queue backend refused the messages at once.
            ivy.IvyError: the app was closed.
        """
        return self.producer.send_batch(task, arg_lists, callback=callback, delay=delay)

    def seal(self, body: bytes) -> bytes:
        """Sign an encoded message or notification when a signing key is configured."""
        return seal(self.signer, body)

    def wait_for_callbacks(self, timeout: float, at_exit: bool = False) -> list[Call[Any]]:
        """Wait up to ``timeout`` seconds for the pending calls that have a callback (or a
        task's ``finished``) to complete; return those still pending. The default instance
        does this at interpreter exit (``at_exit``: it warns first), bounded by
        ``exit_timeout``: a script that sends a call with a callback and ends, as the
        original's example does, sees its callback run."""
        return self.backends.results.wait_for_callbacks(timeout, at_exit)

    def pending_calls(self) -> list[str]:
        """The calls sent by this process and not settled yet.

        Returns:
            Their ids.
        """
        return self.backends.results.pending_ids()

    # -- dead letters (ivy/deadletters.py) ----------------------------------------------------

    def dead_letters(self, queue: str, limit: int = 100) -> list[DeadLetterInfo]:
        """The most recent dead letters of a queue, oldest first.

        Args:
            queue: the queue's name.
            limit: how many dead letters at most.

        Returns:
            Each dead letter's ``id`` and what could be read from its body (call id, task
            name, arguments).
        """
        from ivy import deadletters

        return deadletters.dead_letters(self, queue, limit)

    def requeue_dead(self, queue: str, ids: Collection[str] | None = None) -> int:
        """Put dead letters of a queue back on it, with their attempts reset.

        At least once on the network backends: see :mod:`ivy.deadletters`.

        Args:
            queue: the queue's name.
            ids: dead-letter ids or call ids of the letters to requeue; None: all of them.

        Returns:
            How many were requeued.
        """
        from ivy import deadletters

        return deadletters.requeue_dead(self, queue, ids)

    def purge_dead(self, queue: str) -> int:
        """Delete every dead letter of a queue.

        Args:
            queue: the queue's name.

        Returns:
            How many were deleted.
        """
        from ivy import deadletters

        return deadletters.purge_dead(self, queue)

    # -- worker ------------------------------------------------------------------------------

    def listen(
        self, queue_url: Spec = None, *, queue: str | Iterable[str] | None = None,
        concurrency: int = 1, block: bool = True, reserve_time: float | None = None,
        notifier: Spec = None, max_messages: int | None = None, events: bool = False,
        heartbeat: float | None = HEARTBEAT_INTERVAL, max_memory: float | None = None,
        time_limit: float | None = None,
    ) -> Worker:
        """Run a worker that takes calls of the registered tasks from their queues.

        Blocks until SIGTERM/SIGINT; ``block=False`` returns the running worker, whose
        ``stop()`` ends it gracefully. With ``max_messages`` it stops by itself after that
        many messages, with ``max_memory`` once its RSS passed that many MB, after finishing
        what it runs (see :mod:`ivy.worker.recycling`). ``time_limit``: the hard time limit of
        the tasks without their own (see :mod:`ivy.worker.runner`).

        The original's dict form works: ``queue`` inside it names the queue, and
        ``messages: {"pkg.task": {"reserveTime": 3600}}`` sets a task's reservation (seconds
        its message stays reserved, extended while it runs), over the task's own
        ``reserve_time`` and the worker's ``reserve_time``.

        The worker writes a heartbeat to the notifier every ``heartbeat`` seconds (None: none)
        for ``ivy inspect``; ``events=True`` publishes its task events for ``ivy events``
        (see :mod:`ivy.worker.monitor` and :mod:`ivy.middleware.events`).

        Args:
            queue_url: the queue backend to consume (a URL, a dict, the original's dict form,
                or a backend object); None: the app's.
            queue: the queue's name, or several; None: the queues of the registered tasks.
            concurrency: how many tasks run at once (threads).
            block: run until a signal stops the worker (True), or return it running (False).
            reserve_time: seconds a message stays reserved (extended while its task runs)
                for tasks without their own; None: the app's ``reserve_time``.
            notifier: the notifier the worker reports through; None: the app's.
            max_messages: stop after this many messages; None: no limit.
            events: publish task events for ``ivy events``.
            heartbeat: seconds between heartbeats; None: none.
            max_memory: stop once the process's RSS passed this many MB; None: no limit.
            time_limit: the hard time limit, in seconds, of the tasks without their own;
                None: none.

        Returns:
            The worker: stopped already when ``block`` is True, running otherwise.

        Raises:
            ValueError: a ``time_limit`` that is not a number of seconds > 0.
            ivy.ConfigurationError: a malformed queue or notifier URL, or a backend whose
                package is missing.
            ivy.IvyError: the app was closed.
        """
        self.backends.check_open()
        reserve_times: dict[str, float] = {}
        if isinstance(queue_url, Mapping):
            queue_url = dict(queue_url)
            if "queue" in queue_url:
                queue = queue or queue_url.pop("queue")
            reserve_times = message_options(self.registry, queue_url.pop("messages", None))
        backend = (self.backends.own(queue_url, make_queue_backend) if queue_url is not None
                   else self.queue_backend)
        reporting = self.backends.producer_notifier
        if notifier is not None or reporting is None:
            reporting = self.start_notification_producer(notifier)
        context = self.worker_context(reserve_times)
        limit = check_time_limit(time_limit)
        if limit is not None:
            context = dataclasses.replace(context, time_limit=limit)
        return self._workers.start(
            context, backend, reporting, queue_names(self.registry, queue),
            concurrency=concurrency, reserve_time=reserve_time or self.reserve_time,
            max_messages=max_messages, max_memory=max_memory, events=events,
            heartbeat=heartbeat, block=block)

    def worker_context(self, reserve_times: Mapping[str, float] | None = None) -> WorkerContext:
        """What a worker of this app needs: its registry, serializer, limits, signer (read
        now) and backoff, with ``reserve_times`` (task name -> lease in seconds) overriding the
        tasks' own ``reserve_time``."""
        return WorkerContext(
            registry=self.registry, serializer=self.serializer, backoff=self.backoff,
            max_message_bytes=self.max_message_bytes, max_depth=self.max_depth,
            signer=self.signer, reserve_times=reserve_times or {}, middleware=self.middleware,
            max_message_age=self.max_message_age,
            dead_letter_failures=self.dead_letter_failures)

    # -- live workers and waiting -----------------------------------------------------------

    def pause_queue(self, queue: str) -> bool:
        """Pause a queue for every worker sharing this app's notifier.

        Within about a second they fetch nothing more from it (sends still succeed; calls
        running end as usual), until :meth:`resume_queue`. Kept in the notifier's store (see
        :mod:`ivy.timing.pause`).

        Args:
            queue: the queue's name.

        Returns:
            True if it was not paused.

        Raises:
            ValueError: ``queue`` is not a queue name.
            ivy.ConfigurationError: the notifier keeps no store (RabbitMQ's).
            ivy.IvyError: the paused queues changed too often while this wrote them.
        """
        return pause.set_paused(self.backends.store_notifier(), queue, True)

    def resume_queue(self, queue: str) -> bool:
        """Let the workers of a paused queue fetch from it again, within about a second.

        Args:
            queue: the queue's name.

        Returns:
            True if it was paused.

        Raises:
            ValueError: ``queue`` is not a queue name.
            ivy.ConfigurationError: the notifier keeps no store (RabbitMQ's).
            ivy.IvyError: the paused queues changed too often while this wrote them.
        """
        return pause.set_paused(self.backends.store_notifier(), queue, False)

    def paused_queues(self) -> list[str]:
        """The queues paused on this app's notifier.

        Returns:
            Their names, sorted.

        Raises:
            ivy.ConfigurationError: the notifier keeps no store (RabbitMQ's).
        """
        return pause.paused_queues(self.backends.store_notifier())

    def workers(self) -> list[dict[str, Any]]:
        """The workers alive on this app's notifier (see :mod:`ivy.worker.monitor`).

        Returns:
            Their latest heartbeats, ordered by name.
        """
        return self.backends.notifier_for(None).workers()

    def wait(self, calls: Iterable[Call[Any]], timeout: float | None = None,
             progress: bool = False, *, return_exceptions: bool = False) -> list[Any]:
        """Wait for many calls at once, within one timeout for all.

        A failed call raises its error as soon as it is known, whatever its place in
        ``calls`` (see :func:`ivy.waiting.wait`).

        Args:
            calls: the calls to wait for.
            timeout: seconds for the whole wait; None: no limit.
            progress: show a tqdm bar on stderr that advances as calls finish.
            return_exceptions: put a failed call's error in its place in the list instead
                of raising it, as :func:`asyncio.gather` does.

        Returns:
            The calls' results, in the order given.

        Raises:
            ivy.ResultTimeout: ``timeout`` passed first; it says how many calls had finished.
            ivy.RemoteTaskError: a task failed (unless ``return_exceptions``).
            ivy.PublishError: a call's message was not taken (unless ``return_exceptions``).
            ValueError: a ``timeout`` that is not a number of seconds >= 0.
            ivy.ConfigurationError: ``progress=True`` without tqdm installed.
        """
        from ivy.waiting import wait

        return wait(calls, timeout, progress, return_exceptions=return_exceptions)

    def close(self, timeout: float = 10.0) -> None:
        """Close the app: flush, stop its workers and close the backends it built.

        Waits up to ``timeout`` seconds for unconfirmed messages (logging what stays
        unconfirmed), stops workers and the notification consumers, and closes the backends
        this object built (not the backend objects handed in: their owner closes them). Calls
        still waiting are settled with an ``IvyClosed`` error, so no ``result()`` hangs; using
        the object after this raises :class:`ivy.IvyError`. Closing twice does nothing.

        Args:
            timeout: seconds to wait for unconfirmed messages.
        """
        if not self.backends.mark_closed():
            return
        self.producer.flush_quietly(timeout)
        self._workers.stop()  # their last events and heartbeat entries before the notifiers
        self.backends.results.close("IvyClosed", f"{self!r} was closed before the result of "
                                    "this call arrived; the task may still run")
        self.backends.close_owned()
