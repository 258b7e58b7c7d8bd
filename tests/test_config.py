"""Backends by URL and by the original's dict form; defaults and environment overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

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
