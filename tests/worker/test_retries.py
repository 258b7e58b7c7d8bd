"""Retry policies per task (ivy.retries): retry_on, dont_retry_on, backoff and jitter, and
what a task asks for by raising ivy.Retry, ivy.Snooze or ivy.Discard."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from common import wait_for

import ivy
from ivy.message import Message
from ivy.retries import RetryPolicy, Verdict


class Seen(ivy.Middleware):
    """Records what the worker does with each run."""

    def __init__(self) -> None:
        self.attempts: list[int] = []
        self.retries: list[tuple[str, float]] = []
        self.dead: list[str] = []
        self._lock = threading.Lock()

    def before_task(self, message: Message) -> None:
        with self._lock:
            self.attempts.append(message.attempt)

    def on_retry(self, message: Message, error: dict[str, str], delay: float) -> None:
        with self._lock:
            self.retries.append((error["type"], delay))

    def on_dead_letter(self, message: Message | None, reason: str) -> None:
        with self._lock:
            self.dead.append(reason)


@pytest.fixture
def seen() -> Seen:
    return Seen()


@pytest.fixture
def app(urls: tuple[str, str], seen: Seen) -> Iterator[ivy.Ivy]:
    """An app on each backend pairing, with a fast app-wide backoff and the recorder."""
    instance = ivy.Ivy(*urls, retry_base_delay=0.01, retry_max_delay=0.02, middleware=[seen])
    yield instance
    instance.close()


@pytest.fixture
def q() -> str:
    """A queue of the test's own: what other tests leave on a shared broker stays apart."""
    return f"r-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def embedded(sqlite_url: str, seen: Seen) -> Iterator[ivy.Ivy]:
    instance = ivy.Ivy(sqlite_url, sqlite_url, retry_base_delay=0.01, retry_max_delay=0.02,
                       middleware=[seen])
    yield instance
    instance.close()


def test_an_exception_outside_retry_on_fails_at_once_and_one_inside_is_retried(
        embedded: ivy.Ivy, seen: Seen, q: str) -> None:
    runs: list[str] = []

    @embedded.register_task(name="r.io", queue=q, max_retries=3, retry_on=(OSError,))
    def io(kind: str) -> None:
        runs.append(kind)
        raise (OSError if kind == "os" and len(runs) < 3 else ValueError)(kind)

    embedded.listen(queue=q, block=False)
    # a ValueError is not in retry_on: one run, then errored and dead-lettered saying why
    with pytest.raises(ivy.RemoteTaskError, match="ValueError"):
        embedded.delayed_call(io, "value").result(20)
    assert runs == ["value"]
    wait_for(lambda: seen.dead, timeout=10, message="the dead letter")
    assert "ValueError, which its retry policy does not retry" in seen.dead[0]
    # an OSError is: retried until it fails otherwise (the third run raises ValueError)
    runs.clear()
    with pytest.raises(ivy.RemoteTaskError, match="ValueError"):
        embedded.delayed_call(io, "os").result(20)
    assert runs == ["os", "os", "os"]


def test_dont_retry_on_wins_over_retry_on(embedded: ivy.Ivy, q: str) -> None:
    runs: list[int] = []

    @embedded.register_task(name="r.key", queue=q, max_retries=3, retry_on=Exception,
                            dont_retry_on=KeyError)
    def key() -> None:
        runs.append(1)
        raise KeyError("gone")

    embedded.listen(queue=q, block=False)
    with pytest.raises(ivy.RemoteTaskError, match="KeyError"):
        embedded.delayed_call(key).result(20)
    assert runs == [1]


def test_a_backoff_list_without_jitter_gives_its_delays_and_repeats_its_last(
        embedded: ivy.Ivy, seen: Seen, q: str) -> None:
    @embedded.register_task(name="r.list", queue=q, max_retries=3, backoff=[0.01, 0.03],
                            jitter=False)
    def fails() -> None:
        raise OSError("down")

    embedded.listen(queue=q, block=False)
    with pytest.raises(ivy.RemoteTaskError, match="OSError"):
        embedded.delayed_call(fails).result(20)
    assert seen.retries == [("OSError", 0.01), ("OSError", 0.03), ("OSError", 0.03)]


def test_a_backoff_callable_gets_the_attempt_and_jitter_scales_it_down() -> None:
    policy = RetryPolicy.build("t", backoff=lambda attempt: 10.0 * (attempt + 1))
    delays = [policy.delay(n, lambda n: 99.0) for n in range(3) for _ in range(20)]
    for n in range(3):
        mine = delays[n * 20:(n + 1) * 20]
        assert all(5.0 * (n + 1) <= d <= 10.0 * (n + 1) for d in mine), mine
        assert len(set(mine)) > 1  # jittered
    # no backoff of its own: the app's
    assert RetryPolicy.build("t").delay(2, lambda n: 7.0 + n) == 9.0


