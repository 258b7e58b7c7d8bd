"""What becomes of a delivery once its task ran, or when it cannot run at all: ack, retry or dead
letter, each after the outcome is recorded (docs/internals/workers.md)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from ivy.message import Message, Notification
from ivy.middleware import Pipeline
from ivy.queues.base import Delivery
from ivy.retries import POLICY
from ivy.task import Task
from ivy.worker.execution import Failure
from ivy.worker.outcomes import Recorder

log = logging.getLogger("ivy.worker")


class Settler:
    """Settles deliveries for the worker named ``worker``: records through ``recorder``, calls
    the retry and dead-letter hooks of ``middleware``, waits ``backoff(attempt)`` s to retry."""

    def __init__(self, middleware: Pipeline, backoff: Callable[[int], float],
                 recorder: Recorder, worker: str, *, dead_letter_failures: bool = True) -> None:
        self.middleware = middleware
        self.backoff = backoff
        self.recorder = recorder
        self.worker = worker
        self.dead_letter_failures = dead_letter_failures

    def succeeded(self, delivery: Delivery, message: Message, value: Any) -> None:
        self.recorder.record(message, Notification(
            message.id, "successful", message.name, result=value, attempt=message.attempt,
            worker=self.worker), then=delivery.ack)
        log.debug("task %s [%s] succeeded", message.name, message.id)

    def failed(self, delivery: Delivery, task: Task[Any, Any], message: Message,
               error: dict[str, str]) -> None:
        """Settle a run that failed with ``error``, as the task's retry policy judged it
        (``error.verdict`` when the executor made it: :mod:`ivy.retries`)."""
        middleware = self.middleware
        verdict = error.verdict if isinstance(error, Failure) else POLICY
        error = dict(error)
        if verdict.kind == "snooze":  # again later, not an attempt: the producer waits
            delay = verdict.delay or 0.0
            log.info("task %s [%s] snoozed for %.2f s", message.name, message.id, delay)
            if middleware:
                middleware.on_retry(message, error, delay)
            delivery.defer(delay)
            return
        if verdict.kind == "discard":  # errored at once: no retry, no dead letter
            self.recorder.record(message, self.recorder.errored(message, error),
                                 then=delivery.ack)
            log.info("task %s [%s] discarded: %s", message.name, message.id,
                     error["message"])
            return
        retries = task.max_retries if message.legacy else message.max_retries
        if verdict.kind != "final" and message.attempt < retries:
            delay = verdict.delay if verdict.delay is not None else (
                task.retry_policy.delay(message.attempt, self.backoff))
            log.warning("task %s [%s] failed (attempt %d of %d): %s: %s; retrying in %.2f s",
                        message.name, message.id, message.attempt + 1, retries + 1,
                        error["type"], error["message"], delay)
            if middleware:
                middleware.on_retry(message, error, delay)
            message.attempt += 1
            delivery.retry(delay, self.recorder.body(message))
            return
        if not retries or not self.dead_letter_failures:  # failed as often as asked: done
            self.recorder.record(message, self.recorder.errored(message, error),
                                 then=delivery.ack)
            log.log(logging.INFO if not retries else logging.ERROR,
                    "task %s [%s] failed after %d attempt(s): %s: %s", message.name,
                    message.id, message.attempt + 1, error["type"], error["message"])
            return
        reason = (f"task {message.name!r} failed {message.attempt + 1} times; last error "
                  f"{error['type']}: {error['message']}") if verdict.kind != "final" else (
            f"task {message.name!r} failed with {error['type']}, which its retry policy "
            f"does not retry: {error['message']}")

        def dead_letter() -> None:  # once the error is stored, never before (a crash in
            delivery.dead_letter(reason)  # between would leave a dead letter and no result)
            if middleware:
                middleware.on_dead_letter(message, reason)

        self.recorder.record(message, self.recorder.errored(message, error), then=dead_letter)
        log.error("task %s [%s] failed after %d attempts; dead-lettered: %s: %s",
                  message.name, message.id, message.attempt + 1, error["type"],
                  error["message"])

    def reject(self, delivery: Delivery, reason: str, fields: dict[str, Any],
               message: Message | None = None) -> None:
        """Dead-letter a message that cannot run, and tell its producer when we can: the dead
        letter follows the producer's notification once it is stored (or failed to be)."""
        log.error("worker %s: dead-lettering a message from %s: %s", self.worker,
                  delivery.queue, reason)
        middleware = self.middleware

        def dead_letter() -> None:
            delivery.dead_letter(reason)
            if middleware:
                middleware.on_dead_letter(message, reason)

        self.recorder.rejected(reason, fields, message, then=dead_letter)
