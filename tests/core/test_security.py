"""Hostile input and signed messages: every bad body is a decode error with a reason or a dead
letter, nothing named on the wire is ever imported or called, and HMAC signatures are checked
over the exact bytes."""

from __future__ import annotations

import base64
import json
import math
import os
import sqlite3
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from common import json_values, wait_for
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
    forged = json.dumps({"ivy": 1, "id": call.id, "nonce": call.nonce, "status": "errored",
                         "error": {
        "type": "system", "message": "touch /tmp/pwned", "traceback": "",
        "exc_module": "os", "exc_type": "system", "args": ["touch /tmp/pwned"]}}).encode()
    app.backends.results.dispatch(forged)
    with pytest.raises(ivy.RemoteTaskError) as exc:
        call.result(1)
    assert (exc.value.type, exc.value.message) == ("system", "touch /tmp/pwned")
    assert called == []
    app.close()


# -- a live worker dead-letters every kind of bad message ---------------------------------------

FIELDS_WRONG = {"ivy": "1", "id": 7, "name": ["t.ok"], "args": {"a": 1}, "kwargs": [1],
                "options": "x", "queue": 5, "reply_to": 5, "attempt": -1, "max_retries": "3",
                "priority": 1000, "eta": "soon", "created_ms": -5}


#: numbers past the schema's maximums: each overflowed the worker's arithmetic (issue 28)
OUT_OF_BOUNDS: dict[str, dict[str, Any]] = {
    "eta": {"eta": 10**400},
    "eta past 2**53 - 1": {"eta": 2**53},
    "attempt": {"attempt": 10_001, "max_retries": 10_002},
    "max_retries": {"max_retries": 10**30},
    "created_ms": {"created_ms": 10**400},
    "unique_until": {"unique_key": "k", "unique_until": 10**400},
}


#: bodies that the JSON decoder itself turns away: past the float range, past Python's limit
#: on integer digits, nested past the recursion limit (issue 28, finding 15)
NUMBERS_AND_NESTING = {
    "1e999": b'{"ivy":1,"id":"c","name":"t.ok","args":[1e999]}',
    "-1e999 in kwargs": b'{"ivy":1,"id":"c","name":"t.ok","args":[],"kwargs":{"n":-1e999}}',
    "5,000-digit integer": b'{"ivy":1,"id":"c","name":"t.ok","args":[' + b"9" * 5000 + b"]}",
    "deep JSON": b'{"ivy":1,"id":"c","name":"t.ok","args":[' + b"[" * 100_000 + b"]}",
    "deep JSON alone": b"[" * 100_000,
}


@pytest.mark.parametrize("kind", list(NUMBERS_AND_NESTING))
def test_numbers_and_nesting_json_cannot_carry_are_refused(kind: str) -> None:
    with pytest.raises(ivy.MessageError, match="message is not valid json: "):
        decode_message(NUMBERS_AND_NESTING[kind], JSON)
    sealed = Signer(KEY).sign(NUMBERS_AND_NESTING[kind])
    with pytest.raises(ivy.MessageError, match="message is not valid json: "):
        decode_message(sealed, JSON, signer=Signer(KEY))


def test_a_short_signing_key_is_taken_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING", logger="ivy"):
        Signer(["k" * 32, b"short"])
    [record] = caplog.records
    assert record.levelname == "WARNING"
    assert f"signing key {Signer.key_id(b'short')} is 5 bytes" in record.getMessage()
    assert "short" not in record.getMessage().replace("is 5 bytes", "")


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
        "sent to another queue": json.dumps({**good, "queue": "elsewhere"}).encode(),
        "duplicate name": b'{"ivy":1,"id":"c","name":"t.nope","name":"t.ok","args":[1]}',
        "duplicate args": b'{"ivy":1,"id":"c","name":"t.ok","args":[1],"args":[2]}',
        **NUMBERS_AND_NESTING,
    }
    for field, value in FIELDS_WRONG.items():
        items[f"wrong type: {field}"] = json.dumps({**good, field: value}).encode()
    for field, value in OUT_OF_BOUNDS.items():
        items[f"out of bounds: {field}"] = json.dumps({**good, **value}).encode()
    return items


def test_every_bad_message_is_dead_lettered_and_the_worker_keeps_serving(
        live: tuple[str, str, str]) -> None:
    served = Served(live)
    try:
        served.check(corpus())
    finally:
        served.close()


# -- the same on live backends, each body put in with the backend's own client ---------------

#: the worker's signing key in the signed-mode tests
KEY = "k" * 32
GOOD = {"ivy": 1, "id": "g", "name": "t.ok", "args": [1]}


def envelope(signature: Any, body: dict[str, Any] | None = None) -> bytes:
    """A signature envelope naming the worker's key, with ``signature`` as given."""
    inner = json.dumps(body or GOOD).encode()
    return json.dumps({"ivy_signed": 1, "alg": "HMAC-SHA256", "key_id": Signer.key_id(
        KEY.encode()), "signature": signature, "body": base64.b64encode(inner).decode()},
        ensure_ascii=False).encode()


