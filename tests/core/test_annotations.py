"""Arguments and results decoded by their annotations (issue 25, part 5): each type round-trips
through a real worker on the memory and SQLite backends, sent by a producer that knows the
task (typed values) and by one that knows only its name (the plain JSON forms of PROTOCOL.md);
a value that does not fit is a SerializationError at send or a "bad arguments" dead letter;
unannotated tasks are unchanged; ``ivy schema`` describes the wire forms."""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import enum
import json
import os
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import fastjsonschema
import pytest
from common import wait_for

import ivy
from ivy.annotations.schema import task_schemas
from ivy.message import decode_message

pydantic = pytest.importorskip("pydantic")

UTC = dt.UTC
NOW = dt.datetime(2024, 5, 1, 12, 30, 0, 250_000, tzinfo=UTC)
UID = uuid.UUID("12345678-1234-5678-1234-567812345678")
ROOT = Path(__file__).resolve().parents[2]


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 3


@dataclasses.dataclass(frozen=True)
class Point:
    x: float
    at: dt.datetime
    tags: list[str] = dataclasses.field(default_factory=list)


class Order(pydantic.BaseModel):  # type: ignore[misc,name-defined]
    id: uuid.UUID
    total: Decimal
    placed: dt.date


#: name -> (annotation, typed value, its wire form)
CASES: dict[str, tuple[Any, Any, Any]] = {
    "datetime": (dt.datetime, NOW, "2024-05-01T12:30:00.250000+00:00"),
    "naive": (dt.datetime, dt.datetime(2024, 5, 1, 8), "2024-05-01T08:00:00"),
    "date": (dt.date, dt.date(2024, 5, 1), "2024-05-01"),
    "time": (dt.time, dt.time(8, 15, 30), "08:15:30"),
    "timedelta": (dt.timedelta, dt.timedelta(days=1, hours=2, seconds=3.5), "P1DT2H3.5S"),
    "negative": (dt.timedelta, -dt.timedelta(minutes=90), "-PT1H30M"),
    "uuid": (uuid.UUID, UID, UID.hex),
    "decimal": (Decimal, Decimal("12.50"), "12.50"),
    "bytes": (bytes, b"\x00\xffivy", base64.b64encode(b"\x00\xffivy").decode()),
    "enum": (Color, Color.BLUE, "blue"),
    "intenum": (Level, Level.HIGH, 3),
    "dataclass": (Point, Point(1.5, NOW, ["a"]),
                  {"x": 1.5, "at": "2024-05-01T12:30:00.250000+00:00", "tags": ["a"]}),
    "pydantic": (Order, Order(id=UID, total=Decimal("9.99"), placed=dt.date(2024, 5, 1)),
                 {"id": str(UID), "total": "9.99", "placed": "2024-05-01"}),
    "list": (list[dt.date], [dt.date(2024, 1, 2), dt.date(2024, 3, 4)],
             ["2024-01-02", "2024-03-04"]),
    "dict": (dict[str, Decimal], {"a": Decimal("1.5"), "b": Decimal("-2")},
             {"a": "1.5", "b": "-2"}),
    "tuple": (tuple[uuid.UUID, int], (UID, 7), [UID.hex, 7]),
    "tuple_of": (tuple[Color, ...], (Color.RED, Color.BLUE), ["red", "blue"]),
    "optional": (dt.datetime | None, NOW, "2024-05-01T12:30:00.250000+00:00"),
    "none": (dt.datetime | None, None, None),
    "nested": (dict[str, list[Point]], {"k": [Point(2.0, NOW)]},
               {"k": [{"x": 2.0, "at": "2024-05-01T12:30:00.250000+00:00", "tags": []}]}),
}


@pytest.fixture(params=["memory", "sqlite"])
def urls(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str]:
    if request.param == "memory":
        url = f"memory://ann-{uuid.uuid4().hex[:8]}"
    else:
        url = f"sqlite:///{tmp_path / 'ivy.db'}"
    return url, url


