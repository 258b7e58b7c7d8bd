"""The command line, run as a user would: ``python -m ivy`` in subprocesses."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from common import amqp_notifier_url, wait_for
from servers import free_port
from workers import Lines, WorkerProcess, producer_app, start_worker, stop_worker

import ivy
from ivy.cli import main
from ivy.config import mask_url
from ivy.queues.sqlite import SQLiteQueueBackend

TESTS = Path(__file__).resolve().parents[1] / "support"


def run(*args: str, cwd: Path = TESTS, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ivy", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.slow
def test_worker_call_wait_and_inspect(sqlite_url: str) -> None:
    worker = subprocess.Popen(
        [sys.executable, "-m", "ivy", "worker", "tasks_for_workers", "--queue", "proc",
         "--queue-url", sqlite_url, "--notifier-url", sqlite_url, "--concurrency", "2"],
        cwd=TESTS, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        # ivy call NAME JSON_ARG --wait prints the result as JSON
        out = run("call", "proc.factorial", "10", "--queue", "proc", "--wait",
                  "--queue-url", sqlite_url, "--notifier-url", sqlite_url)
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout) == 3628800
        # with --module the task's own queue is used; a task error exits 1 with the error
        out = run("call", "proc.factorial", '"x"', "--module", "tasks_for_workers", "--wait",
                  "--queue-url", sqlite_url, "--notifier-url", sqlite_url)
        assert out.returncode == 1
        assert "TypeError" in out.stderr
        # without --wait it prints the call id
        out = run("call", "proc.unknown", "--queue", "proc", "--queue-url", sqlite_url,
                  "--notifier-url", sqlite_url)
        assert out.returncode == 0 and len(out.stdout.strip()) == 32
        backend = SQLiteQueueBackend(sqlite_url.removeprefix("sqlite:///"))
        wait_for(lambda: backend.dead_letters("proc"), message="the unknown task's dead letter")
        backend.close()
        # ivy inspect shows sizes and dead letters with their reasons
        out = run("inspect", "--queue-url", sqlite_url, "--notifier-url", sqlite_url)
        assert out.returncode == 0, out.stderr
        assert "proc: 0 waiting or running, 1 dead letter(s) shown" in out.stdout
        assert "unknown task 'proc.unknown' on queue 'proc'" in out.stdout
        out = run("inspect", "--queue-url", sqlite_url, "--notifier-url", sqlite_url, "--json")
        [entry] = json.loads(out.stdout)["queues"]
        assert entry["queue"] == "proc" and entry["size"] == 0
        assert "proc.unknown" in entry["dead_letters"][0]["body"]
    finally:
        worker.send_signal(signal.SIGINT)
        assert worker.wait(20) == 0
    assert "stopped after" in (worker.stderr.read() if worker.stderr else "")


def test_call_wait_times_out_with_exit_3(sqlite_url: str) -> None:
    out = run("call", "nobody.listens", "--queue", "empty", "--wait", "--timeout", "0.2",
              "--queue-url", sqlite_url, "--notifier-url", sqlite_url)
    assert out.returncode == 3
    assert "no result for call" in out.stderr


def ivy_command() -> str:
    """The ``ivy`` console script of this interpreter's environment, as a user runs it."""
    script = Path(sys.executable).with_name("ivy")
    assert script.exists(), f"no ivy command beside {sys.executable}: pip install -e ."
    return str(script)


@pytest.mark.parametrize("scheme", ["redis", "amqp", "redis --each"])
def test_call_not_taken_exits_1_with_one_line(scheme: str, tmp_path: Path) -> None:
    each = scheme.endswith("--each")
    scheme = scheme.split()[0]
    pytest.importorskip("redis" if scheme == "redis" else "pika")
    # Given a queue URL where nothing listens (the password must not show)
    port = free_port()
    url = (f"redis://:secret@127.0.0.1:{port}/7" if scheme == "redis" else
           f"amqp://guest:secret@127.0.0.1:{port}/%2F?publish_timeout=2")
    # When `ivy call` sends a call there (or two, --each), without --wait
    arguments = ["--each", "-"] if each else ["1", "2"]
    out = subprocess.run(
        [ivy_command(), "call", "cli.add", *arguments, "--queue", "q", "--queue-url", url,
         "--notifier-url", f"sqlite:///{tmp_path / 'ivy.db'}"], input="[1, 2]\n[3, 4]\n",
        cwd=tmp_path, capture_output=True, text=True, timeout=60)
    # Then it exits 1, prints no call id, and says in one line where and why it failed
    assert out.returncode == 1, out.stderr
    assert out.stdout == ""
    [line] = out.stderr.splitlines()
    assert line.startswith("ivy: error: ") and "not taken" in line
    assert mask_url(url) in line and "secret" not in line
    assert "Connection refused" in line


