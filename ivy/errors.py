"""The exception hierarchy: every error ivy raises on purpose is an :class:`IvyError`."""

from __future__ import annotations

from typing import Any


class IvyError(Exception):
    """Base class of every error raised by ivy."""


class ConfigurationError(IvyError, ValueError):
    """A backend URL, dict or option is not one ivy understands; the message lists what is."""


class TaskNotRegistered(IvyError, LookupError):
    """A task name (or function) is not in the registry of this process."""

    def __str__(self) -> str:  # LookupError would quote the message
        return str(self.args[0]) if self.args else ""


class SerializationError(IvyError, TypeError):
    """A value cannot travel as JSON (or the configured serializer)."""


class MessageTooLarge(SerializationError, ValueError):
    """An encoded call is over the size the queue backend (or ``max_message_bytes``) allows."""


class MessageError(IvyError, ValueError):
    """A message or notification body is not valid protocol v1; ``reason`` says why.

    ``fields`` holds what could still be read from the body (``id``, ``name``, ``reply_to``),
    so the worker can send an ``errored`` notification for a message it cannot run.

    Args:
        reason: why the body is not valid.
        fields: what could still be read from it; None: nothing.
    """

    def __init__(self, reason: str, fields: dict[str, Any] | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        """Why the body is not valid protocol v1."""
        self.fields: dict[str, Any] = fields or {}
        """What could still be read from the body (``id``, ``name``, ``reply_to``)."""


class ResultTimeout(IvyError, TimeoutError):
    """Waiting for a call's result ran out of time; the call may still complete later."""


class TaskTimeout(IvyError, TimeoutError):
    """Raised inside a task that ran past its ``timeout`` (reported as ``TimeoutError``)."""


class RemoteTaskError(IvyError):
    """A task failed on a worker.

    ``type``, ``message`` and ``traceback`` are plain strings copied from the notification: the
    producer never imports or calls anything named on the wire.

    Args:
        type: the name of the exception the task raised.
        message: its message.
        traceback: the worker's formatted traceback.
        task: the task's name, when known.
        call_id: the call's id, when known.
    """

    def __init__(
        self,
        type: str,
        message: str,
        traceback: str = "",
        *,
        task: str | None = None,
        call_id: str | None = None,
    ) -> None:
        super().__init__(f"{type}: {message}" if message else type)
        self.type = type
        """The name of the exception the task raised (``ValueError``, say)."""
        self.message = message
        """Its message."""
        self.traceback = traceback
        """The worker's formatted traceback, or an empty string."""
        self.task = task
        """The task's name, when known."""
        self.call_id = call_id
        """The call's id, when known."""

    @classmethod
    def from_wire(
        cls, error: Any, *, task: str | None = None, call_id: str | None = None
    ) -> RemoteTaskError:
        """Build from a notification's ``error`` field, whatever shape it arrived in.

        Args:
            error: the field: a dict with ``type``, ``message`` and ``traceback``, or anything
                else (its text becomes the message of an ``Error``).
            task: the task's name, when known.
            call_id: the call's id, when known.

        Returns:
            The error, with plain strings only.
        """
        if isinstance(error, dict):
            return cls(
                str(error.get("type") or "Error"),
                str(error.get("message") or ""),
                str(error.get("traceback") or ""),
                task=task,
                call_id=call_id,
            )
        return cls("Error", "" if error is None else str(error), task=task, call_id=call_id)


class PublishError(IvyError):
    """The queue backend did not take a message: the broker refused it, did not confirm it in
    time, or the send failed. A call whose message was not taken fails with this error (its
    callbacks get it as ``err``; ``result()`` and ``sent()`` raise it)."""


class QueueMismatch(ConfigurationError, PublishError):
    """A queue exists on the broker with other arguments than ivy declares it with (AMQP 406
    PRECONDITION_FAILED), e.g. a classic queue where ``queue_type=quorum`` wants a quorum
    queue. The message names the queue, the broker's words and the fix. Raised by ``listen``
    (a worker's consume) and given to the calls sent to that queue (it is a PublishError)."""


class TransactionRolledBack(PublishError):
    """A call sent inside the application's own database transaction (``send_task(...,
    connection=conn)``, ``with app.transaction(conn)``) was not enqueued: that transaction
    rolled back (or the block raised before the rows were written), so workers never see it."""


class PublishTimeout(PublishError, TimeoutError):
    """``call.sent(timeout)`` or ``ivy.flush(timeout)`` ran out of time: the message may still
    be confirmed later."""


class TaskCancelled(IvyError):
    """Raised inside a plain-function task whose call was cancelled while it ran (as
    :class:`TaskTimeout` is for timeouts): the worker reports the call ``cancelled``."""


class CallCancelled(RemoteTaskError):
    """``result()`` of a cancelled call raises this (its status is ``cancelled``); callbacks
    get it as ``err``. A :class:`RemoteTaskError` of type ``CallCancelled``."""


def _seconds(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
            0 <= value < float("inf")):
        raise ConfigurationError(f"{what} {value!r} must be a number of seconds >= 0")
    return float(value)


class Retry(IvyError):
    """Raise inside a task to run the call again, counting an attempt: after ``delay``
    seconds, or after the task's backoff when None. Once the call has used its
    ``max_retries`` it fails as any other exception would (see :mod:`ivy.retries`).

    Args:
        delay: seconds before the next run; None: the task's backoff.

    Raises:
        ivy.ConfigurationError: a ``delay`` that is not a number of seconds >= 0.
    """

    def __init__(self, delay: float | None = None) -> None:
        self.delay = None if delay is None else _seconds(delay, "Retry delay")
        """Seconds before the next run, or None: the task's backoff."""
        super().__init__("retry" if delay is None else f"retry in {self.delay:g} s")


class Snooze(IvyError):
    """Raise inside a task to run the call again after ``delay`` seconds without counting
    an attempt (something it needs is not ready yet); the producer keeps waiting.

    Args:
        delay: seconds before the next run.

    Raises:
        ivy.ConfigurationError: a ``delay`` that is not a number of seconds >= 0.
    """

    def __init__(self, delay: float) -> None:
        self.delay = _seconds(delay, "Snooze delay")
        """Seconds before the next run."""
        super().__init__(f"snoozed for {self.delay:g} s")


class Discard(IvyError):
    """Raise inside a task to end the call as errored at once, with ``reason``: no retry and
    no dead letter (the call is known to be pointless, such as an order already cancelled).

    Args:
        reason: why the call is pointless; the exception's message (empty: ``discarded``).
    """

    def __init__(self, reason: str = "") -> None:
        self.reason = reason
        """Why the call was discarded."""
        super().__init__(reason or "discarded")