def test_retry_asks_for_another_run_after_its_delay_and_counts_attempts(
        app: ivy.Ivy, seen: Seen, q: str) -> None:
    runs: list[int] = []

    @app.register_task(name="r.again", queue=q, max_retries=2)
    def again() -> str:
        runs.append(1)
        if len(runs) < 3:
            raise ivy.Retry(delay=0.05)
        return "third"

    @app.register_task(name="r.always", queue=q, max_retries=1)
    def always() -> None:
        raise ivy.Retry()

    app.listen(queue=q, block=False)
    assert app.delayed_call(again).result(30) == "third"
    assert seen.retries[:2] == [("Retry", 0.05), ("Retry", 0.05)]
    assert seen.attempts[:3] == [0, 1, 2]
    # a Retry past max_retries fails the call as any exception would
    with pytest.raises(ivy.RemoteTaskError, match="Retry"):
        app.delayed_call(always).result(30)


def test_snooze_runs_the_call_again_later_without_counting_an_attempt(
        app: ivy.Ivy, seen: Seen, q: str) -> None:
    runs: list[int] = []

    @app.register_task(name="r.wait", queue=q)  # no retries at all
    def wait_ready() -> int:
        runs.append(1)
        if len(runs) < 3:
            raise ivy.Snooze(0.05)
        return len(runs)

    app.listen(queue=q, block=False)
    assert app.delayed_call(wait_ready).result(30) == 3
    assert seen.attempts == [0, 0, 0]
    assert [kind for kind, _ in seen.retries] == ["Snooze", "Snooze"]


def test_discard_ends_the_call_errored_without_retry_or_dead_letter(
        app: ivy.Ivy, seen: Seen, q: str) -> None:
    runs: list[int] = []

    @app.register_task(name="r.pointless", queue=q, max_retries=5)
    def pointless(order: int) -> None:
        runs.append(order)
        raise ivy.Discard(f"order {order} was cancelled")

    app.listen(queue=q, block=False)
    with pytest.raises(ivy.RemoteTaskError, match="order 7 was cancelled") as failed:
        app.delayed_call(pointless, 7).result(30)
    assert failed.value.type == "Discard"
    assert runs == [7] and seen.retries == []
    wait_for(lambda: app.queue_backend.size(q) == 0, timeout=10, message="the ack")
    assert seen.dead == [] and app.dead_letters(q) == []


def test_a_callback_style_error_is_retried_as_the_policy_allows(embedded: ivy.Ivy, q: str) -> None:
    runs: list[int] = []

    @embedded.register_task(name="r.cb", queue=q, max_retries=2, retry_on=OSError)
    def cb(callback: Any) -> None:
        runs.append(1)
        callback("not an exception: retried" if len(runs) < 2 else None, "done")

    embedded.listen(queue=q, block=False)
    assert embedded.delayed_call(cb).result(20) == "done"
    assert runs == [1, 1]


@pytest.mark.parametrize(("options", "match"), [
    ({"retry_on": "OSError"}, r"retry_on 'OSError' for task 'r\.bad' must be an exception"),
    ({"dont_retry_on": (KeyError, 3)}, r"dont_retry_on .* must be an exception class"),
    ({"backoff": []}, r"backoff \[\] for task 'r\.bad' must be a non-empty list"),
    ({"backoff": [1, -2]}, r"backoff \[1, -2\] .*seconds >= 0"),
    ({"jitter": "yes"}, r"jitter 'yes' for task 'r\.bad' must be True or False"),
])
def test_a_bad_policy_is_refused_with_what_to_give(options: dict[str, Any], match: str) -> None:
    app = ivy.Ivy("memory://bad-policy", "memory://bad-policy")
    with pytest.raises(ivy.ConfigurationError, match=match):
        app.register_task(lambda: None, name="r.bad", **options)
    app.close()


@pytest.mark.parametrize(("delay", "what"), [(-1, "Retry"), (float("nan"), "Snooze")])
def test_control_exceptions_check_their_delay(delay: float, what: str) -> None:
    kind = getattr(ivy, what)
    with pytest.raises(ivy.ConfigurationError, match=f"{what} delay"):
        kind(delay)


def test_verdicts() -> None:
    policy = RetryPolicy.build("t", retry_on=OSError, dont_retry_on=FileNotFoundError)
    assert policy.verdict(ConnectionError()) == Verdict()
    assert policy.verdict(FileNotFoundError()) == Verdict("final")
    assert policy.verdict(ValueError()) == Verdict("final")
    assert policy.verdict(ivy.Retry(2)) == Verdict("retry", 2.0)
    assert policy.verdict(ivy.Snooze(3)) == Verdict("snooze", 3.0)
    assert policy.verdict(ivy.Discard("x")) == Verdict("discard")
    assert policy.verdict(None) == Verdict()
