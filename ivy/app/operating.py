"""Running workers and operating queues: the part of :class:`ivy.Ivy` that starts workers
(``listen``), pauses queues, lists workers and handles dead letters."""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from ivy.app.backends import Backends
from ivy.app.workers import Workers, check_time_limit, message_options, queue_names
from ivy.config import Spec, make_queue_backend
from ivy.middleware import Pipeline
from ivy.notifiers.base import Notifier
from ivy.queues.base import QueueBackend
from ivy.serialization import Serializer, Signer
from ivy.task import Registry
from ivy.timing import pause
from ivy.worker import Worker, WorkerContext
from ivy.worker.monitor import HEARTBEAT_INTERVAL

if TYPE_CHECKING:
    from ivy.deadletters import DeadLetterInfo


class Operating:
    """``listen``, ``worker_context``, pausing queues, ``workers`` and the dead-letter
    methods of :class:`ivy.Ivy`."""

    # made by Ivy.__init__
    registry: Registry
    backends: Backends
    _workers: Workers
    middleware: Pipeline
    serializer: Serializer
    max_message_bytes: int
    max_depth: int
    max_message_age: float | None
    dead_letter_failures: bool
    reserve_time: float

    if TYPE_CHECKING:  # Ivy's
        @property
        def signer(self) -> Signer | None: ...

        @property
        def queue_backend(self) -> QueueBackend: ...

        def start_notification_producer(self, spec: Spec = None) -> Notifier: ...

        def backoff(self, attempt: int) -> float: ...

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
        the tasks without their own: such calls run inline in a process its supervisor watches
        (``ivy worker``), in runner processes otherwise (see :mod:`ivy.worker.limits`).

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
