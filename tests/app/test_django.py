"""ivy.contrib.django: Django's tasks interface on ivy (issue 25, part 1).

Django is configured once in this test process (``settings.configure``, in a module fixture,
only if nothing configured it before); each test then gets its own ``TASKS`` (a fresh memory
broker) through ``override_settings``. Other test modules do not use Django, so the global
settings do not reach them. The example project (examples/django) runs its own tests in a
subprocess, under the backport here and under Django 6 on Python 3.12 when pyenv has it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from common import ROOT, require_service, wait_for

django = pytest.importorskip("django")

EXAMPLE = ROOT / "examples" / "django"


def _settings() -> dict[str, Any]:
    backport = django.VERSION < (6,)
    return {
        "SECRET_KEY": "tests", "USE_TZ": True,
        "INSTALLED_APPS": [*(["django_tasks"] if backport else []), "ivy.contrib.django",
                           "tasks_for_django"],
        "DATABASES": {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
        "TASKS": {"default": {"BACKEND": "ivy.contrib.django.IvyBackend",
                              "QUEUES": ["default", "low"],
                              "OPTIONS": {"queue_url": "memory://django-configure",
                                          "notifier_url": "memory://django-configure"}}},
    }


@pytest.fixture(scope="module", autouse=True)
def configured() -> None:
    from django.conf import settings

    if not settings.configured:
        settings.configure(**_settings())
        django.setup()
    elif "ivy.contrib.django" not in settings.INSTALLED_APPS:
        pytest.skip("Django was configured by another module, without ivy.contrib.django")


def tasks_setting(url: str, **more: Any) -> dict[str, Any]:
    options = {"queue_url": url, "notifier_url": url, "max_retries": 2,
               "ivy": {"retry_base_delay": 0.01, "retry_max_delay": 0.05}}
    return {"default": {"BACKEND": "ivy.contrib.django.IvyBackend",
                        "QUEUES": ["default", "low"], "OPTIONS": options, **more}}


@pytest.fixture
def backend(memory_url: str) -> Iterator[Any]:
    from django.test import override_settings

    from ivy.contrib.django._compat import task_backends

    with override_settings(TASKS=tasks_setting(memory_url)):
        found = task_backends["default"]
        yield found
        found.close()


@pytest.fixture
def worker(backend: Any) -> Iterator[Any]:
    running = backend.app.listen(queue=["default", "low"], block=False, heartbeat=None,
                                 concurrency=2)
    yield running
    running.stop()


def finished(backend: Any, result_id: str, timeout: float = 15.0) -> Any:
    """The result of ``result_id`` once it is final."""
    found: list[Any] = []

    def done() -> bool:
        found[:] = [backend.get_result(result_id)]
        return bool(found[0].is_finished)

    wait_for(done, timeout=timeout, message=f"Django task result {result_id}")
    return found[0]


def test_the_backend_has_the_four_flags(backend: Any) -> None:
    from ivy.contrib.django import IvyBackend

    assert isinstance(backend, IvyBackend)
    assert backend.supports_defer and backend.supports_async_task
    assert backend.supports_get_result and backend.supports_priority


def test_a_task_runs_and_its_result_has_timestamps_and_workers(backend: Any,
                                                              worker: Any) -> None:
    import tasks_for_django as t

    result = t.add.enqueue(2, 3)
    assert result.status == "READY" and result.enqueued_at is not None
    assert backend.get_result(result.id).status in ("READY", "RUNNING", "SUCCESSFUL")
    done = finished(backend, result.id)
    assert done.status == "SUCCESSFUL" and done.return_value == 5
    assert done.args == [2, 3] and done.kwargs == {} and done.errors == []
    assert done.enqueued_at <= done.started_at <= done.finished_at
    assert done.last_attempted_at == done.started_at
    assert done.worker_ids == [worker.name] and done.attempts == 1
    assert done.task.func is t.add.func and done.backend == "default"
    assert t.add.get_result(result.id).return_value == 5
    result.refresh()
    assert result.status == "SUCCESSFUL" and result.return_value == 5
    assert finished(backend, t.pair.enqueue(1, 2).id).return_value == [1, 2]


def test_a_failure_keeps_every_attempts_class_path_and_traceback(backend: Any,
                                                                 worker: Any) -> None:
    import tasks_for_django as t

    done = finished(backend, t.fail.enqueue("boom").id)
    assert done.status == "FAILED"
    assert len(done.errors) == 3 and done.attempts == 3  # max_retries 2
    for error in done.errors:
        assert error.exception_class_path == "builtins.ValueError"
        assert error.exception_class is ValueError
        assert "ValueError: boom" in error.traceback and "tasks_for_django.py" in error.traceback
    with pytest.raises(ValueError, match="failed"):
        _ = done.return_value


def test_takes_context_counts_attempts_as_ivy_does(backend: Any, worker: Any) -> None:
    import tasks_for_django as t

    result = t.flaky.enqueue(3)
    done = finished(backend, result.id)
    assert done.status == "SUCCESSFUL", done.errors
    assert done.return_value == {"attempt": 3, "ivy_attempt": 2, "result_id": result.id,
                                 "workers": 3}
    assert [e.exception_class_path for e in done.errors] == ["builtins.RuntimeError"] * 2
    assert done.attempts == 3


def test_async_tasks_run_on_the_workers_loop(backend: Any, worker: Any) -> None:
    import tasks_for_django as t

    assert finished(backend, t.async_add.enqueue(4, 5).id).return_value == 9
    assert finished(backend, t.async_context.enqueue().id).return_value == 1


def test_the_signals_fire(backend: Any, worker: Any) -> None:
    import tasks_for_django as t

    from ivy.contrib.django import IvyBackend
    from ivy.contrib.django._compat import task_enqueued, task_finished, task_started

    seen: list[tuple[str, Any, str, str]] = []

    def receiver(name: str) -> Any:
        def receive(sender: Any, task_result: Any, **kwargs: Any) -> None:
            seen.append((name, sender, task_result.id, str(task_result.status)))
        return receive

    receivers = [(signal, receiver(name)) for signal, name in (
        (task_enqueued, "enqueued"), (task_started, "started"), (task_finished, "finished"))]
    for signal, receive in receivers:
        signal.connect(receive)
    try:
        ok, bad = t.add.enqueue(1, 1), t.fail.using(priority=5).enqueue("x")
        finished(backend, ok.id)
        finished(backend, bad.id)
    finally:
        for signal, receive in receivers:
            signal.disconnect(receive)
    assert all(sender is IvyBackend for _, sender, _, _ in seen)
    mine = [(name, status) for name, _, rid, status in seen if rid == ok.id]
    assert mine == [("enqueued", "READY"), ("started", "RUNNING"), ("finished", "SUCCESSFUL")]
    theirs = [(name, status) for name, _, rid, status in seen if rid == bad.id]
    assert theirs == [("enqueued", "READY"), *[("started", "RUNNING"),
                                               ("finished", "FAILED")] * 3]


def test_run_after_defers_the_call(backend: Any, worker: Any) -> None:
    import tasks_for_django as t
    from django.utils import timezone

    when = timezone.now() + timedelta(seconds=1)
    result = t.add.using(run_after=when).enqueue(1, 2)
    assert backend.get_result(result.id).status == "READY"
    done = finished(backend, result.id)
    assert done.return_value == 3 and done.started_at >= when
    assert done.task.run_after == when


def test_priorities_map_onto_ivys_and_order_the_queue(backend: Any) -> None:
    import tasks_for_django as t

    from ivy.contrib.django import ivy_priority

    assert [ivy_priority(p) for p in (-100, 0, 100)] == [0, 100, 200]
    t.ran.clear()
    results = [t.record.using(priority=p).enqueue(str(p)) for p in (-100, 0, 50, -5, 100)]
    running = backend.app.listen(queue="low", block=False, heartbeat=None)  # one at a time
    try:
        for result in results:
            finished(backend, result.id)
    finally:
        running.stop()
    assert t.ran == ["100", "50", "0", "-5", "-100"]


def test_wrong_arguments_fail_at_enqueue(backend: Any) -> None:
    import tasks_for_django as t

    with pytest.raises(TypeError, match=r"wrong arguments for task 'tasks_for_django\.add'"):
        t.add.enqueue(1)


def test_an_unknown_id_does_not_exist(backend: Any) -> None:
    from ivy.contrib.django._compat import TaskResultDoesNotExist

    with pytest.raises(TaskResultDoesNotExist):
        backend.get_result("0" * 32)


def test_enqueue_on_commit_sends_when_the_transaction_commits(memory_url: str) -> None:
    import tasks_for_django as t
    from django.db import transaction
    from django.test import override_settings

    from ivy.contrib.django._compat import TaskResultDoesNotExist, task_backends

    with override_settings(TASKS=tasks_setting(memory_url, ENQUEUE_ON_COMMIT=True)):
        backend = task_backends["default"]
        try:
            with transaction.atomic():
                result = t.add.enqueue(20, 22)
                assert len(result.id) == 32 and result.enqueued_at is None
                with pytest.raises(TaskResultDoesNotExist):
                    backend.get_result(result.id)
            assert result.enqueued_at is not None  # sent at the commit
            with pytest.raises(RuntimeError), transaction.atomic():
                dropped = t.add.enqueue(1, 1)
                raise RuntimeError("rolled back")
            worker = backend.app.listen(queue="default", block=False, heartbeat=None)
            try:
                assert finished(backend, result.id).return_value == 42
                assert worker.processed == 1
            finally:
                worker.stop()
            with pytest.raises(TaskResultDoesNotExist):
                backend.get_result(dropped.id)
            assert dropped.enqueued_at is None
        finally:
            backend.close()


def test_get_result_from_another_process(tmp_path: Path) -> None:
    """A result sent and run here is read by a process that only shares the SQLite file."""
    import tasks_for_django as t
    from django.test import override_settings

    from ivy.contrib.django._compat import task_backends

    url = f"sqlite:///{tmp_path / 'ivy.db'}"
    with override_settings(TASKS=tasks_setting(url)):
        backend = task_backends["default"]
        try:
            worker = backend.app.listen(queue="default", block=False, heartbeat=None)
            try:
                result = t.add.enqueue(7, 8)
                finished(backend, result.id)
            finally:
                worker.stop()
        finally:
            backend.close()
    script = (
        "import json, sys, django\n"
        "from django.conf import settings\n"
        f"settings.configure(**{_settings()!r})\n"
        f"settings.TASKS = {tasks_setting(url)!r}\n"
        "django.setup()\n"
        "from ivy.contrib.django._compat import task_backends\n"
        "r = task_backends['default'].get_result(sys.argv[1])\n"
        "print(json.dumps([str(r.status), r.return_value, r.args, r.task.module_path,\n"
        "                  r.finished_at is not None, len(r.worker_ids)]))\n")
    out = subprocess.run([sys.executable, "-c", script, result.id], capture_output=True,
                         text=True, timeout=60, cwd=ROOT / "tests" / "support",
                         env={**os.environ, "PYTHONPATH": str(ROOT / "tests" / "support")})
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == ["SUCCESSFUL", 15, [7, 8], "tasks_for_django.add",
                                      True, 1]


def manage(*args: str, env: dict[str, str], timeout: float = 60) -> str:
    """``python manage.py ARGS`` in the example project; the last line of its stdout (it must
    exit 0; Django 5.2's shell prints how many models it imported first)."""
    out = subprocess.run([sys.executable, "manage.py", *args], cwd=env["EXAMPLE_DIR"],
                         env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, (args, out.stdout, out.stderr)
    return out.stdout.strip().splitlines()[-1] if out.stdout.strip() else ""


def example_copy(tmp_path: Path) -> Path:
    """A copy of the example project (its runs leave db.sqlite3 and ivy.db there)."""
    return Path(shutil.copytree(EXAMPLE, tmp_path / "site",
                                ignore=shutil.ignore_patterns("__pycache__", "*.sqlite3")))


@pytest.fixture
def example_env(tmp_path: Path) -> dict[str, str]:
    url = f"sqlite:///{tmp_path / 'ivy.db'}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IVY_", "DJANGO_"))}
    return {**env, "IVY_QUEUE_URL": url, "IVY_NOTIFIER_URL": url,
            "EXAMPLE_DIR": str(example_copy(tmp_path))}


