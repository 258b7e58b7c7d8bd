"""What the tests share besides fixtures: waiting on a condition, requiring a service, the
shared servers' URLs isolated per test worker (pytest-xdist), and small URL helpers."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from hypothesis import strategies as st

#: the checkout
ROOT = Path(__file__).resolve().parents[2]
#: tests/
TESTS_DIR = ROOT / "tests"
#: tests/support/: the helpers and the task modules that worker processes import (their cwd)
SUPPORT_DIR = TESTS_DIR / "support"


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


#: the shared PostgreSQL server (never restarted: each test has a schema of its own there)
PG_URL = os.environ.get("IVY_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def amqp_notifier_url(amqp_url: str) -> str:
    """The AMQP notifier on the test broker, its reply queues gone 30 s after their producer
    (the tests' producers do not come back)."""
    return f"{amqp_url}{'&' if '?' in amqp_url else '?'}reply_expires=30"