def test_call_taken_prints_its_id_and_exits_0(tmp_path: Path) -> None:
    # Given the embedded SQLite default in an empty folder, and no worker
    out = subprocess.run([ivy_command(), "call", "cli.add", "1", "2", "--queue", "q"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=60)
    # Then the call is queued: its id printed, exit 0, nothing on stderr
    assert out.returncode == 0, out.stderr
    assert len(out.stdout.strip()) == 32 and out.stderr == ""
    backend = SQLiteQueueBackend(str(tmp_path / "ivy.db"))
    assert backend.size("q") == 1
    backend.close()


def test_bad_inputs_are_clear_errors(sqlite_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["worker", "no_such_module_here"]) == 2
    assert "cannot import module 'no_such_module_here'" in capsys.readouterr().err
    assert main(["inspect", "--queue-url", "kafka://localhost"]) == 2
    err = capsys.readouterr().err
    assert "unknown queue backend URL scheme 'kafka'" in err and "sqlite://" in err
    assert main(["call", "x.y", "not-json", "--queue-url", sqlite_url]) == 2
    assert "not valid JSON" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["worker", "tasks_for_workers", "--concurrency", "0"])


def test_version_and_help() -> None:
    out = run("--version")
    assert out.stdout.strip() == f"ivy {ivy.__version__}"
    out = run("worker", "--help")
    assert "--queue" in out.stdout and "--concurrency" in out.stdout
    assert "--processes" in out.stdout and "--max-tasks-per-child" in out.stdout
    assert "--supervisor-fd" not in out.stdout  # internal: how a supervisor's children start


@pytest.fixture(params=["sqlite", "amqp"])
def dead_url(request: pytest.FixtureRequest, sqlite_url: str) -> str:
    """A queue backend that two processes share: SQLite, RabbitMQ."""
    return sqlite_url if request.param == "sqlite" else str(request.getfixturevalue("amqp_url"))


def test_dead_list_show_requeue_purge(dead_url: str, tmp_path: Path) -> None:
    from ivy.config import make_queue_backend

    # Given two calls dead-lettered by a worker that does not register their task
    app = ivy.Ivy(dead_url, f"sqlite:///{tmp_path / 'notes.db'}")
    try:
        app.listen(queue="q", block=False)
        calls = [app.send_task("cli.missing", [i, "x" * 100], queue="q") for i in range(2)]
        wait_for(lambda: len(app.dead_letters("q")) == 2, timeout=20, message="2 dead letters")
    finally:
        app.close()  # no worker from here on: a requeued message stays in the queue
    url = ["--queue-url", dead_url]
    # ivy dead list --json: one array, with id, name, reason and time
    out = run("dead", "list", "--queue", "q", "--json", *url)
    assert out.returncode == 0, out.stderr
    listed = json.loads(out.stdout)
    assert [d["call_id"] for d in listed] == [c.id for c in calls]
    assert all(d["name"] == "cli.missing" and "unknown task 'cli.missing'" in d["reason"]
               and d["time"] > 0 and d["id"] for d in listed)
    # as text: a row each, with the first bytes of the arguments
    out = run("dead", "list", "--queue", "q", *url)
    assert out.returncode == 0, out.stderr
    header, *rows = out.stdout.splitlines()
    assert header.split()[:3] == ["ID", "TIME", "(UTC)"] and len(rows) == 2
    assert calls[0].id in rows[0] and '0, "xxxxxxxx' in rows[0] and rows[0].endswith("...")
    # ivy dead show takes the call id (or the dead letter's id)
    out = run("dead", "show", calls[1].id, "--queue", "q", *url)
    assert out.returncode == 0, out.stderr
    assert f"call id:  {calls[1].id}" in out.stdout and "task:     cli.missing" in out.stdout
    out = run("dead", "show", listed[1]["id"], "--queue", "q", "--json", *url)
    assert [d["args"] for d in json.loads(out.stdout)] == [[1, "x" * 100]]
    if dead_url.startswith("sqlite"):  # the queue may be left out where the backend lists them
        assert run("dead", "show", calls[1].id, *url).returncode == 0
    else:
        out = run("dead", "show", calls[1].id, *url)
        assert out.returncode == 2 and "--queue NAME" in out.stderr
    # ivy dead requeue ID puts that one back; unknown ids exit 1; nothing named exits 2
    out = run("dead", "requeue", "--queue", "q", listed[0]["id"], *url)
    assert out.returncode == 0, out.stderr
    assert "requeued 1 dead letter(s) to queue 'q'" in out.stdout
    out = run("dead", "requeue", "--queue", "q", "no-such-id", *url)
    assert out.returncode == 1 and "1 of the 1 dead letter(s) named were not found" in out.stderr
    assert run("dead", "requeue", "--queue", "q", *url).returncode == 2
    backend = make_queue_backend(dead_url)
    try:
        assert backend.size("q") == 1
        # ivy dead purge deletes the rest and says how many
        out = run("dead", "purge", "--queue", "q", *url)
        assert out.returncode == 0, out.stderr
        assert "purged 1 dead letter(s) of queue 'q'" in out.stdout
        assert backend.dead_letters("q") == [] and backend.size("q") == 1
    finally:
        backend.close()
    out = run("dead", "list", "--queue", "q", "--json", *url)
    assert json.loads(out.stdout) == []
