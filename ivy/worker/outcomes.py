"""What a worker tells a producer: ``running`` statuses (best effort) and final outcomes, kept
within the producer's limits (docs/internals/results.md)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from ivy.context import Progress
from ivy.errors import SerializationError
from ivy.message import (
    NONCE,
    UNVERIFIED,
    Message,
    Notification,
    deeper_than,
    is_channel,
    nonce_of,
    wire_error,
)
from ivy.notifiers.base import Notifier
from ivy.serialization import Serializer, Signer, seal
from ivy.timing import keys

log = logging.getLogger("ivy.worker")

RECORD_ATTEMPTS = 5
#: An error whose notification would be over ``max_message_bytes`` travels with its message
#: and traceback shortened to these many characters.
ERROR_MESSAGE_CHARS = 8_000
ERROR_TRACEBACK_CHARS = 16_000


class Recorder:
    """Encodes and publishes the notifications of one worker (named ``worker`` in them)."""

    def __init__(self, notifier: Notifier | None, worker: str, *, serializer: Serializer,
                 signer: Signer | None, max_message_bytes: int, max_depth: int) -> None:
        self.notifier = notifier
        self.worker = worker
        self.serializer = serializer
        self.signer = signer
        self.max_message_bytes = max_message_bytes
        self.max_depth = max_depth

    def body(self, item: Message | Notification) -> bytes:
        """Encode a message or notification for the wire, signed when a key is configured."""
        return self._seal(item.encode(self.serializer))

    def errored(self, message: Message, error: dict[str, str]) -> Notification:
        return Notification(message.id, "errored", message.name, error=error,
                            attempt=message.attempt, worker=self.worker,
                            nonce=nonce_of(message))

    def running(self, message: Message) -> None:
        """Publish the ``running`` status of ``message``: best effort (not final, not
        stored), a failure is logged."""
        if message.reply_to and self.notifier is not None:
            note = Notification(message.id, "running", message.name, attempt=message.attempt,
                                worker=self.worker, nonce=nonce_of(message))
            try:
                self.notifier.publish(message.reply_to, message.id, self.body(note),
                                      final=False)
            except Exception:
                log.warning("publishing status %r of %s failed", note.status, message.id,
                            exc_info=True)

    def progress(self, message: Message, update: Progress) -> None:
        """Publish a ``progress`` status of ``message`` (``ivy.current().progress``): not
        final, not stored; raises what publishing raises (the context logs it)."""
        if message.reply_to and self.notifier is not None:
            note = Notification(message.id, "progress", message.name, attempt=message.attempt,
                                worker=self.worker, nonce=nonce_of(message),
                                progress={"fraction": update.fraction, "note": update.note})
            self.notifier.publish(message.reply_to, message.id, self.body(note), final=False)

    def record(self, message: Message, note: Notification,
               then: Callable[[], None] | None = None) -> None:
        """Publish a final notification, retrying a few times; raise if it cannot be done.
        ``then`` (the worker's ack) is called once it is stored: here, or later from the
        notifier's own thread when it stores in the background
        (:meth:`ivy.notifiers.base.Notifier.publish_then`)."""
        at_once = note.status == "cancelled"
        if not message.reply_to:
            keys.release(self.notifier, message, at_once=at_once)
            if then is not None:
                then()
            return
        if self.notifier is None:
            raise RuntimeError("no notifier: call start_notification_producer() before listen()")
        body = self.final_body(message, note)
        notifier = self.notifier
        stored = False

        def after() -> None:
            nonlocal stored
            stored = True  # what then() raises is not a failure to publish
            keys.release(notifier, message, at_once=at_once)
            if then is not None:
                then()

        for attempt in range(RECORD_ATTEMPTS):
            try:
                notifier.publish_then(message.reply_to, message.id, body, final=True,
                                      then=after, nonce=nonce_of(message))
                return
            except Exception:
                if stored or attempt == RECORD_ATTEMPTS - 1:
                    raise
                log.warning("publishing the outcome of %s failed; trying again", message.id,
                            exc_info=True)
                time.sleep(min(0.1 * 2 ** attempt, 2.0))

    def rejected(self, reason: str, fields: dict[str, Any], message: Message | None = None,
                 then: Callable[[], None] | None = None) -> None:
        """Tell the producer of a dead-lettered message why, when its ``reply_to`` and ``id``
        could be read (``fields``); a failure is logged. ``then`` (the dead letter) follows
        once the notification is stored, or at once when there is none to send or sending it
        failed. A decoded ``message`` lets go of its unique key (a rejected call never runs:
        the next send of its key sends again)."""
        if message is not None:
            keys.release(self.notifier, message, at_once=True)
        reply_to, call_id = fields.get("reply_to"), fields.get("id")
        # a reply_to that is not a channel is never published to (ivy.message.is_channel)
        if self.notifier is None or not is_channel(reply_to) or not isinstance(call_id, str):
            if then is not None:
                then()
            return
        note = Notification(call_id, "errored", fields.get("name"), worker=self.worker,
                            error=wire_error("MessageRejected", reason),
                            nonce=fields.get(NONCE))
        if fields.get(UNVERIFIED):
            # a body whose signature was refused: its producer is told live only, never in
            # the store, so that a forged body cannot take the place of the call's result
            try:
                self.notifier.publish(str(reply_to), call_id, self.body(note), final=False)
            except Exception:
                log.warning("worker: telling the producer of refused message %s why failed",
                            call_id, exc_info=True)
            if then is not None:
                then()
            return
        followed = False

        def after() -> None:
            nonlocal followed
            followed = True
            if then is not None:
                then()

        try:
            self.notifier.publish_then(str(reply_to), call_id, self.body(note), final=True,
                                       then=after, nonce=note.nonce)
        except Exception:
            if followed:  # the dead letter itself failed: the message comes back
                raise
            log.exception("worker: notifying the producer of rejected message %s failed",
                          call_id)
            after()

    def final_body(self, message: Message, note: Notification) -> bytes:
        """Encode a final notification within the limits its producer applies when decoding
        (docs/internals/results.md). The note carries the message's nonce, whoever made it."""
        note.nonce = nonce_of(message)
        try:
            encoded = note.encode(self.serializer)
        except SerializationError as exc:
            note = self.errored(message, wire_error("SerializationError", str(exc)))
            encoded = note.encode(self.serializer)
        limit = self.max_message_bytes
        if note.status == "successful":
            error: dict[str, str] | None = None
            if len(encoded) > limit:
                error = wire_error("ResultTooLarge", (
                    f"the result of task {message.name!r} is {len(encoded)} bytes once encoded, "
                    f"over the limit of {limit} bytes: store the data elsewhere "
                    "and return a reference to it (a URL, a key), or raise "
                    "Ivy(max_message_bytes=...) on the producer and the worker"))
            # [result] adds the level that the notification's own bracket adds in encoded
            elif deeper_than(encoded, [note.result], self.max_depth + 1):
                error = wire_error("ResultTooDeep", (
                    f"the result of task {message.name!r} nests deeper than {self.max_depth} "
                    "levels: flatten it, or raise Ivy(max_depth=...) on the producer and the "
                    "worker"))
            if error is not None:
                log.error("task %s [%s]: %s", message.name, message.id, error["message"])
                note = self.errored(message, error)
                encoded = note.encode(self.serializer)
        if len(encoded) > limit and note.error is not None:
            error = {k: str(v) for k, v in note.error.items()}
            error["message"] = _shorten(error.get("message", ""), ERROR_MESSAGE_CHARS)
            error["traceback"] = _shorten(error.get("traceback", ""), ERROR_TRACEBACK_CHARS)
            note = self.errored(message, error)
            encoded = note.encode(self.serializer)
        return self._seal(encoded)

    def _seal(self, body: bytes) -> bytes:
        return seal(self.signer, body)


def _shorten(text: str, limit: int) -> str:
    """``text`` cut to about ``limit`` characters, keeping its start and its end (where a
    traceback names the failing line)."""
    if len(text) <= limit:
        return text
    half = limit // 2
    return f"{text[:half]}\n... ({len(text) - 2 * half} characters left out) ...\n{text[-half:]}"
