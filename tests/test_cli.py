"""The command line, run as a user would: ``python -m ivy`` in subprocesses."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import wait_for

import ivy
from ivy.cli import main
from ivy.queues.sqlite import SQLiteQueueBackend

TESTS = Path(__file__).resolve().parent


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
        out = run("inspect", "--queue-url", sqlite_url)
        assert out.returncode == 0, out.stderr
        assert "proc: 0 waiting or running, 1 dead letter(s) shown" in out.stdout
        assert "unknown task 'proc.unknown' on queue 'proc'" in out.stdout
        out = run("inspect", "--queue-url", sqlite_url, "--json")
        [entry] = json.loads(out.stdout)
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