# -- live workers, events, several calls -----------------------------------------------------

@pytest.fixture(params=["sqlite", "amqp+redis", "amqp+amqp"])
def process_urls(request: pytest.FixtureRequest, sqlite_url: str) -> tuple[str, str]:
    """(queue URL, notifier URL) that several processes share."""
    if request.param == "sqlite":
        return sqlite_url, sqlite_url
    if request.param == "amqp+amqp":
        amqp = request.getfixturevalue("amqp_url")
        return amqp, amqp_notifier_url(amqp)
    return request.getfixturevalue("amqp_url"), request.getfixturevalue("redis_url")


def ivy_lines(*args: str) -> Lines:
    """``python -m ivy ARGS`` in the tests' folder, its output lines read as they come."""
    return Lines([sys.executable, "-m", "ivy", *args])


def inspect_json(queue_url: str, notifier_url: str) -> dict[str, Any]:
    out = run("inspect", "--json", "--queue", "proc", "--queue-url", queue_url,
              "--notifier-url", notifier_url)
    assert out.returncode == 0, out.stderr
    report: dict[str, Any] = json.loads(out.stdout)
    return report


def beats(report: dict[str, Any], pid: int) -> list[dict[str, Any]]:
    return [w for w in report["workers"] if w["pid"] == pid]


@pytest.mark.slow
def test_events_and_inspect_follow_worker_processes(process_urls: tuple[str, str]) -> None:
    queue_url, notifier_url = process_urls
    # Given a worker with --events that beats every 0.3 s, and two `ivy events` watching
    first = start_worker(queue_url, notifier_url, "--events", "--heartbeat", "0.3")
    second: WorkerProcess | None = None
    watchers = [ivy_lines("events", "--json", "--notifier-url", notifier_url),
                ivy_lines("events", "--notifier-url", notifier_url)]
    producer = producer_app(queue_url, notifier_url)
    try:
        for watcher in watchers:
            watcher.wait_for_err("listening on")
        # When it runs a call that succeeds and one that fails
        ok = producer.delayed_call("proc.factorial", 5)
        bad = producer.delayed_call("proc.factorial", "x")
        assert ok.result(30) == 120
        with pytest.raises(ivy.RemoteTaskError):
            bad.result(30)
        # Then `ivy events --json` prints their events as JSON lines, in order
        as_json, as_text = watchers

        def events_of(call: ivy.Call[Any]) -> list[str]:
            return [e["event"] for e in map(json.loads, list(as_json.out)) if e["id"] == call.id]

        wait_for(lambda: events_of(bad)[-1:] == ["failed"], timeout=30,
                 message="the failed event of the bad call")
        assert events_of(ok) == ["received", "started", "succeeded"]
        assert events_of(bad) == ["received", "started", "failed"]
        # and `ivy events` as text lines naming the event, the task and the call
        wait_for(lambda: any("failed" in line and bad.id in line for line in as_text.out),
                 timeout=30, message="the text line of the failed call")
        [line] = [line for line in as_text.out if "succeeded" in line]
        assert f"proc.factorial [{ok.id}] queue proc on" in line and " in " in line
        assert "TypeError" in next(line for line in as_text.out if "failed" in line)
        # and `ivy inspect` shows the worker with its counts
        wait_for(lambda: [(w["processed"], w["failed"], w["events"]) for w in beats(
            inspect_json(queue_url, notifier_url), first.pid)] == [(2, 1, True)],
            timeout=30, interval=0.2, message="a heartbeat with 2 processed, 1 failed")
        report = inspect_json(queue_url, notifier_url)
        assert report["queues"][0]["queue"] == "proc" and report["workers_error"] is None
        [beat] = beats(report, first.pid)
        assert beat["queues"] == ["proc"] and beat["concurrency"] == 1
        text = run("inspect", "--queue", "proc", "--queue-url", queue_url, "--notifier-url",
                   notifier_url).stdout
        assert f":{first.pid}: queues proc; 0 of 1 busy; 2 processed, 1 failed" in text
        # When a second worker (heartbeat every 5 s, so kept 15 s) starts and is stopped
        second = start_worker(queue_url, notifier_url)
        assert len(beats(inspect_json(queue_url, notifier_url), second.pid)) == 1
        stop_worker(second)
        # Then its heartbeat is gone at once
        report = inspect_json(queue_url, notifier_url)
        assert beats(report, second.pid) == [] and len(beats(report, first.pid)) == 1
        second = None
        # When the first one is killed, its heartbeat expires (after 3 x 0.3 s)
        first.kill()
        first.wait(10)
        wait_for(lambda: beats(inspect_json(queue_url, notifier_url), first.pid) == [],
                 timeout=20, interval=0.2, message="the killed worker's heartbeat to expire")
        # and Ctrl-C ends `ivy events` with status 0
        for watcher in watchers:
            assert watcher.interrupt() == 0, "\n".join(watcher.err)
    finally:
        producer.close()
        for watcher in watchers:
            if watcher.process.poll() is None:
                watcher.process.kill()
        if first.poll() is None:
            stop_worker(first)
        if second is not None:
            stop_worker(second)


