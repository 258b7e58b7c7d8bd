"""The contract suites on the embedded backends (memory and SQLite)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from contract import NotifierContract, QueueBackendContract

from ivy.notifiers.base import Notifier
from ivy.notifiers.memory import MemoryNotifier
from ivy.notifiers.sqlite import SQLiteNotifier
from ivy.queues.base import QueueBackend
from ivy.queues.memory import MemoryQueueBackend
from ivy.queues.sqlite import SQLiteQueueBackend


class TestMemoryQueue(QueueBackendContract):
    @pytest.fixture
    def backend(self, memory_url: str) -> Iterator[QueueBackend]:
        b = MemoryQueueBackend(memory_url.removeprefix("memory://"))
        yield b
        b.close()


class TestSQLiteQueue(QueueBackendContract):
    @pytest.fixture
    def backend(self, tmp_path: Path) -> Iterator[QueueBackend]:
        b = SQLiteQueueBackend(str(tmp_path / "q.db"))
        yield b
        b.close()


class TestMemoryNotifier(NotifierContract):
    @pytest.fixture
    def notifier(self, memory_url: str) -> Iterator[Notifier]:
        n = MemoryNotifier(memory_url.removeprefix("memory://"))
        yield n
        n.close()


class TestSQLiteNotifier(NotifierContract):
    @pytest.fixture
    def notifier(self, tmp_path: Path) -> Iterator[Notifier]:
        n = SQLiteNotifier(str(tmp_path / "n.db"))
        yield n
        n.close()


def test_sqlite_queue_is_shared_by_two_backend_objects(tmp_path: Path) -> None:
    # Two processes are two backend objects on one file; here, two objects in one process.
    producer = SQLiteQueueBackend(str(tmp_path / "shared.db"))
    worker = SQLiteQueueBackend(str(tmp_path / "shared.db"))
    producer.publish("q", b"hello")
    consumer = worker.consume("q")
    d = consumer.get(5)
    assert d is not None and d.body == b"hello"
    d.ack()
    consumer.close()
    producer.close()
    worker.close()
