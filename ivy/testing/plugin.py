"""The pytest plugin of ivy (entry point ``pytest11``; ``-p no:ivy`` leaves it out): the fixtures
``ivy_app``, ``ivy_worker``, ``ivy_sent`` and ``ivy_clock`` and the marker ``@pytest.mark.ivy``
(docs/guides/testing.md). pytest is imported here only: ivy does not depend on it."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from ivy.app import Ivy
    from ivy.testing.capture import Sent
    from ivy.testing.clock import FakeClock
    from ivy.worker import Worker

MODES = ("capture", "inline")
_SENT = pytest.StashKey["Sent"]()


def pytest_configure(config: pytest.Config) -> None:
    """Register the marker, so that ``--strict-markers`` knows it."""
    config.addinivalue_line(
        "markers", "ivy(mode=None, queues=None): run the test's ivy_app under "
        "ivy.testing.capture (mode='capture') or ivy.testing.inline (mode='inline'); "
        "queues: the queue names of ivy_worker")


def _options(request: pytest.FixtureRequest) -> dict[str, Any]:
    marker = request.node.get_closest_marker("ivy")
    if marker is None:
        return {}
    if len(marker.args) > 1 or set(marker.kwargs) - {"mode", "queues"}:
        pytest.fail(f"@pytest.mark.ivy takes mode= and queues=, got {marker.args!r} "
                    f"{marker.kwargs!r}", pytrace=False)
    options = dict(marker.kwargs)
    if marker.args:
        options.setdefault("mode", marker.args[0])
    if options.get("mode") not in (None, *MODES):
        pytest.fail(f"@pytest.mark.ivy(mode={options['mode']!r}): the modes are "
                    f"{', '.join(map(repr, MODES))}", pytrace=False)
    return options


@pytest.fixture
def ivy_app(request: pytest.FixtureRequest) -> Iterator[Ivy]:
    """An ivy app on a memory broker of this test's own, knowing the tasks registered on
    the default instance; under capture or inline as ``@pytest.mark.ivy(mode=...)`` says.
    Closed after the test."""
    import ivy
    from ivy.testing import capture, inline

    url = f"memory://ivy-test-{uuid.uuid4().hex[:16]}"
    mode = _options(request).get("mode")
    with ivy.Ivy(url, url) as app:
        for name in ivy.default.registry.names():
            task = ivy.default.registry.get(name)
            if task is not None and app.registry.get(name) is None:
                app.registry.add(task)
        if mode == "capture":
            with capture(app) as sent:
                request.node.stash[_SENT] = sent
                yield app
        elif mode == "inline":
            with inline(app):
                yield app
        else:
            yield app


@pytest.fixture
def ivy_sent(request: pytest.FixtureRequest, ivy_app: Ivy) -> Iterator[Sent]:
    """The calls ``ivy_app`` sent: the test's capture under
    ``@pytest.mark.ivy(mode="capture")``, else a capture started by this fixture."""
    from ivy.testing import capture

    sent = request.node.stash.get(_SENT, None)
    if sent is not None:
        yield sent
        return
    with capture(ivy_app) as sent:
        yield sent


@pytest.fixture
def ivy_worker(request: pytest.FixtureRequest, ivy_app: Ivy) -> Iterator[Worker]:
    """A worker of ``ivy_app`` in threads of this process, on the queues of its tasks (or
    those of ``@pytest.mark.ivy(queues=[...])``); stopped after the test."""
    queues = _options(request).get("queues")
    worker = ivy_app.listen(queue=queues, block=False, heartbeat=None)
    try:
        yield worker
    finally:
        worker.stop(timeout=10)


@pytest.fixture
def ivy_clock() -> Iterator[FakeClock]:
    """A :class:`ivy.testing.FakeClock` installed for the test (uninstalled after)."""
    from ivy.testing import FakeClock

    with FakeClock() as clock:
        yield clock
