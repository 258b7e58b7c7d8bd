"""Call: the producer's handle on one delayed call (status, result, callbacks, ``await``); callbacks
run on a small pool of threads of their own, never on the one that reads notifications."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
from collections.abc import Callable, Generator
from concurrent.futures import Future
from queue import SimpleQueue
from typing import Any, Generic, TypeVar

from ivy._flags import Flag
from ivy.context import Progress
from ivy.errors import CallCancelled, PublishError, PublishTimeout, RemoteTaskError, ResultTimeout
from ivy.message import Notification, Status

log = logging.getLogger("ivy.call")
R = TypeVar("R")
#: ``callback(err, result)``: ``err`` is None, a RemoteTaskError (the task failed, or the call
#: expired or its producer closed) or a PublishError (the message was not taken)
ResultCallback = Callable[[RemoteTaskError | PublishError | None, Any], None]

#: Most callback threads at once; a call's callbacks wait in line once this many are busy.
CALLBACK_THREADS = 16

_PENDING = object()


class _CallbackPool:
    """Daemon threads that run callbacks, started on demand and kept once started. Daemon
    threads, unlike ``concurrent.futures``' workers, never hold up the interpreter's exit."""

    def __init__(self, max_threads: int) -> None:
        self._jobs: SimpleQueue[Callable[[], None]] = SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0
        self._threads = 0
        self._max = max_threads
        self.local = threading.local()
        #: jobs submitted and not finished yet (queued or running)
        self._unfinished = 0
        self._finished = threading.Condition(self._lock)

    def submit(self, job: Callable[[], None]) -> None:
        with self._lock:
            self._unfinished += 1
            if self._idle > 0:
                self._idle -= 1  # that idle thread takes this job
                start = False
            else:
                start = self._threads < self._max
                if start:
                    self._threads += 1
        self._jobs.put(job)
        if start:
            threading.Thread(target=self._loop, name=f"ivy-callback-{self._threads}",
                             daemon=True).start()

    def _loop(self) -> None:
        self.local.inside = True
        while True:
            job = self._jobs.get()
            try:
                job()
            except BaseException:  # a job guards itself; this keeps the thread alive regardless
                log.exception("a callback job raised")
            with self._lock:
                self._idle += 1
                self._unfinished -= 1
                if not self._unfinished:
                    self._finished.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s until every job submitted so far finished (the process
        exits: callbacks of calls settled a moment ago still run); whether they did."""
        with self._lock:
            return self._finished.wait_for(lambda: not self._unfinished, max(timeout, 0.0))

    def inside(self) -> bool:
        """Whether the current thread is one of the callback threads."""
        return getattr(self.local, "inside", False)


_callbacks = _CallbackPool(CALLBACK_THREADS)


def callback_pool() -> _CallbackPool:
    """The threads that run calls' callbacks (one pool per process)."""
    return _callbacks
#: guards the few instructions that change a call's state, for every call (a lock per call
#: was one more object per waiting call for the garbage collector to walk)
_lock = threading.Lock()


