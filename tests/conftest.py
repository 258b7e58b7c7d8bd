"""Shared fixtures and helpers. Tests wait on conditions with deadlines, never bare sleeps."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from hypothesis import strategies as st

import ivy

ROOT = Path(__file__).resolve().parent.parent
TESTS_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(Path(__file__).resolve().parent))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=25)
"""Hypothesis: any JSON value."""


def wait_for(condition: Callable[[], object], timeout: float = 10.0, interval: float = 0.01,
             message: str = "condition") -> None:
    """Poll ``condition`` until it is truthy; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {message}")
        time.sleep(interval)


def require_service(name: str, available: bool, why: str) -> None:
    """Skip when a service is missing, unless IVY_REQUIRE_SERVICES=1 (CI): then fail."""
    if available:
        return
    if os.environ.get("IVY_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{name} is required (IVY_REQUIRE_SERVICES=1) but {why}")
    pytest.skip(f"{name} not available: {why}")


@pytest.fixture
def memory_url() -> str:
    """A fresh in-process broker name per test."""
    return f"memory://test-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'ivy.db'}"


#: pytest-xdist's name for this worker process ("gw0", "gw1", ...), None in a plain run
XDIST_WORKER = os.environ.get("PYTEST_XDIST_WORKER")
_WORKER_INDEX = int(XDIST_WORKER[2:]) if XDIST_WORKER and XDIST_WORKER[2:].isdigit() else None
#: Tests run in parallel (pytest-xdist, ``-n``) isolate themselves on the shared servers: each
#: worker process has a RabbitMQ vhost of its own (made at the start of the session) and a
#: Redis database of its own (see _RUN_DB; 15 in a plain run).
#: (the vhost names the run too, so that two parallel runs on one machine keep apart there)
AMQP_VHOST = "%2F" if _WORKER_INDEX is None else (
    f"ivy-test-{os.environ.get('PYTEST_XDIST_TESTRUNUID', 'run')[:8]}-{XDIST_WORKER}")
AMQP_URL = os.environ.get("IVY_TEST_AMQP_URL",
                          f"amqp://guest:guest@127.0.0.1:5672/{AMQP_VHOST}")
#: the most xdist workers that each get a Redis database of their own
MAX_WORKERS = 4
if _WORKER_INDEX is not None and _WORKER_INDEX >= MAX_WORKERS:
    raise pytest.UsageError(f"run at most -n {MAX_WORKERS}: each test worker needs a Redis "
                            f"database of its own, and {XDIST_WORKER} would share one")
#: a parallel run's Redis databases: 4 in a row from one of 1, 5, 9 picked by the run's id,
#: so that two parallel runs on one machine are likely (2 in 3) to keep apart there too
_RUN_DB = 1 + MAX_WORKERS * (
    int(os.environ.get("PYTEST_XDIST_TESTRUNUID", "0")[:8] or "0", 16) % 3)
REDIS_URL = os.environ.get(
    "IVY_TEST_REDIS_URL",
    f"redis://127.0.0.1:6379/{15 if _WORKER_INDEX is None else _RUN_DB + _WORKER_INDEX}")
#: queue names the shared-broker tests use; emptied before and after each test
TEST_QUEUES = ("q", "qa", "qb", "unserved", "proc", "bench", "testpackage")


def with_options(url: str, **options: object) -> str:
    """``url`` with ``options`` added to its query."""
    query = "&".join(f"{k}={v}" for k, v in options.items())
    return f"{url}{'&' if '?' in url else '?'}{query}"


def port_open(url: str, default_port: int) -> bool:
    parts = urlsplit(url)
    try:
        socket.create_connection((parts.hostname or "127.0.0.1", parts.port or default_port),
                                 timeout=1).close()
    except OSError:
        return False
    return True


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


@contextlib.contextmanager
def full_queue_policy(amqp_url: str, queue: str) -> Iterator[None]:
    """Within the block, a RabbitMQ policy lets the queue named ``queue`` hold 1 message and
    refuse (nack) the rest (``overflow: reject-publish``): real nacks on demand. A policy,
    because ivy declares its queues with its own arguments (a queue declared with others would
    be a mismatch)."""
    import pika

    vhost = pika.URLParameters(amqp_url).virtual_host
    policy = f"ivy-test-{queue[-12:]}"
    ctl = shutil.which("rabbitmqctl")
    assert ctl is not None, "rabbitmqctl is needed to set a queue policy"
    subprocess.run([ctl, "set_policy", "-p", vhost, "--apply-to", "queues", policy,
                    f"^{queue}$", '{"max-length": 1, "overflow": "reject-publish"}'],
                   check=True, capture_output=True, timeout=60)
    try:
        yield
    finally:
        subprocess.run([ctl, "clear_policy", "-p", vhost, policy], capture_output=True,
                       timeout=60)


def delete_test_queues() -> None:
    from ivy.queues.amqp import AMQPQueueBackend

    backend = AMQPQueueBackend(AMQP_URL)
    backend.delete_queues([n for q in TEST_QUEUES for n in (q, f"{q}.dead")])
    backend.close()


#: the shared PostgreSQL server (never restarted: each test has a schema of its own there)
PG_URL = os.environ.get("IVY_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


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


def amqp_notifier_url(amqp_url: str) -> str:
    """The AMQP notifier on the test broker, its reply queues gone 30 s after their producer
    (the tests' producers do not come back)."""
    return f"{amqp_url}{'&' if '?' in amqp_url else '?'}reply_expires=30"


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