READ = ("from django.tasks import default_task_backend as b\n"
        if django.VERSION >= (6,) else "from django_tasks import default_task_backend as b\n")


@pytest.mark.slow
def test_the_management_command_runs_what_another_process_sent(
        example_env: dict[str, str]) -> None:
    """Three processes: a producer enqueues, ``manage.py ivy_worker --burst`` runs the calls
    and exits, a third reads the results."""
    sent = manage("shell", "-c", "from shop.tasks import send_receipt, total\n"
                  "print(send_receipt.enqueue(5).id, total.enqueue([1, 2]).id)",
                  env=example_env).split()
    manage("ivy_worker", "--burst", "--log-level", "WARNING", env=example_env)
    read = manage("shell", "-c", READ + "import sys, json\n"
                  f"print(json.dumps([b.get_result(i).return_value for i in {sent!r}]))",
                  env=example_env)
    assert json.loads(read) == ["receipt for order 5", 3]


@pytest.mark.slow
def test_the_management_command_runs_several_processes(example_env: dict[str, str]) -> None:
    import signal

    worker = subprocess.Popen(
        [sys.executable, "manage.py", "ivy_worker", "--processes", "2", "-Q", "emails",
         "--log-level", "WARNING"], cwd=example_env["EXAMPLE_DIR"], env=example_env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        read = manage("shell", "-c", READ + "import json, time\n"
                      "from shop.tasks import send_receipt\n"
                      "ids = [send_receipt.enqueue(n).id for n in range(6)]\n"
                      "deadline = time.monotonic() + 30\n"
                      "while not all(b.get_result(i).is_finished for i in ids):\n"
                      "    assert time.monotonic() < deadline, 'not finished'\n"
                      "    time.sleep(0.05)\n"
                      "print(json.dumps([b.get_result(i).return_value for i in ids]))",
                      env=example_env)
    finally:
        worker.send_signal(signal.SIGTERM)
        _, err = worker.communicate(timeout=30)
    assert json.loads(read) == [f"receipt for order {n}" for n in range(6)]
    assert worker.returncode == 0, err


@pytest.mark.slow
def test_the_example_projects_tests_pass(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "manage.py", "test", "shop", "-v", "2"],
                         cwd=example_copy(tmp_path), capture_output=True, text=True, timeout=120,
                         env={k: v for k, v in os.environ.items() if not k.startswith("IVY_")})
    assert out.returncode == 0, out.stderr
    assert "Ran 5 tests" in out.stderr and "OK" in out.stderr


