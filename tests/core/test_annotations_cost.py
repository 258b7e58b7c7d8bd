"""The converters' shortcuts for typed arguments and results give exactly what the
converters' own functions give: the same values, the same errors, call by call."""

from __future__ import annotations

import datetime as dt
import enum
import inspect
import itertools
import typing
import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest

from ivy.annotations import BadArguments, Converter, Mismatch, compile_task, compile_type
from ivy.errors import SerializationError

NOW = dt.datetime(2024, 5, 1, 12, 30, 0, 250_000, tzinfo=dt.UTC)
UID = uuid.UUID("12345678-1234-5678-1234-567812345678")


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"

    @classmethod
    def _missing_(cls, value: object) -> Color | None:
        return cls.RED if value == "crimson" else None


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 3


class Nothing(enum.Enum):
    NONE = None
    SOME = "some"


class Text(str):
    pass


def five(when: dt.datetime, day: dt.date, uid: uuid.UUID, amount: Decimal, color: Color
         ) -> dt.datetime:
    return when


def mixed(a: int, b: uuid.UUID, c: Any, d: Level | None) -> uuid.UUID:
    return b


#: values of many types, typed and in wire forms, fitting and not
VALUES: list[Any] = [
    None, True, 0, 3, 2.5, "", "x", "red", "crimson", "RED", Text("red"), "some", [], {"a": 1},
    NOW, NOW.replace(tzinfo=None), NOW.isoformat(), Text(NOW.isoformat()), "2024-05-01T12:30",
    dt.date(2024, 5, 1), "2024-05-01", "2024-5-1", dt.time(8, 15), "08:15:30",
    dt.timedelta(hours=-1, seconds=0.5), "P1DT2H", "PT", UID, UID.hex, str(UID),
    "{" + str(UID) + "}", "urn:uuid:" + str(UID), UID.hex.upper(), "0x" + "1" * 30,
    "+" + "1" * 31, "-" + "1" * 31, "1_" + "1" * 30, " " + "a" * 30 + " ", "g" * 32,
    "\u0663" * 32, "\u00b2" * 32, "\u00e9" * 32, "f" * 31, "f" * 33, Text(UID.hex),
    Decimal("12.50"), Decimal("-0"), Decimal("NaN"), Decimal("sNaN"), Decimal("Infinity"),
    "12.50", "1_000", " 1 ", "NaN", "1e3", b"\x00\xff", "AP8=", "AP8", Color.BLUE, Level.HIGH,
    Nothing.NONE,
]

TYPES: list[Any] = [dt.datetime, dt.date, dt.time, dt.timedelta, uuid.UUID, Decimal, bytes,
                    Color, Level, Nothing, dt.datetime | None, uuid.UUID | None, Nothing | None,
                    Level | None]


def _outcome(fn: Callable[[Any], Any], value: Any) -> tuple[Any, ...]:
    try:
        out = fn(value)
    except Exception as exc:
        return "raised", type(exc), str(exc)
    return "gave", type(out), repr(out)


def _shortcut_then(fast: tuple[type, Callable[[Any], Any]] | None, fn: Callable[[Any], Any]
                   ) -> Callable[[Any], Any]:
    """How the hot loops use a shortcut: for its type, then, if it raises, the function."""

    def run(value: Any) -> Any:
        if fast is not None and type(value) is fast[0]:
            try:
                return fast[1](value)
            except Exception:  # the function says why
                pass
        return fn(value)

    return run


@pytest.mark.parametrize("tp", TYPES, ids=str)
def test_a_shortcut_gives_what_its_converter_gives(tp: Any) -> None:
    conv: Converter = compile_type(tp)
    assert conv.fast_encode is not None
    for value in VALUES:
        for fast, fn in ((conv.fast_encode, conv.encode), (conv.fast_decode, conv.decode)):
            assert _outcome(_shortcut_then(fast, fn), value) == _outcome(fn, value), value


@pytest.mark.parametrize("text", [v for v in VALUES if type(v) is str] + [
    UID.hex, "00000000000000000000000000000000", "ffffffffffffffffffffffffffffffff"])
def test_a_uuid_is_read_as_the_uuid_class_reads_it(text: str) -> None:
    decode = compile_type(uuid.UUID).decode
    try:
        expected = uuid.UUID(text)
    except ValueError as exc:
        with pytest.raises(Mismatch, match="does not fit UUID") as caught:
            decode(text)
        assert str(exc) in str(caught.value)
        return
    for got in (decode(text), compile_task("t", mixed, inspect.signature(mixed), "plain")
                .decode_args([1, text, None, None], {})[0][1]):  # type: ignore[union-attr]
        assert type(got) is uuid.UUID
        assert (got, got.int, got.hex, got.is_safe, hash(got)) == (
            expected, expected.int, expected.hex, expected.is_safe, hash(expected))


def _reference(convs: list[Converter | None], names: list[str], args: list[Any], what: str
               ) -> tuple[Any, ...]:
    """What the converters' own functions make of ``args``, one by one."""
    out = []
    for index, (conv, value) in enumerate(zip(convs, args, strict=True)):
        if conv is None:
            out.append(value)
            continue
        try:
            out.append(getattr(conv, what)(value))
        except Mismatch as exc:
            return "raised", f"argument {index + 1} ({names[index]!r}): {exc}"
        except Exception as exc:
            return "raised", f"{type(exc).__name__}: {exc}"
    return "gave", [(type(v), repr(v)) for v in out]


def _got(call: Callable[[Any, dict[str, Any]], tuple[list[Any], dict[str, Any]]], args: Any
         ) -> tuple[Any, ...]:
    try:
        out, kwargs = call(args, {})
    except (BadArguments, SerializationError) as exc:
        text = str(exc)
        if isinstance(exc, SerializationError):
            text = text.removeprefix("task 't', ").split(": pass a value of")[0]
        return "raised", text
    except Exception as exc:
        return "raised", f"{type(exc).__name__}: {exc}"
    assert kwargs == {}
    return "gave", [(type(v), repr(v)) for v in out]


CHOICES: dict[str, list[list[Any]]] = {
    "five": [[NOW, NOW.isoformat(), "bad", Text(NOW.isoformat()), dt.date(2024, 5, 1)],
             [dt.date(2024, 5, 1), "2024-05-01", NOW],
             [UID, UID.hex, str(UID), "g" * 32, 5],
             [Decimal("1.5"), "1.5", Decimal("NaN"), "1_0", 2],
             [Color.BLUE, "blue", "crimson", "green", Text("red")]],
    "mixed": [[1, "x"], [UID, UID.hex, "-" + "1" * 31, None], [object(), None],
              [None, Level.LOW, 3, "3", True]],
}


@pytest.mark.parametrize("func", [five, mixed], ids=lambda f: f.__name__)
def test_a_call_converts_as_its_parameters_converters_do(func: Callable[..., Any]) -> None:
    codec = compile_task("t", func, inspect.signature(func), "plain")
    assert codec is not None
    hints = typing.get_type_hints(func)
    del hints["return"]
    names = list(hints)
    convs = [c if c.converts else None for c in map(compile_type, hints.values())]
    for combo in itertools.product(*CHOICES[func.__name__]):
        args = list(combo)
        assert _got(codec.decode_args, args) == _reference(convs, names, args, "decode"), args
        assert _got(codec.encode_args, tuple(args)) == _reference(
            convs, names, args, "encode"), args
        try:
            decoded, _ = codec.decode_args(args, {})
        except BadArguments:
            continue
        assert decoded is not args
        assert all(got is given for got, given, conv in zip(decoded, args, convs, strict=True)
                   if conv is None)  # unconverted arguments are passed as they are
