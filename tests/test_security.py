"""Hostile input and signed messages: every bad body is a decode error with a reason or a dead
letter, nothing named on the wire is ever imported or called, and HMAC signatures are checked
over the exact bytes."""

from __future__ import annotations

import base64
import json
import os
import uuid
from typing import Any

import pytest
from conftest import json_values, wait_for
from hypothesis import given, settings
from hypothesis import strategies as st

import ivy
from ivy.message import Notification, decode_message, decode_notification
from ivy.serialization import JSONSerializer, Signer, unwrap

JSON = JSONSerializer()


# -- decoders never let anything else escape ------------------------------------------------


@pytest.mark.parametrize("decode", [decode_message, decode_notification])
@settings(max_examples=300, deadline=None)
@given(body=st.binary(max_size=400))
def test_decoders_take_arbitrary_bytes(decode: Any, body: bytes) -> None:
    try:
        decode(body, JSON)
    except ivy.MessageError as exc:
        assert exc.reason


note_keys = ["ivy", "id", "name", "status", "result", "error", "attempt", "worker", "x"]


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(note_keys), json_values))
def test_notification_decoder_takes_arbitrary_json(data: dict[str, Any]) -> None:
    try:
        note = decode_notification(json.dumps(data).encode(), JSON)
    except ivy.MessageError as exc:
        assert exc.reason
    else:
        assert note.status in ("scheduled", "running", "successful", "errored")


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_signed_decoders_take_arbitrary_bytes(body: bytes) -> None:
    signer = Signer("k")
    for decode in (decode_message, decode_notification):
        try:
            decode(body, JSON, signer=signer)
        except ivy.MessageError as exc:
            assert exc.reason


def test_deep_nesting_is_refused_on_both_sides(app: ivy.Ivy) -> None:
    deep: Any = 1
    for _ in range(100):
        deep = [deep]
    body = json.dumps({"ivy": 1, "id": "d", "name": "t.x", "args": [deep]}).encode()
    with pytest.raises(ivy.MessageError, match="deeper than the limit of 64"):
        decode_message(body, JSON)

    @app.register_task(name="t.x", queue="q")
    def x(value: Any) -> None: ...

    with pytest.raises(ivy.SerializationError, match="nest deeper than 64"):
        app.delayed_call(x, deep)


def test_error_named_on_the_wire_is_data_never_imported(monkeypatch: pytest.MonkeyPatch) -> None:
    # The class of bug behind CVE-2021-23727: a result backend that imports the exception type
    # named in an error. ivy keeps it as three strings.
    called: list[Any] = []
    monkeypatch.setattr(os, "system", lambda *a: called.append(a))
    app = ivy.Ivy(f"memory://{uuid.uuid4().hex}", f"memory://{uuid.uuid4().hex}")

    @app.register_task(name="t.victim", queue="nobody")
    def victim() -> None: ...

    call = app.delayed_call(victim)
    forged = json.dumps({"ivy": 1, "id": call.id, "status": "errored", "error": {
        "type": "system", "message": "touch /tmp/pwned", "traceback": "",
        "exc_module": "os", "exc_type": "system", "args": ["touch /tmp/pwned"]}}).encode()
    app._dispatch(forged)
    with pytest.raises(ivy.RemoteTaskError) as exc:
        call.result(1)
    assert (exc.value.type, exc.value.message) == ("system", "touch /tmp/pwned")
    assert called == []
    app.close()


# -- a live worker dead-letters every kind of bad message ---------------------------------------

FIELDS_WRONG = {"ivy": "1", "id": 7, "name": ["t.ok"], "args": {"a": 1}, "kwargs": [1],
                "options": "x", "queue": 5, "reply_to": 5, "attempt": -1, "max_retries": "3",
                "priority": 1000, "eta": "soon", "created_ms": -5}


def corpus() -> dict[str, bytes]:
    good = {"ivy": 1, "id": "c", "name": "t.ok", "args": [1]}
    deep: Any = 0
    for _ in range(80):
        deep = {"a": deep}
    items = {
        "truncated": json.dumps(good).encode()[:-5],
        "non-UTF-8": b'{"ivy":1,"id":"\xff\xfe","name":"t.ok","args":[1]}',
        "huge args": json.dumps({**good, "args": ["x" * 2_000_000]}).encode(),
        "deep nesting": json.dumps({**good, "args": [deep]}).encode(),
        "unknown protocol version": json.dumps({**good, "ivy": 3}).encode(),
        "unknown task": json.dumps({**good, "name": "t.nope"}).encode(),
        "module attribute": json.dumps({**good, "name": "os.system", "args": ["id"]}).encode(),
        "legacy with extra fields": b'{"name":"t.ok","options":{},"args":[1],"reply_to":"x"}',
    }
    for field, value in FIELDS_WRONG.items():
        items[f"wrong type: {field}"] = json.dumps({**good, field: value}).encode()
    return items


