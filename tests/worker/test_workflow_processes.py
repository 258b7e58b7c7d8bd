"""Workflows on worker processes (SQLite and RabbitMQ + Redis): two workers share chains and a
chord, and a worker SIGKILLed mid-chain, mid-group, mid-chord, or right after it sent the next
step or a chord's callback, still gives exactly one final result per workflow."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from common import wait_for
from workers import WorkerProcess, launch, stop_worker

import ivy

pytestmark = pytest.mark.slow


def start_flow_worker(queue_url: str, notifier_url: str, tmp_path: Path,
                      kill_after: str | None = None, *options: str) -> WorkerProcess:
    """``ivy worker tasks_for_workflows OPTIONS``, returned once it listens; with
    ``kill_after`` the first worker that publishes a step of that task SIGKILLs itself."""
    env = dict(os.environ)
    if kill_after:
        env.update(IVY_TEST_KILL_AFTER=kill_after,
                   IVY_TEST_KILL_MARKER=str(tmp_path / "killed"))
    return launch(["worker", "tasks_for_workflows", "--queue-url", queue_url, "--notifier-url",
                   notifier_url, "--reserve-time", "2", "--heartbeat", "1", *options], env)


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
    # add ran again from its stored result and sent logged again; that copy found logged's
    # stored result in turn (a message back from a dead worker is spread first: it may run
    # after the final result came, and wait in a delay queue meanwhile)
    wait_for(lambda: replayed(survivor).count("wf.logged") >= 1, timeout=30,
             message="the replays")
    wait_for(lambda: producer.app.queue_backend.size("qa") == 0, timeout=30,
             message="every copy acknowledged")
    replays = replayed(survivor)
    assert replays.count("wf.add") == 1 and replays.count("wf.logged") == 1, replays
    assert len(log.read_text().split()) == 1
    assert producer.callbacks == [(None, 30)]


def test_worker_killed_mid_group_gives_one_final_result(producer: Producer) -> None:
    add, hang = producer.task("wf.add"), producer.task("wf.hang_first")
    log = producer.tmp_path / "hang.log"
    workers = [producer.start(), producer.start()]
    call = producer.send(ivy.group(add.s(1, 1), hang.s(5, str(log)), add.s(2, 2)))
    (pid,) = wait_for_runs(log, 1)
    kill(next(w for w in workers if str(w.pid) == pid))
    assert call.result(60) == [2, 5, 4]
    assert producer.callbacks == [(None, [2, 5, 4])]


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


def test_worker_killed_after_sending_the_chord_callback_gives_one_final_result(
    producer: Producer,
) -> None:
    """The worker that completes the chord's group dies right after sending the callback:
    the member runs again, finds the group complete, sends the callback again (same id), and
    the callback runs once. (Other members whose acks the worker had not committed yet when
    it died - SQLite commits them in groups, a moment later - come back too, and replay from
    their stored results like the last one.)"""
    add, total = producer.task("wf.add"), producer.task("wf.logged_total")
    log = producer.tmp_path / "total.log"
    doomed = producer.start(kill_after="wf.logged_total")
    call = producer.send(ivy.chord([add.s(i, i) for i in range(20)], total.s(str(log))))
    assert doomed.wait(30) == -9
    survivor = producer.start()
    assert call.result(60) == sum(2 * i for i in range(20))
    # (the copies back from the dead worker are spread first: they may replay after the
    # final result came, and wait in a delay queue meanwhile)
    wait_for(lambda: replayed(survivor).count("wf.logged_total") >= 1, timeout=30,
             message="the replays")
    wait_for(lambda: producer.app.queue_backend.size("qa") == 0, timeout=30,
             message="every copy acknowledged")
    replays = replayed(survivor)
    assert replays.count("wf.add") >= 1 and replays.count("wf.logged_total") >= 1, replays
    assert len(log.read_text().split()) == 1  # the callback's body ran once
    assert producer.callbacks == [(None, 380)]