@pytest.mark.slow
def test_call_each_with_wait_prints_one_line_per_call(process_urls: tuple[str, str],
                                                      tmp_path: Path) -> None:
    queue_url, notifier_url = process_urls
    urls = ("--queue-url", queue_url, "--notifier-url", notifier_url)
    worker = start_worker(queue_url, notifier_url, "--concurrency", "2")
    try:
        # Given a file of argument lists, a blank line and one the task rejects
        each = tmp_path / "args.jsonl"
        each.write_text('[5]\n[3]\n\n["x"]\n')
        # When ivy call --each --wait runs them
        out = run("call", "proc.factorial", "--queue", "proc", "--each", str(each), "--wait",
                  *urls)
        # Then stdout has one JSON line per call in file order, stderr a finished bar, and
        # the exit status says a call errored
        assert out.returncode == 1, out.stderr
        lines = [json.loads(line) for line in out.stdout.splitlines()]
        assert [(x["status"], x.get("result")) for x in lines] == [
            ("successful", 120), ("successful", 6), ("errored", None)]
        assert lines[2]["error"]["type"] == "TypeError"
        assert len({x["id"] for x in lines}) == 3
        assert "3/3" in out.stderr
        # and without --wait it prints the call ids, from stdin as well
        out = subprocess.run([sys.executable, "-m", "ivy", "call", "proc.factorial", "--queue",
                              "proc", "--each", "-", *urls], cwd=TESTS, input="[1]\n[2]\n",
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert [len(line) for line in out.stdout.split()] == [32, 32]
    finally:
        stop_worker(worker)


def test_call_each_rejects_bad_lines(sqlite_url: str, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    each = tmp_path / "args.jsonl"
    each.write_text('[1]\n{"n": 1}\n')
    assert main(["call", "x.y", "--each", str(each), "--queue-url", sqlite_url,
                 "--notifier-url", sqlite_url]) == 2
    assert "line 2 must be a JSON array" in capsys.readouterr().err
    each.write_text("[1]\n[2\n")
    assert main(["call", "x.y", "--each", str(each), "--queue-url", sqlite_url,
                 "--notifier-url", sqlite_url]) == 2
    assert "line 2 is not valid JSON" in capsys.readouterr().err
    assert main(["call", "x.y", "1", "--each", str(each), "--queue-url", sqlite_url]) == 2
    assert "not both" in capsys.readouterr().err


@pytest.mark.parametrize("argument", ["9" * 5000, "[" * 5000 + "]" * 5000, "1e999", "NaN"])
def test_call_refuses_json_a_call_cannot_carry_in_one_line(argument: str,
                                                           tmp_path: Path) -> None:
    # Given an argument with 5,000 digits, 5,000 levels, a float past its range or NaN
    # (issue 28, #15)
    url = f"sqlite:///{tmp_path / 'ivy.db'}"
    out = run("call", "cli.add", argument, "--queue", "q", "--queue-url", url,
              "--notifier-url", url)
    # Then ivy call says so in one line, without a traceback, and sends nothing
    assert out.returncode != 0
    assert "Traceback" not in out.stderr
    assert "an argument is JSON that a call cannot carry" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
