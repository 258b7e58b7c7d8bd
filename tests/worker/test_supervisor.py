"""``ivy worker --processes N`` and ``--max-tasks-per-child N``, run as a user would: a
supervisor process with worker children, on the SQLite backend in a tmp folder, with a tasks
module written there."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from common import wait_for
from workers import WorkerProcess, spawn, stop_worker, wait_listening

import ivy
from ivy.worker import PREFETCH_MULTIPLIER
from ivy.worker.supervisor import child_command

TASKS = '''
import os
import time
from pathlib import Path

import ivy


@ivy.register_task(name="sup.pid", queue="sup")
def pid() -> int:
    return os.getpid()


@ivy.register_task(name="sup.meet", queue="sup")
def meet(folder: str, count: int) -> int:
    """Mark this process in ``folder``, then wait until ``count`` processes have: with one
    thread per process, that many processes ran this task at the same time."""
    path = Path(folder)
    (path / str(os.getpid())).touch()
    deadline = time.monotonic() + 30
    while len(list(path.iterdir())) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {len(list(path.iterdir()))} of {count} processes met")
        time.sleep(0.01)
    return os.getpid()


@ivy.register_task(name="sup.slow", queue="sup")
def slow(seconds: float, folder: str) -> int:
    (Path(folder) / str(os.getpid())).touch()
    time.sleep(seconds)
    return os.getpid()


_kept = []


@ivy.register_task(name="sup.leak", queue="sup")
def leak(mb: int) -> int:
    """Keep ``mb`` MB more (touched: resident), and return this process's id."""
    block = bytearray(mb * 1024 * 1024)
    block[::4096] = b"x" * len(block[::4096])
    _kept.append(block)
    return os.getpid()


@ivy.register_task(name="sup.logged", queue="sup")
def logged(log: str, seconds: float) -> int:
    with open(log, "a") as f:
        f.write(f"{os.getpid()}\\n")
    time.sleep(seconds)
    return os.getpid()