def signed_corpus() -> dict[str, bytes]:
    """Bodies that a worker with a signing key must dead-let without running them."""
    return {
        "non-ASCII signature": envelope("é" * 64),
        "non-ASCII short signature": envelope("\u2603"),
        "non-hex signature": envelope("g" * 64),
        "upper-case hex signature": envelope("A" * 64),
        "signature a number": envelope(12345),
        "signature null": envelope(None),
        "signature an object": envelope({"a": "é"}),
    }


@pytest.fixture(params=["sqlite", "redis-streams", "amqp"])
def live(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str, str]]:
    """(queue URL, notifier URL, a queue name of this test's own): SQLite, Redis Streams,
    RabbitMQ (with Redis for results). The queue is deleted afterwards; shared names are never
    touched."""
    queue = f"ivy-sec-{uuid.uuid4().hex[:12]}"
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'ivy.db'}"
        yield url, url, queue
        return
    redis_url: str = request.getfixturevalue("redis_url")
    if request.param == "redis-streams":
        from ivy.queues.redis_streams import RedisStreamsQueueBackend

        yield redis_url, redis_url, queue
        backend = RedisStreamsQueueBackend(redis_url)
        backend.delete_queues([queue])
        backend.close()
        return
    amqp_url: str = request.getfixturevalue("amqp_url")  # this run's vhost, made if needed
    from ivy.queues.amqp import AMQPQueueBackend

    yield amqp_url, redis_url, queue
    amqp = AMQPQueueBackend(amqp_url)
    amqp.delete_queues([queue, f"{queue}.dead"])
    amqp.close()


def inject(url: str, queue: str, body: bytes) -> None:
    """Put ``body`` into ``queue`` with the backend's own client, not through ivy: an INSERT
    into the SQLite table, an XADD to the Redis stream, a basic_publish to RabbitMQ."""
    if url.startswith("sqlite:"):
        conn = sqlite3.connect(url.removeprefix("sqlite:///"), timeout=10)
        with conn:
            conn.execute("INSERT INTO ivy_messages (queue, body, available_at, created) "
                         "VALUES (?, ?, ?, ?)", (queue, body, time.time(), time.time()))
        conn.close()
    elif url.startswith("redis"):
        import redis

        client = redis.Redis.from_url(url)
        client.xadd(f"ivy:{{{queue}}}", {"b": body})
        client.close()
    else:
        import pika

        connection = pika.BlockingConnection(pika.URLParameters(url))
        connection.channel().basic_publish("", queue, body,
                                           pika.BasicProperties(delivery_mode=2))
        connection.close()


class Served:
    """A worker on a live backend serving ``t.ok`` (which records its runs) and ``t.fail``
    (which records its runs and raises) on a queue of its own."""

    def __init__(self, live: tuple[str, str, str], **options: Any) -> None:
        queue_url, notifier_url, self.queue = live
        self.url = queue_url
        self.app = ivy.Ivy(queue_url, notifier_url, retry_base_delay=0.01,
                           retry_max_delay=0.05, **options)
        self.runs: list[Any] = []
        self.failures: list[Any] = []

        @self.app.register_task(name="t.ok", queue=self.queue)
        def ok(n: int) -> int:
            self.runs.append(n)
            return n

        @self.app.register_task(name="t.fail", queue=self.queue)
        def fail(n: int) -> None:
            self.failures.append(n)
            raise RuntimeError("fails")

        self.worker = self.app.listen(queue=self.queue, block=False)
        # the worker is up and its queue exists before anything is put in by hand
        assert self.app.delayed_call("t.ok", 0).result(30) == 0

    def dead(self) -> dict[bytes, str]:
        return {d.body: d.reason for d in self.app.queue_backend.dead_letters(self.queue, 200)}

    def check(self, bodies: dict[str, bytes], timeout: float = 30) -> dict[bytes, str]:
        """Put each body in by hand; each is dead-lettered with a reason, none runs ``t.ok``,
        and the worker still serves a good call sent afterwards. Returns body -> reason."""
        for body in bodies.values():
            inject(self.url, self.queue, body)
        wanted = set(bodies.values())
        wait_for(lambda: wanted <= set(self.dead()), timeout=timeout,
                 message=f"dead letters of {sorted(bodies)}")
        dead = self.dead()
        assert all(dead[b] for b in wanted)
        assert self.worker.running
        assert self.app.delayed_call("t.ok", 5).result(30) == 5
        assert self.runs == [0, 5]  # nothing bad ran
        return dead

    def close(self) -> None:
        self.app.close()


def test_signed_worker_dead_letters_signatures_of_any_text(
        live: tuple[str, str, str]) -> None:
    # Given a worker with a signing key
    served = Served(live, signing_key=KEY)
    try:
        # When envelopes whose signature is not a hex digest are put straight into its queue
        dead = served.check(signed_corpus())
        # Then each was refused for its signature, not retried as an internal error
        assert all("signature is not 64 lowercase hex digits" in dead[b]
                   for b in signed_corpus().values())
    finally:
        served.close()


def test_numbers_past_the_maximums_are_refused_by_the_schema(
        live: tuple[str, str, str]) -> None:
    served = Served(live)
    try:
        bodies = {k: v for k, v in corpus().items() if k.startswith("out of bounds")}
        dead = served.check(bodies)
        # refused as what they are, not after looping as internal errors
        assert all("must be smaller than or equal to" in dead[b] for b in bodies.values())
    finally:
        served.close()


