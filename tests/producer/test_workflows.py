"""Chains, groups and chords (ivy.workflows): the canvas, the wire form, the store operations
on every notifier, and workflows end to end on memory, SQLite and RabbitMQ + Redis with worker
threads in this process (worker processes: test_workflow_processes.py)."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from common import wait_for

import ivy
from ivy.errors import MessageError
from ivy.message import decode_message
from ivy.notifiers.base import Notifier
from ivy.serialization import get_serializer
from ivy.worker.continuation import STEP_KEY


@pytest.fixture
def urls(store_urls: tuple[str, str]) -> tuple[str, str]:
    """These features keep state in the notifier: every pairing but RabbitMQ alone, whose
    notifier refuses them (tests/notifiers/test_amqp_notifier.py)."""
    return store_urls

# -- the canvas -------------------------------------------------------------------------------


def make_app(*urls: str) -> ivy.Ivy:
    """An app with the test tasks: add, mul on another queue, total, boom (always fails)."""
    app = ivy.Ivy(*urls, retry_base_delay=0.01, retry_max_delay=0.05)

    @app.register_task(name="t.add", queue="qa")
    def add(a: int, b: int) -> int:
        return a + b

    @app.register_task(name="t.mul", queue="qb")
    def mul(a: int, b: int) -> int:
        return a * b

    @app.register_task(name="t.total", queue="qa")
    def total(values: list[int]) -> int:
        return sum(values)

    @app.register_task(name="t.boom", queue="qa")
    def boom(value: Any) -> None:
        raise ValueError(f"boom on {value!r}")

    return app


def test_task_s_and_signature_build_signatures() -> None:
    app = make_app("memory://canvas")
    add = app.registry.resolve("t.add")
    sig = add.s(1, 2)
    assert sig == ivy.Signature("t.add", (1, 2), {})
    assert ivy.signature("other.task", 1, queue="other", k="v") == ivy.Signature(
        "other.task", (1,), {"k": "v"}, queue="other")
    assert sig.set(queue="fast").queue == "fast"
    assert ivy.chain(sig, ivy.chain(sig, sig)) == ivy.chain(sig, sig, sig)  # flattened
    assert (sig | sig) == ivy.chain(sig, sig)
    assert ivy.group([sig, sig]) == ivy.group(sig, sig) == ivy.group(s for s in [sig, sig])
    assert ivy.chord([sig], sig) == ivy.chain(ivy.group(sig), sig)
    assert repr(ivy.chord([sig, sig], sig)) == "chain(group(t.add, t.add), t.add)"
    app.close()


def test_bad_workflows_are_refused_with_the_fix() -> None:
    app = make_app("memory://canvas-bad")
    add = app.registry.resolve("t.add")
    with pytest.raises(ValueError, match="at least one member"):
        ivy.group()
    with pytest.raises(ValueError, match="at least one member"):
        ivy.chord([], add.s(1, 2))
    with pytest.raises(TypeError, match="got 42"):
        ivy.chain(add.s(1, 2), 42)
    with pytest.raises(ivy.ConfigurationError, match="queue="):
        app.delayed_call(ivy.chain(add.s(1, 2), ivy.signature("not.here")))
    # the second step receives the previous result first: add(3, 1, 2) cannot work
    with pytest.raises(TypeError, match=r"'t\.add' in a workflow .*previous result"):
        app.delayed_call(ivy.chain(add.s(1, 2), add.s(1, 2)))
    with pytest.raises(TypeError, match="keyword arguments"):
        app.send_task(ivy.chain(add.s(1, 2)), [], {"k": 1})
    assert app.pending_calls() == []  # nothing was sent or left waiting
    app.close()


def first_messages(app: ivy.Ivy, queue: str) -> list[dict[str, Any]]:
    consumer = app.queue_backend.consume(queue, prefetch=100)
    found = []
    while (delivery := consumer.get(0.2)) is not None:
        found.append(json.loads(delivery.body))
        delivery.ack()
    consumer.close()
    return found


def test_wire_form_of_a_chord_of_a_chain() -> None:
    """The producer sends the group's members, each with the rest of the workflow and no
    reply_to; the messages validate against message-v1.json; ids derive from the call id."""
    app = make_app("memory://wire", "memory://wire")
    add, total = app.registry.resolve("t.add"), app.registry.resolve("t.total")
    mul = app.registry.resolve("t.mul")
    call = app.delayed_call(ivy.chord([add.s(1, 1), add.s(2, 2)], ivy.chain(total.s(),
                                                                          mul.s(10))))
    bodies = first_messages(app, "qa")
    assert [b["args"] for b in bodies] == [[1, 1], [2, 2]]
    group_id = f"{call.id}.0"
    for index, body in enumerate(bodies):
        assert body["id"] == f"{call.id}.{index + 1}"
        assert body["reply_to"] is None
        assert body["workflow"] == {
            "id": call.id, "reply_to": app.channel, "nonce": call.nonce, "next": [],
            "join": {"group": group_id, "index": index, "size": 2, "join": None, "next": [
                {"id": f"{call.id}.3", "task": "t.total", "args": [], "kwargs": {},
                 "queue": "qa"},
                {"id": f"{call.id}.4", "task": "t.mul", "args": [10], "kwargs": {},
                 "queue": "qb"}]}}
        decoded = decode_message(json.dumps(body).encode(), get_serializer("json"))
        assert decoded.extra["workflow"] == body["workflow"]
    app.close()


def test_a_malformed_workflow_field_is_refused() -> None:
    body = {"ivy": 1, "id": "x", "name": "t.add", "args": [1, 2],
            "workflow": {"id": "w", "next": [{"task": "t.mul"}]}}  # node without id, queue
    with pytest.raises(MessageError, match="does not match message-v1"):
        decode_message(json.dumps(body).encode(), get_serializer("json"))


# -- the store operations on every notifier ---------------------------------------------------


@pytest.fixture(params=["memory", "sqlite", "redis", "postgres"])
def notifier(request: pytest.FixtureRequest, sqlite_url: str) -> Iterator[Notifier]:
    from ivy.config import make_notifier

    url = {"memory": f"memory://store-{uuid.uuid4().hex[:8]}", "sqlite": sqlite_url}.get(
        request.param) or request.getfixturevalue(f"{request.param}_url")
    made = make_notifier(url)
    yield made
    made.close()


def test_store_first_record_wins_and_counts(notifier: Notifier) -> None:
    key = f"test:{uuid.uuid4().hex}"
    assert notifier.workflow_members(key) == {}
    assert notifier.workflow_record(key, 1, b"one", 60) == (True, 1)
    assert notifier.workflow_record(key, 0, b"zero", 60) == (True, 2)
    assert notifier.workflow_record(key, 1, b"again", 60) == (False, 2)  # a re-run member
    assert notifier.workflow_members(key) == {0: b"zero", 1: b"one"}
    assert notifier.workflow_members(f"test:{uuid.uuid4().hex}") == {}


def test_sqlite_store_counts_a_member_in_constant_work(sqlite_url: str) -> None:
    # Given a SQLite store holding a group of 1,000 members (issue 20, row 15)
    from ivy.notifiers.sqlite import SQLiteNotifier

    notifier = SQLiteNotifier(sqlite_url.removeprefix("sqlite:///"))
    try:
        big, small = f"big:{uuid.uuid4().hex}", f"small:{uuid.uuid4().hex}"
        for i in range(1000):
            notifier.workflow_record(big, i, b"x", 60)
        conn = notifier.db.conn()  # this thread's connection: the one the records use

        def steps(record: Any) -> int:
            """SQLite's virtual machine steps (in hundreds) that one record takes."""
            counted = [0]

            def tick() -> int:
                counted[0] += 1
                return 0

            conn.set_progress_handler(tick, 100)
            try:
                record()
            finally:
                conn.set_progress_handler(None, 100)
            return counted[0]

        notifier.workflow_record(small, 0, b"x", 60)
        # When one more member is recorded in each
        in_big = steps(lambda: notifier.workflow_record(big, 1000, b"x", 60))
        in_small = steps(lambda: notifier.workflow_record(small, 1, b"x", 60))
        # Then the big group's record costs what the small one's does, not 1,000 rows more
        assert notifier.workflow_record(big, 1001, b"x", 60) == (True, 1002)
        assert in_big <= in_small + 5, (in_big, in_small)
        assert len(notifier.workflow_members(big)) == 1002
    finally:
        notifier.close()


