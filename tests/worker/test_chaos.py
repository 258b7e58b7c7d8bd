"""The short form of the chaos soak (benchmarks/chaos.py): a few hundred calls while a worker
is SIGKILLed, Redis restarts and RabbitMQ restarts, on private servers; and the same on RabbitMQ
alone (results over the AMQP notifier), with the producer's connections closed by the broker
during a burst and its reply queue deleted. One call in 200 is a poison message that kills its
worker each time it runs. Nothing may be lost, no callback may run twice, and the poison call
must fail with its "delivery limit" reason."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
from common import require_service
from servers import PrivateRabbit

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

pytest.importorskip("pika")
pytest.importorskip("redis")


@pytest.mark.slow
# A private RabbitMQ node's restart once took over 100 s here; the harness bounds its own waits
# (tests/support/servers.py: 120 s to start, 210 s to stop), so those, not the blanket 120 s,
# decide.
@pytest.mark.timeout(600)
def test_short_chaos_soak_loses_nothing() -> None:
    why = PrivateRabbit.available()
    require_service("a private RabbitMQ node", why is None, why or "")
    import chaos

    lines: list[str] = []
    summary = chaos.run(n=300, kills=1, redis_restarts=1, rabbit_restarts=1, batch=25,
                        log=lines.append, poison_every=200)
    print(summary.line())
    assert (summary.kills, summary.redis_restarts, summary.rabbit_restarts) == (1, 1, 1)
    assert summary.sent == 300
    assert summary.lost == 0, "\n".join(lines)
    assert summary.double_callbacks == 0
    # the poison call (1 in 200) killed workers until its delivery limit, then failed saying so
    assert summary.poison == 1 and summary.poison_stopped == 1, "\n".join(lines)


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
                        log=lines.append, broker="redis", poison_every=200)
    print(summary.line())
    assert (summary.kills, summary.redis_restarts) == (1, 1)
    assert summary.sent == 300
    assert summary.lost == 0, "\n".join(lines)
    assert summary.double_callbacks == 0
    # the poison call (1 in 200) killed workers until its delivery limit, then failed saying so
    assert summary.poison == 1 and summary.poison_stopped == 1, "\n".join(lines)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_short_chaos_soak_with_every_task_under_a_time_limit_loses_nothing() -> None:
    # The same on Redis, with a hard time limit on every task (--time-limit): each worker is a
    # supervisor and its worker process; the soak's SIGKILLs hit the supervisors, and the
    # poison call kills worker processes, which their supervisors replace
    require_service("redis-server", shutil.which("redis-server") is not None,
                    "redis-server is not installed")
    import chaos

    lines: list[str] = []
    summary = chaos.run(n=300, kills=1, redis_restarts=1, rabbit_restarts=0, batch=25,
                        log=lines.append, broker="redis", poison_every=200, time_limit=30)
    print(summary.line())
    assert (summary.kills, summary.redis_restarts) == (1, 1)
    assert summary.sent == 300
    assert summary.lost == 0, "\n".join(lines)
    assert summary.double_callbacks == 0
    # the poison call stopped at its delivery limit, and no supervisor died of it
    assert summary.poison == 1 and summary.poison_stopped == 1, "\n".join(lines)
    assert summary.worker_deaths == summary.kills, "\n".join(lines)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_short_chaos_soak_on_rabbitmq_alone_loses_nothing() -> None:
    why = PrivateRabbit.available()
    require_service("a private RabbitMQ node", why is None, why or "")
    import chaos

    lines: list[str] = []
    summary = chaos.run(n=300, kills=1, redis_restarts=0, rabbit_restarts=1, batch=25,
                        log=lines.append, connection_closes=1, notifier="amqp",
                        poison_every=200, reply_deletes=1)
    print(summary.line())
    assert (summary.kills, summary.rabbit_restarts, summary.connection_closes,
            summary.reply_deletes) == (1, 1, 1, 1)
    assert summary.sent >= 300
    # nothing lost but the results the broker destroyed with the deleted reply queue: those
    # in it, and those on their way into it as it went (confirmed, never returned)
    assert summary.lost <= summary.results_destroyed + summary.results_in_transit, (
        "\n".join(lines))
    assert summary.double_callbacks == 0
    # the poison call (1 in 200) killed workers until its delivery limit, then failed saying so
    assert summary.poison == 1 and summary.poison_stopped == 1, "\n".join(lines)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_short_chaos_soak_on_postgresql_alone_loses_nothing() -> None:
    # PostgreSQL alone (a private cluster, queue and notifier): a worker SIGKILLed, every
    # connection terminated by the server, and a restart, mid-run
    require_service("PostgreSQL's server binaries",
                    bool(list(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))),
                    "no PostgreSQL server binaries under /usr/lib/postgresql")
    import chaos

    lines: list[str] = []
    summary = chaos.run(n=300, kills=1, redis_restarts=0, rabbit_restarts=0, batch=25,
                        log=lines.append, broker="postgres", poison_every=200, pg_kills=1,
                        pg_restarts=1)
    print(summary.line())
    assert (summary.kills, summary.pg_kills, summary.pg_restarts) == (1, 1, 1)
    assert summary.sent == 300
    assert summary.lost == 0, "\n".join(lines)
    assert summary.double_callbacks == 0
    assert summary.poison == 1 and summary.poison_stopped == 1, "\n".join(lines)