def test_a_high_attempt_number_is_retried_within_bounds(live: tuple[str, str, str]) -> None:
    served = Served(live)
    try:
        # Given a call that fails, on attempt 1100 of 1102 (2.0 ** 1100 overflows a float)
        body = json.dumps({"ivy": 1, "id": "high", "name": "t.fail", "args": [1],
                           "attempt": 1100, "max_retries": 1101}).encode()
        inject(served.url, served.queue, body)
        # Then it is retried once, after a bounded backoff, and dead-lettered after its last
        wait_for(lambda: served.dead(), timeout=30, message="a dead letter")
        [(last, reason)] = served.dead().items()
        assert json.loads(last)["attempt"] == 1101
        assert reason.startswith("task 't.fail' failed 1102 times")
        assert served.failures == [1, 1]
        assert served.app.delayed_call("t.ok", 5).result(30) == 5
    finally:
        served.close()


def test_backoff_is_bounded_for_any_attempt() -> None:
    app = ivy.Ivy(f"memory://{uuid.uuid4().hex}", retry_base_delay=0.5, retry_max_delay=60)
    try:
        for attempt in (0, 1, 31, 32, 1100, 10**6, 10**400):
            assert 0 < app.backoff(attempt) <= 60
    finally:
        app.close()


def test_schema_bounds_and_task_options_agree() -> None:
    from ivy.message import MAX_RETRIES, MAX_TIMESTAMP_MS, load_schema

    fields = load_schema("message-v1")["properties"]
    assert fields["attempt"]["maximum"] == fields["max_retries"]["maximum"] == MAX_RETRIES
    assert fields["eta"]["maximum"] == fields["created_ms"]["maximum"] == MAX_TIMESTAMP_MS
    app = ivy.Ivy(f"memory://{uuid.uuid4().hex}")
    try:
        with pytest.raises(ivy.ConfigurationError, match="from 0 to 10000"):
            app.register_task(lambda: None, name="t.many", max_retries=MAX_RETRIES + 1)
    finally:
        app.close()


class Touchy(JSONSerializer):
    """JSON, whose ``loads`` has a bug: a body holding ``boom`` raises KeyError."""

    def loads(self, data: bytes) -> Any:
        if b"boom" in data:
            raise KeyError("boom")
        return super().loads(data)


def test_whatever_decoding_raises_dead_letters_the_message(live: tuple[str, str, str]) -> None:
    # Given a worker whose serializer raises something other than ValueError on some bodies
    served = Served(live, serializer=Touchy())
    try:
        # When such a body is put straight into its queue
        body = json.dumps({**GOOD, "args": ["boom"]}).encode()
        dead = served.check({"serializer bug": body})
        # Then it is dead-lettered at once, naming the error, not returned to the queue
        assert dead[body] == "message could not be decoded: KeyError: 'boom'"
    finally:
        served.close()


