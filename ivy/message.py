"""Wire protocol v1: :class:`Message` (producer -> worker) and :class:`Notification` (worker ->
producer), encoded with a serializer and validated against the JSON Schemas in ``ivy/schemas``;
PROTOCOL.md describes them."""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import fastjsonschema

from ivy import _clock, schemas
from ivy.errors import MessageError, MessageTooLarge, SerializationError
from ivy.serialization import Serializer, Signer, check_arguments, unwrap

PROTOCOL_VERSION = 1
"""The wire protocol version this ivy speaks: every message's and notification's ``ivy``
field (PROTOCOL.md)."""
STATUSES = ("scheduled", "running", "progress", "successful", "errored", "cancelled")
FINAL_STATUSES = frozenset({"successful", "errored", "cancelled"})
Status = Literal["scheduled", "running", "successful", "errored", "cancelled", "done"]

#: Default cap on an encoded message or notification; ``Ivy(max_message_bytes=...)`` changes it.
DEFAULT_MAX_MESSAGE_BYTES = 1024 * 1024
#: Default cap on how deeply arguments and results may nest; ``Ivy(max_depth=...)``.
DEFAULT_MAX_DEPTH = 64
#: The largest ``attempt`` and ``max_retries`` a message may carry (schema ``message-v1``).
MAX_RETRIES = 10_000
#: The latest ``eta`` (and ``created_ms``, ``unique_until``) a message may carry, in Unix ms:
#: 2**53 - 1, exact in the number type of every JSON reader (some 285,000 years from now).
MAX_TIMESTAMP_MS = 2**53 - 1
#: What a worker publishes notifications to: ``reply_to`` (and a workflow's ``reply_to``)
#: must be a producer's channel, ``ivy:notify:`` and an id of 1 to 64 letters, digits, ``_``
#: or ``-`` (ivy's own: 32 hex digits, see :func:`new_id`). Anything else is refused: on
#: RabbitMQ the channel is the name of a queue the worker declares and publishes to, and a
#: name of the broker's (``amq.*``), too long (over 255 bytes) or of a work queue would break
#: the worker's notify connection or feed notification JSON into another queue.
CHANNEL_PATTERN = re.compile(r"ivy:notify:[A-Za-z0-9_-]{1,64}")
#: The message field that binds a call's result to its producer: random, set by the producer,
#: echoed by the worker in every notification of the call; a producer drops a final
#: notification of a call it sent with a nonce unless it carries the same one.
NONCE = "nonce"
#: the longest nonce a worker echoes (ivy's own: 20 hex digits, 80 random bits)
MAX_NONCE_CHARS = 64


def new_nonce() -> str:
    """80 random bits in 20 hex digits, from the same pools as call ids (:func:`new_id`)."""
    return new_id()[12:]


def nonce_of(data: Any) -> str | None:
    """The nonce a message (or a decoded body's dict) carries, if it is a short string."""
    extra = data.extra if isinstance(data, Message) else data
    value = extra.get(NONCE) if isinstance(extra, dict) else None
    return value if isinstance(value, str) and 0 < len(value) <= MAX_NONCE_CHARS else None


#: the shipped schema that :func:`decode_message` validates a message against
MESSAGE_SCHEMA = "message-v1"


def load_schema(name: str) -> dict[str, Any]:
    """Return a shipped schema: ``message-v1``, ``message-legacy`` or ``notification-v1``."""
    return schemas.load(name)


_validators: dict[str, Callable[[Any], Any]] = {}


def _validator(name: str) -> Callable[[Any], Any]:
    """The validator of a shipped schema: the module fastjsonschema compiled it to ahead of
    time (:mod:`ivy.schemas`), imported on first use (threads asking at once import it once,
    under the import system's lock)."""
    validate = _validators.get(name)
    if validate is None:
        validate = _validators[name] = schemas.validator(name)
    return validate


def compile_message_validator() -> None:
    """Load the validator :func:`decode_message` uses now, on this thread: a worker does, before
    its executor threads start (see :func:`_validator`)."""
    _validator(MESSAGE_SCHEMA)


#: random bytes of one id, and ids read from the OS at once (see :func:`new_id`)
_ID_BYTES = 10
_IDS_PER_READ = 256


class _IdSource:
    """Random bytes from ``os.urandom``, read 256 ids at a time, a pool per thread (no lock:
    a thread refilling its pool holds up no other). ``os.urandom`` lets go of the GIL for its
    system call, and a producer thread that lets go of it waits to get it back behind
    whatever else runs (the connection's I/O thread handling a confirm, the notification
    thread): once per ``delayed_call``, before its publish. The bytes are the same OS
    randomness; a forked child starts with none of its parent's (ids are never shared
    between processes)."""

    def __init__(self) -> None:
        self.local = threading.local()

    def take(self) -> str:
        local = self.local
        pool: bytes = getattr(local, "pool", b"")
        at: int = getattr(local, "at", 0)
        if at >= len(pool):
            local.pool = pool = os.urandom(_ID_BYTES * _IDS_PER_READ)
            at = 0
        local.at = at + _ID_BYTES
        return f"{time.time_ns() // 1_000_000:012x}{pool[at:at + _ID_BYTES].hex()}"