class Call(Generic[R]):
    """Status moves ``scheduled`` -> ``running`` -> ``successful`` / ``errored`` /
    ``cancelled``; a successful
    call becomes ``done`` once its callbacks (the per-call one and the task's ``finished``) ran.

    The first final notification wins: a redelivered task that runs twice settles the call once,
    and every callback runs exactly once. :meth:`result` returns once the callbacks ran, so what
    they did is visible to the caller; called from inside a callback it returns as soon as the
    result is known (a callback may wait for another call's result).
    """

    def __init__(self, call_id: str, task: str, queue: str) -> None:
        self.id = call_id
        """The call's id (its message's)."""
        self.task = task
        """The task's name (a workflow's: the text naming its tasks)."""
        self.queue = queue
        """The queue its message was sent to."""
        self.status: Status = "scheduled"
        """``scheduled``, ``running``, ``successful``, ``errored`` or ``cancelled``."""
        self.attempt = 0
        """The attempt of the latest notification: 0 on the first run, then 1, 2, ..."""
        self.worker: str | None = None
        """The worker that ran it (``host:pid``), once one reported."""
        self._value: Any = _PENDING
        self._error: RemoteTaskError | PublishError | None = None
        self._send: Future[None] | None = None
        self._settled = Flag()
        self._done = Flag()
        # made when first needed: with thousands of calls waiting, every object a call holds
        # is walked again by each of the garbage collector's full collections
        self._callbacks: list[Callable[[Call[R]], None]] | None = None
        self._waiters: list[Callable[[], None]] | None = None
        self._rejected: list[str] | None = None
        #: set by the app that sent the call: ``cancel(call_id)`` (see :meth:`cancel`)
        self._canceller: Callable[[str], None] | None = None
        #: when the app's notification consumer stops waiting (``time.monotonic()``)
        self._expires = 0.0
        self.nonce: str | None = None
        """The nonce the call's message carries: only a final notification echoing it
        settles the call (None: any final notification does)."""
        self.progress: Progress | None = None
        """The latest progress its task reported (``ivy.current().progress``), or None."""
        self._progress_callbacks: list[Callable[[Progress], None]] | None = None
        #: the task's return annotation decodes the result (ivy.annotations), when the
        #: producer knows the task; raises ValueError for a result that does not fit
        self._decode: Callable[[Any], Any] | None = None

    def __repr__(self) -> str:
        return f"<Call {self.id} {self.task} {self.status}>"

    def done(self) -> bool:
        """Whether the call settled and its callbacks ran.

        Returns:
            True once the call succeeded or errored and its callbacks ran.
        """
        return self._done.is_set()

    def result(self, timeout: float | None = None) -> R:
        """Block until the result arrives and the callbacks ran.

        Called from inside a callback, it returns as soon as the result is known.

        Args:
            timeout: seconds to wait at most; None: no limit.

        Returns:
            The task's result (converted by its return annotation, when the producer knows
            the task).

        Raises:
            ivy.RemoteTaskError: the task failed (:class:`ivy.CallCancelled` when it was
                cancelled).
            ivy.PublishError: the call's message was not taken.
            ivy.ResultTimeout: ``timeout`` seconds passed first (a ``TimeoutError``); the
                call may still complete.
        """
        event = self._settled if _callbacks.inside() else self._done
        if not event.wait(timeout):
            raise ResultTimeout(self._timeout_message(timeout))
        if self._error is not None:
            # the traceback of this raise only: raising one object again and again would
            # stack every raise's frames on it (memory that grows each time a caller looks)
            raise self._error.with_traceback(None)
        value: R = self._value
        return value

    @property
    def rejected(self) -> list[str]:
        """Why notifications for this call were turned away (bad signature, bad schema)."""
        return list(self._rejected or ())

    def _reject(self, reason: str) -> None:
        with _lock:
            if self._rejected is None:
                self._rejected = []
            self._rejected.append(reason)

    def _timeout_message(self, timeout: float | None) -> str:
        message = (f"no result for call {self.id} of {self.task!r} within {timeout} s (status "
                   f"{self.status!r}); ")
        rejected = self.rejected
        if rejected:
            reasons = "; ".join(dict.fromkeys(rejected))
            message += (f"{len(rejected)} notification{'s' if len(rejected) > 1 else ''} for "
                        f"this call {'were' if len(rejected) > 1 else 'was'} rejected: {reasons}. ")
        return message + (f"Is a worker listening on queue {self.queue!r}? The call may still "
                          "complete: wait again, or raise the timeout")

    @property
    def has_callbacks(self) -> bool:
        """Whether callbacks are waiting for this call to settle."""
        return bool(self._callbacks)

    def exception(self, timeout: float | None = None) -> RemoteTaskError | PublishError | None:
        """Wait like :meth:`result`, then return the error instead of raising it.

        Args:
            timeout: seconds to wait at most; None: no limit.

        Returns:
            The call's error, or None if it succeeded.

        Raises:
            ivy.ResultTimeout: ``timeout`` seconds passed first.
        """
        try:
            self.result(timeout)
        except (RemoteTaskError, PublishError) as exc:
            return exc
        return None

    def sent(self, timeout: float | None = None) -> None:
        """Block until the queue backend has this call's message (RabbitMQ: confirmed).

        Args:
            timeout: seconds to wait at most; None: no limit.

        Raises:
            ivy.PublishError: the message was refused or never confirmed.
            ivy.PublishTimeout: ``timeout`` seconds passed first (it may still be confirmed).
        """
        future = self._send
        if future is None:
            return
        try:
            error = future.exception(timeout)
        except TimeoutError:
            raise PublishTimeout(
                f"the message of call {self.id} of {self.task!r} was not confirmed within "
                f"{timeout} s; it may still be: wait again, or check the broker") from None
        if error is not None:
            raise error.with_traceback(None) if isinstance(error, PublishError) else PublishError(
                f"the message of call {self.id} of {self.task!r} was not taken: {error}")

    def cancel(self) -> None:
        """Cancel the call (see :mod:`ivy.timing.cancel`): still queued, it never runs;
        running, it is stopped. It settles with status ``cancelled`` unless its outcome was
        recorded first; ``result()`` then raises :class:`ivy.CallCancelled`.

        Raises:
            RuntimeError: the call was not sent by an ivy app (made directly).
        """
        if self._canceller is None:
            raise RuntimeError(f"call {self.id} was not sent by an ivy app: use "
                               "ivy.cancel(call_id) with the app's notifier")
        self._canceller(self.id)

    def _sending(self, future: Future[None]) -> None:
        """Track the send of one of this call's messages. A workflow may send several (the
        members of a leading group, on several queues): :meth:`sent` then waits for them all
        and fails with the first refusal."""
        with _lock:
            previous = self._send
            self._send = future if previous is None else _all_of(previous, future)

    def add_done_callback(self, fn: Callable[[Call[R]], None]) -> None:
        """Run ``fn(call)`` when the call settles.

        It runs on a callback thread; at once, in this thread, if the call settled already.
        An exception from ``fn`` is logged.

        Args:
            fn: called with this call.
        """
        with _lock:
            if not self._settled.is_set():
                if self._callbacks is None:
                    self._callbacks = []
                self._callbacks.append(fn)
                return
        self._run_callback(fn)

    def on_progress(self, fn: Callable[[Progress], None]) -> None:
        """Run ``fn(progress)`` for each progress update the task reports (``fraction`` and
        ``note``: see :func:`ivy.current`), on a callback thread, until the call settles.
        Two updates close together may reach it out of order (compare fractions if it
        matters), and some may be dropped (rate limit, a reconnect): do not count them. An
        exception from ``fn`` is logged.

        Args:
            fn: called with each :class:`ivy.Progress`.
        """
        with _lock:
            if self._progress_callbacks is None:
                self._progress_callbacks = []
            self._progress_callbacks.append(fn)

    def remove_done_callback(self, fn: Callable[[Call[R]], None]) -> bool:
        """Forget a done-callback if it has not run yet.

        ``ivy.wait`` does, once it stops waiting, so that its own callbacks are not taken for
        a user's at exit.

        Args:
            fn: a function given to :meth:`add_done_callback`.

        Returns:
            Whether it was there.
        """
        with _lock:
            if self._callbacks is not None and fn in self._callbacks:
                self._callbacks.remove(fn)
                return True
        return False

    def __await__(self) -> Generator[Any, None, R]:
        if not self._done.is_set():
            loop = asyncio.get_running_loop()
            future: asyncio.Future[None] = loop.create_future()

            def wake() -> None:
                with contextlib.suppress(RuntimeError):  # closed loop: nobody awaits any more
                    loop.call_soon_threadsafe(_resolve, future)

            with _lock:
                waiting = not self._done.is_set()
                if waiting:
                    if self._waiters is None:
                        self._waiters = []
                    self._waiters.append(wake)
            if waiting:
                try:
                    yield from future.__await__()
                finally:  # cancelled (asyncio.wait_for timed out) or woken: forget the waiter
                    with _lock:
                        if self._waiters is not None and wake in self._waiters:
                            self._waiters.remove(wake)
        return self.result(0)

    # -- driven by the notification consumer ------------------------------------------------

    def _running(self, notification: Notification) -> None:
        if not self._settled.is_set():
            self.status = "running"
            self.attempt = notification.attempt
            self.worker = notification.worker

    def _progress(self, notification: Notification) -> None:
        data = notification.progress or {}
        update = Progress(float(data.get("fraction", 0.0)), data.get("note"))
        with _lock:
            if self._settled.is_set():
                return
            self.status = "running"
            self.attempt = notification.attempt
            self.worker = notification.worker
            self.progress = update
            callbacks = list(self._progress_callbacks or ())
        for fn in callbacks:
            _callbacks.submit(functools.partial(self._run_progress_callback, fn, update))

    def _run_progress_callback(self, fn: Callable[[Progress], None], update: Progress) -> None:
        try:
            fn(update)
        except Exception:
            log.exception("progress callback of call %s (%s) raised", self.id, self.task)

    def _settle(self, notification: Notification) -> bool:
        """Record a final notification; False if the call had settled already. The callbacks
        run on a callback thread; the call is done once they ran."""
        kind = CallCancelled if notification.status == "cancelled" else RemoteTaskError
        error = None if notification.status == "successful" else kind.from_wire(
            notification.error, task=self.task, call_id=self.id)
        value = notification.result
        if error is None and self._decode is not None:
            try:
                value = self._decode(value)
            except ValueError as exc:
                error = RemoteTaskError(
                    "SerializationError", f"the result of task {self.task!r} does not fit "
                    f"its return annotation: {exc}", task=self.task, call_id=self.id)
        return self._complete(value, error, notification.attempt, notification.worker)

    def _fail(self, error: PublishError | RemoteTaskError) -> bool:
        """Settle with an error raised here rather than reported by a worker."""
        return self._complete(None, error, self.attempt, self.worker)

    def _complete(self, value: Any, error: RemoteTaskError | PublishError | None, attempt: int,
                  worker: str | None) -> bool:
        with _lock:
            if self._settled.is_set():
                return False
            self.attempt = attempt
            self.worker = worker
            if error is None:
                self._value = value
                self.status = "successful"
            else:
                self._error = error
                self.status = "cancelled" if isinstance(error, CallCancelled) else "errored"
            callbacks, self._callbacks = self._callbacks, None
            self._settled.set()
        if callbacks:
            _callbacks.submit(lambda: self._finish(callbacks))
        else:
            self._finish(())
        return True

    def _run_callback(self, fn: Callable[[Call[R]], None]) -> None:
        try:
            fn(self)
        except BaseException:  # even SystemExit: the call must still become done
            log.exception("callback of call %s (%s) raised", self.id, self.task)

    def _finish(self, callbacks: list[Callable[[Call[R]], None]] | tuple[()]) -> None:
        for fn in callbacks:
            self._run_callback(fn)
        with _lock:
            if self._error is None:
                self.status = "done"
            self._done.set()
            waiters, self._waiters = self._waiters, None
        for wake in waiters or ():
            wake()


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def result_callback_adapter(callback: ResultCallback) -> Callable[[Call[Any]], None]:
    """Wrap an error-first ``callback(err, result)`` as a done-callback."""

    def run(call: Call[Any]) -> None:
        error = call._error
        callback(error, None if error is not None else call._value)

    return run


def finished_adapter(finished: Callable[[Any], None]) -> Callable[[Call[Any]], None]:
    """Wrap a task's ``finished(result)`` as a done-callback that runs on success only."""

    def run(call: Call[Any]) -> None:
        if call._error is None:
            finished(call._value)

    return run


def _all_of(first: Future[None], second: Future[None]) -> Future[None]:
    """A future done when both are: failed with the first error, else None."""
    both: Future[None] = Future()
    state = {"left": 2, "over": False}
    guard = threading.Lock()

    def one_done(future: Future[None]) -> None:
        error = future.exception()
        with guard:
            state["left"] -= 1
            if state["over"] or (error is None and state["left"]):
                return
            state["over"] = True
        if error is not None:
            both.set_exception(error)
        else:
            both.set_result(None)

    first.add_done_callback(one_done)
    second.add_done_callback(one_done)
    return both