def test_internal_errors_of_one_body_are_capped(live: tuple[str, str, str],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from ivy.worker.gate import Gate
    from ivy.worker.processing import MAX_INTERNAL_ERRORS

    # Given a worker with a bug that raises on one message, each time it is delivered
    admit = Gate.admit
    seen: list[str] = []

    def buggy(self: Gate, delivery: Any, task: Any, message: Any) -> bool:
        if message.id == "loop":
            seen.append(message.id)
            raise RuntimeError("a bug")
        return admit(self, delivery, task, message)

    monkeypatch.setattr(Gate, "admit", buggy)
    served = Served(live)
    try:
        # When that message is put straight into its queue
        body = json.dumps({**GOOD, "id": "loop"}).encode()
        dead = served.check({"internal error": body})
        # Then it was returned a few times, then dead-lettered naming the error
        assert len(seen) == MAX_INTERNAL_ERRORS
        assert dead[body].startswith(f"internal error {MAX_INTERNAL_ERRORS} times on worker ")
        assert dead[body].endswith("the last: RuntimeError: a bug")
    finally:
        served.close()


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


@pytest.mark.parametrize("signature", list(signed_corpus()))
def test_a_signature_that_is_not_hex_is_refused_with_a_reason(signature: str) -> None:
    with pytest.raises(ivy.MessageError, match="signature is not 64 lowercase hex digits"):
        decode_message(signed_corpus()[signature], JSON, signer=Signer(KEY))


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


def test_a_refused_signature_reaches_its_producer_as_the_reason() -> None:
    # Given a worker that requires signatures and a producer that signs with another key, or
    # not at all (a misconfiguration, the usual way to meet a refusal)
    url = f"memory://{uuid.uuid4().hex}"
    worker = signed_app("worker-key-0123456789abcdef0123456789", url)
    unsigned = ivy.Ivy(url, url)
    other_key = signed_app("other-key-0123456789abcdef0123456789", url)
    runs: list[int] = []
    for app in (worker, unsigned, other_key):
        @app.register_task(name="t.echo", queue="q")
        def echo(n: int) -> int:
            runs.append(n)
            return n

    worker.listen(queue="q", block=False)
    # When each sends a call
    started = time.monotonic()
    with pytest.raises(ivy.RemoteTaskError, match="unsigned: this side requires") as refused:
        unsigned.delayed_call("t.echo", 1).result(20)
    # Then the unsigned producer learns why at once, not after its timeout
    assert time.monotonic() - started < 10 and refused.value.type == "MessageRejected"
    # and the producer with another key cannot verify the worker's note, but its timeout
    # names both refusals instead of asking whether a worker listens
    with pytest.raises(ivy.ResultTimeout, match="signed with unknown key"):
        other_key.delayed_call("t.echo", 2).result(2)
    assert runs == []
    for app in (worker, unsigned, other_key):
        app.close()


def test_a_forged_unsigned_body_cannot_fail_a_signed_call() -> None:
    # Given a signed producer's call waiting for a worker that is not running yet
    url = f"memory://{uuid.uuid4().hex}"
    producer = signed_app("shared-key-0123456789abcdef0123456789", url)
    worker = signed_app("shared-key-0123456789abcdef0123456789", url)
    for app in (producer, worker):
        @app.register_task(name="t.echo", queue="q")
        def echo(n: int) -> int:
            return n

    call = producer.delayed_call("t.echo", 5)
    # When a writer to the queue without the key puts in bodies naming that call: without a
    # nonce, and with a guessed one
    for extra in ({}, {"nonce": "0" * 20}):
        worker.queue_backend.publish("q", json.dumps(
            {"ivy": 1, "id": call.id, "name": "t.echo", "args": [6],
             "reply_to": producer.channel, **extra}).encode())
    worker.listen(queue="q", block=False)
    # Then both are dead-lettered and the call still gets its own result
    assert call.result(20) == 5
    wait_for(lambda: len(worker.queue_backend.dead_letters("q")) == 2, message="dead letters")
    for app in (producer, worker):
        app.close()


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
    app.backends.results.dispatch(forged)  # unsigned: ignored
    # signed with a key we do not hold: ignored
    app.backends.results.dispatch(Signer("other").sign(forged))
    assert not call.done()
    app.backends.results.dispatch(app.seal(Notification(call.id, "successful", result="real",
                                        nonce=call.nonce).encode(JSON)))
    assert call.result(1) == "real"
    app.close()


# -- fuzzing the decode layer -------------------------------------------------------------------

MESSAGE_KEYS = ["ivy", "id", "name", "args", "kwargs", "options", "queue", "reply_to",
                "attempt", "max_retries", "priority", "eta", "created_ms", "headers",
                "workflow", "unique_key", "unique_until", "x"]
#: number tokens that json.dumps never writes but a hostile producer can
RAW_NUMBERS = ["1e999", "-1e999", "9" * 5000, "1" + "0" * 400, "2e308", "1e-999", "-0",
               "NaN", "Infinity", "-Infinity", "1.7976931348623157e308", "9007199254740992"]


class Raw:
    """A JSON token written as is."""

    def __init__(self, text: str) -> None:
        self.text = text


def _text(value: Any) -> str:
    if isinstance(value, Raw):
        return value.text
    if isinstance(value, list):
        return "[" + ",".join(map(_text, value)) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(k)}:{_text(v)}" for k, v in value.items()) + "}"
    return json.dumps(value)


hostile_values = st.recursive(
    json_values | st.sampled_from(RAW_NUMBERS).map(Raw)
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.sampled_from([10_000, 10_001, 2**53 - 1, 2**53, 2**63]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                max_size=3),
    max_leaves=8)


@st.composite
def message_bodies(draw: st.DrawFn, names: tuple[str, ...] = ("t.ok", "t.nope", "os.system"),
                   keys: tuple[str, ...] = tuple(MESSAGE_KEYS)) -> bytes:
    """Message bodies from nearly valid to hostile: a valid core with fields overwritten or
    dropped, or any JSON object of message keys, numbers JSON cannot carry included."""
    fields: dict[str, Any] = {}
    if draw(st.booleans()):
        fields = {"ivy": 1, "id": "f", "name": draw(st.sampled_from(names)), "args": [1]}
        for key in draw(st.lists(st.sampled_from(list(fields)), max_size=2)):
            fields.pop(key, None)
    fields.update(draw(st.dictionaries(st.sampled_from(keys), hostile_values, max_size=4)))
    if "name" in fields and not isinstance(fields["name"], str) and draw(st.booleans()):
        fields["name"] = draw(st.sampled_from(names))
    return _text(fields).encode()


@st.composite
def deliveries(draw: st.DrawFn) -> tuple[bytes, Signer | None]:
    """(body, the worker's signer): unsigned bodies to a worker without a key, and to one
    with a key bodies signed with it, signed with another, or with a signature of any text."""
    inner = draw(message_bodies() | st.binary(max_size=200))
    mode = draw(st.sampled_from(["off", "signed", "other key", "forged", "unverified"]))
    if mode == "off":
        return inner, None
    signer = Signer(KEY)
    if mode in ("signed", "unverified"):
        return signer.sign(inner), None if mode == "unverified" else signer
    if mode == "other key":
        return Signer("o" * 32).sign(inner), signer
    signature = draw(st.text(max_size=70) | st.sampled_from(["0" * 64, "A" * 64])
                     | hostile_values)
    envelope = {"ivy_signed": 1, "alg": draw(st.sampled_from(["HMAC-SHA256", "none"])),
                "key_id": draw(st.sampled_from([Signer.key_id(KEY.encode()), "x"])),
                "signature": signature, "body": base64.b64encode(inner).decode()}
    return _text(envelope).encode(), signer