def _echo(tp: Any, seen: dict[str, Any], case: str) -> Callable[..., Any]:
    """A task function ``f(x: tp) -> tp`` that records what it received."""

    def echo(x: Any) -> Any:
        seen[case] = x
        return x

    echo.__annotations__ = {"x": tp, "return": tp}
    echo.__qualname__ = echo.__name__ = f"echo_{case}"
    return echo


@pytest.fixture
def served(urls: tuple[str, str]) -> Iterator[tuple[ivy.Ivy, dict[str, Any]]]:
    """An app whose worker serves an echo task per case (``ann.<case>``, queue ``ann``)."""
    app = ivy.Ivy(*urls, retry_base_delay=0.01, retry_max_delay=0.05)
    seen: dict[str, Any] = {}
    for case, (tp, _, _) in CASES.items():
        app.register_task(_echo(tp, seen, case), name=f"ann.{case}", queue="ann")
    app.listen(queue="ann", block=False)
    yield app, seen
    app.close()


def _same(a: Any, b: Any) -> bool:
    return a == b and type(a) is type(b)


def test_each_type_round_trips_when_the_producer_knows_the_task(
        served: tuple[ivy.Ivy, dict[str, Any]]) -> None:
    app, seen = served
    calls = {case: app.send_task(f"ann.{case}", [value])
             for case, (_, value, _) in CASES.items()}
    for case, (_, value, _) in CASES.items():
        result = calls[case].result(timeout=10)
        assert _same(seen[case], value), (case, seen[case])  # the worker got the type
        assert _same(result, value), (case, result)  # and so did the producer's result


def test_each_type_travels_in_its_plain_json_form(served: tuple[ivy.Ivy, dict[str, Any]]
                                                  ) -> None:
    app, _ = served
    for case, (_, value, wire) in CASES.items():
        out = app.producer.prepare(f"ann.{case}", [value], None)
        app.producer.forget([out.call])
        body = decode_message(out.body, app.serializer)
        assert body.args == [wire], case


def test_each_type_is_decoded_from_a_producer_that_knows_only_its_name(
        served: tuple[ivy.Ivy, dict[str, Any]], urls: tuple[str, str]) -> None:
    _, seen = served
    with ivy.Ivy(*urls) as producer:  # no task registered: sends what it is given
        calls = {case: producer.send_task(f"ann.{case}", [wire], queue="ann")
                 for case, (_, _, wire) in CASES.items()}
        for case, (_, value, wire) in CASES.items():
            result = calls[case].result(timeout=10)
            assert _same(seen[case], value), (case, seen[case])
            assert result == wire, case  # not decoded: this producer does not know the task


@pytest.mark.parametrize(("case", "wire"), [
    ("datetime", "2024-05-01T12:30:00.25Z"), ("datetime", "2024-05-01 12:30:00.250+00:00"),
    ("uuid", str(UID)), ("decimal", 12.5), ("decimal", "1.25e1"), ("timedelta", 93603.5),
    ("timedelta", "P1DT2H0M3.5S"), ("intenum", Level.HIGH),
])
def test_other_wire_forms_are_accepted(served: tuple[ivy.Ivy, dict[str, Any]], case: str,
                                       wire: Any) -> None:
    app, seen = served
    _, value, _ = CASES[case]
    assert app.send_task(f"ann.{case}", [wire]).result(timeout=10) == value
    assert seen[case] == value


