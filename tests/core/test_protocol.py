"""Wire protocol v1: encoding, decoding, the shipped JSON Schemas, the Node.js ivy 0.2 form."""

from __future__ import annotations

import json

import jsonschema
import pytest
from common import json_values
from hypothesis import given, settings
from hypothesis import strategies as st

import ivy
from ivy.message import (
    Message,
    Notification,
    decode_message,
    decode_notification,
    load_schema,
)
from ivy.serialization import JSONSerializer, MsgpackSerializer

JSON = JSONSerializer()

DESIGN_MESSAGE = {
    "ivy": 1, "id": "3f2b", "name": "testpackage.factorial", "args": [5], "kwargs": {},
    "options": {}, "queue": "testpackage", "reply_to": "ivy:notify:abc", "attempt": 0,
    "max_retries": 5, "priority": 0, "eta": None, "created_ms": 1764262800000,
}
DESIGN_NOTIFICATION = {
    "ivy": 1, "id": "3f2b", "name": "testpackage.factorial", "status": "successful",
    "result": 120, "error": None, "attempt": 0, "worker": "host:1234",
}


@pytest.mark.parametrize("name", ["message-v1", "message-legacy", "notification-v1"])
def test_shipped_schemas_are_valid_json_schema(name: str) -> None:
    schema = load_schema(name)
    jsonschema.Draft7Validator.check_schema(schema)


def test_design_examples_validate_with_the_reference_validator() -> None:
    jsonschema.validate(DESIGN_MESSAGE, load_schema("message-v1"))
    jsonschema.validate(DESIGN_NOTIFICATION, load_schema("notification-v1"))
    jsonschema.validate({"name": "factorial", "options": {}, "args": [5]},
                        load_schema("message-legacy"))


def test_message_round_trip_keeps_every_field() -> None:
    message = decode_message(json.dumps(DESIGN_MESSAGE).encode(), JSON)
    assert message.to_dict() == DESIGN_MESSAGE
    assert decode_message(message.encode(JSON), JSON) == message


def test_unknown_fields_survive_a_retry_re_encoding() -> None:
    body = json.dumps({**DESIGN_MESSAGE, "trace_id": "t-1"}).encode()
    message = decode_message(body, JSON)
    message.attempt += 1
    assert json.loads(message.encode(JSON))["trace_id"] == "t-1"


def test_node_ivy_02_message() -> None:
    message = decode_message(b'{"name":"factorial","options":{},"args":[5]}', JSON)
    assert (message.name, message.args, message.reply_to, message.legacy) == (
        "factorial", [5], None, True)
    # and what a Python producer sends keeps the fields a Node.js ivy 0.2 worker reads
    sent = json.loads(Message(id="x", name="factorial", args=[5]).encode(JSON))
    assert {"name": "factorial", "options": {}, "args": [5]}.items() <= sent.items()


def test_notification_round_trip_and_error_shape() -> None:
    note = decode_notification(json.dumps(DESIGN_NOTIFICATION).encode(), JSON)
    assert note == Notification("3f2b", "successful", "testpackage.factorial", result=120,
                                worker="host:1234")
    bad = {**DESIGN_NOTIFICATION, "status": "errored", "error": {"type": 1, "message": "m"}}
    with pytest.raises(ivy.MessageError, match="error"):
        decode_notification(json.dumps(bad).encode(), JSON)


def test_remote_error_is_data_only() -> None:
    # an error naming a callable is never imported or called: it stays three strings
    err = ivy.RemoteTaskError.from_wire({"type": "os.system", "message": "rm -rf /"})
    assert (err.type, err.message, err.traceback) == ("os.system", "rm -rf /", "")
    assert isinstance(ivy.RemoteTaskError.from_wire("just text").message, str)


def test_big_integers_and_unicode_survive() -> None:
    body = Message(id="x", name="t", args=[25852016738884976640000, "žluťoučký 🐍"]).encode(JSON)
    assert decode_message(body, JSON).args == [25852016738884976640000, "žluťoučký 🐍"]


def test_size_limit_on_decoding() -> None:
    body = Message(id="x", name="t", args=["x" * 100]).encode(JSON)
    with pytest.raises(ivy.MessageError, match="over the limit of 50 bytes"):
        decode_message(body, JSON, max_bytes=50)


def test_msgpack_round_trip() -> None:
    pack = MsgpackSerializer()
    message = Message(id="x", name="t", args=[1, "a", None, [2.5]])
    assert decode_message(message.encode(pack), pack) == message
    with pytest.raises(ivy.SerializationError):
        pack.dumps({1: "int key"})


# arbitrary bytes for both decoders: tests/core/test_security.py


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from([*sorted(DESIGN_MESSAGE), "x"]), json_values))
def test_arbitrary_json_objects_decode_or_fail_with_a_reason(data: dict[str, object]) -> None:
    try:
        message = decode_message(json.dumps(data).encode(), JSON)
    except ivy.MessageError as exc:
        assert exc.reason
    else:
        assert isinstance(message.name, str) and isinstance(message.args, list)