def test_every_bad_message_is_dead_lettered_and_the_worker_keeps_serving(
        app: ivy.Ivy) -> None:
    runs: list[int] = []

    @app.register_task(name="t.ok", queue="q")
    def ok(n: int) -> int:
        runs.append(n)
        return n

    app.listen(queue="q", block=False)
    bad = corpus()
    for body in bad.values():
        app.queue_backend.publish("q", body)
    wait_for(lambda: len(app.queue_backend.dead_letters("q", 100)) == len(bad), timeout=30,
             message=f"{len(bad)} dead letters")
    dead = app.queue_backend.dead_letters("q", 100)
    assert all(d.reason for d in dead)
    assert runs == []  # nothing bad ran
    assert app.delayed_call(ok, 5).result(20) == 5


# -- signatures ---------------------------------------------------------------------------------


def test_sign_verify_and_tamper() -> None:
    signer = Signer("secret")
    sealed = signer.sign(b'{"ivy":1}')
    assert unwrap(sealed, signer) == b'{"ivy":1}'
    envelope = json.loads(sealed)
    envelope["body"] = base64.b64encode(b'{"ivy":2}').decode()
    with pytest.raises(ValueError, match="does not match"):
        unwrap(json.dumps(envelope).encode(), signer)
    with pytest.raises(ValueError, match="unsigned"):
        unwrap(b'{"ivy":1}', signer)
    # a side without a key still reads signed bodies
    assert unwrap(sealed, None) == b'{"ivy":1}'


def test_key_rotation() -> None:
    old, new = Signer("old"), Signer(["new", "old"])
    assert unwrap(old.sign(b"x"), new) == b"x"  # old messages still verify during rotation
    assert unwrap(new.sign(b"y"), Signer(["new"])) == b"y"
    with pytest.raises(ValueError, match="unknown key"):
        unwrap(new.sign(b"z"), Signer("old"))


def signed_app(key: Any, url: str) -> ivy.Ivy:
    return ivy.Ivy(url, url, signing_key=key, retry_base_delay=0.01)


def test_signed_round_trip_and_rejections() -> None:
    url = f"memory://{uuid.uuid4().hex}"
    # mid-rotation: the producer still signs with k1, the worker already with k2; both
    # verify both
    producer = signed_app(["k1", "k2"], url)
    worker = signed_app(["k2", "k1"], url)
    runs: list[int] = []
    for app in (producer, worker):
        @app.register_task(name="t.echo", queue="q")
        def echo(n: int) -> int:
            runs.append(n)
            return n

    worker.listen(queue="q", block=False)
    call = producer.delayed_call("t.echo", 1)
    assert call.result(10) == 1
    stored = worker.start_notification_producer().stored(call.id)
    assert stored is not None and stored.startswith(b'{"ivy_signed"')
    # an unsigned message and a tampered one are dead-lettered without running anything
    backend = worker.queue_backend
    backend.publish("q", json.dumps({"ivy": 1, "id": "u", "name": "t.echo", "args": [2],
                                     "reply_to": producer.channel}).encode())
    envelope = json.loads(Signer("k1").sign(json.dumps(
        {"ivy": 1, "id": "t", "name": "t.echo", "args": [3]}).encode()))
    envelope["body"] = base64.b64encode(json.dumps(
        {"ivy": 1, "id": "t", "name": "t.echo", "args": [4]}).encode()).decode()
    backend.publish("q", json.dumps(envelope).encode())
    wait_for(lambda: len(backend.dead_letters("q")) == 2, message="two dead letters")
    reasons = sorted(d.reason for d in backend.dead_letters("q"))
    assert "signature does not match" in reasons[0] and "unsigned" in reasons[1]
    assert runs == [1]
    producer.close()
    worker.close()


def test_producer_ignores_unsigned_or_forged_results(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IVY_SIGNING_KEY", "k9,k8")
    url = f"memory://{uuid.uuid4().hex}"
    app = ivy.Ivy(url, url)
    assert app.signer is not None and len(app.signer.keys) == 2

    @app.register_task(name="t.v", queue="nobody")
    def v() -> int:
        return 1

    call = app.delayed_call(v)
    forged = Notification(call.id, "successful", result="forged").encode(JSON)
    app._dispatch(forged)  # unsigned: ignored
    app._dispatch(Signer("other").sign(forged))  # signed with a key we do not hold: ignored
    assert not call.done()
    app._dispatch(app.seal(Notification(call.id, "successful", result="real").encode(JSON)))
    assert call.result(1) == "real"
    app.close()
