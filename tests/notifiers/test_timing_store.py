"""The notifiers' keys, claims and counters (``claim_key``, ``get_keys``, ``release_key``,
``take_rate_slot``): one contract, run on memory, SQLite, Redis and PostgreSQL."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from ivy.config import make_notifier
from ivy.notifiers.base import Notifier, gcra_step
from ivy.timing import cancel


@pytest.fixture(params=["memory", "sqlite", "redis", "postgres"])
def notifier(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Notifier]:
    if request.param == "memory":
        url = f"memory://keys-{uuid.uuid4().hex[:8]}"
    elif request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'ivy.db'}"
    else:
        url = request.getfixturevalue(f"{request.param}_url")
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


def test_extend_only_ever_lengthens_a_key(notifier: Notifier) -> None:
    # Given a key held for a long time
    k = key()
    assert notifier.claim_key(k, "a", 30) is None
    # When it is extended by less, and by another holder
    assert notifier.extend_key(k, "a", 0.2) is True
    assert notifier.extend_key(k, "b", 60) is False
    assert notifier.extend_key(key(), "a", 60) is False
    # Then it keeps its longer time: still held after the shorter one passed
    short = key()
    assert notifier.claim_key(short, "a", 0.2) is None
    deadline = time.monotonic() + 5
    while notifier.get_keys([short]) != [None]:
        assert time.monotonic() < deadline, "the short key did not expire"
        time.sleep(0.02)
    assert notifier.get_keys([k]) == ["a"]
    # and a key extended past its first time outlives that time
    grown = key()
    assert notifier.claim_key(grown, "a", 0.2) is None
    assert notifier.extend_key(grown, "a", 30) is True
    assert notifier.claim_key(short, "b", 0.3) is None  # a clock for this test
    deadline = time.monotonic() + 5
    while notifier.get_keys([short]) != [None]:
        assert time.monotonic() < deadline, "the clock key did not expire"
        time.sleep(0.02)
    assert notifier.get_keys([grown]) == ["a"]


def test_a_short_cancel_does_not_cut_back_a_long_one(
        notifier: Notifier, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a cancel kept long, then one kept briefly (issue 20, row 7)
    monkeypatch.setattr(cancel, "FLAG_MIN_TTL", 0.0)
    long_id, short_id = uuid.uuid4().hex, uuid.uuid4().hex
    cancel.store_cancel(notifier, long_id, 60)
    cancel.store_cancel(notifier, short_id, 0.2)
    # When the short one has expired
    deadline = time.monotonic() + 5
    while notifier.get_keys([cancel.cancel_key(short_id)]) != [None]:
        assert time.monotonic() < deadline, "the short cancel did not expire"
        time.sleep(0.02)
    # Then the flag that workers look at is still set: the long cancel still stops its call
    assert notifier.get_keys([cancel.CANCELS_FLAG, cancel.cancel_key(long_id)]) == ["1", "1"]