'''

pytestmark = pytest.mark.slow


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """The working folder of the worker processes, holding the tasks module."""
    (tmp_path / "sup_tasks.py").write_text(TASKS)
    return tmp_path


@pytest.fixture
def producer(sqlite_url: str) -> Iterator[ivy.Ivy]:
    app = ivy.Ivy(sqlite_url, sqlite_url)
    yield app
    app.close()


def supervise(folder: Path, url: str, *extra: str, module: str = "sup_tasks",
              new_group: bool = False) -> WorkerProcess:
    """Start ``ivy worker MODULE ...extra`` in ``folder`` (in a process group of its own with
    ``new_group``); its output is collected in ``lines`` (children write to the same stdout
    and stderr)."""
    return spawn(["worker", module, "--queue-url", url, "--notifier-url", url, *extra],
                 cwd=folder, new_group=new_group)


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, exited but not yet reaped, does not)."""
    if Path("/proc/self/stat").exists():
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except FileNotFoundError:
            return False
        return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def kill_all(process: WorkerProcess, pids: list[int]) -> None:
    """Clean-up after a failed test: nothing started here keeps running."""
    for pid in [process.pid, *pids]:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)
    process.wait(10)


def send(app: ivy.Ivy, name: str, *args: object) -> ivy.Call[object]:
    return app.send_task(name, args, queue="sup")


def test_processes_run_tasks_in_distinct_children_at_once(
    folder: Path, sqlite_url: str, producer: ivy.Ivy
) -> None:
    # Given two worker processes of one thread each
    sup = supervise(folder, sqlite_url, "--processes", "2", "--concurrency", "1")
    children: list[int] = []
    try:
        children = wait_listening(sup, 2)
        assert len(set(children)) == 2 and sup.pid not in children
        # When tasks wait for each other: one child can hold at most PREFETCH_MULTIPLIER of
        # them, so the other must run some, while the first one's still runs
        met = folder / "met"
        met.mkdir()
        calls = [send(producer, "sup.meet", str(met), 2)
                 for _ in range(2 * PREFETCH_MULTIPLIER)]
        # Then they complete, in both children
        assert {c.result(60) for c in calls} == set(children)
        batch = [send(producer, "sup.pid") for _ in range(20)]
        assert {c.result(30) for c in batch} <= set(children)
        # SIGUSR1 to the parent: each child prints its stacks, the parent carries on
        sup.send_signal(signal.SIGUSR1)
        wait_for(lambda: "".join(sup.lines).count("Current thread") == 2,
                 message="two stack dumps")
        assert sup.poll() is None
        stop_worker(sup)
    finally:
        kill_all(sup, children)


def test_sigterm_lets_in_flight_tasks_finish_and_leaves_no_child(
    folder: Path, sqlite_url: str, producer: ivy.Ivy
) -> None:
    sup = supervise(folder, sqlite_url, "--processes", "2")
    children: list[int] = []
    try:
        children = wait_listening(sup, 2)
        # Given each child runs a task, and holds more it has not started
        started = folder / "started"
        started.mkdir()
        calls = [send(producer, "sup.slow", 1.5, str(started))
                 for _ in range(2 * PREFETCH_MULTIPLIER)]
        wait_for(lambda: len(list(started.iterdir())) == 2, timeout=30,
                 message="a task running in each child")
        # When the parent gets SIGTERM: it exits 0 (stop_worker checks)
        output = stop_worker(sup)
        assert "received SIGTERM; stopping 2 worker process(es)" in output
        # Then the two tasks in flight finished and their calls got results
        wait_for(lambda: sum(c.done() for c in calls) == 2,
                 message="the results of the tasks in flight")
        assert {c.result(1) for c in calls if c.done()} == set(children)
        # the others were given back unstarted, and no child is left
        assert producer.queue_backend.size("sup") == len(calls) - 2
        assert not [pid for pid in children if alive(pid)]
    finally:
        kill_all(sup, children)


def test_ctrl_c_to_the_whole_group_is_one_graceful_stop(
    folder: Path, sqlite_url: str, producer: ivy.Ivy
) -> None:
    # Given a supervisor and its children in a process group, as in a terminal
    sup = supervise(folder, sqlite_url, "--processes", "2", new_group=True)
    children: list[int] = []
    try:
        children = wait_listening(sup, 2)
        started = folder / "started"
        started.mkdir()
        call = send(producer, "sup.slow", 1.0, str(started))
        wait_for(lambda: any(started.iterdir()), timeout=30, message="the task to start")
        # When Ctrl-C signals every process of the group: each child gets SIGINT from the
        # terminal and the stop request of the parent, which must not count as a second signal
        os.killpg(sup.pid, signal.SIGINT)
        assert sup.wait(30) == 0, "".join(sup.lines)
        # Then the task in flight finished, and every child exited on its own, gracefully
        assert call.result(10) in children
        assert "".join(sup.lines).count("stopped after") == 2
        assert "second signal" not in "".join(sup.lines)
    finally:
        kill_all(sup, children)


def test_a_second_signal_kills_the_children_and_exits_1(
    folder: Path, sqlite_url: str, producer: ivy.Ivy
) -> None:
    sup = supervise(folder, sqlite_url, "--processes", "2")
    children: list[int] = []
    try:
        children = wait_listening(sup, 2)
        started = folder / "started"
        started.mkdir()
        send(producer, "sup.slow", 600, str(started))
        wait_for(lambda: any(started.iterdir()), timeout=30, message="the task to start")
        # When SIGTERM comes twice while a task runs
        sup.send_signal(signal.SIGTERM)
        wait_for(lambda: "received SIGTERM" in "".join(sup.lines), message="the first signal")
        sup.send_signal(signal.SIGTERM)
        # Then the parent kills the children instead of waiting for the task, and exits 1
        assert sup.wait(30) == 1
        assert "second signal (SIGTERM); killing worker processes" in "".join(sup.lines)
        wait_for(lambda: not any(alive(pid) for pid in children), message="no child left")
    finally:
        kill_all(sup, children)


def test_a_child_killed_is_replaced(folder: Path, sqlite_url: str, producer: ivy.Ivy) -> None:
    sup = supervise(folder, sqlite_url, "--processes", "2")
    children: list[int] = []
    try:
        children = wait_listening(sup, 2)
        # When one child is SIGKILLed
        os.kill(children[0], signal.SIGKILL)
        # Then a new one takes its place, after the backoff, and calls keep completing
        children = wait_listening(sup, 3)
        assert children[2] not in children[:2]
        output = "".join(sup.lines)
        assert f"worker process {children[0]} was killed by SIGKILL; restarting it in 1 s" \
            in output
        calls = [send(producer, "sup.pid") for _ in range(10)]
        assert {c.result(30) for c in calls} <= set(children[1:])
        stop_worker(sup)
    finally:
        kill_all(sup, children)


def test_max_tasks_per_child_recycles_children(
    folder: Path, sqlite_url: str, producer: ivy.Ivy
) -> None:
    # Given one process that is replaced after 3 messages
    sup = supervise(folder, sqlite_url, "--max-tasks-per-child", "3", "--concurrency", "1")
    children: list[int] = []
    try:
        wait_listening(sup, 1)
        log = folder / "runs.log"
        # When 10 calls come
        calls = [send(producer, "sup.logged", str(log), 0.3) for _ in range(10)]
        # Then each completes, its task having run exactly once
        results = [c.result(60) for c in calls]
        runs = [int(line) for line in log.read_text().split()]
        assert sorted(runs) == sorted(results) and len(runs) == 10
        # in four children: each ran exactly its 3 (a message fetched after them went back to
        # the queue unstarted), the last one the 1 left
        per_child = Counter(runs)
        children = list(per_child)
        assert all(n == 3 for pid, n in per_child.items() if pid != runs[-1]), per_child
        assert per_child[runs[-1]] == 1, per_child
        assert len(per_child) == 4
        assert "reached --max-tasks-per-child or --max-memory-per-child; starting a fresh one" \
            in "".join(sup.lines)
        assert "restarting it in" not in "".join(sup.lines)  # no backoff for a recycle
        stop_worker(sup)
    finally:
        kill_all(sup, children)


def test_a_child_past_its_memory_limit_is_replaced_without_backoff(
    folder: Path, sqlite_url: str, producer: ivy.Ivy
) -> None:
    # Given one process replaced once it passes 150 MB, one call at a time
    sup = supervise(folder, sqlite_url, "--max-memory-per-child", "150", "--concurrency", "1")
    pids: list[int] = []
    try:
        wait_listening(sup, 1)
        # When each call keeps 40 MB more (the process starts at some 40-60 MB)
        pids = [send(producer, "sup.leak", 40).result(60) for _ in range(8)]
        # Then every call completed, and the leaking process was replaced by fresh ones, each
        # after a few calls, without a restart backoff
        assert len(set(pids)) >= 2, pids
        assert all(pids.count(pid) <= 4 for pid in set(pids)), pids
        text = "".join(sup.lines)
        assert "passed max_memory 150 MB" in text
        assert "reached --max-tasks-per-child or --max-memory-per-child" in text
        assert "restarting it in" not in text
        stop_worker(sup)
    finally:
        kill_all(sup, pids)


@pytest.mark.parametrize(("source", "code", "message"), [
    ("import no_such_dependency_of_ivy_tests\n", 2, "cannot import module 'broken_tasks'"),
    ("raise RuntimeError('broken at import')\n", 1, "RuntimeError: broken at import"),
])
def test_a_module_that_does_not_import_fails_at_once(
    tmp_path: Path, sqlite_url: str, source: str, code: int, message: str
) -> None:
    (tmp_path / "broken_tasks.py").write_text(source)
    out = subprocess.run(
        [sys.executable, "-m", "ivy", "worker", "broken_tasks", "--processes", "2",
         "--queue-url", sqlite_url, "--notifier-url", sqlite_url],
        cwd=tmp_path, capture_output=True, text=True, timeout=60)
    # the child's error once (the others never started), no restart loop
    assert out.returncode == code, out.stderr
    assert out.stderr.count(message) == 1, out.stderr
    assert out.stderr.count("started worker process") == 1
    assert "not restarting it: fix the error above" in out.stderr
    assert "restarting it in" not in out.stderr


def test_children_stop_by_themselves_when_the_parent_is_killed(
    folder: Path, sqlite_url: str, producer: ivy.Ivy
) -> None:
    sup = supervise(folder, sqlite_url, "--processes", "2")
    children: list[int] = []
    try:
        children = wait_listening(sup, 2)
        started = folder / "started"
        started.mkdir()
        call = send(producer, "sup.slow", 1.0, str(started))
        wait_for(lambda: any(started.iterdir()), timeout=30, message="the task to start")
        # When the parent is SIGKILLed
        sup.kill()
        sup.wait(10)
        # Then the children notice, finish their task and exit
        wait_for(lambda: not any(alive(pid) for pid in children), timeout=30,
                 message="the orphaned children to stop")
        assert call.result(10) in children
        assert "".join(sup.lines).count("is gone; stopping") == 2
    finally:
        kill_all(sup, children)


def test_child_command_keeps_the_arguments_and_adds_the_channel() -> None:
    argv = ["worker", "tasks", "--processes", "4", "-c", "2"]
    assert child_command("/py", argv, 7) == [
        "/py", "-m", "ivy", "worker", "--supervisor-fd", "7", "tasks", "--processes", "4",
        "-c", "2"]