def _finite(value: Any) -> bool:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            return False
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return True


@settings(max_examples=300, deadline=None)
@given(deliveries())
def test_fuzzed_deliveries_decode_or_give_a_reason(delivery: tuple[bytes, Signer | None]) -> None:
    from ivy.message import MAX_RETRIES, MAX_TIMESTAMP_MS

    body, signer = delivery
    # what the worker calls on a delivery's bytes (ivy.worker.processing)
    try:
        message = decode_message(body, JSON, signer=signer)
    except ivy.MessageError as exc:
        assert exc.reason
        return
    # a message that decodes can be run and settled without overflowing anything
    assert 0 <= message.attempt <= MAX_RETRIES and 0 <= message.max_retries <= MAX_RETRIES
    assert message.eta is None or 0 <= message.eta <= MAX_TIMESTAMP_MS
    assert _finite([message.args, message.kwargs, message.options])
    JSON.dumps(message.to_dict())  # it can be sent again (a retry)


def test_a_worker_survives_fuzzed_bodies(tmp_path: Path) -> None:
    # Given a couple of dozen fuzzed bodies (no eta: a deferred call would wait its time)
    bodies: list[bytes] = []

    @settings(max_examples=30, deadline=None, database=None)
    @given(message_bodies(names=("t.ok", "t.nope"),
                          keys=tuple(k for k in MESSAGE_KEYS if k != "eta")))
    def collect(body: bytes) -> None:
        bodies.append(body)

    collect()
    url = f"sqlite:///{tmp_path / 'ivy.db'}"
    served = Served((url, url, f"ivy-sec-{uuid.uuid4().hex[:12]}"))
    try:
        # When they are put straight into its queue
        for body in bodies:
            inject(url, served.queue, body)
        # Then each one either runs or is dead-lettered with a reason; none stays
        backend = served.app.queue_backend
        wait_for(lambda: backend.size(served.queue) == 0, timeout=30,
                 message="every fuzzed body to be settled")
        dead = backend.dead_letters(served.queue, 200)
        assert all(d.reason for d in dead)
        assert len(served.runs) - 1 + len(dead) == len(bodies)
        # and the worker still serves
        assert served.worker.running
        assert served.app.delayed_call("t.ok", 5).result(30) == 5
    finally:
        served.close()


# -- reply_to names a channel, nothing else (issue 28, #3) ---------------------------------------

def hostile_replies(work_queue: str) -> dict[str, bytes]:
    """Bodies whose ``reply_to`` (or workflow's) is not a producer's channel: a name reserved
    by RabbitMQ, names over 255 bytes, a work queue's name, a channel with other characters."""
    good = {**GOOD, "id": "r"}
    flow = {"id": "w", "next": []}
    return {
        "amq. name": json.dumps({**good, "reply_to": "amq.evil"}).encode(),
        "amq.gen name": json.dumps({**good, "reply_to": "amq.gen-abc"}).encode(),
        "over 255 bytes": json.dumps({**good, "reply_to": "x" * 300}).encode(),
        "channel over 255 bytes": json.dumps(
            {**good, "reply_to": "ivy:notify:" + "a" * 300}).encode(),
        "a work queue": json.dumps({**good, "reply_to": work_queue}).encode(),
        "channel with dots": json.dumps({**good, "reply_to": "ivy:notify:a.b"}).encode(),
        "workflow amq. name": json.dumps(
            {**good, "reply_to": None, "workflow": {**flow, "reply_to": "amq.evil"}}).encode(),
        "schema-invalid, amq. name": json.dumps(
            {**good, "args": "x", "reply_to": "amq.evil"}).encode(),
    }


@pytest.mark.parametrize("reply_to", ["amq.evil", "x" * 300, "orders", "ivy:notify:",
                                      "ivy:notify:a b", "ivy:notify:" + "a" * 65])
def test_a_reply_to_that_is_not_a_channel_is_refused(reply_to: str) -> None:
    body = json.dumps({**GOOD, "reply_to": reply_to}).encode()
    with pytest.raises(ivy.MessageError, match="is not a notification channel") as exc:
        decode_message(body, JSON)
    assert "reply_to" not in exc.value.fields  # never published to


@pytest.mark.parametrize("reply_to", ["ivy:notify:9a8b7c6d5e4f40312233445566778899",
                                      "ivy:notify:abc", "ivy:notify:some-one_2", None])
def test_a_producers_channel_is_taken(reply_to: str | None) -> None:
    body = json.dumps({**GOOD, "reply_to": reply_to}).encode()
    assert decode_message(body, JSON).reply_to == reply_to


