"""Shared fixtures and hooks; the helpers they use and the task modules that worker processes
import live in tests/support/. Tests wait on conditions with deadlines, never bare sleeps."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import ivy

sys.path.insert(0, str(Path(__file__).resolve().parent / "support"))

from common import (
    AMQP_URL,
    AMQP_VHOST,
    PG_URL,
    REDIS_URL,
    TEST_QUEUES,
    amqp_notifier_url,
    port_open,
    require_service,
)


@pytest.fixture
def memory_url() -> str:
    """A fresh in-process broker name per test."""
    return f"memory://test-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'ivy.db'}"


_vhost_ready = False


def ensure_amqp_vhost() -> None:
    """Make this worker's RabbitMQ vhost (a parallel run), once per process."""
    global _vhost_ready
    if _vhost_ready or "IVY_TEST_AMQP_URL" in os.environ or AMQP_VHOST == "%2F":
        return
    ctl = shutil.which("rabbitmqctl")
    if ctl is None:
        pytest.fail("rabbitmqctl is needed to make a vhost per test worker (-n); or run "
                    "without -n, or set IVY_TEST_AMQP_URL")
    subprocess.run([ctl, "add_vhost", AMQP_VHOST], capture_output=True, timeout=60)
    subprocess.run([ctl, "set_permissions", "-p", AMQP_VHOST, "guest", ".*", ".*", ".*"],
                   check=True, capture_output=True, timeout=60)
    _vhost_ready = True


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Delete this worker's vhost, if it made one."""
    ctl = shutil.which("rabbitmqctl")
    if _vhost_ready and ctl is not None:
        subprocess.run([ctl, "delete_vhost", AMQP_VHOST], capture_output=True, timeout=60)


@pytest.fixture
def amqp_url() -> Iterator[str]:
    require_service("RabbitMQ", port_open(AMQP_URL, 5672), f"nothing answers at {AMQP_URL}")
    pytest.importorskip("pika", reason="pip install 'ivy-queue[amqp]'")
    ensure_amqp_vhost()
    delete_test_queues()
    yield AMQP_URL
    delete_test_queues()


@pytest.fixture
def redis_url() -> str:
    require_service("Redis", port_open(REDIS_URL, 6379), f"nothing answers at {REDIS_URL}")
    pytest.importorskip("redis", reason="pip install 'ivy-queue[redis]'")
    return REDIS_URL


@pytest.fixture
def redis_streams_url(redis_url: str) -> Iterator[str]:
    """``redis_url`` as a queue URL (Redis Streams), the shared test queue names emptied
    before and after the test."""
    from ivy.queues.redis_streams import RedisStreamsQueueBackend

    backend = RedisStreamsQueueBackend(redis_url)
    backend.delete_queues(TEST_QUEUES)
    yield redis_url
    backend.delete_queues(TEST_QUEUES)
    backend.close()


def delete_test_queues() -> None:
    from ivy.queues.amqp import AMQPQueueBackend

    backend = AMQPQueueBackend(AMQP_URL)
    backend.delete_queues([n for q in TEST_QUEUES for n in (q, f"{q}.dead")])
    backend.close()


@pytest.fixture
def pg_url() -> str:
    """The shared server's URL; skips without it, fails with IVY_REQUIRE_SERVICES=1 (CI)."""
    require_service("PostgreSQL", port_open(PG_URL, 5432), f"nothing answers at {PG_URL}")
    pytest.importorskip("psycopg", reason="pip install 'ivy-queue[postgres]'")
    return PG_URL


@pytest.fixture
def schema(pg_url: str) -> Iterator[str]:
    """A schema name of this test's own, dropped (with what ivy made in it) afterwards."""
    import psycopg

    name = f"ivy_test_{uuid.uuid4().hex[:12]}"
    yield name
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


@pytest.fixture
def postgres_url(pg_url: str, schema: str) -> str:
    """A PostgreSQL URL, for the queue and the notifier, on a schema of this test's own."""
    return f"{pg_url}{'&' if '?' in pg_url else '?'}schema={schema}"


#: every backend pairing the API suites run on
PAIRINGS = ["memory", "sqlite", "amqp+redis", "redis-streams", "amqp+amqp", "postgres"]
#: the pairings whose notifier keeps state (workflows, schedules, unique sends, cancels, rate
#: limits): all but RabbitMQ alone, whose notifier refuses them
#: (tests/notifiers/test_amqp_notifier.py)
STORE_PAIRINGS = [p for p in PAIRINGS if p != "amqp+amqp"]


def pairing_urls(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str]:
    """(queue URL, notifier URL) of the pairing ``request.param``."""
    if request.param == "memory":
        url = f"memory://test-{uuid.uuid4().hex[:8]}"
        return url, url
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'ivy.db'}"
        return url, url
    if request.param == "redis-streams":
        url = request.getfixturevalue("redis_streams_url")
        return url, url
    if request.param == "postgres":
        url = request.getfixturevalue("postgres_url")
        return url, url
    if request.param == "amqp+amqp":
        amqp = request.getfixturevalue("amqp_url")
        return amqp, amqp_notifier_url(amqp)
    return request.getfixturevalue("amqp_url"), request.getfixturevalue("redis_url")


@pytest.fixture(params=PAIRINGS)
def urls(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str]:
    """(queue URL, notifier URL) for each backend pairing: the embedded ones, RabbitMQ with
    Redis, Redis alone (Streams as the queue, pub/sub as the notifier), RabbitMQ alone
    (results over AMQP reply queues) and PostgreSQL alone (a schema of the test's own). A
    module whose features need the notifier's store overrides it with ``store_urls``."""
    return pairing_urls(request, tmp_path)


@pytest.fixture(params=STORE_PAIRINGS)
def store_urls(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str]:
    """``urls`` without RabbitMQ alone: for the features that keep state in the notifier."""
    return pairing_urls(request, tmp_path)


@pytest.fixture
def app(urls: tuple[str, str]) -> Iterator[ivy.Ivy]:
    """An Ivy instance (producer and worker in one process) on each backend pairing, with fast
    retries."""
    instance = ivy.Ivy(*urls, retry_base_delay=0.01, retry_max_delay=0.05)
    yield instance
    instance.close()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests marked ``slow`` (private servers, worker processes, soaks) run first: in a
    parallel run they then overlap with the many short ones instead of ending it alone."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


def pytest_configure(config: pytest.Config) -> None:
    """Tests press Ctrl-C on the processes they start, as a terminal would. A run started with
    SIGINT ignored (a background job of a script, ``nohup``) passes that on through every exec,
    and its children would never see it: give this process Python's own handler, which its
    children then start with as SIG_DFL."""
    if (signal.getsignal(signal.SIGINT) == signal.SIG_IGN
            and threading.current_thread() is threading.main_thread()):
        signal.signal(signal.SIGINT, signal.default_int_handler)
