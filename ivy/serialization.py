"""Serializers for message and notification bodies. JSON by default; never pickle.

JSON goes through the standard library's :mod:`json` in a strict form: no NaN or Infinity,
string keys only, nothing but JSON types. orjson is deliberately not used even when installed:
it turns integers beyond 64 bits into floats on decoding, silently (25852016738884976640000
became 2.585201673888498e+22 in our tests), and it encodes types (datetime, UUID) that the
stdlib refuses, so what a producer accepts would depend on what happens to be installed. The
stdlib costs a few microseconds per message, far below any backend's round trip.
``msgpack`` is available as an optional extra.
"""

from __future__ import annotations

import json
from typing import Any, Protocol, runtime_checkable

from ivy.errors import ConfigurationError, SerializationError


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


_encoder = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))
_decoder = json.JSONDecoder(parse_constant=_reject_constant)


def _check_keys(value: Any) -> None:
    """The stdlib turns int keys into strings silently; refuse them instead."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for key, inner in item.items():
                if not isinstance(key, str):
                    raise TypeError(f"dict key {key!r} is not a string")
                if isinstance(inner, (dict, list, tuple)):
                    stack.append(inner)
        elif isinstance(item, (list, tuple)):
            stack.extend(x for x in item if isinstance(x, (dict, list, tuple)))


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
            return self._msgpack.unpackb(data, raw=False, strict_map_key=True)
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