@pytest.mark.parametrize(("case", "bad", "words"), [
    ("datetime", "yesterday", "'yesterday' does not fit datetime"),
    ("datetime", 1714566600, "1714566600 does not fit datetime"),
    ("date", NOW, "does not fit date"),
    ("uuid", "not-a-uuid", "'not-a-uuid' does not fit UUID"),
    ("decimal", "1,5", "'1,5' does not fit Decimal"),
    ("decimal", True, "True does not fit Decimal"),
    ("bytes", "%%%", "'%%%' does not fit bytes"),
    ("enum", "green", "'green' does not fit Color (one of 'red', 'blue')"),
    ("dataclass", {"x": 1.0}, "field 'at' is missing"),
    ("dataclass", {"x": "far", "at": "2024-05-01"}, "at .x: 'far' does not fit float"),
    ("pydantic", {"id": "x", "total": "1", "placed": "2024-05-01"}, "does not fit Order"),
    ("list", ["2024-01-02", "soon"], "at [1]: 'soon' does not fit date"),
    ("dict", {"a": "one"}, "at ['a']: 'one' does not fit Decimal"),
    ("tuple", [UID.hex], "does not fit tuple[UUID, int] (expected 2 items)"),
    ("nested", {"k": [{"x": 1.0, "at": "then"}]}, "at ['k'][0].at: 'then' does not fit"),
])
def test_a_value_that_does_not_fit_is_refused_at_send(
        served: tuple[ivy.Ivy, dict[str, Any]], case: str, bad: Any, words: str) -> None:
    app, _ = served
    with pytest.raises(ivy.SerializationError) as caught:
        app.send_task(f"ann.{case}", [bad])
    text = str(caught.value)
    assert f"task 'ann.{case}', argument 1 ('x')" in text  # the parameter
    assert words in text  # the value and the type
    assert app.producer.results().pending_ids() == []  # nothing was sent


def test_a_value_that_does_not_fit_is_dead_lettered_as_bad_arguments(
        served: tuple[ivy.Ivy, dict[str, Any]], urls: tuple[str, str]) -> None:
    app, seen = served
    with ivy.Ivy(*urls) as producer:
        call = producer.send_task("ann.datetime", ["yesterday"], queue="ann")
        with pytest.raises(ivy.RemoteTaskError) as caught:
            call.result(timeout=10)
    assert caught.value.type == "MessageRejected"
    assert caught.value.message.startswith(
        "bad arguments for task 'ann.datetime': argument 1 ('x'): 'yesterday' does not fit "
        "datetime")
    wait_for(lambda: app.queue_backend.dead_letters("ann"), message="a dead letter")
    [dead] = app.queue_backend.dead_letters("ann")
    assert dead.reason.startswith("bad arguments for task 'ann.datetime'")
    assert "datetime" not in seen  # never ran


def test_keyword_and_variadic_parameters_are_decoded(urls: tuple[str, str]) -> None:
    seen: list[Any] = []
    with ivy.Ivy(*urls) as app:
        @app.register_task(name="ann.mixed", queue="mixed")
        def mixed(a: int, when: dt.date, /, *more: uuid.UUID, scale: Decimal = Decimal(1),
                  **extra: Color) -> list[dt.date]:
            seen.append((a, when, more, scale, extra))
            return [when]

        app.listen(queue="mixed", block=False)
        call = app.send_task(mixed, (1, dt.date(2024, 1, 1), UID, UID),
                             {"scale": Decimal("2.5"), "tint": Color.RED})
        assert call.result(timeout=10) == [dt.date(2024, 1, 1)]
        assert seen == [(1, dt.date(2024, 1, 1), (UID, UID), Decimal("2.5"),
                         {"tint": Color.RED})]
        with pytest.raises(ivy.SerializationError, match=r"keyword 'tint': 'pink'"):
            app.send_task(mixed, (1, dt.date(2024, 1, 1)), {"tint": "pink"})


