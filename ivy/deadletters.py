"""Dead-letter tools: list, show, requeue and purge the dead letters of a queue, on every backend,
from the API and ``ivy dead`` (docs/internals/workers.md, "Dead-letter tools")."""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from ivy.errors import MessageError
from ivy.message import decode_message
from ivy.queues.base import DeadLetter, QueueBackend
from ivy.serialization import Serializer, Signer, is_signed, seal, unwrap


class Source(Protocol):
    """What the dead-letter tools need of an app (:class:`ivy.Ivy`): its queue backend, and
    how it encodes and signs bodies."""

    @property
    def queue_backend(self) -> QueueBackend:
        """Where the dead letters are."""

    @property
    def serializer(self) -> Serializer:
        """How bodies are encoded."""

    @property
    def signer(self) -> Signer | None:
        """The key that signs bodies, if any."""

#: How many of the most recent dead letters are searched for a call id.
SEARCH_LIMIT = 1000
#: Characters of the arguments that ``ivy dead list`` shows.
ARGS_PREVIEW = 60


@dataclass(frozen=True, slots=True)
class DeadLetterInfo:
    """A dead letter with what could be read from its body (None where it could not)."""

    id: str
    """The backend's own handle for it, which ``requeue_dead`` takes (not the call id)."""
    queue: str
    """The queue it was dead-lettered from."""
    reason: str
    """Why it was set aside."""
    time: float
    """When it was set aside, in Unix seconds."""
    body: bytes
    """The message's body, as it was."""
    call_id: str | None = None
    """The call's id, read from the body."""
    name: str | None = None
    """The task's name, read from the body."""
    args: list[Any] | None = None
    """The call's positional arguments, read from the body."""
    kwargs: dict[str, Any] | None = None
    """The call's keyword arguments, read from the body."""
    attempt: int | None = None
    """The message's ``attempt`` field: retries before this run, counting from 0 (the
    attempt shown to people is this + 1; see :meth:`attempt_text`)."""
    max_retries: int | None = None
    """The message's ``max_retries``: it may run ``max_retries + 1`` times in all."""
    reply_to: str | None = None
    """The producer's channel the results go to, read from the body."""
    signed: bool = False
    """Whether the body is in a signature envelope (not whether the signature is valid)."""

    def args_preview(self, limit: int = ARGS_PREVIEW) -> str:
        """The first characters of the arguments as JSON (of the body when unreadable).

        Args:
            limit: the most characters; a longer text is cut and ends with ``...``.

        Returns:
            The arguments, as ``ivy dead list`` shows them.
        """
        if self.args is None:
            text = self.body.decode("utf-8", "backslashreplace")
        else:
            parts = [json.dumps(a, ensure_ascii=False) for a in self.args]
            parts += [f"{k}={json.dumps(v, ensure_ascii=False)}"
                      for k, v in (self.kwargs or {}).items()]
            text = ", ".join(parts)
        return text if len(text) <= limit else text[:limit - 3] + "..."

    def attempt_text(self) -> str:
        """"attempt N of M", counting from 1, as a failed task's reason ("failed N times")
        and ``ivy events`` ("attempt N") count: the run that led here was the N-th of at most
        M. "?" for an unreadable body.

        Returns:
            ``N of M``, ``N`` (no ``max_retries``) or ``?``.
        """
        if self.attempt is None:
            return "?"
        of = "" if self.max_retries is None else f" of {self.max_retries + 1}"
        return f"{self.attempt + 1}{of}"

    def to_dict(self, *, full: bool = False) -> dict[str, Any]:
        """JSON-ready: the fields ``ivy dead list --json`` prints.

        Args:
            full: add the arguments, ``reply_to``, ``signed`` and the body (as text).

        Returns:
            The fields, by name.
        """
        data: dict[str, Any] = {
            "id": self.id, "queue": self.queue, "call_id": self.call_id, "name": self.name,
            "reason": self.reason, "time": self.time, "attempt": self.attempt,
            "args_preview": self.args_preview()}
        if full:
            data.update(args=self.args, kwargs=self.kwargs, reply_to=self.reply_to,
                        signed=self.signed, body=self.body.decode("utf-8", "backslashreplace"))
        return data


