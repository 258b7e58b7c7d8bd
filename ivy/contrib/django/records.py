"""What ``get_result`` reads from any process: a Django task's record, kept in the notifier's key
store beside ivy's stored final notification of the call."""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from django.conf import settings
from django.utils.module_loading import import_string

import ivy.errors
from ivy.message import Notification
from ivy.stores import KeyStore

from ._compat import (
    FAILED,
    READY,
    RUNNING,
    SUCCESSFUL,
    Task,
    TaskError,
    TaskResult,
    TaskResultDoesNotExist,
)

log = logging.getLogger("ivy.contrib.django")

#: the notifier key of a result's record: this and the result id
KEY_PREFIX = "django-task:"
#: default seconds a record is kept (the Redis notifier keeps final notifications one day)
DEFAULT_RESULT_TTL = 86_400.0
#: compare-and-set tries of one update before it gives up (and logs)
MAX_TRIES = 20

Record = dict[str, Any]


def key(result_id: str) -> str:
    """The notifier key of the record of ``result_id``."""
    return KEY_PREFIX + result_id


def now() -> float:
    """Unix seconds: the records' clock."""
    return time.time()


def create(notifier: KeyStore, result_id: str, record: Record, ttl: float) -> None:
    """Store ``record`` for ``result_id`` unless one is there already."""
    notifier.claim_key(key(result_id), json.dumps(record), ttl)


def forget(notifier: KeyStore, result_id: str) -> None:
    """Delete the record of ``result_id`` (its send failed)."""
    with contextlib.suppress(Exception):
        text = read_text(notifier, result_id)
        if text is not None:
            notifier.release_key(key(result_id), text, 0)


def read_text(notifier: KeyStore, result_id: str) -> str | None:
    """The record of ``result_id`` as stored, or None."""
    return notifier.get_keys([key(result_id)])[0]


def update(notifier: KeyStore, result_id: str, change: Callable[[Record], None], ttl: float,
           seed: Callable[[], Record]) -> Record:
    """Apply ``change`` to the record of ``result_id`` (``seed()`` when there is none: a
    call sent by another producer, or a record expired), compare-and-set; the new record."""
    record: Record = {}
    for _ in range(MAX_TRIES):
        text = read_text(notifier, result_id)
        record = seed() if text is None else json.loads(text)
        change(record)
        new = json.dumps(record)
        if text is None:
            if notifier.claim_key(key(result_id), new, ttl) is None:
                return record
        elif notifier.release_key(key(result_id), text, ttl, new):
            return record
    log.warning("the record of Django task result %s changed %d times while it was updated; "
                "this update is lost", result_id, MAX_TRIES)
    return record


def to_datetime(seconds: float | None) -> datetime | None:
    """A record's Unix time as Django expects it: aware UTC with ``USE_TZ``, else naive
    local time."""
    if seconds is None:
        return None
    if settings.USE_TZ:
        return datetime.fromtimestamp(seconds, UTC)
    return datetime.fromtimestamp(seconds)


def from_datetime(value: datetime) -> float:
    """Unix seconds of ``value`` (naive: local time, as Django's ``timezone.now()`` without
    ``USE_TZ``)."""
    return value.timestamp()


def id_time(result_id: str) -> float | None:
    """When an ivy call id was made: its first 12 hex digits are Unix milliseconds."""
    try:
        return int(result_id[:12], 16) / 1000 if len(result_id) == 32 else None
    except ValueError:
        return None


def load_task(path: str) -> Task[Any, Any]:
    """The Django task whose module path (``module.function``) is ``path``."""
    try:
        found = import_string(path)
    except ImportError as exc:
        raise TaskResultDoesNotExist(f"task {path!r} cannot be imported: {exc}") from None
    if not isinstance(found, Task):
        raise TaskResultDoesNotExist(f"{path!r} is not a Django task (a function decorated "
                                     "with @task)")
    return found


def task_of(record: Record, fallback_path: str | None) -> Task[Any, Any]:
    """The Django task of a result, with the backend, queue, priority and ``run_after`` it
    was enqueued with (``task.using(...)``), as far as they are still valid."""
    path = record.get("task") or fallback_path
    if not path:
        raise TaskResultDoesNotExist("the result names no task")
    task = load_task(path)
    try:
        return task.using(priority=record.get("priority"), queue_name=record.get("queue"),
                          backend=record.get("backend"),
                          run_after=to_datetime(record.get("run_after")))
    except Exception:  # the settings changed since: the task as declared
        log.debug("task %s cannot be rebuilt as enqueued", path, exc_info=True)
        return task


def error_path(name: str) -> str:
    """A class path for an error that ivy reports by class name only (a task that never ran:
    refused, cancelled, timed out): ``ivy.errors.X`` or ``builtins.X`` when they have it."""
    import builtins

    for module, where in ((ivy.errors, "ivy.errors"), (builtins, "builtins")):
        found = getattr(module, name, None)
        if isinstance(found, type) and issubclass(found, BaseException):
            return f"{where}.{name}"
    return name


STATUSES = {"successful": SUCCESSFUL, "errored": FAILED,
            "cancelled": FAILED}


def build(result_id: str, alias: str, record: Record | None,
          note: Notification | None) -> TaskResult[Any]:
    """The Django ``TaskResult`` of ``result_id`` from its record and ivy's stored final
    notification (either may be missing, not both)."""
    if record is None and note is None:
        raise TaskResultDoesNotExist(result_id)
    record = record or {}
    task = task_of(record, note.name if note is not None else None)
    errors = [TaskError(exception_class_path=e["exception_class_path"],
                        traceback=e["traceback"]) for e in record.get("errors", [])]
    if note is not None and note.status != "successful" and note.error is not None and not any(
            e.get("attempt") == note.attempt for e in record.get("errors", [])):
        # failed outside the task's body (refused, cancelled, timed out): ivy's account
        errors.append(TaskError(
            exception_class_path=error_path(str(note.error.get("type") or "Error")),
            traceback=str(note.error.get("traceback") or note.error.get("message") or "")))
    if note is not None:
        status = STATUSES[note.status]
    else:
        status = RUNNING if record.get("state") == "RUNNING" else (
            READY)
    workers = list(record.get("worker_ids", []))
    if not workers and note is not None and note.worker:
        workers = [note.worker]
    enqueued = record.get("enqueued_at", id_time(result_id))
    finished = record.get("finished_at") if note is not None else None
    result: TaskResult[Any] = TaskResult(
        task=task, id=result_id, status=status, enqueued_at=to_datetime(enqueued),
        started_at=to_datetime(record.get("started_at")), finished_at=to_datetime(finished),
        last_attempted_at=to_datetime(record.get("last_attempted_at")),
        args=record.get("args", []), kwargs=record.get("kwargs", {}),
        backend=record.get("backend", alias),
        errors=errors, worker_ids=workers)
    if note is not None and note.status == "successful":
        object.__setattr__(result, "_return_value", note.result)
    return result
