"""Chains, groups and chords (ivy.workflows): the canvas, the wire form, the store operations
on every notifier, workflows end to end on memory, SQLite and RabbitMQ + Redis, and worker
processes SIGKILLed in the middle of a chain, a group and a chord."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import TESTS_DIR, wait_for
from workers import WorkerProcess, stop_worker

import ivy
from ivy.errors import MessageError
from ivy.message import decode_message
from ivy.notifiers.base import Notifier
from ivy.serialization import get_serializer
from ivy.workflows.continuation import STEP_KEY

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
            "id": call.id, "reply_to": app.channel, "next": [],
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


@pytest.fixture(params=["memory", "sqlite", "redis"])
def notifier(request: pytest.FixtureRequest, sqlite_url: str) -> Iterator[Notifier]:
    from ivy.config import make_notifier

    url = {"memory": f"memory://store-{uuid.uuid4().hex[:8]}", "sqlite": sqlite_url}.get(
        request.param) or request.getfixturevalue("redis_url")
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
    notifier = flows._notifier_for(None)
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


# -- worker processes: several at once, and SIGKILLed mid-workflow ----------------------------


def start_flow_worker(queue_url: str, notifier_url: str, tmp_path: Path,
                      kill_after: str | None = None, *options: str) -> WorkerProcess:
    """``ivy worker tasks_for_workflows OPTIONS``, returned once it listens; with
    ``kill_after`` the first worker that publishes a step of that task SIGKILLs itself."""
    env = dict(os.environ)
    if kill_after:
        env.update(IVY_TEST_KILL_AFTER=kill_after,
                   IVY_TEST_KILL_MARKER=str(tmp_path / "killed"))
    process = WorkerProcess(
        [sys.executable, "-m", "ivy", "worker", "tasks_for_workflows", "--queue-url",
         queue_url, "--notifier-url", notifier_url, "--reserve-time", "2", "--heartbeat", "1",
         *options],
        cwd=TESTS_DIR, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    process.lines = []
    listening = threading.Event()

    def read() -> None:
        assert process.stdout is not None
        for raw in process.stdout:
            line = raw.decode(errors="replace")
            process.lines.append(line)
            if "listening on" in line:
                listening.set()
        listening.set()

    threading.Thread(target=read, daemon=True).start()
    listening.wait(60)
    if process.poll() is not None:
        raise AssertionError(f"worker exited with {process.returncode}: "
                             f"{''.join(process.lines)}")
    return process


@pytest.fixture(params=["sqlite", "amqp+redis"])
def process_urls(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'ivy.db'}"
        return url, url
    return request.getfixturevalue("amqp_url"), request.getfixturevalue("redis_url")


class Producer:
    """A producer app with the wf.* tasks, its workers, and the callbacks its calls got."""

    def __init__(self, urls: tuple[str, str], tmp_path: Path) -> None:
        import tasks_for_workflows  # noqa: F401 - registers the wf.* tasks on ivy.default

        self.urls = urls
        self.tmp_path = tmp_path
        self.app = ivy.Ivy(*urls)
        for name in ivy.default.registry.names():
            found = ivy.default.registry.get(name)
            if found is not None and name.startswith("wf."):
                self.app.registry.add(found)
        self.workers: list[WorkerProcess] = []
        self.callbacks: list[tuple[Any, Any]] = []
        self._lock = threading.Lock()

    def task(self, name: str) -> ivy.Task[Any, Any]:
        return self.app.registry.resolve(name)

    def start(self, kill_after: str | None = None, *options: str) -> WorkerProcess:
        """A worker process on queue qa, one task at a time (the kill tests send every step
        there), or with ``options``."""
        options = options or ("-Q", "qa")
        worker = start_flow_worker(*self.urls, self.tmp_path, kill_after, *options)
        self.workers.append(worker)
        return worker

    def send(self, flow: Any) -> ivy.Call[Any]:
        def callback(err: Any, result: Any) -> None:
            with self._lock:
                self.callbacks.append((err, result))

        return self.app.delayed_call(flow, callback=callback)

    def close(self) -> None:
        for worker in self.workers:
            if worker.poll() is None:
                stop_worker(worker)
        self.app.close()


@pytest.fixture
def producer(process_urls: tuple[str, str], tmp_path: Path) -> Iterator[Producer]:
    made = Producer(process_urls, tmp_path)
    yield made
    made.close()


def wait_for_runs(log: Path, n: int) -> list[str]:
    wait_for(lambda: log.exists() and len(log.read_text().split()) >= n, timeout=30,
             message=f"{n} runs logged in {log.name}")
    return log.read_text().split()


def replayed(worker: WorkerProcess) -> list[str]:
    """The tasks of the steps ``worker`` found had run before (continued from the store)."""
    return [line.split("workflow step ")[1].split()[0] for line in list(worker.lines)
            if "ran before; continuing with its stored result" in line]


def kill(worker: WorkerProcess) -> None:
    worker.kill()
    worker.wait(10)


@pytest.mark.slow
def test_two_worker_processes_run_chains_and_chords(producer: Producer) -> None:
    add, mul, total = (producer.task(n) for n in ("wf.add", "wf.mul", "wf.logged_total"))
    # several queues per worker: more threads than queues (see the report on fetch slots)
    both = ("-Q", "qa", "-Q", "qb", "--concurrency", "4")
    first, second = producer.start(None, *both), producer.start(None, *both)
    log = producer.tmp_path / "total.log"
    chains = [producer.send(ivy.chain(add.s(i, 1), mul.s(10))) for i in range(20)]
    chord = producer.send(ivy.chord([add.s(i, i) for i in range(50)], total.s(str(log))))
    assert [c.result(60) for c in chains] == [(i + 1) * 10 for i in range(20)]
    assert chord.result(60) == sum(2 * i for i in range(50))
    pids = {str(first.pid), str(second.pid)}
    assert {str(c.worker).rsplit(":", 1)[1] for c in [*chains, chord]} <= pids
    assert len(producer.callbacks) == 21


@pytest.mark.slow
def test_worker_killed_mid_chain_step_gives_one_final_result(producer: Producer) -> None:
    """The worker running the middle step is SIGKILLed; the step comes back to the other
    worker, and the chain ends once, with the right result."""
    add, hang, mul = (producer.task(n) for n in ("wf.add", "wf.hang_first", "wf.mul"))
    log = producer.tmp_path / "hang.log"
    workers = [producer.start(), producer.start()]
    call = producer.send(ivy.chain(add.s(1, 2), hang.s(str(log)), mul.s(10).set(queue="qa")))
    (pid,) = wait_for_runs(log, 1)
    kill(next(w for w in workers if str(w.pid) == pid))
    assert call.result(60) == 30
    assert len(wait_for_runs(log, 2)) == 2
    assert producer.callbacks == [(None, 30)]


@pytest.mark.slow
def test_worker_killed_after_sending_the_next_step_gives_one_final_result(
    producer: Producer,
) -> None:
    """The worker that ran ``add`` dies right after it sent the next step, before it
    acknowledged ``add``: ``add``'s message runs again (its stored result is used), the next
    step is sent a second time with the same id, and still runs once."""
    add, logged, mul = (producer.task(n) for n in ("wf.add", "wf.logged", "wf.mul"))
    log = producer.tmp_path / "logged.log"
    doomed = producer.start(kill_after="wf.logged")
    call = producer.send(ivy.chain(add.s(1, 2), logged.s(str(log)).set(queue="qa"),
                                   mul.s(10).set(queue="qa")))
    assert doomed.wait(30) == -9
    survivor = producer.start()
    assert call.result(60) == 30
    assert (producer.tmp_path / "killed").read_text() == str(doomed.pid)
    wait_for(lambda: producer.app.queue_backend.size("qa") == 0, timeout=30,
             message="every copy acknowledged")
    # add ran again from its stored result and sent logged again; that copy found logged's
    # stored result in turn
    replays = replayed(survivor)
    assert replays.count("wf.add") == 1 and replays.count("wf.logged") == 1, replays
    assert len(log.read_text().split()) == 1
    assert producer.callbacks == [(None, 30)]


@pytest.mark.slow
def test_worker_killed_mid_group_gives_one_final_result(producer: Producer) -> None:
    add, hang = producer.task("wf.add"), producer.task("wf.hang_first")
    log = producer.tmp_path / "hang.log"
    workers = [producer.start(), producer.start()]
    call = producer.send(ivy.group(add.s(1, 1), hang.s(5, str(log)), add.s(2, 2)))
    (pid,) = wait_for_runs(log, 1)
    kill(next(w for w in workers if str(w.pid) == pid))
    assert call.result(60) == [2, 5, 4]
    assert producer.callbacks == [(None, [2, 5, 4])]


@pytest.mark.slow
def test_worker_killed_mid_chord_member_gives_one_final_result(producer: Producer) -> None:
    add, hang = producer.task("wf.add"), producer.task("wf.hang_first")
    total = producer.task("wf.logged_total")
    log, total_log = producer.tmp_path / "hang.log", producer.tmp_path / "total.log"
    workers = [producer.start(), producer.start()]
    call = producer.send(ivy.chord([add.s(1, 1), hang.s(5, str(log)), add.s(2, 2)],
                                   total.s(str(total_log))))
    (pid,) = wait_for_runs(log, 1)
    kill(next(w for w in workers if str(w.pid) == pid))
    assert call.result(60) == 11
    assert producer.callbacks == [(None, 11)]
    assert len(total_log.read_text().split()) == 1


@pytest.mark.slow
def test_worker_killed_after_sending_the_chord_callback_gives_one_final_result(
    producer: Producer,
) -> None:
    """The worker that completes the chord's group dies right after sending the callback:
    the member runs again, finds the group complete, sends the callback again (same id), and
    the callback runs once."""
    add, total = producer.task("wf.add"), producer.task("wf.logged_total")
    log = producer.tmp_path / "total.log"
    doomed = producer.start(kill_after="wf.logged_total")
    call = producer.send(ivy.chord([add.s(i, i) for i in range(20)], total.s(str(log))))
    assert doomed.wait(30) == -9
    survivor = producer.start()
    assert call.result(60) == sum(2 * i for i in range(20))
    wait_for(lambda: producer.app.queue_backend.size("qa") == 0, timeout=30,
             message="every copy acknowledged")
    replays = replayed(survivor)
    assert replays.count("wf.add") == 1 and replays.count("wf.logged_total") == 1, replays
    assert len(log.read_text().split()) == 1
    assert producer.callbacks == [(None, 380)]


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
