"""The worker side of the Django backend: each Django task runs as an ivy task named by its module
path, imported only from ``INSTALLED_APPS`` (docs/internals/integrations.md)."""

from __future__ import annotations

import asyncio
import inspect
import logging
import traceback
from collections.abc import Callable
from typing import Any, Protocol

from django.apps import apps
from django.db import close_old_connections
from django.utils.module_loading import import_string

import ivy
from ivy.context import CallContext
from ivy.notifiers.base import Notifier
from ivy.task import Registry
from ivy.task import Task as IvyTask

from . import records
from ._compat import (
    FAILED,
    RUNNING,
    SUCCESSFUL,
    Task,
    TaskContext,
    TaskError,
    TaskResult,
    normalize_json,
    task_backends,
    task_finished,
    task_started,
)

log = logging.getLogger("ivy.contrib.django")


class Store(Protocol):
    """What the worker side needs of the backend (an :class:`~ivy.contrib.django.IvyBackend`)."""

    alias: str
    result_ttl: float

    def store(self) -> Notifier:
        """The notifier that keeps the records."""


class DjangoTasks(Registry):
    """The registry of a backend's app: ivy tasks registered as usual, and Django tasks
    imported by module path on first use (docs/internals/integrations.md)."""

    def __init__(self, alias: str) -> None:
        super().__init__()
        #: the backend alias (a key of ``TASKS``) whose workers use this registry
        self.alias = alias

    def get(self, name: str) -> IvyTask[Any, Any] | None:
        """The task named ``name``: registered, or a Django task found by its path."""
        found = super().get(name)
        if found is not None or not _is_path(name):
            return found
        if apps.get_containing_app_config(name) is None:
            # a message must not make the worker import just any module (an import runs
            # code): only those of the project's installed apps, where Django tasks live
            log.warning("message names %r, which is in none of INSTALLED_APPS: refused", name)
            return None
        try:
            target = import_string(name)
        except ImportError:
            return None
        if not isinstance(target, Task):
            log.warning("message names %r, which is not a Django task: refused", name)
            return None
        wrapped = as_ivy_task(target, self.alias)
        self.add(wrapped)
        return wrapped


def _is_path(name: str) -> bool:
    parts = name.split(".")
    return len(parts) > 1 and all(part.isidentifier() for part in parts)


def as_ivy_task(task: Task[Any, Any], alias: str) -> IvyTask[Any, Any]:
    """The ivy task that runs the Django ``task`` for backend ``alias``: named by the task's
    module path, on its queue, checking arguments against the function's own signature
    (without ``context``)."""
    func = task.func
    if inspect.iscoroutinefunction(func):
        async def run_async(*args: Any, **kwargs: Any) -> Any:
            return await _attempt_async(task, alias, args, kwargs)
        runner: Callable[..., Any] = run_async
    else:
        def run_sync(*args: Any, **kwargs: Any) -> Any:
            return _attempt(task, alias, args, kwargs)
        runner = run_sync
    runner.__name__ = runner.__qualname__ = getattr(func, "__qualname__", "task")
    runner.__module__ = func.__module__
    runner.__doc__ = func.__doc__
    try:
        signature = inspect.signature(func)
        params = list(signature.parameters.values())
        if task.takes_context and params:
            params = params[1:]
        runner.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
    except (TypeError, ValueError):
        pass
    return IvyTask(runner, name=task.module_path, queue=task.queue_name,
                   style="async" if inspect.iscoroutinefunction(func) else "sync")


def _backend(task: Task[Any, Any], alias: str) -> Store:
    backend: Store = task_backends[alias]
    return backend


def _seed(task: Task[Any, Any], alias: str, args: tuple[Any, ...], kwargs: dict[str, Any],
          ) -> Callable[[], records.Record]:
    def seed() -> records.Record:
        return {"task": task.module_path, "backend": alias, "queue": task.queue_name,
                "priority": task.priority, "args": normalize_json(list(args)),
                "kwargs": normalize_json(kwargs), "worker_ids": [], "errors": []}
    return seed


