"""The faster writers and readers behind the converters' shortcuts give exactly what the
standard library gives: a UUID read from its 32 characters as ``uuid.UUID`` reads it, and a
datetime written by orjson (when installed) as ``datetime.isoformat`` writes it."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import uuid
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from ivy.annotations import compile_type, scalars

UID = uuid.UUID("12345678-1234-5678-1234-567812345678")


def _outcome(text: str) -> tuple[Any, ...]:
    try:
        got = uuid.UUID(text)
    except ValueError:
        return ("raised",)
    return type(got), got, got.int, got.hex, got.is_safe, hash(got), str(got), repr(got)


#: what int(text, 16) reads besides hex digits, and what uuid.UUID strips
_TRICKY = "0123456789abcdefABCDEF_-+ {}:xXurnid\u0663\u00b2\u00e9\t"


@given(st.text(alphabet=_TRICKY, min_size=32, max_size=32)
       | st.text(alphabet=_TRICKY, min_size=28, max_size=45)
       | st.uuids().map(lambda u: u.hex) | st.uuids().map(str))
@example(UID.hex)
@example("0" * 32)
@example("f" * 32)
@example("0x" + "f" * 30)
@example("+" + "1" * 31)
@example("-" + "1" * 31)
@example(" -" + "1" * 30)
@example("1_" + "1" * 30)
@example(" " + "a" * 30 + " ")
@example("\u0663" * 32)
@example("{" + "1" * 30 + "}")
@example("urn:uuid:" + str(UID))
def test_a_uuid_read_from_text_is_the_one_uuid_reads(text: str) -> None:
    expected = _outcome(text)
    try:
        got = scalars._uuid_from_text(text)
    except ValueError:
        assert expected == ("raised",), text
        return
    assert (type(got), got, got.int, got.hex, got.is_safe, hash(got), str(got), repr(got)
            ) == expected, text


def test_the_uuid_decoding_shortcut_reads_the_wire_form_without_uuids_constructor(
        monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Any] = []
    real = uuid.UUID.__init__

    def counted(self: uuid.UUID, *args: Any, **kwargs: Any) -> None:
        calls.append(args)
        real(self, *args, **kwargs)

    monkeypatch.setattr(uuid.UUID, "__init__", counted)
    kind, fast = compile_type(uuid.UUID).fast_decode or (None, None)
    assert kind is str and fast is not None
    assert fast(UID.hex) == UID and calls == []
    assert fast(str(UID)) == UID and len(calls) == 1  # hyphens: uuid.UUID reads them


_ZONES = (st.none() | st.just(dt.UTC)
          | st.builds(dt.timezone, st.timedeltas(min_value=dt.timedelta(hours=-23, minutes=-59),
                                                 max_value=dt.timedelta(hours=23, minutes=59)))
          | st.timezones())


class _NoOffset(dt.tzinfo):
    def utcoffset(self, value: dt.datetime | None) -> None:
        return None


@given(st.datetimes(timezones=_ZONES, allow_imaginary=True))
@example(dt.datetime(2024, 5, 1, 12, 30, 0, 250_000, tzinfo=dt.UTC))
@example(dt.datetime(1, 1, 1))
@example(dt.datetime.max.replace(tzinfo=dt.UTC))
@example(dt.datetime(999, 1, 1, 0, 0, 0, 1, tzinfo=dt.UTC))
@example(dt.datetime(2024, 5, 1, tzinfo=dt.timezone(dt.timedelta(seconds=30))))
@example(dt.datetime(2024, 5, 1, tzinfo=dt.timezone(dt.timedelta(microseconds=30))))
@example(dt.datetime(2024, 5, 1, tzinfo=dt.timezone(dt.timedelta(0), "Z")))
@example(dt.datetime(2024, 5, 1, tzinfo=_NoOffset()))
def test_a_datetime_is_written_as_isoformat_writes_it(value: dt.datetime) -> None:
    assert scalars._datetime_text(value) == value.isoformat()


def test_with_orjson_the_datetime_encoding_shortcut_is_its_writer() -> None:
    pytest.importorskip("orjson")
    conv = compile_type(dt.datetime)
    assert conv.fast_encode == (dt.datetime, scalars._datetime_text)
    assert scalars._datetime_text(dt.datetime(2024, 5, 1)) == "2024-05-01T00:00:00"
    assert scalars._orjson_dumps is not None


def test_orjson_is_imported_at_the_first_datetime_written_not_with_ivy() -> None:
    # its 2 MB of RSS are not every worker's: only those that write typed datetimes
    out = subprocess.run([sys.executable, "-c", "import sys, ivy, ivy.worker, ivy.annotations; "
                          "print('orjson' in sys.modules)"], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"


def test_without_orjson_a_datetime_is_written_by_isoformat() -> None:
    code = """
import sys
sys.modules["orjson"] = None  # import orjson raises ImportError
import datetime as dt
from ivy.annotations import scalars
from ivy.annotations import compile_type
assert not scalars._HAS_ORJSON
conv = compile_type(dt.datetime)
assert conv.fast_encode is None or conv.fast_encode[1] is not scalars._datetime_text
print(conv.encode(dt.datetime(2024, 5, 1, 12, 30, tzinfo=dt.UTC)))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "2024-05-01T12:30:00+00:00"