def test_store_records_race_atomically(notifier: Notifier) -> None:
    """Threads record the same 40 members at once: each member is stored by exactly one, and
    exactly one record sees the count reach 40 (the worker that completes the group)."""
    key = f"test:{uuid.uuid4().hex}"
    outcomes: list[tuple[bool, int]] = []
    lock = threading.Lock()

    def record_all(tag: int) -> None:
        for index in range(40):
            outcome = notifier.workflow_record(key, index, b"%d" % tag, 60)
            with lock:
                outcomes.append(outcome)

    threads = [threading.Thread(target=record_all, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    inserted = [count for stored, count in outcomes if stored]
    assert len(inserted) == 40
    assert sorted(inserted) == list(range(1, 41))
    assert len(notifier.workflow_members(key)) == 40


def test_store_forgets_after_its_ttl(notifier: Notifier) -> None:
    key = f"test:{uuid.uuid4().hex}"
    notifier.workflow_record(key, 0, b"x", 1)
    wait_for(lambda: notifier.workflow_members(key) == {}, timeout=5, interval=0.1,
             message="the record to expire")


# -- end to end on every backend pairing, worker threads in this process ----------------------


@pytest.fixture
def flows(urls: tuple[str, str]) -> Iterator[ivy.Ivy]:
    app = make_app(*urls)
    worker = app.listen(queue=["qa", "qb"], concurrency=4, block=False, heartbeat=None)
    yield app
    worker.stop()
    app.close()


def task(app: ivy.Ivy, name: str) -> ivy.Task[Any, Any]:
    return app.registry.resolve(name)


def test_chain_passes_each_result_on_and_notifies_only_the_final_one(flows: ivy.Ivy) -> None:
    add, mul = task(flows, "t.add"), task(flows, "t.mul")
    results: list[tuple[Any, Any]] = []
    call = flows.delayed_call(ivy.chain(add.s(1, 2), mul.s(10), add.s(5)),
                              callback=lambda err, result: results.append((err, result)))
    assert call.result(20) == 35  # (1 + 2) * 10 + 5, across queues qa and qb
    assert call.task == "chain(t.add, t.mul, t.add)"
    assert results == [(None, 35)]
    notifier = flows.backends.notifier_for(None)
    assert notifier.stored(call.id) is not None
    for step in range(3):  # steps keep their results in the workflow store, never notified
        assert notifier.stored(f"{call.id}.{step}") is None
        assert notifier.workflow_members(f"{STEP_KEY}{call.id}.{step}") != {}


def test_the_call_stays_scheduled_until_the_final_result(flows: ivy.Ivy) -> None:
    worked, checked = threading.Event(), threading.Event()

    @flows.register_task(name="t.slow", queue="qb")
    def slow(value: int) -> int:
        time.sleep(0.3)  # the work: long enough for a plain call's running status
        worked.set()
        checked.wait(10)
        return value

    add = task(flows, "t.add")
    call = flows.delayed_call(ivy.chain(add.s(1, 2), slow.s(), add.s(1)))
    assert worked.wait(20)
    assert call.status == "scheduled" and not call.done()
    checked.set()
    assert call.result(20) == 4
    assert call.status == "done"


def test_async_and_callback_style_tasks_are_steps_too(flows: ivy.Ivy) -> None:
    @flows.register_task(name="t.async_double", queue="qa")
    async def double(value: int) -> int:
        return value * 2

    def legacy(value: int, callback: Any) -> None:
        callback(None, value + 100)

    flows.register_task(legacy, name="t.legacy", queue="qb")
    add = task(flows, "t.add")
    flow = ivy.chain(add.s(1, 2), double.s(), ivy.signature("t.legacy"))
    assert flows.delayed_call(flow).result(20) == 106


def test_group_result_is_in_member_order(flows: ivy.Ivy) -> None:
    @flows.register_task(name="t.later", queue="qa")
    def later(seconds: float, value: int) -> int:
        time.sleep(seconds)
        return value

    call = flows.delayed_call(ivy.group(later.s(0.3, 1), later.s(0.0, 2), later.s(0.1, 3)))
    assert call.result(20) == [1, 2, 3]
    assert call.task == "group(t.later, t.later, t.later)"


def test_chord_callback_gets_the_list(flows: ivy.Ivy) -> None:
    add, total = task(flows, "t.add"), task(flows, "t.total")
    assert flows.delayed_call(ivy.chord([add.s(1, 1), add.s(2, 2)], total.s())).result(20) == 6


def test_group_inside_a_chain_passes_its_list_on(flows: ivy.Ivy) -> None:
    add, mul, total = task(flows, "t.add"), task(flows, "t.mul"), task(flows, "t.total")
    flow = ivy.chain(add.s(1, 2), ivy.group(mul.s(2), mul.s(3), ivy.chain(add.s(1), mul.s(4))),
                     total.s())
    # add -> 3; the group gets 3 in each member: [6, 9, 16]; total -> 31
    assert flows.delayed_call(flow).result(20) == 31
    nested = ivy.group(ivy.group(add.s(1, 1), add.s(2, 2)), add.s(3, 3))
    assert flows.delayed_call(nested).result(20) == [[2, 4], 6]


def test_arguments_given_when_sending_go_to_the_first_step(flows: ivy.Ivy) -> None:
    add, mul = task(flows, "t.add"), task(flows, "t.mul")
    assert flows.delayed_call(ivy.chain(add.s(2), mul.s(10)), 1).result(20) == 30
    assert flows.send_task(ivy.group(add.s(1), mul.s(5)), [2]).result(20) == [3, 10]
    # a lone signature is the plain call it describes
    call = flows.delayed_call(add.s(1, 2))
    assert call.result(20) == 3
    assert call.task == "t.add"


def test_failed_step_fails_the_chain_naming_the_task_and_later_steps_never_run(
    flows: ivy.Ivy,
) -> None:
    ran: list[int] = []

    @flows.register_task(name="t.after", queue="qb")
    def after(value: int) -> int:
        ran.append(value)
        return value

    add, boom = task(flows, "t.add"), task(flows, "t.boom")
    call = flows.delayed_call(ivy.chain(add.s(1, 2), boom.s(), after.s()))
    with pytest.raises(ivy.RemoteTaskError) as caught:
        call.result(20)
    assert caught.value.type == "ValueError"
    assert "in task 't.boom'" in caught.value.message and "boom on 3" in caught.value.message
    assert call.status == "errored"
    # the failed step was acknowledged, nothing was sent after it
    wait_for(lambda: flows.queue_backend.size("qb") == 0, message="queue qb empty")
    assert ran == []


def test_failed_member_fails_the_chord_and_the_callback_never_runs(flows: ivy.Ivy) -> None:
    ran: list[Any] = []

    @flows.register_task(name="t.callback", queue="qb")
    def callback(values: list[int]) -> int:
        ran.append(values)
        return 0

    add, boom = task(flows, "t.add"), task(flows, "t.boom")
    call = flows.delayed_call(ivy.chord([add.s(1, 1), boom.s(7), add.s(2, 2)], callback.s()))
    with pytest.raises(ivy.RemoteTaskError, match=r"in task 't\.boom': boom on 7"):
        call.result(20)
    wait_for(lambda: flows.queue_backend.size("qa") == 0, message="the members to end")
    assert flows.queue_backend.size("qb") == 0
    assert ran == []


def test_a_step_that_cannot_run_fails_the_workflow(flows: ivy.Ivy) -> None:
    """An unknown task in a later step is dead-lettered, and the workflow's call fails at
    once instead of waiting for its pending_ttl."""
    add = task(flows, "t.add")
    call = flows.delayed_call(ivy.chain(add.s(1, 2), ivy.signature("t.missing", queue="qb")))
    with pytest.raises(ivy.RemoteTaskError, match=r"in task 't\.missing': unknown task") as err:
        call.result(20)
    assert err.value.type == "MessageRejected"


def test_a_retried_step_continues_the_chain(flows: ivy.Ivy) -> None:
    attempts: list[int] = []

    @flows.register_task(name="t.flaky", queue="qa", max_retries=3)
    def flaky(value: int) -> int:
        attempts.append(value)
        if len(attempts) < 3:
            raise ConnectionError("try again")
        return value + 1

    add, mul = task(flows, "t.add"), task(flows, "t.mul")
    assert flows.delayed_call(ivy.chain(add.s(1, 2), flaky.s(), mul.s(10))).result(20) == 40
    assert attempts == [3, 3, 3]


def test_a_result_too_large_to_pass_on_fails_the_workflow(urls: tuple[str, str]) -> None:
    app = make_app(*urls)
    app.max_message_bytes = 4000

    @app.register_task(name="t.big", queue="qa")
    def big(n: int) -> str:
        return "x" * n

    worker = app.listen(queue=["qa", "qb"], block=False, heartbeat=None)
    try:
        call = app.delayed_call(ivy.chain(big.s(10_000), task(app, "t.add").s(1)))
        with pytest.raises(ivy.RemoteTaskError, match=r"the next step 't\.add' cannot be sent"):
            call.result(20)
    finally:
        worker.stop()
        app.close()


def test_chord_of_1000_members_completes(flows: ivy.Ivy) -> None:
    add, total = task(flows, "t.add"), task(flows, "t.total")
    started = time.monotonic()
    call = flows.delayed_call(ivy.chord([add.s(i, 1) for i in range(1000)], total.s()))
    assert call.result(120) == sum(range(1, 1001))
    print(f"chord of 1000 members: {time.monotonic() - started:.2f} s")


def test_signed_workflow_steps_are_signed_by_the_worker(memory_url: str) -> None:
    """With a signing key, the steps a worker sends are signed too (a worker with the key
    would dead-letter an unsigned one); the original's callback style works for workflows."""
    app = make_app(memory_url, memory_url)
    app_key = ivy.Ivy(memory_url, memory_url, signing_key="k1")
    app_key.registry = app.registry
    worker = app_key.listen(queue=["qa", "qb"], block=False, heartbeat=None)
    try:
        add, mul = task(app_key, "t.add"), task(app_key, "t.mul")
        got: list[Any] = []
        call = app_key.delayed_call(ivy.chain(add.s(1, 2), mul.s(10), add.s(1)),
                                    lambda err, result: got.append((err, result)))
        call.sent(5)
        assert call.result(20) == 31
        assert got == [(None, 31)]
        assert app_key.dead_letters("qa") == [] and app_key.dead_letters("qb") == []
    finally:
        worker.stop()
        app_key.close()
        app.close()


def test_call_cancel_works_on_a_workflow(urls: tuple[str, str]) -> None:
    # Given a chain sent while no worker runs (issue 20, row 13)
    app = make_app(*urls)
    try:
        add = task(app, "t.add")
        call = app.delayed_call(ivy.chain(add.s(1, 2), add.s(3)))
        # When its own call object cancels it, as the README shows
        call.cancel()
        # Then it settles cancelled
        with pytest.raises(ivy.CallCancelled):
            call.result(10)
    finally:
        app.close()


def test_a_workflow_whose_later_messages_are_refused_fails_its_call(
        memory_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a group whose members go to two queues, and a backend that takes the first
    # queue's message and refuses the second's at once (issue 20, row 17)
    app = make_app(memory_url, memory_url)
    send_many = app.queue_backend.send_many

    def refuse_qb(queue: str, bodies: list[bytes], **options: Any) -> Any:
        if queue == "qb":
            raise ivy.PublishError("queue qb refused the message")
        return send_many(queue, bodies, **options)

    monkeypatch.setattr(app.queue_backend, "send_many", refuse_qb)
    try:
        add, mul = task(app, "t.add"), task(app, "t.mul")
        # When it is sent: the member on qa is out already when qb refuses
        call = app.delayed_call(ivy.group(add.s(1, 2), mul.s(3, 4)))
        # Then the call is not lost: it fails, and says why
        with pytest.raises(ivy.PublishError, match="qb refused"):
            call.sent(10)
        with pytest.raises(ivy.PublishError, match="qb refused"):
            call.result(10)
        assert app.queue_backend.size("qa") == 1
    finally:
        app.close()