def test_the_steps_of_a_workflow_get_their_typed_arguments_and_its_result_is_decoded(
        urls: tuple[str, str]) -> None:
    seen: list[Any] = []
    with ivy.Ivy(*urls) as app:
        @app.register_task(name="ann.shift", queue="flow")
        def shift(when: dt.datetime, by: dt.timedelta) -> dt.datetime:
            seen.append(("shift", when, by))
            return when + by

        @app.register_task(name="ann.day", queue="flow")
        def day(when: dt.datetime, tint: Color = Color.RED) -> dt.date:
            seen.append(("day", when, tint))
            return when.date()

        app.listen(queue="flow", block=False)
        # Given a chain of typed tasks, sent with a typed argument for its first step and
        # typed arguments of their own on both steps (a datetime, a timedelta, an enum)
        call = app.delayed_call(ivy.chain(shift.s(dt.timedelta(days=1)),
                                          day.s(tint=Color.BLUE)), NOW)
        # Then each step receives its annotated types, and the call's result is decoded by
        # the last step's return annotation
        assert call.result(timeout=10) == dt.date(2024, 5, 2)
        assert seen == [("shift", NOW, dt.timedelta(days=1)),
                        ("day", NOW + dt.timedelta(days=1), Color.BLUE)]
        # and a group's results are decoded member by member
        both = app.delayed_call(ivy.group(day.s(NOW), shift.s(NOW, dt.timedelta(hours=1))))
        assert both.result(timeout=10) == [dt.date(2024, 5, 1), NOW + dt.timedelta(hours=1)]
        # A step's argument that does not fit is refused at send, naming the task
        with pytest.raises(ivy.SerializationError, match=r"'ann.shift'.*'by'"):
            app.delayed_call(ivy.chain(shift.s("soon"), day.s()), NOW)


def test_unannotated_and_plain_annotated_tasks_are_unchanged(urls: tuple[str, str]) -> None:
    seen: list[Any] = []
    with ivy.Ivy(*urls) as app:
        @app.register_task(name="ann.loose", queue="loose")
        def loose(a, b=None):  # type: ignore[no-untyped-def]
            seen.append((a, b))
            return a

        @app.register_task(name="ann.plain", queue="loose")
        def plain(a: int, b: list[str], c: dict[str, Any] | None = None) -> str:
            seen.append((a, b, c))
            return "ok"

        assert loose.codec is None and plain.codec is None  # nothing to convert: no cost
        app.listen(queue="loose", block=False)
        assert app.send_task(loose, ["2024-05-01"], {"b": UID.hex}).result(10) == "2024-05-01"
        assert app.send_task(plain, [1, ["x"]]).result(10) == "ok"
        assert seen == [("2024-05-01", UID.hex), (1, ["x"], None)]
        with pytest.raises(ivy.SerializationError):  # as before: a datetime is not JSON
            app.send_task(loose, [NOW])


def test_a_result_that_does_not_fit_fails_the_call_without_retries(
        urls: tuple[str, str]) -> None:
    runs: list[int] = []
    with ivy.Ivy(*urls, retry_base_delay=0.01) as app:
        @app.register_task(name="ann.liar", queue="liar", max_retries=3)
        def liar() -> dt.datetime:
            runs.append(1)
            return "tomorrow"  # type: ignore[return-value]

        app.listen(queue="liar", block=False)
        with pytest.raises(ivy.RemoteTaskError) as caught:
            app.send_task(liar).result(timeout=10)
    assert caught.value.type == "SerializationError"
    assert "the result of task 'ann.liar' does not fit its return annotation datetime" in (
        caught.value.message)
    assert runs == [1]


def test_the_producer_decodes_results_by_its_own_annotation(urls: tuple[str, str]) -> None:
    with ivy.Ivy(*urls) as worker_app, ivy.Ivy(*urls) as producer:
        @worker_app.register_task(name="ann.clock", queue="clock")
        def clock_worker(kind: str) -> str:
            return "2024-05-01T00:00:00+00:00" if kind == "good" else "noon"

        @producer.register_task(name="ann.clock", queue="clock")
        def clock(kind: str) -> dt.datetime:
            raise AssertionError("runs on the worker")

        worker_app.listen(queue="clock", block=False)
        assert producer.send_task(clock, ["good"]).result(10) == dt.datetime(2024, 5, 1,
                                                                             tzinfo=UTC)
        with pytest.raises(ivy.RemoteTaskError) as caught:
            producer.send_task(clock, ["bad"]).result(10)
        assert caught.value.type == "SerializationError"
        assert "'noon' does not fit datetime" in caught.value.message


