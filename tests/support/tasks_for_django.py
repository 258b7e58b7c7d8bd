"""Django tasks of tests/app/test_django.py: imported once Django is configured (the ``@task``
decorator checks each task against its backend)."""

from __future__ import annotations

import threading
from typing import Any

import ivy

try:  # Django 6
    from django.tasks import task
except ImportError:  # Django 4.2-5.x: the backport
    from django_tasks import task

#: labels of record() calls, in the order they ran
ran: list[str] = []
_lock = threading.Lock()


@task()
def add(a: int, b: int) -> int:
    """a + b."""
    return a + b


@task()
def pair(a: int, b: int) -> tuple[int, int]:
    """A tuple, which Django's result holds as a list."""
    return (a, b)


@task()
def fail(message: str) -> None:
    """Raise ValueError(message)."""
    raise ValueError(message)


@task()
async def async_add(a: int, b: int) -> int:
    """a + b, as a coroutine."""
    return a + b


@task(takes_context=True)
def flaky(context: Any, fail_before: int) -> dict[str, Any]:
    """Fail until attempt ``fail_before``; then what the context and ivy say."""
    if context.attempt < fail_before:
        raise RuntimeError(f"attempt {context.attempt} fails")
    return {"attempt": context.attempt, "ivy_attempt": ivy.current().attempt,
            "result_id": context.task_result.id, "workers": len(context.task_result.worker_ids)}


@task(takes_context=True)
async def async_context(context: Any) -> int:
    """The attempt, seen from a coroutine."""
    return int(context.attempt)


@task(queue_name="low")
def record(label: str) -> str:
    """Note that ``label`` ran."""
    with _lock:
        ran.append(label)
    return label