def test_hostile_reply_to_is_dead_lettered_on_every_backend(live: tuple[str, str, str]) -> None:
    served = Served(live)
    try:
        bodies = hostile_replies(served.queue)
        dead = served.check(bodies)
        assert all("is not a notification channel" in dead[b] for k, b in bodies.items()
                   if not k.startswith("schema-invalid"))
        # the work queue named as a reply_to got no notification JSON (the last call's ack
        # may follow its result by a moment)
        wait_for(lambda: served.app.queue_backend.size(served.queue) == 0,
                 message="an empty work queue")
        assert served.runs == [0, 5]
    finally:
        served.close()


@pytest.fixture
def amqp_only(request: pytest.FixtureRequest) -> Iterator[tuple[str, str, str]]:
    """RabbitMQ for the queue and the notifier (the notifier whose connection #3 broke)."""
    from common import amqp_notifier_url

    url: str = request.getfixturevalue("amqp_url")
    from ivy.queues.amqp import AMQPQueueBackend

    queue = f"ivy-sec-{uuid.uuid4().hex[:12]}"
    yield url, amqp_notifier_url(url), queue
    amqp = AMQPQueueBackend(url)
    amqp.delete_queues([queue, f"{queue}.dead"])
    amqp.close()


def test_hostile_reply_to_does_not_stall_the_amqp_notifier(
        amqp_only: tuple[str, str, str]) -> None:
    # Given a worker on RabbitMQ with the RabbitMQ notifier
    served = Served(amqp_only)
    try:
        # When messages naming amq.* or over-long reply queues are put in with pika
        bodies = hostile_replies(served.queue)
        for body in bodies.values():
            inject(served.url, served.queue, body)
        wanted = set(bodies.values())
        wait_for(lambda: wanted <= set(served.dead()), timeout=20, message="dead letters")
        # Then a legitimate call still completes promptly: the notify connection is intact
        started = time.monotonic()
        assert served.app.delayed_call("t.ok", 5).result(10) == 5
        assert time.monotonic() - started < 5
        assert served.runs == [0, 5]
        assert served.worker.running
    finally:
        served.close()


def test_a_refused_reply_queue_fails_alone(amqp_only: tuple[str, str, str]) -> None:
    import pika

    # Given a worker on RabbitMQ with the RabbitMQ notifier, and a reply queue of the right
    # form that someone else holds as an exclusive queue (405 RESOURCE_LOCKED to the worker)
    served = Served(amqp_only)
    locked = f"ivy:notify:locked{uuid.uuid4().hex[:8]}"
    holder = pika.BlockingConnection(pika.URLParameters(served.url))
    try:
        holder.channel().queue_declare(locked, exclusive=True)
        # When a call naming it as its reply_to is put in with pika, twice
        for n in (1, 2):
            inject(served.url, served.queue, json.dumps(
                {**GOOD, "id": f"locked-{n}", "args": [7], "reply_to": locked}).encode())
        wait_for(lambda: 7 in served.runs, timeout=10, message="the hostile call to run")
        # Then the notify connection keeps delivering every other result promptly
        for n in (5, 6, 8):
            started = time.monotonic()
            assert served.app.delayed_call("t.ok", n).result(10) == n
            assert time.monotonic() - started < 5
        assert served.worker.running
    finally:
        holder.close()
        served.close()


# -- replays onto another queue (issue 28, #6) ----------------------------------------------------

def test_a_signed_message_replayed_on_another_queue_is_refused(
        live: tuple[str, str, str]) -> None:
    # Given a worker with a signing key, and a body signed for another queue
    served = Served(live, signing_key=KEY)
    try:
        captured = Signer(KEY).sign(json.dumps(
            {**GOOD, "id": "replayed", "queue": f"{served.queue}-other"}).encode())
        # When it is put into the worker's queue
        dead = served.check({"replayed on another queue": captured})
        # Then it is dead-lettered for its queue, and never ran
        assert dead[captured] == (f"message for queue '{served.queue}-other' delivered on "
                                  f"queue '{served.queue}': refused (replayed or misrouted)")
    finally:
        served.close()


# -- duplicate keys (issue 28, #12) ---------------------------------------------------------------

@pytest.mark.parametrize("body", [
    b'{"ivy":1,"id":"c","name":"t.nope","name":"t.ok","args":[1]}',
    b'{"ivy":1,"id":"c","name":"t.ok","args":[1],"kwargs":{"n":1,"n":2}}',
])
def test_duplicate_keys_are_refused(body: bytes) -> None:
    with pytest.raises(ivy.MessageError, match="duplicate key"):
        decode_message(body, JSON)
    with pytest.raises(ivy.MessageError, match="duplicate key"):
        decode_message(Signer(KEY).sign(body), JSON, signer=Signer(KEY))


def test_duplicate_keys_in_an_envelope_or_a_notification_are_refused() -> None:
    sealed = json.loads(Signer(KEY).sign(json.dumps(GOOD).encode()))
    twice = json.dumps(sealed)[:-1] + ', "key_id": "other"}'
    with pytest.raises(ivy.MessageError, match="duplicate key 'key_id'"):
        decode_message(twice.encode(), JSON, signer=Signer(KEY))
    with pytest.raises(ivy.MessageError, match="duplicate key 'status'"):
        decode_notification(b'{"ivy":1,"id":"c","status":"running","status":"successful",'
                            b'"result":1}', JSON)