def test_a_retried_call_gets_its_typed_arguments_again(urls: tuple[str, str]) -> None:
    seen: list[Any] = []
    with ivy.Ivy(*urls, retry_base_delay=0.01, retry_max_delay=0.02) as app:
        @app.register_task(name="ann.flaky", queue="flaky", max_retries=2)
        def flaky(when: dt.datetime, uid: uuid.UUID) -> uuid.UUID:
            seen.append((when, uid))
            if len(seen) < 2:
                raise RuntimeError("once")
            return uid

        app.listen(queue="flaky", block=False)
        assert app.send_task(flaky, [NOW, UID]).result(timeout=10) == UID
    assert seen == [(NOW, UID), (NOW, UID)]


def test_async_and_time_limited_tasks_are_decoded(urls: tuple[str, str]) -> None:
    with ivy.Ivy(*urls) as app:
        @app.register_task(name="ann.later", queue="later")
        async def later(when: dt.date) -> dt.date:
            assert type(when) is dt.date
            return when + dt.timedelta(days=1)

        app.register_task(shift, name="ann.shift", queue="later", time_limit=30)
        app.listen(queue="later", block=False)
        assert app.send_task(later, [dt.date(2024, 1, 1)]).result(10) == dt.date(2024, 1, 2)
        assert app.send_task("ann.shift", [NOW]).result(30) == NOW + dt.timedelta(hours=1)


def shift(when: dt.datetime) -> dt.datetime:
    """A time-limited task: it runs in a runner process, which decodes its arguments."""
    assert type(when) is dt.datetime
    return when + dt.timedelta(hours=1)


SCHEMA_MODULE = '''
import dataclasses, datetime as dt, enum, uuid
from decimal import Decimal
import ivy

class Color(enum.Enum):
    RED = "red"

@dataclasses.dataclass
class Point:
    x: float
    at: dt.datetime
    kids: "list[Point]" = dataclasses.field(default_factory=list)

@ivy.register_task(name="shop.book", queue="shop")
def book(when: dt.datetime, uid: uuid.UUID, /, amount: Decimal, *, color: Color,
         where: Point | None = None, data: bytes = b"", span: dt.timedelta = dt.timedelta(0)
         ) -> dict[str, dt.date]:
    return {}

@ivy.register_task(name="shop.loose", queue="shop")
def loose(a, b=1):
    return a
'''


