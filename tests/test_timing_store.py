"""The notifiers' keys, claims and counters (``claim_key``, ``get_keys``, ``release_key``,
``take_rate_slot``): one contract, run on memory, SQLite and Redis."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from ivy.config import make_notifier
from ivy.notifiers.base import Notifier, gcra_step


@pytest.fixture(params=["memory", "sqlite", "redis"])
def notifier(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Notifier]:
    if request.param == "memory":
        url = f"memory://keys-{uuid.uuid4().hex[:8]}"
    elif request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'ivy.db'}"
    else:
        url = request.getfixturevalue("redis_url")
    made = make_notifier(url)
    yield made
    made.close()


def key() -> str:
    return f"ivy:test:{uuid.uuid4().hex}"


def test_claim_is_won_once_and_reports_the_holder(notifier: Notifier) -> None:
    k = key()
    assert notifier.claim_key(k, "first", 30) is None
    assert notifier.claim_key(k, "second", 30) == "first"
    assert notifier.get_keys([k, key()]) == ["first", None]


def test_a_claim_expires(notifier: Notifier) -> None:
    k = key()
    assert notifier.claim_key(k, "a", 0.2) is None
    deadline = time.monotonic() + 5
    while notifier.get_keys([k]) != [None]:
        assert time.monotonic() < deadline, "the key did not expire"
        time.sleep(0.02)
    assert notifier.claim_key(k, "b", 30) is None


def test_concurrent_claims_have_one_winner(notifier: Notifier) -> None:
    k = key()
    winners: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(8)

    def claim(name: str) -> None:
        start.wait()
        if notifier.claim_key(k, name, 30) is None:
            with lock:
                winners.append(name)

    threads = [threading.Thread(target=claim, args=(f"t{i}",)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(winners) == 1
    assert notifier.get_keys([k]) == winners


def test_release_only_by_the_holder(notifier: Notifier) -> None:
    k = key()
    notifier.claim_key(k, "mine", 30)
    assert notifier.release_key(k, "other", 0) is False
    assert notifier.get_keys([k]) == ["mine"]
    assert notifier.release_key(k, "mine", 0.2) is True  # kept a little longer
    assert notifier.get_keys([k]) == ["mine"]
    assert notifier.release_key(k, "mine", 0) is True
    assert notifier.get_keys([k]) == [None]
    assert notifier.release_key(k, "mine", 0) is False


def test_rate_slots_space_a_backlog(notifier: Notifier) -> None:
    k = key()
    assert notifier.take_rate_slot(k, 0.1, 2) == 0.0
    assert notifier.take_rate_slot(k, 0.1, 2) == 0.0  # the burst of 2
    wait = notifier.take_rate_slot(k, 0.1, 2)
    assert 0.0 < wait <= 0.1 + 0.01


def test_rate_slots_keep_the_rhythm_when_callers_are_late() -> None:
    # Given one slot per 0.1 s and callers that come 0.05 s after each slot opens
    tat, now = None, 0.0
    for _ in range(100):
        tat, wait = gcra_step(tat, now, 0.1, 1)
        assert wait == 0.0
        now = tat + 0.05
    # Then the lateness is not added up: 100 slots took 10 s, not 15
    assert tat == pytest.approx(10.0)


def test_gcra_step_holds_the_rate() -> None:
    # Given a backlog polled every millisecond for 10 s at 20/s with a burst of 2
    tat, taken, now = None, 0, 0.0
    while now < 10.0:
        tat, wait = gcra_step(tat, now, 0.05, 2)
        taken += wait == 0.0
        now += 0.001
    # Then 20 per second were taken, plus the burst
    assert 200 <= taken <= 204
