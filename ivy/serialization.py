"""Serializers for message and notification bodies: strict JSON through the standard library by
default, msgpack as an extra, never pickle; and signing (docs/internals/core.md)."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import math
import os
import re
from typing import Any, Protocol, runtime_checkable

from ivy.errors import ConfigurationError, SerializationError

log = logging.getLogger("ivy")

#: Shorter signing keys are taken, with a warning: HMAC-SHA256 wants 32 bytes of secret.
MIN_KEY_BYTES = 32
#: What ``Signer.sign`` writes as a signature: the HMAC's hex digest, lowercase.
_SIGNATURE = re.compile(r"[0-9a-f]{64}")


@runtime_checkable
class Serializer(Protocol):
    """Turns a JSON-shaped value into bytes and back. Errors: SerializationError on dumps,
    ValueError on loads."""

    name: str
    content_type: str

    def dumps(self, value: Any) -> bytes: ...

    def loads(self, data: bytes) -> Any: ...


def _reject_constant(token: str) -> Any:
    raise ValueError(f"{token} is not valid JSON")


def _parse_float(text: str) -> float:
    """A JSON number with a fraction or an exponent. One too large for a float (``1e999``)
    would become infinity, which JSON cannot carry: refused like ``Infinity``."""
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"number {text[:40]} is too large for a float")
    return value


def _object(pairs: list[tuple[Any, Any]]) -> dict[Any, Any]:
    """A JSON object, or ValueError when it names a key twice: readers disagree on which one
    counts (the stdlib keeps the last), so a body with ``"name"`` twice could pass a check
    on one and run the other."""
    value = dict(pairs)
    if len(value) != len(pairs):
        seen: set[Any] = set()
        for key, _ in pairs:
            if key in seen:
                shown = key if len(key) <= 40 else key[:37] + "..."
                raise ValueError(f"duplicate key {shown!r} in an object")
            seen.add(key)
    return value


_encoder = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))
_decoder = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_parse_float,
                            object_pairs_hook=_object)


_CONTAINERS = (dict, list, tuple)
_SCALARS = frozenset({str, int, float, bool, type(None)})


def _check_keys(value: Any) -> None:
    """The stdlib turns int keys into strings silently; refuse them instead. (Scalars are
    told apart by their exact type first: the walk runs on every message and result.)"""
    stack = [value]
    pop, push = stack.pop, stack.append
    while stack:
        item = pop()
        if isinstance(item, dict):
            for key in item:
                if type(key) is not str and not isinstance(key, str):
                    raise TypeError(f"dict key {key!r} is not a string")
            values: Any = item.values()
        else:
            values = item
        for x in values:
            if type(x) not in _SCALARS and isinstance(x, _CONTAINERS):
                push(x)


class JSONSerializer:
    """Compact UTF-8 JSON."""

    name = "json"
    content_type = "application/json"

    def dumps(self, value: Any) -> bytes:
        try:
            _check_keys(value)
            return _encoder.encode(value).encode("utf-8")
        except (TypeError, ValueError, RecursionError) as exc:
            raise SerializationError(str(exc)) from exc

    def loads(self, data: bytes) -> Any:
        text = data.decode("utf-8") if isinstance(data, (bytes, bytearray)) else data
        return _decoder.decode(text)


class MsgpackSerializer:
    """MessagePack (``pip install 'ivy-queue[msgpack]'``); both sides must be configured for it."""

    name = "msgpack"
    content_type = "application/msgpack"

    def __init__(self) -> None:
        try:
            import msgpack
        except ImportError as exc:
            raise ConfigurationError(
                "serializer 'msgpack' needs the msgpack package: pip install 'ivy-queue[msgpack]'"
            ) from exc
        self._msgpack = msgpack

    def dumps(self, value: Any) -> bytes:
        try:
            _check_keys(value)
            data: bytes = self._msgpack.packb(value, use_bin_type=True, strict_types=False)
            return data
        except (TypeError, ValueError, OverflowError) as exc:
            raise SerializationError(str(exc)) from exc

    def loads(self, data: bytes) -> Any:
        try:
            return self._msgpack.unpackb(data, raw=False, strict_map_key=True,
                                         object_pairs_hook=_object)
        except Exception as exc:  # msgpack raises several unrelated types
            raise ValueError(f"not valid msgpack: {exc}") from exc


def get_serializer(spec: str | Serializer | None) -> Serializer:
    """Resolve ``"json"``, ``"msgpack"`` or a Serializer object."""
    if spec is None or spec == "json":
        return JSONSerializer()
    if spec == "msgpack":
        return MsgpackSerializer()
    if isinstance(spec, Serializer):
        return spec
    raise ConfigurationError(
        f"unknown serializer {spec!r}: use 'json' (default), 'msgpack', or an object with "
        "name, content_type, dumps() and loads()"
    )


def check_arguments(serializer: Serializer, args: tuple[Any, ...], kwargs: dict[str, Any],
                    task: str) -> None:
    """Find which argument cannot be serialized, to name it in the error."""
    for index, value in enumerate(args):
        _check_one(serializer, value, f"argument {index + 1} ({_short(value)})", task)
    for key, value in kwargs.items():
        _check_one(serializer, value, f"keyword argument {key!r} ({_short(value)})", task)


def _check_one(serializer: Serializer, value: Any, what: str, task: str) -> None:
    try:
        serializer.dumps(value)
    except SerializationError as exc:
        raise SerializationError(
            f"{what} of the call to {task!r} cannot be sent as {serializer.name}: {exc}. "
            "Pass only str, int, float, bool, None, list and dict with string keys "
            "(convert dates, decimals and objects to one of those first)"
        ) from None


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class Signer:
    """HMAC-SHA256 signatures over the exact bytes of a message or notification.

    A signed body is a JSON object (PROTOCOL.md)::

        {"ivy_signed": 1, "alg": "HMAC-SHA256", "key_id": "<8 hex>", "signature": "<64 hex>",
         "body": "<base64 of the exact signed bytes>"}

    The first key signs; every key verifies, so keys rotate by putting the new one first and
    keeping the old one until nothing signed with it is left in the queues. ``key_id`` is the
    first 8 hex digits of SHA-256 of the key: it names the key without revealing it. A key
    shorter than ``MIN_KEY_BYTES`` is taken, with a warning logged (``ivy``).
    """

    ALG = "HMAC-SHA256"

    def __init__(self, keys: str | bytes | list[str | bytes]) -> None:
        raw = [keys] if isinstance(keys, (str, bytes)) else list(keys)
        self.keys = [k.encode("utf-8") if isinstance(k, str) else bytes(k) for k in raw]
        if not self.keys or any(not k for k in self.keys):
            raise ConfigurationError("a signing key must be a non-empty string or bytes")
        for key in self.keys:
            if len(key) < MIN_KEY_BYTES:
                log.warning("signing key %s is %d bytes: use at least %d random bytes (python "
                            "-c 'import secrets; print(secrets.token_hex(32))')",
                            self.key_id(key), len(key), MIN_KEY_BYTES)
        self._by_id = {self.key_id(k): k for k in self.keys}

    @staticmethod
    def key_id(key: bytes) -> str:
        return hashlib.sha256(key).hexdigest()[:8]

    def sign(self, body: bytes) -> bytes:
        key = self.keys[0]
        envelope = {"ivy_signed": 1, "alg": self.ALG, "key_id": self.key_id(key),
                    "signature": hmac.new(key, body, hashlib.sha256).hexdigest(),
                    "body": base64.b64encode(body).decode("ascii")}
        return _encoder.encode(envelope).encode("utf-8")

    def verify(self, envelope: dict[str, Any]) -> bytes:
        """Return the signed bytes; raise ValueError saying why they cannot be trusted (a
        signature that is not 64 lowercase hex digits is refused before any comparison)."""
        if envelope.get("alg") != self.ALG:
            raise ValueError(f"signature algorithm {envelope.get('alg')!r} is not {self.ALG}")
        key = self._by_id.get(str(envelope.get("key_id")))
        if key is None:
            raise ValueError(f"signed with unknown key {envelope.get('key_id')!r}")
        try:
            body = base64.b64decode(str(envelope.get("body")), validate=True)
        except (ValueError, binascii.Error):
            raise ValueError("signed body is not valid base64") from None
        signature = envelope.get("signature")
        if not isinstance(signature, str) or not _SIGNATURE.fullmatch(signature):
            raise ValueError("signature is not 64 lowercase hex digits")
        expected = hmac.new(key, body, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected.encode("ascii"), signature.encode("ascii")):
            raise ValueError("signature does not match: the message was altered or signed "
                             "with another key")
        return body


def seal(signer: Signer | None, body: bytes) -> bytes:
    """``body`` in a signature envelope when there is a signer, else as it is: the one way
    ivy signs a message or a notification."""
    return body if signer is None else signer.sign(body)


def is_signed(body: bytes) -> bool:
    """Whether ``body`` is a signature envelope (not whether its signature verifies)."""
    return body[:200].lstrip().startswith(b'{"ivy_signed"')


def unwrap(body: bytes, signer: Signer | None) -> bytes:
    """Verify and strip a signature envelope. With a signer, unsigned bodies are refused;
    without one, a signed body is unwrapped unverified. Raises ValueError with the reason."""
    if is_signed(body):
        envelope = _decoder.decode(body.decode("utf-8"))
        if not isinstance(envelope, dict) or envelope.get("ivy_signed") != 1:
            raise ValueError("malformed signature envelope")
        if signer is None:
            return base64.b64decode(str(envelope.get("body")), validate=True)
        return signer.verify(envelope)
    if signer is not None:
        raise ValueError("unsigned: this side requires HMAC-SHA256 signatures (signing_key / "
                         "IVY_SIGNING_KEY)")
    return body


def signer_from(keys: str | bytes | list[str | bytes] | None) -> Signer | None:
    """``signing_key=`` or, when not given, ``IVY_SIGNING_KEY`` (comma-separated for
    rotation: the first signs)."""
    if keys is None:
        env = os.environ.get("IVY_SIGNING_KEY")
        if not env:
            return None
        keys = [k for k in env.split(",") if k]
    return Signer(keys)
