"""Backends by URL and by the original's dict form; defaults and environment overrides."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from common import wait_for

import ivy
from ivy.config import make_notifier, make_queue_backend, mask_url
from ivy.notifiers.memory import MemoryNotifier
from ivy.notifiers.sqlite import SQLiteNotifier
from ivy.queues.memory import MemoryQueueBackend
from ivy.queues.sqlite import SQLiteQueueBackend


def test_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    relative = make_queue_backend("sqlite:///data/ivy.db")
    assert isinstance(relative, SQLiteQueueBackend)
    assert relative.db.path == str(tmp_path / "data" / "ivy.db")
    absolute = make_queue_backend(f"sqlite:///{tmp_path}/abs.db")
    assert isinstance(absolute, SQLiteQueueBackend)
    assert absolute.db.path == str(tmp_path / "abs.db")
    memory = make_queue_backend("memory://shared")
    assert isinstance(memory, MemoryQueueBackend)
    assert memory.broker is MemoryQueueBackend("shared").broker
    notifier = make_notifier("sqlite:///n.db?ttl=60")
    assert isinstance(notifier, SQLiteNotifier) and notifier.ttl == 60.0
    for b in (relative, absolute, notifier):
        b.close()


def test_dict_form(tmp_path: Path) -> None:
    backend = make_queue_backend({"type": "sqlite", "path": str(tmp_path / "d.db")})
    assert isinstance(backend, SQLiteQueueBackend)
    backend.close()
    assert isinstance(make_notifier({"type": "memory"}), MemoryNotifier)
    assert isinstance(make_notifier({"url": "memory://x"}), MemoryNotifier)


def test_default_is_ivy_db_in_working_directory(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("IVY_QUEUE_URL", raising=False)
    monkeypatch.delenv("IVY_NOTIFIER_URL", raising=False)
    backend = make_queue_backend()
    assert isinstance(backend, SQLiteQueueBackend)
    assert backend.db.path == str(tmp_path / "ivy.db")
    backend.close()
    monkeypatch.setenv("IVY_QUEUE_URL", "memory://from-env")
    monkeypatch.setenv("IVY_NOTIFIER_URL", "memory://from-env")
    assert make_queue_backend().url == "memory://from-env"
    assert make_notifier().url == "memory://from-env"


@pytest.mark.parametrize(("spec", "expected"), [
    ("kafka://host", "unknown queue backend URL scheme 'kafka'"),
    ("ivy.db", "malformed queue backend URL 'ivy.db'"),
    ("sqlite://", "malformed SQLite URL"),
    ("sqlite://host/ivy.db", "malformed SQLite URL"),
    ({"type": "zeromq"}, "unknown queue backend type 'zeromq'"),
    ({"path": "x.db"}, "unknown queue backend type None"),
    (42, "must be a URL string or a dict"),
])
def test_bad_configuration_lists_what_is_accepted(spec: object, expected: str) -> None:
    with pytest.raises(ivy.ConfigurationError) as exc:
        make_queue_backend(spec)  # type: ignore[arg-type]
    assert expected in str(exc.value)
    assert "sqlite" in str(exc.value)


def test_notifier_scheme_table_is_separate() -> None:
    with pytest.raises(ivy.ConfigurationError, match="unknown notifier URL scheme 'sqs'"):
        make_notifier("sqs://")


def test_passwords_are_masked() -> None:
    assert mask_url("amqp://guest:secret@host:5672/%2F") == "amqp://guest:***@host:5672/%2F"
    assert mask_url("redis://:pw@127.0.0.1:6379/0") == "redis://:***@127.0.0.1:6379/0"
    assert mask_url("sqlite:///ivy.db") == "sqlite:///ivy.db"
    with pytest.raises(ivy.ConfigurationError) as exc:
        make_queue_backend("kafka://user:hunter2@host")
    assert "hunter2" not in str(exc.value)


@pytest.mark.parametrize(("url", "masked"), [
    # redis-py takes the password from the query as well as from the userinfo
    ("redis://127.0.0.1:6379/0?password=hunter2", "redis://127.0.0.1:6379/0?password=***"),
    ("redis://h/0?db=1&PassWord=hunter2&socket_timeout=5",
     "redis://h/0?db=1&PassWord=***&socket_timeout=5"),
    ("rediss://:pw@h/0?username=u&password=hunter2", "rediss://:***@h/0?username=u&password=***"),
    ("amqp://g:pw@h1:5672,h2:5673/%2F?heartbeat=10&passwd=hunter2",
     "amqp://g:***@h1:5672,h2:5673/%2F?heartbeat=10&passwd=***"),
    ("sqs://?pwd=a&secret=b&token=c&access_key=d&secret_key=e&api_key=f&sas=g&ApiKey=h",
     "sqs://?pwd=***&secret=***&token=***&access_key=***&secret_key=***&api_key=***&sas=***"
     "&ApiKey=***"),
    # a key written percent-encoded is still its name
    ("redis://h/0?pass%77ord=hunter2", "redis://h/0?pass%77ord=***"),
    # the rest is kept as written, an empty URL path and a fragment too
    ("sqlite:///ivy.db?ttl=60", "sqlite:///ivy.db?ttl=60"),
    ("sqlite:///ivy.db?token=hunter2#x", "sqlite:///ivy.db?token=***#x"),
    ("amqp://h/v?ssl_keyfile=/etc/k.pem&keys=3", "amqp://h/v?ssl_keyfile=/etc/k.pem&keys=3"),
])
def test_secrets_in_the_query_are_masked(url: str, masked: str) -> None:
    assert mask_url(url) == masked


def test_a_workers_log_line_masks_a_password_in_the_query(
        redis_url: str, caplog: pytest.LogCaptureFixture) -> None:
    # Given a Redis URL carrying its password in the query (the test server's default user
    # takes any password when it is named: AUTH default <password>)
    url = f"{redis_url}?username=default&password=hunter2"
    app = ivy.Ivy(url, "memory://masked")

    @app.register_task(name="t.masked", queue="masked")
    def masked() -> None: ...

    # When a worker starts on it
    with caplog.at_level(logging.INFO, logger="ivy"):
        worker = app.listen(queue="masked", block=False)
        try:
            wait_for(lambda: "listening on" in caplog.text, message="the worker's first line")
        finally:
            worker.stop()
            app.close()
    # Then its log names the URL with the password hidden
    line = next(r.getMessage() for r in caplog.records if "listening on" in r.getMessage())
    assert "password=***" in line and "username=default" in line
    assert "hunter2" not in caplog.text