def test_call_ids_are_unique_hex_across_threads_and_pool_refills() -> None:
    """Ids come from pools of OS random bytes, one per thread, read 256 ids at a time: threads
    taking ids at once, across several refills, never get the same one."""
    import threading

    from ivy.message import new_id

    found: list[list[str]] = [[] for _ in range(4)]

    def take(into: list[str]) -> None:
        into.extend(new_id() for _ in range(2_000))

    threads = [threading.Thread(target=take, args=(into,)) for into in found]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ids = [i for into in found for i in into]
    assert len(set(ids)) == len(ids) == 8_000
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs os.fork")
def test_a_forked_child_never_reuses_its_parents_pooled_ids() -> None:
    """A child forked with part of the pool left must read its own bytes, else parent and
    child (a worker's processes, a forking server) would hand out the same call ids."""
    import os

    from ivy.message import new_id

    new_id()  # the pool now holds ids not handed out yet
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.write(write, "".join(new_id() for _ in range(10)).encode())
        os._exit(0)
    os.waitpid(pid, 0)
    os.close(write)
    child = os.read(read, 4096).decode()
    os.close(read)
    theirs = {child[i + 12:i + 32] for i in range(0, len(child), 32)}  # the random parts
    ours = {new_id()[12:] for _ in range(10)}
    assert len(theirs) == 10 and not theirs & ours


def test_call_ids_sort_by_the_millisecond_they_were_taken() -> None:
    """An id is the time in Unix milliseconds (12 hex digits), then 80 random bits: ids taken
    later sort later, so a store indexed by call id appends."""
    import time

    from ivy.message import new_id

    before = time.time_ns() // 1_000_000
    first = new_id()
    deadline = time.monotonic() + 5
    while (second := new_id())[:12] == first[:12]:  # the next millisecond
        assert time.monotonic() < deadline
    after = time.time_ns() // 1_000_000
    assert before <= int(first[:12], 16) <= int(second[:12], 16) <= after
    assert first < second
    assert len({new_id()[12:] for _ in range(1_000)}) == 1_000


@pytest.mark.parametrize("name", ["message-v1", "message-legacy", "notification-v1"])
def test_each_schema_ships_the_validator_fastjsonschema_generates_for_it(name: str) -> None:
    import importlib
    from pathlib import Path

    import fastjsonschema

    from ivy import schemas

    # Given the validator module shipped beside a schema
    module = importlib.import_module(schemas.module_name(name))
    # Then it was generated from the schema as it is now (python -m ivy.schemas after a change)
    assert schemas.digest(name) == module.SCHEMA_SHA256, "run: python -m ivy.schemas"
    # And, by the fastjsonschema installed here if it is the one that wrote it, as written
    if module.VERSION == fastjsonschema.VERSION:
        shipped = Path(module.__file__).read_text(encoding="utf-8")
        assert shipped == schemas.generated_source(name), "run: python -m ivy.schemas"


@pytest.mark.parametrize(("name", "data"), [
    ("message-v1", DESIGN_MESSAGE),
    ("message-v1", {**DESIGN_MESSAGE, "args": 5}),
    ("message-v1", {**DESIGN_MESSAGE, "id": ""}),
    ("message-v1", {**DESIGN_MESSAGE, "priority": 256}),
    ("message-v1", {**DESIGN_MESSAGE, "reply_to": "elsewhere"}),
    ("message-v1", {k: v for k, v in DESIGN_MESSAGE.items() if k != "name"}),
    ("message-legacy", {"name": "t", "args": []}),
    ("message-legacy", {"name": 3, "args": []}),
    ("notification-v1", DESIGN_NOTIFICATION),
    ("notification-v1", {**DESIGN_NOTIFICATION, "status": "lost"}),
    ("notification-v1", {**DESIGN_NOTIFICATION, "attempt": -1}),
])
def test_a_shipped_validator_judges_as_a_runtime_compile_does(name: str, data: object) -> None:
    import fastjsonschema

    from ivy import message

    def verdict(validate: object) -> str:
        try:
            validate(json.loads(json.dumps(data)))  # type: ignore[operator]
        except fastjsonschema.JsonSchemaException as exc:
            return f"refused: {exc}"
        return "valid"

    assert verdict(message._validator(name)) == verdict(fastjsonschema.compile(load_schema(name)))


def test_decoding_compiles_nothing_and_threads_share_one_validator(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    import fastjsonschema

    from ivy import message

    # Given no validator loaded yet, and a runtime compile that would fail the test
    monkeypatch.setattr(message, "_validators", {})

    def compile_(schema: object) -> object:
        raise AssertionError("a validator was compiled at run time")

    monkeypatch.setattr(fastjsonschema, "compile", compile_)
    gate = threading.Barrier(4)
    got: list[object] = []

    def ask() -> None:
        gate.wait(10)
        got.append(message._validator("message-v1"))

    # When four threads ask for it at once (a worker's executors on their first messages)
    threads = [threading.Thread(target=ask) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    # Then all four got the shipped one, and a message and a notification decode
    assert len(got) == 4 and all(v is got[0] for v in got)
    assert decode_message(json.dumps(DESIGN_MESSAGE).encode(), JSON).name == DESIGN_MESSAGE[
        "name"]
    assert decode_notification(json.dumps(DESIGN_NOTIFICATION).encode(), JSON).status == (
        "successful")