# -- results bound to their call by a nonce (issue 28, #5) ----------------------------------------

def test_a_result_without_the_calls_nonce_does_not_settle_it(
        live: tuple[str, str, str], caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a producer (which requires nonces by default), and a pending call of it
    # (deferred for a minute), whose id an attacker learned
    monkeypatch.delenv("IVY_REQUIRE_NONCE", raising=False)
    served = Served(live)
    try:
        call = served.app.send_task("t.ok", [1], delay=60)
        assert call.nonce
        # When a message reusing its id and the producer's channel is put in with the
        # backend's own client: the worker runs it and publishes its value for that id
        with caplog.at_level("WARNING", logger="ivy"):
            inject(served.url, served.queue, json.dumps(
                {**GOOD, "id": call.id, "args": [666], "queue": served.queue,
                 "reply_to": served.app.channel}).encode())
            wait_for(lambda: 666 in served.runs, message="the forged call to run")
            wait_for(lambda: any("without its nonce" in r.getMessage()
                                 for r in caplog.records), message="the forged result")
        # Then the producer ignored that result: the call is still waiting for its own
        assert not call.done()
        assert call.status == "scheduled"
        # and calls still complete
        assert served.app.delayed_call("t.ok", 5).result(30) == 5
    finally:
        served.close()


def test_a_forged_result_stored_first_does_not_hide_the_calls_own(
        live: tuple[str, str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("IVY_REQUIRE_NONCE", raising=False)
    forged_first_then_own(live)


def test_a_forged_result_first_does_not_hide_the_calls_own_on_the_amqp_notifier(
        amqp_only: tuple[str, str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("IVY_REQUIRE_NONCE", raising=False)
    forged_first_then_own(amqp_only)


def test_a_catch_up_that_finds_a_forged_result_first_takes_the_calls_own(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a pending call, and in the store both a forged result stored first under its id
    # and its own, beside it (published while the producer was not subscribed)
    monkeypatch.delenv("IVY_REQUIRE_NONCE", raising=False)
    url = f"memory://{uuid.uuid4().hex}"
    app = ivy.Ivy(url, url)
    try:
        call = app.send_task("t.ok", [1], queue="nobody")
        notifier = app.start_notification_producer()
        forged = app.seal(Notification(call.id, "successful", "t.ok", result=666,
                                       nonce="0123456789abcdef0123").encode(JSON))
        own = app.seal(Notification(call.id, "successful", "t.ok", result=1,
                                    nonce=call.nonce).encode(JSON))
        elsewhere = f"ivy:notify:{uuid.uuid4().hex}"  # not the producer's: no live delivery
        notifier.publish(elsewhere, call.id, forged, final=True, nonce="0123456789abcdef0123")
        notifier.publish(elsewhere, call.id, own, final=True, nonce=call.nonce)
        # When the (re)subscribe catch-up hands the producer the one stored under the id
        (consumer,) = app.producer.results().consumers()
        consumer.dispatch(forged)
        # Then the producer looks beside it and settles the call with its own
        assert call.result(5) == 1
    finally:
        app.close()


def forged_first_then_own(live: tuple[str, str, str]) -> None:
    # Given a pending call sent to a queue nobody consumes yet, whose id an attacker learned
    served = Served(live)
    later = f"{served.queue}-later"
    notifier = served.app.start_notification_producer()
    try:
        call = served.app.send_task("t.ok", [1], queue=later)
        # When a message reusing its id and channel runs first, so that its result is the
        # first final notification stored under that id
        inject(served.url, served.queue, json.dumps(
            {**GOOD, "id": call.id, "args": [666], "queue": served.queue,
             "reply_to": served.app.channel}).encode())
        wait_for(lambda: notifier.stored(call.id) is not None,
                 message="the forged result stored")
        forged = notifier.stored(call.id)
        assert forged is not None and b"666" in forged and not call.done()
        # and then a worker takes the call's own message
        served.app.listen(queue=later, block=False)
        # Then the call settles with its own result, which is stored beside the first
        assert call.result(30) == 1
        assert notifier.stored(call.id) == forged
        nonce = str(call.nonce).encode()
        # (RabbitMQ's notifier remembers what it sent once confirmed: maybe after delivery)
        wait_for(lambda: nonce in (notifier.stored(call.id, call.nonce) or b""),
                 message="the call's own result stored beside the forged one")
    finally:
        served.close()
        if served.url.startswith(("amqp", "redis")):
            backend = ivy.config.make_queue_backend(served.url)
            backend.delete_queues([later, f"{later}.dead"])  # type: ignore[attr-defined]
            backend.close()


def test_a_notification_echoes_the_nonce_of_its_message() -> None:
    url = f"memory://{uuid.uuid4().hex}"
    app = ivy.Ivy(url, url)
    try:
        @app.register_task(name="t.echo", queue="q")
        def echo(n: int) -> int:
            return n

        app.listen(queue="q", block=False)
        call = app.delayed_call(echo, 3)
        assert call.result(10) == 3
        stored = app.start_notification_producer().stored(call.id)
        assert stored is not None
        assert decode_notification(stored, JSON).nonce == call.nonce
        # a rejected call is told why, with its nonce, so its producer takes the error
        bad = app.send_task("t.missing", [1], queue="q")
        with pytest.raises(ivy.RemoteTaskError, match="unknown task"):
            bad.result(10)
    finally:
        app.close()


def test_calls_without_a_nonce_still_settle() -> None:
    # an older producer's call (no nonce) takes any final notification of its id
    from ivy.call import Call
    from ivy.results import _bound

    call: Call[Any] = Call("c", "t", "q")
    assert _bound(call, Notification("c", "successful", result=1))
    call.nonce = "n1"
    for strict in (True, False):
        assert _bound(call, Notification("c", "successful", result=1, nonce="n1"), strict)
        # another call's nonce: never
        assert not _bound(call, Notification("c", "errored", nonce="n2"), strict)
        # the producer's own cancel() publishes a cancelled notification without one
        assert _bound(call, Notification("c", "cancelled"), strict)
    # none at all: only a producer that requires nonces drops it (workers not upgraded yet)
    assert not _bound(call, Notification("c", "successful", result=1), strict=True)
    assert _bound(call, Notification("c", "successful", result=1), strict=False)


def test_require_nonce_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from ivy.results import require_nonce

    monkeypatch.delenv("IVY_REQUIRE_NONCE", raising=False)
    assert require_nonce()  # on by default
    for on in ("1", "true", "Yes"):
        monkeypatch.setenv("IVY_REQUIRE_NONCE", on)
        assert require_nonce()
    for off in ("0", "false", "Off"):
        monkeypatch.setenv("IVY_REQUIRE_NONCE", off)
        assert not require_nonce()


def test_a_workflow_result_carries_its_calls_nonce(store_urls: tuple[str, str]) -> None:
    # Given a chain sent by a producer that requires nonces (the default)
    app = ivy.Ivy(*store_urls)
    try:
        @app.register_task(name="t.add1", queue="q")
        def add1(n: int) -> int:
            return n + 1

        app.listen(queue="q", block=False)
        call = app.delayed_call(ivy.chain(add1.s(1), add1.s(), add1.s()))
        # Then every step carried the call's nonce to the final notification, which settles
        # the call, while a notification of that id without it would not
        assert call.nonce and call.result(30) == 4
        stored = app.start_notification_producer().stored(call.id)
        assert stored is not None and decode_notification(stored, JSON).nonce == call.nonce
    finally:
        app.close()


def test_a_signed_message_older_than_max_message_age_is_dead_lettered(sqlite_url: str) -> None:
    # Given workers that take messages up to a minute old (issue 28, #6), and a captured
    # signed message sent two hours ago, replayed into its queue
    from ivy.message import Message, encode_call, new_id, now_ms

    key = "k" * 40
    app = ivy.Ivy(sqlite_url, sqlite_url, signing_key=key, max_message_age=60)
    ran: list[int] = []
    queue = f"qa{uuid.uuid4().hex[:8]}"
    app.register_task(ran.append, name="sec.record", queue=queue)
    old = Message(new_id(), "sec.record", [1], queue=queue, created_ms=now_ms() - 7_200_000)
    app.queue_backend.publish(queue, app.seal(encode_call(
        old, app.serializer, max_depth=app.max_depth, max_bytes=app.max_message_bytes)))
    try:
        app.listen(queue=queue, block=False)
        # Then the worker dead-letters it without running it, saying why, and runs a fresh one
        wait_for(lambda: app.queue_backend.dead_letters(queue), message="the dead letter")
        [dead] = app.queue_backend.dead_letters(queue)
        assert dead.reason.startswith("too old") and "max_message_age is 60 s" in dead.reason
        assert app.delayed_call("sec.record", 2).result(20) is None
        assert ran == [2]
    finally:
        app.close()


@pytest.mark.parametrize("age", [0, -1, "60", True])
def test_max_message_age_must_be_seconds(age: object) -> None:
    with pytest.raises(ivy.ConfigurationError, match="max_message_age"):
        ivy.Ivy("memory://age", "memory://age", max_message_age=age)  # type: ignore[arg-type]


def test_a_call_dead_lettered_after_internal_errors_tells_its_producer(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from ivy.worker.gate import Gate

    # Given a worker whose gate raises on every delivery of one call (a bug after decoding)
    def buggy(self: Gate, delivery: Any, task: Any, message: Any) -> bool:
        raise RuntimeError("a bug after decoding")

    monkeypatch.setattr(Gate, "admit", buggy)
    url = f"memory://{uuid.uuid4().hex}"
    app = ivy.Ivy(url, url, retry_base_delay=0.001, retry_max_delay=0.002)
    try:
        @app.register_task(name="t.bugged", queue="q")
        def bugged() -> int:
            return 1

        app.listen(queue="q", block=False)
        # Then, once it is dead-lettered, its producer gets the reason, not a timeout
        with pytest.raises(ivy.RemoteTaskError, match="internal error 10 times"):
            app.delayed_call(bugged).result(20)
    finally:
        app.close()
