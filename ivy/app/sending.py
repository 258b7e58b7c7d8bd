"""Sending calls and waiting for them: the part of :class:`ivy.Ivy` that forwards to its
:class:`ivy.producer.Producer` (``delayed_call``, ``send_task``, ``cancel``, ``wait``...)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from ivy.app.backends import Backends
from ivy.call import Call, ResultCallback
from ivy.producer import Producer
from ivy.task import Task
from ivy.transactional import Transaction


class Sending:
    """``delayed_call``, ``send_task``, ``delayed_calls``, ``transaction``, ``cancel``,
    ``flush`` and waiting, of :class:`ivy.Ivy`."""

    # made by Ivy.__init__
    producer: Producer
    backends: Backends

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
