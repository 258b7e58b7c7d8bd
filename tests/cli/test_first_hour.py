"""What a new user meets in their first hour with the command line (issue 21, "Friction"):
misrouted calls, timeouts that say why, papercuts, backend failures in one line. Each test runs
the real ``ivy`` command, as a user would."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from common import wait_for
from servers import PrivateRedis, free_port
from workers import Lines, launch, start_worker, stop_worker

import ivy
from ivy.config import mask_url
from ivy.queues.sqlite import SQLiteQueueBackend

TESTS = Path(__file__).resolve().parents[1] / "support"


def run(*args: str, cwd: Path = TESTS, timeout: float = 60,
        input: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ivy", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, input=input)


# -- misrouted calls (friction 2) ------------------------------------------------------------

def test_call_of_a_name_the_module_does_not_register_is_refused_with_a_suggestion(
        sqlite_url: str) -> None:
    # When `ivy call` names a task that -m does not register (a typo), without --queue
    out = run("call", "proc.factorail", "5", "-m", "tasks_for_workers", "--wait",
              "--queue-url", sqlite_url, "--notifier-url", sqlite_url)
    # Then it refuses at once (a usage error), suggesting the registered name
    assert out.returncode == 2, out.stderr
    assert "did you mean proc.factorial?" in out.stderr
    assert "'proc.factorail' is not registered by tasks_for_workers" in out.stderr
    # and the last part of a name is enough to find it
    out = run("call", "factorial", "5", "-m", "tasks_for_workers", "--queue-url", sqlite_url,
              "--notifier-url", sqlite_url)
    assert out.returncode == 2 and "did you mean proc.factorial?" in out.stderr


def test_call_without_module_or_queue_warns_and_its_timeout_names_where(
        sqlite_url: str) -> None:
    # Given a live worker that consumes queue 'proc' only
    worker = start_worker(sqlite_url, sqlite_url, "--heartbeat", "0.5")
    try:
        # When `ivy call --wait` names the task without -m or --queue
        out = run("call", "proc.factorial", "5", "--wait", "--timeout", "1",
                  "--queue-url", sqlite_url, "--notifier-url", sqlite_url)
        # Then it warns that the call goes to the default queue, and its timeout says that
        # no live worker consumes that queue, on which URL, as the heartbeats on which
        # notifier say
        assert out.returncode == 3, out.stderr
        assert "warning: sending 'proc.factorial' to the default queue 'ivy'" in out.stderr
        assert (f"no live worker consumes queue 'ivy' on {sqlite_url} (heartbeats on notifier "
                f"{sqlite_url}: 1 worker(s) alive)") in out.stderr
        assert "Is a worker listening" not in out.stderr
        # and a call to the worker's queue that times out says the worker is there
        out = run("call", "proc.slow", "3", "\"/dev/null\"", "--queue", "proc", "--wait",
                  "--timeout", "0.5", "--queue-url", sqlite_url, "--notifier-url", sqlite_url)
        assert out.returncode == 3, out.stderr
        assert f"1 live worker(s) consume queue 'proc' on {sqlite_url}" in out.stderr
        assert "warning" not in out.stderr
    finally:
        stop_worker(worker)


def test_task_not_registered_suggests_close_names() -> None:
    app = ivy.Ivy("memory://suggest", "memory://suggest")
    try:
        @app.register_task(name="app.add")
        def add(a: int, b: int) -> int:
            return a + b

        with pytest.raises(ivy.TaskNotRegistered, match=r"Did you mean app\.add\?"):
            app.registry.resolve("app.ad")
        with pytest.raises(ivy.TaskNotRegistered, match=r"Did you mean app\.add\?"):
            app.registry.resolve("add")
        with pytest.raises(ivy.TaskNotRegistered) as caught:
            app.registry.resolve("billing.refund")
        assert "Did you mean" not in str(caught.value)
    finally:
        app.close()


# -- CLI papercuts (friction 4) --------------------------------------------------------------

def test_dead_list_without_queue_lists_every_queue_and_attempts_agree(
        sqlite_url: str) -> None:
    # Given a task that failed all 3 of its runs on queue qa, and an unknown task on qb
    app = ivy.Ivy(sqlite_url, sqlite_url, retry_base_delay=0.01, retry_max_delay=0.02)
    try:
        @app.register_task(name="hour.fails", queue="qa", retry=True, max_retries=2)
        def fails() -> None:
            raise ValueError("no")

        app.listen(queue=["qa", "qb"], block=False)
        failed = app.delayed_call(fails)
        app.send_task("hour.unknown", [], queue="qb")
        wait_for(lambda: len(app.dead_letters("qa")) + len(app.dead_letters("qb")) == 2,
                 timeout=20, message="2 dead letters")
    finally:
        app.close()
    url = ("--queue-url", sqlite_url)
    # When `ivy dead list` names no queue
    out = run("dead", "list", *url)
    # Then it lists the dead letters of every queue, with a QUEUE column
    assert out.returncode == 0, out.stderr
    header, *rows = out.stdout.splitlines()
    assert header.split()[:2] == ["QUEUE", "ID"]
    assert sorted(row.split()[0] for row in rows) == ["qa", "qb"]
    listed = json.loads(run("dead", "list", "--json", *url).stdout)
    assert sorted(d["queue"] for d in listed) == ["qa", "qb"]
    # and `ivy dead show` counts attempts as the reason does: from 1, of the most there are
    out = run("dead", "show", failed.id, *url)
    assert out.returncode == 0, out.stderr
    assert "failed 3 times" in out.stdout
    assert "attempt:  3 of 3" in out.stdout


def test_format_event_counts_attempts_from_1() -> None:
    from ivy.cli.inspect import format_event

    line = format_event({"event": "retried", "name": "t", "id": "x", "attempt": 2})
    assert line.endswith("attempt 3")


def test_a_reader_gone_ends_quietly(sqlite_url: str) -> None:
    # Given a reader that is gone before `ivy` writes (`ivy ... | head` after head exited)
    SQLiteQueueBackend(sqlite_url.removeprefix("sqlite:///")).close()
    read, write = os.pipe()
    os.close(read)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "ivy", "inspect", "--queue-url", sqlite_url,
             "--notifier-url", sqlite_url], cwd=TESTS, stdout=write, stderr=subprocess.PIPE,
            text=True, timeout=60)
    finally:
        os.close(write)
    # Then it exits 0 with nothing on stderr
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""


def test_ctrl_c_prints_one_line_and_exits_130(sqlite_url: str, tmp_path: Path) -> None:
    # Given `ivy call --wait` blocked on a result that does not come
    waiting = Lines([sys.executable, "-m", "ivy", "call", "hour.nobody", "--wait", "--timeout",
                     "60", "--queue-url", sqlite_url, "--notifier-url", sqlite_url],
                    cwd=tmp_path)
    try:
        waiting.wait_for_err("default queue 'ivy'")
        # When Ctrl-C comes, it exits 130 with one line
        assert waiting.interrupt() == 130, "\n".join(waiting.err)
    finally:
        if waiting.process.poll() is None:
            waiting.process.kill()
    assert not any("Traceback" in line for line in waiting.err), "\n".join(waiting.err)
    assert waiting.err[-1] == "ivy: interrupted"


def test_cancel_refuses_what_is_not_a_call_id(tmp_path: Path) -> None:
    out = run("cancel", "12345", "not-an-id", cwd=tmp_path)
    assert out.returncode == 2
    assert "not a call id: '12345', 'not-an-id'" in out.stderr and "32 hex" in out.stderr
    assert not (tmp_path / "ivy.db").exists()


def test_inspect_and_dead_do_not_create_a_database(tmp_path: Path) -> None:
    for command in (("inspect",), ("dead", "list")):
        out = run(*command, cwd=tmp_path)
        assert out.returncode == 2, out.stderr
        assert f"no SQLite database at {tmp_path / 'ivy.db'}" in out.stderr
        assert not (tmp_path / "ivy.db").exists()


def test_worker_warns_of_a_memory_queue_and_of_a_queue_no_task_uses() -> None:
    # When a CLI worker runs on memory://, consuming a queue none of its tasks use
    worker = start_worker("memory://hour", "memory://hour", "--queue", "nosuch")
    output = stop_worker(worker)
    # Then it says both
    assert "the queue memory://hour lives in this worker's process" in output
    assert "--queue nosuch: none of the tasks of tasks_for_workers use it" in output
    assert "--queue proc:" not in output


# -- backend failures in one line (friction 3) -----------------------------------------------

def one_line_error(out: subprocess.CompletedProcess[str]) -> str:
    """The ``ivy: error:`` line of a command that failed with status 1, and no traceback."""
    assert out.returncode == 1, out.stderr
    assert "Traceback" not in out.stderr, out.stderr
    [line] = [line for line in out.stderr.splitlines() if line.startswith("ivy: error: ")]
    return line


def test_an_out_of_range_redis_db_is_one_line(redis_url: str) -> None:
    from urllib.parse import urlsplit

    parts = urlsplit(redis_url)
    url = f"redis://{parts.hostname}:{parts.port or 6379}/99"
    line = one_line_error(run("inspect", "--queue-url", url, "--notifier-url", url))
    assert "DB index is out of range" in line and f"({url})" in line


@pytest.mark.parametrize("command", [("dead", "list"), ("inspect",), ("events",)])
def test_a_redis_that_is_down_is_one_line_with_its_url_masked(command: tuple[str, ...]) -> None:
    pytest.importorskip("redis")
    url = f"redis://:secret@127.0.0.1:{free_port()}/0"
    options = {"events": ["--notifier-url", url], "dead": ["--queue-url", url]}.get(
        command[0], ["--queue-url", url, "--notifier-url", url])
    line = one_line_error(run(*command, *options))
    assert "Connection refused" in line and mask_url(url) in line and "secret" not in line


def test_a_worker_started_before_its_redis_waits_for_it_one_line_per_try(
        tmp_path: Path, sqlite_url: str) -> None:
    pytest.importorskip("redis")
    # Given a worker whose Redis does not answer yet
    redis = PrivateRedis(tmp_path / "redis")
    worker = launch(["worker", "tasks_for_workers", "--queue", "proc", "--queue-url",
                     redis.url, "--notifier-url", sqlite_url], ready="cannot be reached")
    try:
        # When it has tried twice
        wait_for(lambda: "".join(worker.lines).count("cannot be reached") >= 2, timeout=30,
                 message="two tries")
        # Then it says why in one line a try, naming the URL, and not that it listens
        output = "".join(worker.lines)
        assert "Connection refused" in output and redis.url in output
        assert "Traceback" not in output and "listening on" not in output
        # and once its Redis answers, it listens and runs calls
        redis.start()
        wait_for(lambda: "listening on" in "".join(worker.lines), timeout=30,
                 message="the worker to listen")
        app = ivy.Ivy(redis.url, sqlite_url)
        try:
            assert app.send_task("proc.factorial", [5], queue="proc").result(30) == 120
        finally:
            app.close()
    finally:
        stop_worker(worker)
        redis.stop()


def test_a_sqlite_database_that_cannot_be_made_names_its_path(tmp_path: Path) -> None:
    # Given a SQLite URL whose folder is a file (what root meets where others meet a
    # read-only folder: it may write anywhere)
    (tmp_path / "afile").write_text("")
    url = "sqlite:///afile/ivy.db"
    line = one_line_error(run("call", "x.y", "--queue", "q", "--queue-url", url,
                              "--notifier-url", url, cwd=tmp_path))
    assert str(tmp_path / "afile") in line


# -- blocking sync tasks (friction 5) --------------------------------------------------------

def test_a_cancel_of_a_call_blocked_in_c_is_logged_once(
        memory_url: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="ivy.worker")
    app = ivy.Ivy(memory_url, memory_url)
    started, ended = threading.Event(), threading.Event()
    try:
        @app.register_task(name="hour.blocked")
        def blocked() -> None:
            started.set()
            try:
                time.sleep(1.5)  # one C call: a cancel takes effect when it returns
            finally:
                ended.set()

        app.listen(block=False)
        call = app.delayed_call(blocked)
        assert started.wait(10)
        app.cancel(call)
        assert ended.wait(10)
        wait_for(lambda: "stopping cancelled call" in caplog.text, message="the stop's log")
    finally:
        app.close()
    assert caplog.text.count("stopping cancelled call") == 1


# -- install and status (friction 6, 7, 8) ---------------------------------------------------

def test_a_light_test_extra_and_an_honest_install_section() -> None:
    import tomllib

    root = TESTS.parents[1]
    extras = tomllib.loads((root / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    # .[test] is still everything (CI installs it), .[test-core] leaves out the heavy packages
    assert ".[test,docs]" in (root / ".ci" / "run").read_text()
    assert any(r.startswith("ivy-queue[test-core,") for r in extras["test"])
    core = " ".join(extras["test-core"])
    for heavy in ("playwright", "moto", "sqs", "ironmq", "boto3"):
        assert heavy not in core, heavy
    for needed in ("pytest>=", "pytest-xdist", "hypothesis", "mypy==", "ruff=="):
        assert needed in core, needed
    readme = (root / "README.md").read_text()
    assert "`ivy-queue` is not yet published on PyPI" in readme
    assert "--config-settings editable_mode=compat" in readme
    assert "pip install -e '.[test-core]'" in readme


def test_inspect_on_rabbitmq_shows_the_queues_its_live_workers_consume(
        amqp_url: str, sqlite_url: str) -> None:
    # Given a worker on RabbitMQ (which cannot list its queues) consuming 'proc'
    worker = start_worker(amqp_url, sqlite_url)
    try:
        # When `ivy inspect` names no queue
        out = run("inspect", "--queue-url", amqp_url, "--notifier-url", sqlite_url)
        # Then it shows the queue its live worker consumes
        assert out.returncode == 0, out.stderr
        assert "  proc: 0 waiting or running, 0 dead letter(s) shown" in out.stdout
    finally:
        stop_worker(worker)


def test_dead_list_on_rabbitmq_alone_needs_no_queue(amqp_url: str) -> None:
    # Given a worker on RabbitMQ alone (queue and notifier), and a dead letter in its queue
    worker = start_worker(amqp_url, amqp_url)
    app = ivy.Ivy(amqp_url, amqp_url)
    try:
        app.send_task("hour.unknown", [], queue="proc")
        wait_for(lambda: len(app.dead_letters("proc")) == 1, timeout=30,
                 message="the unknown task's dead letter")
        # When `ivy dead list` names no queue, nor a notifier
        out = run("dead", "list", "--queue-url", amqp_url)
        # Then it lists the dead letters of the queues its live workers consume
        assert out.returncode == 0, out.stderr
        header, *rows = out.stdout.splitlines()
        assert header.split()[:2] == ["QUEUE", "ID"]
        assert [row.split()[0] for row in rows] == ["proc"]
        assert "hour.unknown" in rows[0]
    finally:
        app.close()
        stop_worker(worker)
    # and once no worker is alive, it says how to name the queue, in one line
    wait_for(lambda: run("dead", "list", "--queue-url", amqp_url).returncode != 0,
             timeout=60, message="the heartbeat to expire")
    out = run("dead", "list", "--queue-url", amqp_url)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    [error] = out.stderr.splitlines()
    assert "no live worker of it sends heartbeats" in error and "--queue NAME" in error


def test_a_worker_can_keep_final_failures_out_of_the_dead_letters(sqlite_url: str) -> None:
    # Given a worker started with --no-dead-letter-failures
    worker = start_worker(sqlite_url, sqlite_url, "--no-dead-letter-failures")
    app = ivy.Ivy(sqlite_url, sqlite_url, retry_base_delay=0.01)
    try:
        # When a call fails both of its runs (factorial of a string raises TypeError)
        call = app.send_task("proc.factorial", ["x"], queue="proc", max_retries=1)
        with pytest.raises(ivy.RemoteTaskError, match="TypeError"):
            call.result(30)
        # Then its error reached the producer, and nothing was dead-lettered
        wait_for(lambda: app.queue_backend.size("proc") == 0, timeout=10,
                 message="the failed message acknowledged")
        assert app.dead_letters("proc") == []
    finally:
        app.close()
        stop_worker(worker)


def test_a_worker_whose_rabbitmq_is_down_logs_one_ivy_line_per_retry(sqlite_url: str) -> None:
    pytest.importorskip("pika")
    # Given a worker whose RabbitMQ does not answer
    url = f"amqp://guest:secret@127.0.0.1:{free_port()}/%2F"
    worker = launch(["worker", "tasks_for_workers", "--queue", "proc", "--queue-url", url,
                     "--notifier-url", sqlite_url], ready="reconnecting to")
    try:
        # When it has tried to connect twice
        wait_for(lambda: "".join(worker.lines).count("reconnecting to") >= 2, timeout=30,
                 message="two retries")
    finally:
        output = stop_worker(worker)
    # Then each retry is one ivy line naming the broker and why, pika says nothing, and the
    # worker never said it listens
    assert "Connection refused" in output and "secret" not in output
    assert " pika." not in output, output
    assert "listening on" not in output


def test_an_oserror_of_the_users_own_module_keeps_its_traceback(tmp_path: Path) -> None:
    # Given a task module that fails as it imports, with an OSError of its own
    (tmp_path / "badmod.py").write_text('open("/nonexistent/settings.ini")\n')
    out = run("worker", "badmod", cwd=tmp_path)
    # Then that is no backend's failure: the traceback shows where it came from
    assert out.returncode == 1
    assert "Traceback" in out.stderr and 'badmod.py", line 1' in out.stderr
    assert "ivy: error:" not in out.stderr
    assert not (tmp_path / "ivy.db").exists()


def test_call_each_wait_timeout_says_whether_a_worker_consumes_the_queue(
        sqlite_url: str) -> None:
    out = run("call", "hour.nobody", "--queue", "q", "--each", "-", "--wait", "--timeout",
              "0.5", "--queue-url", sqlite_url, "--notifier-url", sqlite_url, input="[1]\n[2]\n")
    assert out.returncode == 3, out.stderr
    assert "0 of 2 calls finished" in out.stderr
    assert (f"no live worker consumes queue 'q' on {sqlite_url} (heartbeats on notifier "
            f"{sqlite_url}: 0 worker(s) alive)") in out.stderr


#: the optional extras' packages: none may be needed to run ivy on its SQLite default
EXTRAS = ("psycopg", "psycopg_pool", "pika", "redis", "boto3", "iron_mq", "django",
          "django_tasks", "starlette", "fastapi", "prometheus_client", "opentelemetry", "tqdm",
          "msgpack", "croniter", "psutil", "pydantic")

WITHOUT_EXTRAS = f'''
import importlib.abc, sys


class NoExtras(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in {EXTRAS!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}} (not installed here)")
        return None


sys.meta_path.insert(0, NoExtras())
import ivy
from ivy.cli import main

app = ivy.Ivy("sqlite:///" + sys.argv[1], "sqlite:///" + sys.argv[1])
task = app.register_task(lambda a, b: a + b, name="extras.add", queue="q")
app.listen(queue="q", block=False)
assert task.delay(2, 3).result(timeout=20) == 5
app.close()
try:
    main(["worker", "--help"])
except SystemExit as exc:
    assert exc.code == 0, exc.code
print("ran without the extras")
'''


def test_ivy_and_its_cli_run_on_sqlite_without_any_extra(tmp_path: Path) -> None:
    # Given none of the optional extras' packages importable (a plain `pip install ivy-queue`)
    out = subprocess.run([sys.executable, "-c", WITHOUT_EXTRAS, str(tmp_path / "ivy.db")],
                         capture_output=True, text=True, timeout=60)
    # Then a task runs on the SQLite default, and the CLI loads (it once needed psycopg)
    assert out.returncode == 0, out.stderr
    assert "ran without the extras" in out.stdout