#: what the Python 3.12 environment of the Django 6 test holds (ivy itself comes from this
#: checkout, through PYTHONPATH): changing it builds the environment again
DJANGO6_REQUIREMENTS = ("django>=6,<7", "fastjsonschema>=2.19")


def python312() -> str | None:
    """A Python 3.12 interpreter: on PATH, or one pyenv installed."""
    found = shutil.which("python3.12")
    if found is not None and subprocess.run([found, "--version"], capture_output=True,
                                            check=False).returncode == 0:
        return found
    root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    versions = sorted(root.glob("3.12*/bin/python3.12")) if root.is_dir() else []
    return str(versions[-1]) if versions else None


def django6_env(python: str) -> Path:
    """A venv of Python 3.12 with Django 6, made once and kept in ~/.cache/ivy-tests (a lock
    file keeps two test processes from building it at once)."""
    import fcntl

    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ivy-tests"
    cache.mkdir(parents=True, exist_ok=True)
    venv = cache / "django6-py312"
    stamp = venv / "ivy-requirements.txt"
    wanted = "\n".join(DJANGO6_REQUIREMENTS)
    with open(cache / "django6-py312.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if stamp.exists() and stamp.read_text() == wanted:
            return venv
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run([python, "-m", "venv", str(venv)], check=True, timeout=120)
        subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q",
                        *DJANGO6_REQUIREMENTS], check=True, timeout=300)
        stamp.write_text(wanted)
    return venv


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_example_passes_on_django_6(tmp_path: Path) -> None:
    """Django 6's own django.tasks (Python 3.12+), no backport: the example's tests, through
    the same code path. The first run builds the environment (about 10 s), later runs reuse it
    (the tests themselves take about 3 s)."""
    python = python312()
    require_service("Python 3.12", python is not None, "no python3.12 on PATH or in pyenv")
    assert python is not None
    venv = django6_env(python)
    out = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import django; print(django.VERSION[0])"],
        capture_output=True, text=True, check=True)
    assert int(out.stdout) >= 6
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("IVY_", "DJANGO_", "VIRTUAL_ENV", "PYTHON"))}
    env["PYTHONPATH"] = str(ROOT)
    started = time.monotonic()
    out = subprocess.run([str(venv / "bin" / "python"), "manage.py", "test", "shop", "-v", "2"],
                         cwd=example_copy(tmp_path), capture_output=True, text=True,
                         timeout=180, env=env)
    assert out.returncode == 0, out.stderr
    assert "Ran 5 tests" in out.stderr and "OK" in out.stderr
    assert time.monotonic() - started < 60


