"""Shared fixtures and helpers. Tests wait on conditions with deadlines, never bare sleeps."""

from __future__ import annotations

import os
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import ivy

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))


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


@pytest.fixture(params=["memory", "sqlite"])
def backend_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "memory":
        return f"memory://test-{uuid.uuid4().hex[:8]}"
    return f"sqlite:///{tmp_path / 'ivy.db'}"


@pytest.fixture
def app(backend_url: str) -> Iterator[ivy.Ivy]:
    """An Ivy instance (producer and worker in one process) on each embedded backend, with fast
    retries."""
    instance = ivy.Ivy(backend_url, backend_url, retry_base_delay=0.01, retry_max_delay=0.05)
    yield instance
    instance.close()
