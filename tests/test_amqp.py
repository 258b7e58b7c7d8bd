"""The AMQP backend on the real RabbitMQ, beyond the contract: pika's own I/O paths when the
installed pika is not one ivy's shortcuts were tested with, priorities kept across retries,
deferred deliveries that do not count as attempts, and an exchange with routes."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator

import pytest
from conftest import wait_for
from contract import qname, take

pika = pytest.importorskip("pika")

from ivy.queues import _pika_patches  # noqa: E402
from ivy.queues.amqp import AMQPQueueBackend  # noqa: E402


@pytest.fixture
def backend(amqp_url: str) -> Iterator[AMQPQueueBackend]:
    b = AMQPQueueBackend(amqp_url)
    yield b
    b.close()
    b.delete_queues(sorted(b._declarer.seen))


def test_untested_pika_falls_back_to_its_own_io_paths(
        amqp_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    # Given a pika version outside the range ivy's private-API shortcuts were tested with
    monkeypatch.setattr(_pika_patches, "PIKA_VERSION", (1, 9, 0))
    monkeypatch.setattr(_pika_patches, "_fallback_logged", threading.Event())
    caplog.set_level(logging.INFO, logger="ivy.amqp")
    backend = AMQPQueueBackend(amqp_url)
    q = qname()
    try:
        # When it publishes (a body larger than the socket buffer included) and consumes
        bodies = [b"first", b"x" * (6 << 20), b"last"]
        backend.publish_many(q, bodies)
        consumer = backend.consume(q, prefetch=10)
        retried = consumer.get(10)
        assert retried is not None and retried.body == b"first"
        retried.retry(0.05)  # through a delay queue and back
        got = take(consumer, 3, timeout=20)
        consumer.close()
        # Then every message arrives, the retried one after the others
        assert got == [*bodies[1:], b"first"]
        # through pika's own paths: nothing patched, and an op of another thread runs on the
        # connection's I/O thread
        link = backend._link()
        conn = link._conn
        assert conn is not None and not link.shortcuts
        assert not hasattr(conn, "_ivy_cork")
        assert "write" not in vars(conn._transport)
        ran_in: list[int | None] = []
        link.call(lambda ch: ran_in.append(threading.get_ident()))
        wait_for(lambda: ran_in, message="the op")
        assert ran_in == [link._thread.ident]
        # and the fallback was logged once, for all the connections
        said = [r for r in caplog.records if "pika's own I/O paths" in r.getMessage()]
        assert len(said) == 1 and "1.9.0" in said[0].getMessage()
    finally:
        backend.close()
        backend.delete_queues(sorted(backend._declarer.seen))


def test_tested_pika_uses_the_shortcuts(backend: AMQPQueueBackend) -> None:
    # the installed pika is inside the tested range (else the bound in pyproject is wrong)
    assert _pika_patches.enabled(), _pika_patches.PIKA_VERSION
    q = qname()
    backend.publish(q, b"x")
    link = backend._link()
    assert link.shortcuts and link._conn is not None and hasattr(link._conn, "_ivy_cork")