def test_ivy_schema_validates_what_a_producer_sends(tmp_path: Path) -> None:
    (tmp_path / "shop_tasks.py").write_text(textwrap.dedent(SCHEMA_MODULE))
    out = subprocess.run([sys.executable, "-m", "ivy", "schema", "shop_tasks"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=60, check=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    document = json.loads(out.stdout)
    assert set(document["tasks"]) == {"shop.book", "shop.loose"}
    book = document["tasks"]["shop.book"]
    assert book["queue"] == "shop"
    assert book["arguments"]["$schema"] == "http://json-schema.org/draft-07/schema#"
    arguments = fastjsonschema.compile(book["arguments"])
    result = fastjsonschema.compile(book["result"])
    point = {"x": 1, "at": "2024-05-01T12:30:00Z", "kids": [{"x": 2, "at": "2024-05-01T08:00"}]}
    good = [
        {"args": ["2024-05-01T12:30:00+02:00", UID.hex, "12.50"],
         "kwargs": {"color": "red", "where": point, "data": "AAE=", "span": "P1DT2H"}},
        {"args": ["2024-05-01 12:30:00.25", str(UID)],
         "kwargs": {"amount": 12.5, "color": "red", "where": None, "span": 90}},
    ]
    for payload in good:
        arguments(payload)
    bad = [
        {"args": ["yesterday", UID.hex, "1"], "kwargs": {"color": "red"}},
        {"args": ["2024-05-01T12:30:00", "xyz", "1"], "kwargs": {"color": "red"}},
        {"args": ["2024-05-01T12:30:00", UID.hex, "1,5"], "kwargs": {"color": "red"}},
        {"args": ["2024-05-01T12:30:00", UID.hex, "1"], "kwargs": {"color": "green"}},
        {"args": ["2024-05-01T12:30:00", UID.hex, "1"], "kwargs": {}},  # color missing
        {"args": ["2024-05-01T12:30:00", UID.hex, "1", 4], "kwargs": {"color": "red"}},
        {"args": ["2024-05-01T12:30:00", UID.hex], "kwargs": {"color": "red", "data": "%"}},
        {"args": ["2024-05-01T12:30:00", UID.hex], "kwargs": {"color": "red", "span": "P1M"}},
        {"args": ["2024-05-01T12:30:00", UID.hex],
         "kwargs": {"color": "red", "where": {"x": 1}}},
        {"args": ["2024-05-01T12:30:00", UID.hex], "kwargs": {"color": "red", "other": 1}},
    ]
    for payload in bad:
        with pytest.raises(fastjsonschema.JsonSchemaException):
            arguments(payload)
    result({"a": "2024-05-01"})
    with pytest.raises(fastjsonschema.JsonSchemaException):
        result({"a": "May 1st"})
    loose = document["tasks"]["shop.loose"]
    fastjsonschema.compile(loose["arguments"])({"args": [NOW.isoformat(), [1]], "kwargs": {}})
    assert loose["result"] == {"$schema": "http://json-schema.org/draft-07/schema#",
                               "title": "result of shop.loose"}


def test_each_schema_takes_what_the_producer_encodes(
        served: tuple[ivy.Ivy, dict[str, Any]]) -> None:
    app, _ = served
    for case, (_, value, wire) in CASES.items():
        schemas = task_schemas(app.registry.get(f"ann.{case}"))
        out = app.producer.prepare(f"ann.{case}", [value], None)
        app.producer.forget([out.call])
        message = decode_message(out.body, app.serializer)
        fastjsonschema.compile(schemas["arguments"])(message.to_dict())  # a whole message
        fastjsonschema.compile(schemas["result"])(wire)


def stamped(day: dt.date) -> dt.datetime:
    """A typed result: midnight of ``day``."""
    return dt.datetime(day.year, day.month, day.day)


def test_a_follower_of_a_unique_send_decodes_its_result(tmp_path: Path) -> None:
    # Given two producers on one store, each knowing the typed task, and a unique send
    url = f"sqlite:///{tmp_path / 'ivy.db'}"
    queue = f"typed-{uuid.uuid4().hex[:6]}"
    with ivy.Ivy(url, url) as app, ivy.Ivy(url, url) as other:
        task = app.register_task(stamped, name="t.stamped", queue=queue)
        other.register_task(stamped, name="t.stamped", queue=queue)
        key = f"k:{uuid.uuid4().hex}"
        first = app.send_task(task, [dt.date(2026, 12, 7)], unique_key=key, unique_for=60)
        # When the other producer sends the same key: it follows the first call
        follower = other.send_task("t.stamped", [dt.date(2026, 12, 7)], unique_key=key,
                                   unique_for=60)
        assert follower.id == first.id and follower is not first
        app.listen(queue=queue, block=False)
        # Then both get the result as the annotation's type
        assert first.result(20) == dt.datetime(2026, 12, 7)
        assert follower.result(20) == dt.datetime(2026, 12, 7)


def test_assert_sent_compares_typed_arguments() -> None:
    from ivy.testing import capture

    app = ivy.Ivy(f"memory://{uuid.uuid4().hex}")
    try:
        task = app.register_task(stamped, name="t.stamped", queue="q")
        with capture(app) as sent:
            app.delayed_call(task, dt.date(2026, 12, 7))
        sent.assert_sent("t.stamped", args=[dt.date(2026, 12, 7)])
        with pytest.raises(AssertionError, match="wanted"):
            sent.assert_sent("t.stamped", args=[dt.date(2026, 12, 8)])
    finally:
        app.close()
