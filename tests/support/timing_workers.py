"""Worker and scheduler processes for the timing tests (module ``tasks_for_timing``)."""

from __future__ import annotations

import os

from workers import WorkerProcess, launch, producer_with

import ivy


def start(command: str, queue_url: str, notifier_url: str, *extra: str,
          env: dict[str, str] | None = None, ready: str = "listening on") -> WorkerProcess:
    """Start ``python -m ivy <command> tasks_for_timing`` and return once its output shows
    ``ready``."""
    return launch([command, "tasks_for_timing", "--queue-url", queue_url, "--notifier-url",
                   notifier_url, *extra], {**os.environ, **(env or {})}, ready, command)


def producer(queue_url: str, notifier_url: str) -> ivy.Ivy:
    """A producer that registers the timing.* tasks."""
    import tasks_for_timing  # noqa: F401 - registers them on ivy.default

    return producer_with(queue_url, notifier_url, "timing.")
