"""Converters of single values: plain JSON types (checked inside a type that converts),
dates and times, ``timedelta``, ``UUID``, ``Decimal``, ``bytes``, enums and pydantic models
(PROTOCOL.md, "Typed arguments and results"; :mod:`ivy.annotations.convert` for the rest)."""

from __future__ import annotations

import base64
import binascii
import dataclasses
import datetime as dt
import decimal
import enum
import importlib
import importlib.util
import operator
import re
import sys
import uuid
from collections.abc import Callable
from typing import Any

Fn = Callable[[Any], Any]
#: a converter's shortcut: ``(kind, fn)``, see :class:`Converter`
Shortcut = tuple[type, Fn]


def _installed(name: str) -> bool:
    """Whether module ``name`` can be imported, found without importing it."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # ValueError: sys.modules[name] is None (blocked)
        return False


#: Whether orjson is installed (extra ``fast``): then it writes a datetime's ISO form, the
#: same text in a third of ``isoformat()``'s cost (:func:`_datetime_text`); messages stay the
#: standard library's strict JSON. Imported at the first datetime written, not here: its
#: 2 MB of RSS are not every worker's.
_HAS_ORJSON = _installed("orjson")
_orjson_dumps: Callable[[Any], bytes] | None = None


def _orjson() -> Callable[[Any], bytes]:
    """``orjson.dumps``, imported on first use."""
    global _orjson_dumps
    if _orjson_dumps is None:
        _orjson_dumps = importlib.import_module("orjson").dumps
    return _orjson_dumps


class Mismatch(ValueError):
    """A value does not fit its annotation: ``value`` (at ``path`` inside the argument) is
    not a ``expected``."""

    def __init__(self, value: Any, expected: str, detail: str = "", path: str = "") -> None:
        self.value, self.expected, self.detail, self.path = value, expected, detail, path
        super().__init__(self.describe())

    def describe(self) -> str:
        where = f"at {self.path}: " if self.path else ""
        why = f" ({self.detail})" if self.detail else ""
        return f"{where}{_short(self.value)} does not fit {self.expected}{why}"

    def inside(self, step: str) -> Mismatch:
        """The same mismatch, one level further in (``[2]``, ``["key"]``, ``.field``)."""
        return Mismatch(self.value, self.expected, self.detail, step + self.path)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


@dataclasses.dataclass(frozen=True, slots=True)
class Converter:
    """How values of one annotation (named ``name``) travel: see the module docstring.
    ``fast_encode`` and ``fast_decode``, when set, are shortcuts ``(kind, fn)`` for the hot
    loops: for a value whose type is exactly ``kind``, ``fn(value)`` returns what ``encode``
    (``decode``) returns; when ``fn`` raises, the caller calls ``encode`` (``decode``)."""

    name: str
    encode: Fn
    decode: Fn
    converts: bool
    fast_encode: Shortcut | None = None
    fast_decode: Shortcut | None = None


def identity(value: Any) -> Any:
    return value


ANY = Converter("Any", identity, identity, False)


def checked(name: str, fits: Callable[[Any], bool]) -> Converter:
    def check(value: Any) -> Any:
        if fits(value):
            return value
        raise Mismatch(value, name)

    return Converter(name, check, check, False)


def _not_bool(kind: type | tuple[type, ...]) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, kind) and not isinstance(v, bool)


def _float_decode(value: Any) -> Any:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    raise Mismatch(value, "float")


PLAIN: dict[Any, Converter] = {
    str: checked("str", lambda v: isinstance(v, str)),
    int: checked("int", _not_bool(int)),
    float: Converter("float", checked("float", _not_bool((int, float))).encode, _float_decode,
                     False),
    bool: checked("bool", lambda v: isinstance(v, bool)),
    type(None): checked("None", lambda v: v is None),
    Any: ANY, object: ANY,
}


def _scalar(name: str, kind: type, to_wire: Fn, from_wire: Fn, wire: str,
            exact: bool = False, parse: Fn | None = None, write: Fn | None = None
            ) -> Converter:
    """A type with a string (or number) form: ``to_wire(value)`` for a value of ``kind``,
    ``from_wire(form)`` for its wire form (ValueError, TypeError or OverflowError when the
    form is wrong). ``exact``: a subclass of ``kind`` is not one (a datetime is no date).
    ``parse``: what ``from_wire`` does with a ``str`` (the decoding shortcut); ``write``:
    what ``to_wire`` does with a value of exactly ``kind``, faster (the encoding shortcut;
    ``to_wire`` itself when not given)."""

    def decode(value: Any) -> Any:
        try:
            return from_wire(value)
        except (ValueError, TypeError, OverflowError, ArithmeticError) as exc:
            raise Mismatch(value, name, f"expected {wire}: {exc}") from None

    def encode(value: Any) -> Any:
        if type(value) is kind or (not exact and isinstance(value, kind)):
            return to_wire(value)
        if isinstance(value, (kind, *_TYPED)):
            raise Mismatch(value, name)  # another typed value: never read as a wire form
        return to_wire(decode(value))

    return Converter(name, encode, decode, True, (kind, write or to_wire),
                     None if parse is None else (str, parse))


def _iso(kind: Any) -> Fn:
    parse = kind.fromisoformat

    def from_wire(value: Any) -> Any:
        if type(value) is not str:
            raise TypeError("not a string")
        return parse(value)

    return from_wire


def _datetime_text(value: dt.datetime) -> str:
    """``value.isoformat()`` written by orjson where it writes the same text: a naive or a
    UTC datetime (for other zones it rounds an offset to whole minutes, and writes +00:00
    where ``utcoffset()`` is None). About a third of the cost of ``isoformat()``, whose
    offset goes through ``utcoffset()`` and ``snprintf``."""
    zone = value.tzinfo
    if zone is None or zone is dt.UTC:
        return (_orjson_dumps or _orjson())(value)[1:-1].decode()
    return value.isoformat()


def _timedelta_to_wire(value: dt.timedelta) -> str:
    micros = (value.days * 86_400 + value.seconds) * 1_000_000 + value.microseconds
    sign = "-" if micros < 0 else ""
    days, micros = divmod(abs(micros), 86_400_000_000)
    seconds, micros = divmod(micros, 1_000_000)
    hours, seconds = divmod(seconds, 3600)
    minutes, seconds = divmod(seconds, 60)
    text = f"{sign}P{days}D" if days else f"{sign}P"
    clock = (f"{hours}H" if hours else "") + (f"{minutes}M" if minutes else "")
    if seconds or micros or not (days or clock):
        clock += (f"{seconds}.{micros:06d}".rstrip("0") if micros else str(seconds)) + "S"
    return text + ("T" + clock if clock else "")


_NUMBER = r"(\d+(?:\.\d+)?)"
DURATION = re.compile(
    rf"([-+])?P(?!$)(?:{_NUMBER}W)?(?:{_NUMBER}D)?(?:T(?=\d)(?:{_NUMBER}H)?(?:{_NUMBER}M)?"
    rf"(?:{_NUMBER}S)?)?")


def _timedelta_from_wire(value: Any) -> dt.timedelta:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return dt.timedelta(seconds=value)
    match = DURATION.fullmatch(value) if type(value) is str else None
    if match is None:
        raise ValueError("not an ISO 8601 duration such as P1DT2H30M or -PT0.5S")
    sign, weeks, days, hours, minutes, seconds = match.groups()
    delta = dt.timedelta(weeks=float(weeks or 0), days=float(days or 0),
                         hours=float(hours or 0), minutes=float(minutes or 0),
                         seconds=float(seconds or 0))
    return -delta if sign == "-" else delta


#: what a decimal number looks like on the wire (the schema's pattern)
DECIMAL = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?")


def _decimal_from_wire(value: Any) -> decimal.Decimal:
    if type(value) is str:
        number = decimal.Decimal(value)  # InvalidOperation (an ArithmeticError) if not one
        # Decimal() also takes "1_000", " 1 ", "NaN" and "Infinity": the wire does not
        if number.is_finite() and "_" not in value and value == value.strip():
            return number
    elif isinstance(value, int) and not isinstance(value, bool):
        return decimal.Decimal(value)
    elif type(value) is float and value == value and abs(value) != float("inf"):
        return decimal.Decimal(repr(value))
    raise ValueError("not a finite decimal number")


def _decimal_to_wire(value: decimal.Decimal) -> str:
    if not value.is_finite():
        raise ValueError(f"{value} is not a finite number")
    return str(value)


def _uuid_from_wire(value: Any) -> uuid.UUID:
    if type(value) is not str:
        raise TypeError("not a string")
    return uuid.UUID(value)


_UUID_LIMIT = 1 << 128
_UUID_UNKNOWN = uuid.SafeUUID.unknown


def _uuid_from_text(text: str) -> uuid.UUID:
    """``uuid.UUID(text)``, made in half the time for the wire's own form, 32 characters:
    ``UUID()`` reads those with ``int(text, 16)`` and checks the range, as here, and its
    constructor then only sets ``int`` and ``is_safe`` (the rest of its work is for its other
    arguments). Any other length goes to ``UUID()`` itself; 32 characters that are no number
    raise ValueError (the decoding shortcut's caller then asks the converter why)."""
    if len(text) == 32:
        number = int(text, 16)
        if 0 <= number < _UUID_LIMIT:
            made: uuid.UUID = object.__new__(uuid.UUID)
            object.__setattr__(made, "int", number)
            object.__setattr__(made, "is_safe", _UUID_UNKNOWN)
            return made
    return uuid.UUID(text)


def _bytes_from_wire(value: Any) -> bytes:
    if type(value) is not str:
        raise TypeError("not a string")
    try:
        return base64.b64decode(value, validate=True)
    except binascii.Error as exc:
        raise ValueError(str(exc)) from None


def _bytes_to_wire(value: Any) -> str:
    return base64.b64encode(value).decode("ascii")


#: typed values: a string of one is never read as the wire form of another
_TYPED: tuple[type, ...] = (dt.date, dt.time, dt.timedelta, uuid.UUID, decimal.Decimal,
                            bytes, bytearray, memoryview)

SCALARS: dict[Any, Converter] = {
    dt.datetime: _scalar("datetime", dt.datetime, dt.datetime.isoformat, _iso(dt.datetime),
                         "an ISO 8601 date and time", parse=dt.datetime.fromisoformat,
                         write=_datetime_text if _HAS_ORJSON else None),
    dt.date: _scalar("date", dt.date, dt.date.isoformat, _iso(dt.date),
                     "an ISO 8601 date, YYYY-MM-DD", exact=True, parse=dt.date.fromisoformat),
    dt.time: _scalar("time", dt.time, dt.time.isoformat, _iso(dt.time),
                     "an ISO 8601 time, HH:MM:SS", parse=dt.time.fromisoformat),
    dt.timedelta: _scalar("timedelta", dt.timedelta, _timedelta_to_wire, _timedelta_from_wire,
                          "an ISO 8601 duration or a number of seconds",
                          parse=_timedelta_from_wire),
    uuid.UUID: _scalar("UUID", uuid.UUID, operator.attrgetter("hex"), _uuid_from_wire,
                       "32 hex digits, hyphens allowed", parse=_uuid_from_text),
    decimal.Decimal: _scalar("Decimal", decimal.Decimal, _decimal_to_wire, _decimal_from_wire,
                             "a decimal number as a string", parse=_decimal_from_wire),
    bytes: _scalar("bytes", bytes, _bytes_to_wire, _bytes_from_wire, "base64 text",
                   parse=_bytes_from_wire),
}
# bytearray and memoryview are sent as bytes are
_BYTES_LIKE = SCALARS[bytes]
SCALARS[bytes] = Converter("bytes", lambda v: _bytes_to_wire(v) if isinstance(
    v, (bytearray, memoryview)) else _BYTES_LIKE.encode(v), _BYTES_LIKE.decode, True,
    _BYTES_LIKE.fast_encode, _BYTES_LIKE.fast_decode)


def enum_converter(cls: type[enum.Enum]) -> Converter:
    members = cls._value2member_map_
    name = cls.__name__

    def decode(value: Any) -> Any:
        try:
            member = members.get(value)
        except TypeError:  # unhashable
            member = None
        if member is None:
            try:
                member = cls(value)
            except (ValueError, TypeError):
                values = ", ".join(repr(m.value) for m in cls)
                raise Mismatch(value, name, f"one of {values}") from None
        return member

    def encode(value: Any) -> Any:
        return (value if isinstance(value, cls) else decode(value))._value_

    # the shortcuts: a member (of this very class), and a value of its first member's type
    first = next(iter(members), None)
    return Converter(name, encode, decode, True, (cls, operator.attrgetter("_value_")),
                     None if first is None else (type(first), members.__getitem__))


def is_model(tp: Any) -> bool:
    pydantic = sys.modules.get("pydantic")
    base = getattr(pydantic, "BaseModel", None)
    return base is not None and isinstance(tp, type) and issubclass(tp, base)


def model_converter(cls: Any) -> Converter:
    name = cls.__name__

    def decode(value: Any) -> Any:
        try:
            return cls.model_validate(value)
        except ValueError as exc:  # pydantic's ValidationError is one
            raise Mismatch(value, name, str(exc).replace("\n", "; ")) from None

    def encode(value: Any) -> Any:
        return (value if isinstance(value, cls) else decode(value)).model_dump(mode="json")

    return Converter(name, encode, decode, True)



def plain(value: Any) -> Any:
    """The wire form of a typed value, by its own type rather than an annotation: for
    ``json.dumps(value, default=plain)`` (``ivy call --wait`` prints decoded results so)."""
    if isinstance(value, enum.Enum):
        return value.value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if hasattr(value, "model_dump") and is_model(type(value)):
        return value.model_dump(mode="json")
    if isinstance(value, (set, frozenset)):
        return list(value)
    for kind, conv in SCALARS.items():
        if isinstance(value, kind):
            return conv.encode(value)
    if isinstance(value, (bytearray, memoryview)):
        return _bytes_to_wire(value)
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")