_ids = _IdSource()


def _forget_ids_in_child() -> None:
    global _ids
    _ids = _IdSource()  # the parent's pools stay behind, unused


os.register_at_fork(after_in_child=_forget_ids_in_child)


def new_id() -> str:
    """A call id of 32 hex digits: the time in Unix milliseconds (12 digits), then 80
    random bits (from ``os.urandom``). Ids sent later sort later (to the millisecond), so
    that a store keyed by call id (the SQLite notifier's index of results) appends instead of
    writing a random page of its index per result: a worker's CPU per task fell 66-69 -> 62-64
    us on SQLite. 80 random bits per millisecond keep ids unique and unguessable."""
    return _ids.take()


def now_ms() -> int:
    """Unix milliseconds: the clock of the times a message carries (``ivy._clock.wall``,
    which :class:`ivy.testing.FakeClock` may drive)."""
    return int(_clock.wall() * 1000)


@dataclass(slots=True)
class Message:
    """One call of a task, as it travels through a queue."""

    id: str
    name: str
    args: list[Any]
    kwargs: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    queue: str | None = None
    reply_to: str | None = None
    attempt: int = 0
    max_retries: int = 0
    priority: int = 0
    eta: int | None = None
    created_ms: int | None = None
    legacy: bool = False
    #: context that travels with the call (W3C ``traceparent`` / ``tracestate`` from the
    #: OpenTelemetry middleware, or a middleware's own); string values; kept across retries
    headers: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The message as the JSON object of PROTOCOL.md (the original's form for a legacy
        message).

        Returns:
            The fields, core ones and extra ones, ready for a serializer.
        """
        if self.legacy:
            return {"name": self.name, "options": self.options, "args": self.args}
        data = dict(self.extra)
        data.update(
            ivy=PROTOCOL_VERSION, id=self.id, name=self.name, args=self.args,
            kwargs=self.kwargs, options=self.options, queue=self.queue,
            reply_to=self.reply_to, attempt=self.attempt, max_retries=self.max_retries,
            priority=self.priority, eta=self.eta, created_ms=self.created_ms,
        )
        if self.headers:
            data["headers"] = self.headers
        return data

    def encode(self, serializer: Serializer) -> bytes:
        """The message's body, as sent.

        Args:
            serializer: The app's serializer (JSON unless configured).

        Returns:
            The encoded body (not signed: the producer seals it).

        Raises:
            ivy.SerializationError: A value the serializer cannot encode.
        """
        return serializer.dumps(self.to_dict())


_MESSAGE_KEYS = frozenset(
    ("ivy", "id", "name", "args", "kwargs", "options", "queue", "reply_to", "attempt",
     "max_retries", "priority", "eta", "created_ms", "headers")
)


def is_channel(name: object) -> bool:
    """Whether ``name`` is a notification channel a worker may publish to
    (:data:`CHANNEL_PATTERN`)."""
    return isinstance(name, str) and CHANNEL_PATTERN.fullmatch(name) is not None


def _readable_fields(data: Any) -> dict[str, Any]:
    """What can be read from an invalid body to address an errored notification: never a
    ``reply_to`` that is not a channel (:func:`is_channel`)."""
    if not isinstance(data, dict):
        return {}
    fields = {k: data[k] for k in ("id", "name") if isinstance(data.get(k), str)}
    if is_channel(data.get("reply_to")):
        fields["reply_to"] = data["reply_to"]
    nonce = nonce_of(data)
    if nonce is not None:
        fields[NONCE] = nonce
    return fields


#: in a :class:`MessageError`'s fields: they were read from a body whose signature was refused
UNVERIFIED = "unverified"


def unverified_fields(body: bytes, serializer: Serializer) -> dict[str, Any]:
    """What addresses a refusal of a body whose signature check failed (unsigned, another
    key, altered): its ``id``, ``reply_to`` and ``nonce``, read unverified, with
    ``UNVERIFIED`` set; empty unless all three are there. The nonce is what makes telling the
    producer safe: only the producer of the call (or a reader of its queue) knows it, so a
    forged body cannot fail another's call (PROTOCOL.md, "Signing")."""
    try:
        data = serializer.loads(unwrap(body, None))
    except (ValueError, UnicodeDecodeError, RecursionError, TypeError):
        return {}
    fields = _readable_fields(data)
    if not {"id", "reply_to", NONCE} <= fields.keys():
        return {}
    return {**fields, UNVERIFIED: True}