def _begin(task: Task[Any, Any], alias: str, args: tuple[Any, ...], kwargs: dict[str, Any],
           ) -> tuple[TaskResult[Any], CallContext]:
    """Record the start of this attempt; the ``TaskResult`` the signals and context see."""
    ctx = ivy.current()
    backend = _backend(task, alias)
    worker = ctx.worker or "ivy"
    started = records.now()

    def start(record: records.Record) -> None:
        record["state"] = "RUNNING"
        record.setdefault("started_at", started)
        record["last_attempted_at"] = started
        record["finished_at"] = None
        record.setdefault("worker_ids", []).append(worker)

    record = _safely(lambda: records.update(
        backend.store(), ctx.call_id, start, backend.result_ttl,
        _seed(task, alias, args, kwargs)), ctx.call_id) or {}
    # one worker id per attempt: context.attempt is ivy's attempt + 1
    workers = list(record.get("worker_ids", []))[-(ctx.attempt + 1):]
    workers = [worker] * (ctx.attempt + 1 - len(workers)) + workers
    if record:  # the task as it was enqueued (``using(priority=..., queue_name=...)``)
        task = records.task_of(record, task.module_path)
    if task.backend != alias:
        task = task.using(backend=alias)
    result: TaskResult[Any] = TaskResult(
        task=task, id=ctx.call_id, status=RUNNING,
        enqueued_at=records.to_datetime(record.get("enqueued_at", records.id_time(ctx.call_id))),
        started_at=records.to_datetime(record.get("started_at", started)),
        last_attempted_at=records.to_datetime(started), finished_at=None,
        args=list(args), kwargs=kwargs, backend=alias,
        errors=[], worker_ids=workers)
    task_started.send(sender=type(backend), task_result=result)
    return result, ctx


def _end(result: TaskResult[Any], ctx: CallContext, error: BaseException | None,
         value: Any = None) -> None:
    """Record the end of this attempt and send ``task_finished`` (inside the ``except``
    block on failure, so that receivers see the exception)."""
    backend = _backend(result.task, result.backend)
    finished = records.now()
    entry: dict[str, Any] | None = None
    if error is not None:
        kind = type(error)
        entry = {"exception_class_path": f"{kind.__module__}.{kind.__qualname__}",
                 "traceback": "".join(traceback.format_exception(error)),
                 "attempt": ctx.attempt}

    def end(record: records.Record) -> None:
        record["finished_at"] = finished
        if entry is not None:
            record["state"] = "READY"  # until a retry starts, or ivy's final says FAILED
            record.setdefault("errors", []).append(entry)

    _safely(lambda: records.update(backend.store(), ctx.call_id, end, backend.result_ttl,
                                   _seed(result.task, result.backend, tuple(result.args),
                                         result.kwargs)), ctx.call_id)
    object.__setattr__(result, "finished_at", records.to_datetime(finished))
    if entry is None:
        object.__setattr__(result, "status", SUCCESSFUL)
        object.__setattr__(result, "_return_value", value)
    else:
        object.__setattr__(result, "status", FAILED)
        result.errors.append(TaskError(exception_class_path=entry["exception_class_path"],
                                       traceback=entry["traceback"]))
    task_finished.send(sender=type(backend), task_result=result)


def _safely(step: Callable[[], records.Record], call_id: str) -> records.Record | None:
    """A record update that fails (the notifier down) is logged; the task runs on."""
    try:
        return step()
    except Exception:
        log.warning("the record of Django task result %s could not be updated", call_id,
                    exc_info=True)
        return None


def _call_args(task: Task[Any, Any], result: TaskResult[Any], args: tuple[Any, ...]
               ) -> tuple[Any, ...]:
    return (TaskContext(task_result=result), *args) if task.takes_context else args


def _attempt(task: Task[Any, Any], alias: str, args: tuple[Any, ...],
             kwargs: dict[str, Any]) -> Any:
    """One attempt of a plain Django task, in a worker thread."""
    close_old_connections()  # as around a request: no connection outlives its use
    try:
        result, ctx = _begin(task, alias, args, kwargs)
        try:
            value = normalize_json(task.func(*_call_args(task, result, args), **kwargs))
        except BaseException as exc:
            _end(result, ctx, exc)
            raise
        _end(result, ctx, None, value)
        return value
    finally:
        close_old_connections()


async def _attempt_async(task: Task[Any, Any], alias: str, args: tuple[Any, ...],
                         kwargs: dict[str, Any]) -> Any:
    """One attempt of an ``async def`` Django task, on the worker's event loop; the record
    and the signals (whose receivers may use the ORM) run in a thread."""
    result, ctx = await asyncio.to_thread(_begin, task, alias, args, kwargs)
    try:
        value = normalize_json(await task.func(*_call_args(task, result, args), **kwargs))
    except BaseException as exc:
        await asyncio.to_thread(_end, result, ctx, exc)
        raise
    await asyncio.to_thread(_end, result, ctx, None, value)
    return value
