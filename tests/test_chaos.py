"""The short form of the chaos soak (benchmarks/chaos.py): a few hundred calls while a worker
is SIGKILLed, Redis restarts and RabbitMQ restarts, on private servers; and the same on RabbitMQ
alone (results over the AMQP notifier), with the producer's connections closed by the broker
during a burst. Nothing may be lost and no callback may run twice."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
from conftest import require_service
from servers import PrivateRabbit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

pytest.importorskip("pika")
pytest.importorskip("redis")


@pytest.mark.slow
# A private RabbitMQ node's restart once took over 100 s here; the harness bounds its own waits
# (tests/servers.py: 120 s to start, 210 s to stop), so those, not the blanket 120 s, decide.
@pytest.mark.timeout(600)
def test_short_chaos_soak_loses_nothing() -> None:
    why = PrivateRabbit.available()
    require_service("a private RabbitMQ node", why is None, why or "")
    import chaos

    lines: list[str] = []
    summary = chaos.run(n=300, kills=1, redis_restarts=1, rabbit_restarts=1, batch=25,
                        log=lines.append)
    print(summary.line())
    assert (summary.kills, summary.redis_restarts, summary.rabbit_restarts) == (1, 1, 1)
    assert summary.sent == 300
    assert summary.lost == 0, "\n".join(lines)
    assert summary.double_callbacks == 0


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_short_chaos_soak_on_redis_streams_loses_nothing() -> None:
    # Redis alone: Streams as the queue, pub/sub as the notifier, on a private redis-server
    # with AOF that is restarted mid-run while a worker is SIGKILLed
    require_service("redis-server", shutil.which("redis-server") is not None,
                    "redis-server is not installed")
    import chaos

    lines: list[str] = []
    summary = chaos.run(n=300, kills=1, redis_restarts=1, rabbit_restarts=0, batch=25,
                        log=lines.append, broker="redis")
    print(summary.line())
    assert (summary.kills, summary.redis_restarts) == (1, 1)
    assert summary.sent == 300
    assert summary.lost == 0, "\n".join(lines)
    assert summary.double_callbacks == 0


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_short_chaos_soak_on_rabbitmq_alone_loses_nothing() -> None:
    why = PrivateRabbit.available()
    require_service("a private RabbitMQ node", why is None, why or "")
    import chaos

    lines: list[str] = []
    summary = chaos.run(n=300, kills=1, redis_restarts=0, rabbit_restarts=1, batch=25,
                        log=lines.append, connection_closes=1, notifier="amqp")
    print(summary.line())
    assert (summary.kills, summary.rabbit_restarts, summary.connection_closes) == (1, 1, 1)
    assert summary.sent >= 300
    assert summary.lost == 0, "\n".join(lines)
    assert summary.double_callbacks == 0