def _check_channels(data: dict[str, Any]) -> None:
    """Refuse a message whose ``reply_to`` or ``workflow.reply_to`` is not a channel."""
    flow = data.get("workflow")
    for what, value in (("reply_to", data.get("reply_to")),
                        ("workflow.reply_to", flow.get("reply_to") if isinstance(
                            flow, dict) else None)):
        if value is not None and not is_channel(value):
            shown = value if len(value) <= 80 else value[:77] + "..."
            raise MessageError(
                f"{what} {shown!r} is not a notification channel (ivy:notify: and 1 to 64 "
                "letters, digits, '_' or '-')", _readable_fields(data))


def depth(value: Any) -> int:
    """How deeply lists and objects nest in ``value`` (a scalar is 0), without recursion."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        item, level = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(
            item, list) else None
        if children is None:
            continue
        deepest = max(deepest, level)
        stack.extend((c, level + 1) for c in children if isinstance(c, (dict, list)))
    return deepest


def deeper_than(body: bytes, value: Any, limit: int) -> bool:
    """Whether ``value``, whose containers all appear as brackets in its encoding ``body``,
    nests deeper than ``limit``. A body with no more brackets than the limit cannot, so the
    walk is skipped (the common case: counting bytes runs in C)."""
    return body.count(b"[") + body.count(b"{") > limit and depth(value) > limit


def _loads(body: bytes, serializer: Serializer, max_bytes: int | None, what: str,
           signer: Signer | None, max_depth: int | None) -> Any:
    if max_bytes is not None and len(body) > max_bytes * 2 + 1024:  # room for a signature
        raise MessageError(f"{what} of {len(body)} bytes is over the limit of {max_bytes} bytes")
    try:
        body = unwrap(body, signer)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        fields = unverified_fields(body, serializer) if signer is not None else {}
        raise MessageError(f"{what} refused: {exc}", fields) from None
    if max_bytes is not None and len(body) > max_bytes:
        raise MessageError(f"{what} of {len(body)} bytes is over the limit of {max_bytes} bytes")
    try:
        data = serializer.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError, TypeError) as exc:
        raise MessageError(f"{what} is not valid {serializer.name}: {exc}") from None
    if max_depth is not None and deeper_than(body, data, max_depth + 2):  # +2: the envelope
        raise MessageError(f"{what} nests deeper than the limit of {max_depth} levels",
                           _readable_fields(data))
    return data


def _validate(schema: str, data: Any, what: str) -> None:
    try:
        _validator(schema)(data)
    except fastjsonschema.JsonSchemaException as exc:
        raise MessageError(f"{what} does not match {schema}: {exc}",
                           _readable_fields(data)) from None
    except RecursionError:
        raise MessageError(f"{what} is nested too deeply", _readable_fields(data)) from None


def decode_message(
    body: bytes, serializer: Serializer, *, max_bytes: int | None = DEFAULT_MAX_MESSAGE_BYTES,
    max_depth: int | None = DEFAULT_MAX_DEPTH, signer: Signer | None = None,
) -> Message:
    """Decode, verify (with a signer) and validate a message body; raise
    :class:`MessageError` with the reason."""
    data = _loads(body, serializer, max_bytes, "message", signer, max_depth)
    if not isinstance(data, dict):
        raise MessageError(f"message is a JSON {type(data).__name__}, not an object")
    if "ivy" not in data:
        _validate("message-legacy", data, "legacy message")
        return Message(id=new_id(), name=data["name"], args=data["args"],
                       options=data.get("options", {}), legacy=True)
    version = data["ivy"]
    if version != PROTOCOL_VERSION:
        raise MessageError(
            f"unsupported protocol version {version!r}: this worker speaks version "
            f"{PROTOCOL_VERSION}", _readable_fields(data),
        )
    _validate(MESSAGE_SCHEMA, data, "message")
    _check_channels(data)
    return Message(
        id=data["id"], name=data["name"], args=data["args"], kwargs=data.get("kwargs", {}),
        options=data.get("options", {}), queue=data.get("queue"), reply_to=data.get("reply_to"),
        attempt=data.get("attempt", 0), max_retries=data.get("max_retries", 0),
        priority=data.get("priority", 0), eta=data.get("eta"), created_ms=data.get("created_ms"),
        headers=data.get("headers") or {},
        extra={k: v for k, v in data.items() if k not in _MESSAGE_KEYS},
    )


@dataclass(slots=True)
class Notification:
    """A task status sent back to the producer; final when successful, errored or
    cancelled."""

    id: str
    status: str
    name: str | None = None
    result: Any = None
    error: dict[str, str] | None = None
    attempt: int = 0
    worker: str | None = None
    #: the call's nonce, echoed from its message (absent when the message had none)
    nonce: str | None = None
    #: a ``progress`` status's ``{"fraction": 0..1, "note": text or null}`` (ivy.current())
    progress: dict[str, Any] | None = None

    @property
    def final(self) -> bool:
        return self.status in FINAL_STATUSES

    def to_dict(self) -> dict[str, Any]:
        """The notification as the JSON object of PROTOCOL.md.

        Returns:
            Its fields, ready for a serializer.
        """
        data = {
            "ivy": PROTOCOL_VERSION, "id": self.id, "name": self.name, "status": self.status,
            "result": self.result, "error": self.error, "attempt": self.attempt,
            "worker": self.worker,
        }
        if self.nonce is not None:
            data[NONCE] = self.nonce
        if self.progress is not None:
            data["progress"] = self.progress
        return data

    def encode(self, serializer: Serializer) -> bytes:
        """The notification's body, as published.

        Args:
            serializer: The app's serializer (JSON unless configured).

        Returns:
            The encoded body (not signed: the worker seals it).

        Raises:
            ivy.SerializationError: A value the serializer cannot encode; for a result, the
                error says which task returned it.
        """
        try:
            return serializer.dumps(self.to_dict())
        except SerializationError as exc:
            if self.status != "successful":
                raise
            raise SerializationError(
                f"the result of task {self.name!r} cannot be sent as {serializer.name}: {exc}. "
                "Return only JSON types (str, int, float, bool, None, list, dict)"
            ) from None


def decode_notification(
    body: bytes, serializer: Serializer, *, max_bytes: int | None = DEFAULT_MAX_MESSAGE_BYTES,
    max_depth: int | None = DEFAULT_MAX_DEPTH, signer: Signer | None = None,
) -> Notification:
    """Decode, verify (with a signer) and validate a notification body; raise
    :class:`MessageError` with the reason."""
    data = _loads(body, serializer, max_bytes, "notification", signer, max_depth)
    if not isinstance(data, dict):
        raise MessageError(f"notification is a JSON {type(data).__name__}, not an object")
    if data.get("ivy") != PROTOCOL_VERSION:
        raise MessageError(f"unsupported notification protocol version {data.get('ivy')!r}")
    _validate("notification-v1", data, "notification")
    return Notification(
        id=data["id"], status=data["status"], name=data.get("name"), result=data.get("result"),
        error=data.get("error"), attempt=data.get("attempt", 0), worker=data.get("worker"),
        nonce=nonce_of(data), progress=data.get("progress"),
    )


def wire_error(kind: str, message: str = "", traceback: str = "") -> dict[str, str]:
    """The ``error`` of a notification (PROTOCOL.md): the exception's type name, its message
    and its traceback, plain strings only."""
    return {"type": kind, "message": message, "traceback": traceback}


def peek_id(body: bytes, serializer: Serializer, max_bytes: int) -> str | None:
    """The ``id`` of a body that failed to decode, read without verifying anything (a signed
    body's inner bytes are read unchecked), or None. For diagnostics only: the producer notes
    why a notification for one of its calls was turned away, and trusts nothing else in it."""
    if len(body) > max_bytes * 2 + 1024:
        return None
    try:
        data = serializer.loads(unwrap(body, None))
    except (ValueError, UnicodeDecodeError, RecursionError, TypeError):
        return None
    call_id = data.get("id") if isinstance(data, dict) else None
    return call_id if isinstance(call_id, str) else None


def encode_call(message: Message, serializer: Serializer, *, max_depth: int,
                max_bytes: int) -> bytes:
    """Encode a call for the wire, refusing what no worker would take: arguments that are not
    JSON (the error names the argument), nesting deeper than ``max_depth``, a body over
    ``max_bytes``."""
    try:
        body = message.encode(serializer)
    except SerializationError:
        check_arguments(serializer, tuple(message.args), message.kwargs, message.name)
        raise
    # [args, kwargs] adds one level, which the envelope's own bracket in body covers
    if deeper_than(body, [message.args, message.kwargs], max_depth + 1):
        raise SerializationError(
            f"the arguments of the call to {message.name!r} nest deeper than {max_depth} "
            "levels: flatten them, or raise Ivy(max_depth=...)")
    if len(body) > max_bytes:
        raise MessageTooLarge(
            f"the call to {message.name!r} is {len(body)} bytes once encoded, over the limit "
            f"of {max_bytes} bytes: pass a reference (a URL, a key) instead of the data, or "
            "raise Ivy(max_message_bytes=...)")
    return body
