"""Running one task body in its style (plain, async, callback), within its timeout, and stopping
it when its call is cancelled (docs/internals/workers.md)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ctypes
import logging
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from ivy.annotations import Arguments
from ivy.context import CallContext, Progress, enter, leave
from ivy.errors import SerializationError, TaskCancelled, TaskTimeout
from ivy.message import Message, wire_error
from ivy.retries import KINDS, POLICY, Kind, Verdict
from ivy.serialization import Serializer, get_serializer
from ivy.task import Task
from ivy.worker.limits import Watch, park
from ivy.worker.runner import Runner, RunnerDied, Runners, request_of

log = logging.getLogger("ivy.worker")

#: Longest a stopping worker waits for its event loop thread to close the loop.
LOOP_CLOSE_TIMEOUT = 10.0


class _CallbackError(Exception):
    """The error a callback-style task passed to its callback."""

    def __init__(self, err: Any) -> None:
        super().__init__(err)
        self.err = err


def error_info(exc: BaseException) -> dict[str, str]:
    """The wire form of an exception: plain strings only."""
    if isinstance(exc, _CallbackError):
        err = exc.err
        if isinstance(err, BaseException):
            exc = err
        elif isinstance(err, dict):
            return wire_error(str(err.get("type") or "Error"), str(err.get("message") or ""),
                              str(err.get("traceback") or ""))
        else:
            return wire_error("Error", str(err))
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return wire_error(type(exc).__name__, str(exc), tb)


class Failure(dict[str, str]):
    """The error of a failed run in its wire form (``type``, ``message``, ``traceback``),
    with the ``verdict`` of the task's retry policy on the exception (:mod:`ivy.retries`)."""

    def __init__(self, error: dict[str, str], verdict: Verdict = POLICY) -> None:
        super().__init__(error)
        self.verdict = verdict


def failure(task: Task[Any, Any], exc: BaseException) -> Failure:
    """The failure of a run of ``task`` that raised ``exc``, judged by the task's policy."""
    cause: BaseException | None = exc
    if isinstance(exc, _CallbackError):  # a callback-style task's err: an exception, or not
        cause = exc.err if isinstance(exc.err, BaseException) else None
    return Failure(error_info(exc), task.retry_policy.verdict(cause))


def time_limit_failure(task: Task[Any, Any], limit: float, how: str) -> Failure:
    """The failure of a call of ``task`` stopped past its hard ``limit`` (``how``: what
    stopped it), with its retry policy's verdict on :class:`ivy.TaskTimeout`."""
    return Failure(wire_error("TaskTimeout", f"task {task.name!r} passed its time limit of "
                              f"{limit:g} s: {how}"), task.retry_policy.verdict(TaskTimeout()))


@dataclass
class _Running:
    """A call running now: its thread, and what stops it early (see :meth:`Executor.cancel`)."""

    thread_id: int
    style: str
    #: what ivy.current() returns while it runs
    context: CallContext
    future: concurrent.futures.Future[Any] | None = None
    #: the process running it, for a call with a hard time limit (ivy.worker.runner)
    runner: Runner | None = None
    callback_done: threading.Event | None = None
    cancelled: bool = False


@dataclass
class _Deadline:
    thread_id: int
    at: float
    fired: bool = False