def _peek(body: bytes, serializer: Serializer) -> dict[str, Any] | None:
    """The body's fields, read without verifying anything (a signed body's inner bytes are
    read unchecked): for display and for the priority only."""
    try:
        data = serializer.loads(unwrap(body, None))
    except (ValueError, TypeError, UnicodeDecodeError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


def describe(letter: DeadLetter, serializer: Serializer) -> DeadLetterInfo:
    """Read what can be read from a dead letter's body."""
    data = _peek(letter.body, serializer) or {}

    def field(key: str, kind: type | tuple[type, ...]) -> Any:
        value = data.get(key)
        return value if isinstance(value, kind) and not isinstance(value, bool) else None

    return DeadLetterInfo(
        id=letter.id, queue=letter.queue, reason=letter.reason, time=letter.time,
        body=letter.body, call_id=field("id", str), name=field("name", str),
        args=field("args", list), kwargs=field("kwargs", dict), attempt=field("attempt", int),
        max_retries=field("max_retries", int), reply_to=field("reply_to", str),
        signed=is_signed(letter.body))


def reset_attempt(body: bytes, serializer: Serializer,
                  signer: Signer | None) -> tuple[bytes, int | None]:
    """The body to requeue, and the priority it names: ``attempt`` set to 0 in a valid v1
    message (signed again when it was signed and verifies with ``signer``); any other body
    unchanged (docs/internals/workers.md, "Dead-letter tools")."""
    data = _peek(body, serializer)
    priority = data.get("priority") if data is not None else None
    if not isinstance(priority, int) or isinstance(priority, bool):
        priority = None
    signed = is_signed(body)
    if data is None or data.get("ivy") is None or not data.get("attempt") or (
            signed and signer is None):
        return body, priority
    try:
        message = decode_message(body, serializer, max_bytes=None, max_depth=None,
                                 signer=signer if signed else None)
    except MessageError:
        return body, priority
    message.attempt = 0
    new = message.encode(serializer)
    return seal(signer if signed else None, new), priority


# -- the API (the methods of Ivy delegate here) ----------------------------------------------

def dead_letters(app: Source, queue: str, limit: int = 100) -> list[DeadLetterInfo]:
    """The ``limit`` most recent dead letters of ``queue``, oldest first."""
    return [describe(d, app.serializer) for d in app.queue_backend.dead_letters(queue, limit)]


def find(app: Source, queue: str, ident: str) -> list[DeadLetterInfo]:
    """The dead letters of ``queue`` whose id or call id is ``ident`` (a call dead-lettered
    twice has two), among the ``SEARCH_LIMIT`` most recent."""
    return [d for d in dead_letters(app, queue, SEARCH_LIMIT) if ident in (d.id, d.call_id)]


def resolve(letters: Iterable[DeadLetterInfo], ids: Iterable[str]) -> list[str]:
    """Dead-letter ids for ``ids``, each a dead letter's id or a call id, looked up in
    ``letters``; an id matching neither is kept as it is (an older dead letter's id still
    works with the backend)."""
    known: set[str] = set()
    by_call: dict[str, list[str]] = {}
    for d in letters:
        known.add(d.id)
        if d.call_id is not None:
            by_call.setdefault(d.call_id, []).append(d.id)
    out: list[str] = []
    for ident in ids:
        out.extend([ident] if ident in known else by_call.get(ident, [ident]))
    return list(dict.fromkeys(out))


def requeue_dead(app: Source, queue: str, ids: Collection[str] | None = None) -> int:
    """Put dead letters of ``queue`` back on it with their attempts reset: those named by
    ``ids`` (dead-letter ids or call ids, looked up among the ``SEARCH_LIMIT`` most recent),
    or all of them; return how many."""
    if ids is None:
        return requeue_ids(app, queue, None)
    if not ids:
        return 0
    return requeue_ids(app, queue, resolve(dead_letters(app, queue, SEARCH_LIMIT), ids))


def requeue_ids(app: Source, queue: str, ids: list[str] | None) -> int:
    """Put the dead letters of ``queue`` with exactly these ids (all when None) back on it,
    attempts reset; return how many."""
    signer, serializer = app.signer, app.serializer
    return app.queue_backend.requeue_dead(
        queue, ids, rewrite=lambda body: reset_attempt(body, serializer, signer))


def purge_dead(app: Source, queue: str) -> int:
    """Delete every dead letter of ``queue``; return how many."""
    return app.queue_backend.purge_dead(queue)


# -- ivy dead ----------------------------------------------------------------------------


__all__ = ["DeadLetterInfo", "dead_letters", "describe", "find", "purge_dead", "requeue_dead",
           "reset_attempt", "resolve"]
