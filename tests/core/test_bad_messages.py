"""Bad input never stops a worker: each bad message is dead-lettered with a reason, the producer
is told where its reply_to can be read, and a good call sent afterwards completes."""

from __future__ import annotations

import json
from typing import Any

import pytest
from common import wait_for

import ivy
from ivy.message import decode_notification


def raw(**fields: Any) -> bytes:
    return json.dumps(fields).encode()


@pytest.fixture
def served(app: ivy.Ivy) -> ivy.Ivy:
    runs: list[Any] = []

    @app.register_task(name="t.factorial", queue="q")
    def factorial(n: int) -> int:
        runs.append(n)
        return 1 if n <= 1 else n * factorial.func(n - 1)

    app.runs = runs  # type: ignore[attr-defined]
    app.listen(queue="q", block=False)
    return app


BAD = {
    "not JSON": (b"{this is not json", "is not valid json"),
    "not UTF-8": (b"\xff\xfe\x00garbage", "is not valid json"),
    "JSON but not an object": (b"[1, 2, 3]", "JSON list, not an object"),
    "args not an array": (raw(ivy=1, id="a1", name="t.factorial", args=5),
                          "data.args must be array"),
    "id missing": (raw(ivy=1, name="t.factorial", args=[1]), "must contain ['id']"),
    "unknown protocol version": (raw(ivy=99, id="v99", name="t.factorial", args=[1]),
                                 "unsupported protocol version 99"),
    "legacy with extra fields": (raw(name="t.factorial", options={}, args=[1], extra=1),
                                 "must not contain {'extra'}"),
    "unknown task": (raw(ivy=1, id="u1", name="os.system", args=["echo hi"]),
                     "unknown task 'os.system' on queue 'q': registered here are t.factorial"),
    "wrong argument count": (raw(ivy=1, id="w1", name="t.factorial", args=[1, 2]),
                             "wrong arguments for task 't.factorial'"),
}


@pytest.mark.parametrize("kind", list(BAD))
def test_bad_message_is_dead_lettered_with_a_reason(served: ivy.Ivy, kind: str) -> None:
    body, reason = BAD[kind]
    backend = served.queue_backend
    # Given a bad message put straight into the queue
    backend.publish("q", body)
    # Then it lands in the dead letters with its reason
    wait_for(lambda: backend.dead_letters("q"), message="a dead letter")
    [dead] = backend.dead_letters("q")
    assert dead.body == body
    assert reason in dead.reason
    # and the worker keeps serving
    assert served.delayed_call("t.factorial", 5).result(10) == 120
    wait_for(lambda: backend.size("q") == 0, message="the ack after the result")
    assert served.runs == [5, 4, 3, 2, 1]  # type: ignore[attr-defined]


def test_producer_is_told_when_reply_to_is_readable(served: ivy.Ivy) -> None:
    # Given a call of a task that the worker does not register, sent by name
    call = served.send_task("t.missing", [1], queue="q")
    # Then the producer gets an errored result saying why
    with pytest.raises(ivy.RemoteTaskError) as exc:
        call.result(10)
    assert exc.value.type == "MessageRejected"
    assert "unknown task 't.missing'" in exc.value.message


def test_schema_invalid_message_notifies_its_reply_to(served: ivy.Ivy) -> None:
    notifier = served.start_notification_producer()
    served.queue_backend.publish("q", raw(ivy=1, id="bad-args", name="t.factorial", args="5",
                                          reply_to="ivy:notify:someone"))
    wait_for(lambda: notifier.stored("bad-args"), message="an errored notification")
    note = decode_notification(notifier.stored("bad-args") or b"", served.serializer)
    assert note.status == "errored"
    assert note.error is not None and "data.args must be array" in note.error["message"]


def test_node_ivy_message_runs_unchanged(served: ivy.Ivy) -> None:
    # The Node.js ivy 0.2 form: no id, no reply_to, so no notification
    served.queue_backend.publish(
        "q", b'{"name":"t.factorial","options":{},"args":[4]}')
    wait_for(lambda: served.runs[:1] == [4], message="the legacy call to run")  # type: ignore[attr-defined]
    wait_for(lambda: served.queue_backend.size("q") == 0, message="the ack")
    assert served.queue_backend.dead_letters("q") == []