class Executor:
    """Runs task bodies for one worker (``owner`` names it in log lines): the deadlines of the
    plain functions running now, and the event loop of the async ones."""

    def __init__(self, owner: str) -> None:
        self.owner = owner
        self._lock = threading.Lock()
        self._deadlines: dict[int, _Deadline] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: threading.Thread | None = None
        self._closed = False
        #: call id -> the call running now (cancels find it here)
        self._running: dict[str, _Running] = {}
        #: sends a running call's progress to its producer (the worker's recorder sets it)
        self.on_progress: Callable[[Message, Progress], None] | None = None
        #: the hard time limit of tasks without their own (None: none), and the processes
        #: that run time-limited calls (ivy.worker.runner; made on first use)
        self.time_limit: float | None = None
        self.serializer: Serializer | None = None
        #: MB of RSS past which a runner is replaced after its call (None: no limit)
        self.runner_max_memory: float | None = None
        #: False inside a runner, which runs the time-limited calls in its own threads
        self.isolates = True
        #: in a worker process its supervisor watches, the watch of the time-limited calls,
        #: which then run inline (ivy.worker.limits); None: they run in runners
        self.watch: Watch | None = None
        self._runners: Runners | None = None

    def run(self, task: Task[Any, Any], message: Message, arguments: Arguments | None = None
            ) -> tuple[bool, Any]:
        """Run ``task`` with the arguments of ``message`` (or ``arguments``: those decoded
        by their annotations, :mod:`ivy.annotations`); the value it returns in its wire
        form. ``(True, value)`` if it returned,
        ``(False, error_info)`` if it raised or ran past its timeout; a cancelled call
        gives ``(False, {"type": "TaskCancelled", ...})``."""
        running = _Running(threading.get_ident(), task.style, self._context(message))
        with self._lock:
            self._running[message.id] = running
        outcome: tuple[bool, Any] | None = None
        token = enter(running.context)  # ivy.current(), in this thread
        limit = (task.time_limit or self.time_limit) if self.isolates else None
        try:
            if limit is None:
                outcome = self._run(task, message, running, arguments)
            elif self.watch is not None:
                outcome = self._run_watched(task, message, running, arguments, limit)
            else:
                running.style = "runner"
                outcome = self._run_limited(task, message, running, limit)
        finally:
            # A cancel that comes after the call returned may be raised here, in this
            # thread, until _finish drops it: the outcome stands, whatever it is.
            while True:
                try:
                    self._finish(message.id, running)
                    break
                except TaskCancelled:
                    log.debug("cancel of %s came after it returned; its outcome stands",
                              message.id)
            leave(token)
        return outcome

    def _context(self, message: Message) -> CallContext:
        """What :func:`ivy.current` returns while ``message`` runs."""
        send = self.on_progress
        sink = None if send is None or not message.reply_to else (
            lambda update: send(message, update))
        return CallContext(message.id, message.name, message.queue, message.attempt,
                           self.owner, sink)

    def _finish(self, call_id: str, running: _Running) -> None:
        with self._lock:
            self._running.pop(call_id, None)
            if running.cancelled and running.style == "sync":
                _raise_in_thread(running.thread_id, None)  # not yet delivered: drop it

    def cancel(self, call_id: str) -> bool:
        """Stop the call ``call_id`` if it runs here: True if it does (it ends with
        :class:`ivy.TaskCancelled`, or as a cancelled coroutine), also when it was stopped
        before and has not ended yet (a plain function blocked in a C call sees the exception
        when that call returns)."""
        with self._lock:
            running = self._running.get(call_id)
            if running is None:
                return False
            if running.cancelled:
                return True
            running.cancelled = True
            if running.style == "sync":
                _raise_in_thread(running.thread_id, TaskCancelled)
            future, done, runner = running.future, running.callback_done, running.runner
        if runner is not None:
            runner.kill()  # its call() ends with RunnerDied: settled as cancelled
        if future is not None:
            future.cancel()
        if done is not None:
            done.set()
        return True

    def _run(self, task: Task[Any, Any], message: Message, running: _Running,
             arguments: Arguments | None = None) -> tuple[bool, Any]:
        codec = task.codec
        try:
            if arguments is None and codec is not None and codec.converts_args:
                arguments = codec.decode_args(message.args, message.kwargs)  # in a runner
            args, kwargs = arguments or (message.args, message.kwargs)
            if running.cancelled:
                raise TaskCancelled()
            if task.style == "async":
                value = self._run_async(task, args, kwargs, running)
            elif task.style == "callback":
                value = self._run_callback(task, message, args, kwargs, running)
            else:
                with self._deadline(task.timeout):
                    value = task.func(*args, **kwargs)
        except TaskTimeout:
            self._clear_deadline()
            return False, Failure(wire_error("TimeoutError",
                                             f"task {task.name!r} ran past its timeout of "
                                             f"{task.timeout} s"),
                                  task.retry_policy.verdict(TimeoutError()))
        except (TaskCancelled, concurrent.futures.CancelledError):
            return False, wire_error("TaskCancelled", f"call {message.id} of task "
                                     f"{task.name!r} was cancelled while it ran")
        except (Exception, SystemExit) as exc:
            if running.cancelled:
                return False, wire_error("TaskCancelled", f"call {message.id} of task "
                                         f"{task.name!r} was cancelled while it ran "
                                         f"({type(exc).__name__})")
            return False, failure(task, exc)
        if codec is None or codec.result is None:
            return True, value
        try:  # a typed result in its wire form (ivy.annotations)
            return True, codec.encode_result(value)
        except SerializationError as exc:  # retrying would return the same
            return False, Failure(error_info(exc), Verdict("final"))

    def fire_timeouts(self, now: float) -> None:
        """Raise :class:`ivy.TaskTimeout` in each thread whose plain function is past its
        deadline at ``now`` (a ``time.monotonic()`` reading); once per deadline."""
        with self._lock:
            for d in self._deadlines.values():
                if not d.fired and d.at <= now:
                    d.fired = True
                    _raise_in_thread(d.thread_id, TaskTimeout)

    def close(self) -> None:
        """Stop the event loop of async tasks and wait (a little) for its thread to close it:
        no task is running any more when this is called. Async tasks cannot run after it."""
        with self._lock:
            self._closed = True
            loop, thread = self._loop, self._loop_thread
            runners = self._runners
        if runners is not None:
            runners.close()
        if loop is None or thread is None:
            return
        with contextlib.suppress(RuntimeError):  # closed already
            loop.call_soon_threadsafe(loop.stop)
        if thread is threading.current_thread():  # stop() called from an async task
            return
        thread.join(LOOP_CLOSE_TIMEOUT)
        if thread.is_alive():
            log.warning("worker %s: the event loop did not stop within %.0f s; left open",
                        self.owner, LOOP_CLOSE_TIMEOUT)

    # -- hard time limits -------------------------------------------------------------------

    def _run_watched(self, task: Task[Any, Any], message: Message, running: _Running,
                     arguments: Arguments | None, limit: float) -> tuple[bool, Any]:
        """Inline, under the process's watch (ivy.worker.limits); a call whose limit passed
        belongs to the watch, so its thread, if the call ever returns, parks."""
        assert self.watch is not None
        self.watch.begin(running.thread_id, message.id, limit)
        try:
            return self._run(task, message, running, arguments)
        finally:
            if not self.watch.end(running.thread_id):
                park()

    # a process of its own (ivy.worker.runner)

    def _run_limited(self, task: Task[Any, Any], message: Message, running: _Running,
                     limit: float) -> tuple[bool, Any]:
        with self._lock:
            if self._runners is None:
                self._runners = Runners(self.serializer or get_serializer("json"),
                                        self.runner_max_memory)
            runners = self._runners
        runner = runners.take()
        with self._lock:
            running.runner = runner
            cancelled = running.cancelled
        send = self.on_progress

        def progress(update: Progress) -> None:
            if send is not None and message.reply_to:
                send(message, update)

        try:
            if cancelled:
                raise RunnerDied("cancelled before it started")
            reply = runner.call(request_of(task, message, self.owner), limit, progress)
        except TimeoutError:
            runner.kill()
            log.warning("call %s of task %r passed its time limit of %g s: its process %d was "
                        "killed (the next call runs in a fresh one)", message.id, task.name,
                        limit, runner.pid)
            return False, time_limit_failure(task, limit, "its process was killed")
        except RunnerDied:
            ended = runner.exit_description()
            runner.kill()
            if running.cancelled:
                return False, wire_error("TaskCancelled", f"call {message.id} of task "
                                         f"{task.name!r} was cancelled while it ran (its "
                                         "process was killed)")
            log.error("call %s of task %r: the process running it %s", message.id,
                      task.name, ended)
            reply = {"ok": False, "verdict": {"kind": "policy", "delay": None},
                     "error": wire_error("WorkerLost", f"the process running task "
                                         f"{task.name!r} {ended} before the call ended")}
        else:
            runners.give_back(runner)
        finally:
            with self._lock:
                running.runner = None
        if reply.get("ok"):
            return True, reply.get("value")
        error: dict[str, Any] = reply["error"] if isinstance(reply.get("error"), dict) else {}
        verdict: dict[str, Any] = (reply["verdict"] if isinstance(reply.get("verdict"), dict)
                                   else {})
        kind: Kind = next((k for k in KINDS if k == verdict.get("kind")), "policy")
        delay = verdict.get("delay")
        return False, Failure(
            {key: str(error.get(key) or "") for key in ("type", "message", "traceback")},
            Verdict(kind, float(delay) if isinstance(delay, (int, float)) else None))

    # -- plain functions ---------------------------------------------------------------------

    @contextlib.contextmanager
    def _deadline(self, timeout: float | None) -> Iterator[None]:
        if timeout is None:
            yield
            return
        tid = threading.get_ident()
        with self._lock:
            self._deadlines[tid] = _Deadline(tid, time.monotonic() + timeout)
        try:
            yield
        finally:
            self._clear_deadline()

    def _clear_deadline(self) -> None:
        tid = threading.get_ident()
        with self._lock:
            d = self._deadlines.pop(tid, None)
            if d is not None and d.fired:
                _raise_in_thread(tid, None)  # cancel a TaskTimeout not yet delivered

    # -- coroutine functions -----------------------------------------------------------------

    def _run_async(self, task: Task[Any, Any], args: list[Any], kwargs: dict[str, Any],
                   running: _Running) -> Any:
        loop = self._event_loop()
        timeout = task.timeout
        context = running.context

        async def run() -> Any:
            enter(context)  # ivy.current(), in this coroutine's own context
            if timeout is None:
                return await task.func(*args, **kwargs)
            try:
                async with asyncio.timeout(timeout) as scope:
                    return await task.func(*args, **kwargs)
            except TimeoutError:
                if scope.expired():
                    raise TaskTimeout() from None
                raise

        future = asyncio.run_coroutine_threadsafe(run(), loop)
        with self._lock:
            running.future = future
            cancelled = running.cancelled
        if cancelled:
            future.cancel()
        return future.result()

    def _event_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._closed:
                raise RuntimeError(f"worker {self.owner} is stopped: its event loop is closed")
            if self._loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(target=_run_loop, args=(loop,), name="ivy-asyncio",
                                          daemon=True)
                thread.start()
                self._loop, self._loop_thread = loop, thread
            return self._loop

    # -- callback style ----------------------------------------------------------------------

    def _run_callback(self, task: Task[Any, Any], message: Message, args: list[Any],
                      kwargs: dict[str, Any], running: _Running) -> Any:
        done = threading.Event()
        with self._lock:
            running.callback_done = done
        box: list[tuple[Any, Any]] = []

        def callback(err: Any = None, result: Any = None) -> None:
            if done.is_set():
                log.warning("task %s [%s] called its callback more than once; ignored",
                            message.name, message.id)
                return
            box.append((err, result))
            done.set()

        task.func(*args, callback, **kwargs)
        if not done.wait(task.timeout):
            raise TaskTimeout()
        if not box:  # woken by a cancel
            raise TaskCancelled()
        err, result = box[0]
        if err:
            raise _CallbackError(err)
        return result


def _run_loop(loop: asyncio.AbstractEventLoop) -> None:
    """The event loop thread: run until stopped, then cancel what async tasks left behind
    (background tasks they started), finish async generators and close the loop."""
    asyncio.set_event_loop(loop)
    try:
        loop.run_forever()
    finally:
        try:
            leftovers = asyncio.all_tasks(loop)
            for task in leftovers:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*leftovers, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            asyncio.set_event_loop(None)
            loop.close()


def _raise_in_thread(thread_id: int, exc: type[BaseException] | None) -> None:
    """Schedule ``exc`` to be raised in thread ``thread_id`` at its next bytecode (None
    cancels one scheduled and not yet raised): CPython's PyThreadState_SetAsyncExc."""
    ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(thread_id), ctypes.py_object(exc) if exc is not None else None)