def test_a_message_cannot_make_the_worker_import_a_module_outside_the_apps(
        caplog: pytest.LogCaptureFixture, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ivy.contrib.django.running import DjangoTasks

    # Given an importable module, in no installed app, whose import has a side effect
    name = f"outside_{uuid.uuid4().hex[:8]}"
    marker = tmp_path / "imported"
    (tmp_path / f"{name}.py").write_text(
        f"open({str(marker)!r}, 'w').close()\ndef run():\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    registry = DjangoTasks("default")
    # When a message names a function of it
    with caplog.at_level("WARNING", logger="ivy.contrib.django"):
        assert registry.get(f"{name}.run") is None
    # Then the worker refused it without importing it
    assert not marker.exists()
    assert "in none of INSTALLED_APPS" in caplog.text
    # while a task of an installed app is found
    assert registry.get("tasks_for_django.add") is not None


ATOMIC = '''
import json, sys, django
from django.conf import settings
settings.configure(**SETTINGS)
django.setup()
from django.db import connection, transaction
from ivy.contrib.django._compat import task_backends
import tasks_for_django as t

backend = task_backends["default"]
backend.app.queue_backend.migrate()  # ivy's schema, where the test keeps its table too
with connection.cursor() as c:
    c.execute(f'CREATE TABLE "{SCHEMA}".orders (id int)')
kept = dropped = None


def call_of(result):
    pending = backend.app.producer.results().consumers()[0].pending()
    return next(c for c in pending if c.id == result.id)


with transaction.atomic():
    with connection.cursor() as c:
        c.execute(f'INSERT INTO "{SCHEMA}".orders VALUES (1)')
    kept = t.add.enqueue(1, 2)
    kept_call = call_of(kept)
    # inside the block, nobody else sees the message yet
    hidden = backend.app.queue_backend.size("default") == 0
try:
    with transaction.atomic():
        with connection.cursor() as c:
            c.execute(f'INSERT INTO "{SCHEMA}".orders VALUES (2)')
        dropped = t.add.enqueue(3, 4)
        dropped_call = call_of(dropped)
        raise RuntimeError("the view fails")
except RuntimeError:
    pass
kept_call.sent(10)
try:
    dropped_call.sent(10)
    rolled_back = False
except Exception as exc:
    rolled_back = type(exc).__name__ == "TransactionRolledBack"
# the rolled back one leaves no record behind: get_result does not know it (within a deadline:
# the record goes on a thread of its own once the rollback is seen)
import time
deadline = time.monotonic() + 10
forgotten = False
while not forgotten and time.monotonic() < deadline:
    try:
        backend.get_result(dropped.id)
        time.sleep(0.05)
    except Exception as exc:
        forgotten = type(exc).__name__ == "TaskResultDoesNotExist"
        break
known = backend.get_result(kept.id).status == "READY"
with connection.cursor() as c:
    c.execute(f'SELECT count(*) FROM "{SCHEMA}".orders')
    orders = c.fetchone()[0]
print(json.dumps([hidden, backend.app.queue_backend.size("default"), rolled_back, orders,
                  forgotten, known]))
backend.close()
'''


def test_enqueue_inside_atomic_commits_and_rolls_back_with_djangos_postgresql(
        tmp_path: Path, pg_url: str, schema: str) -> None:
    # Given Django on PostgreSQL, and the ivy queue in that same database
    settings = _settings()
    settings["DATABASES"] = {"default": {
        "ENGINE": "django.db.backends.postgresql", "NAME": "postgres", "USER": "postgres",
        "HOST": "127.0.0.1", "PORT": "5432"}}
    settings["TASKS"] = tasks_setting(f"{pg_url}?schema={schema}")
    settings["TASKS"]["default"]["OPTIONS"]["notifier_url"] = f"sqlite:///{tmp_path / 'n.db'}"
    script = f"SETTINGS = {settings!r}\nSCHEMA = {schema!r}\n" + ATOMIC
    # When a view enqueues inside transaction.atomic(), once committing, once failing
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=60, cwd=ROOT / "tests" / "support",
                         env={**os.environ, "PYTHONPATH": str(ROOT / "tests" / "support")})
    assert out.returncode == 0, out.stderr
    hidden, waiting, rolled_back, orders, forgotten, known = json.loads(out.stdout)
    # Then the message was hidden until the commit, the committed one waits for a worker,
    # the rolled back one's call failed with TransactionRolledBack, as its order row went
    assert hidden and waiting == 1 and rolled_back and orders == 1
    # and its result record went too (get_result: TaskResultDoesNotExist), the other's stays
    assert forgotten and known
