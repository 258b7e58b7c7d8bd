"""ivy.testing: capture, inline, drain, FakeClock, and the pytest plugin (issue 25, part 3).
Each test uses an app on a memory broker of its own; nothing sleeps to synchronize."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

import ivy
import ivy.testing.running
from ivy.message import now_ms
from ivy.testing import (
    DrainTimeout,
    FakeClock,
    InlineLimitExceeded,
    capture,
    drain,
    inline,
)
from ivy.timing.scheduler import Scheduler

pytest_plugins = ["pytester"]


@pytest.fixture
def app(memory_url: str) -> Iterator[ivy.Ivy]:
    with ivy.Ivy(memory_url, memory_url) as app:
        yield app


def unique(name: str) -> str:
    return f"t{uuid.uuid4().hex[:8]}.{name}"


# -- capture -----------------------------------------------------------------------------------


def test_capture_records_decoded_calls_and_runs_nothing(app: ivy.Ivy) -> None:
    ran: list[int] = []

    @app.register_task(name="shop.total", queue="shop")
    def total(n: int, discount: float = 0.0) -> int:
        ran.append(n)
        return n

    with capture(app) as sent:
        first = app.delayed_call(total, 5, discount=0.5)
        later = app.send_task(total, [7], queue="slow", delay=60, priority=3)
    assert ran == []
    assert [c.id for c in sent.calls] == [first.id, later.id]
    one, two = sent.calls
    assert (one.name, one.args, one.kwargs, one.queue, one.eta) == (
        "shop.total", [5], {"discount": 0.5}, "shop", None)
    assert (two.queue, two.priority) == ("slow", 3)
    assert two.eta is not None and two.eta >= now_ms() + 59_000
    assert two.eta_datetime is not None and two.eta_datetime.tzinfo is UTC
    assert first.status == "scheduled"
    assert app.queue_backend.size("shop") == 0  # nothing reached the real queue


def test_assert_sent_matches_args_kwargs_and_times(app: ivy.Ivy) -> None:
    @app.register_task(name="mail.send", queue="mail")
    def send(to: str, pair: Any = None) -> None: ...

    with capture(app) as sent:
        app.delayed_call(send, "ada@example.com", pair=(1, 2))
        app.delayed_call(send, "bob@example.com")
    assert len(sent.assert_sent("mail.send")) == 2
    sent.assert_sent("mail.send", args=["ada@example.com"], kwargs={"pair": (1, 2)}, times=1)
    sent.assert_sent("mail.send", args=("bob@example.com",), times=1)
    sent.assert_sent("mail.other", times=0)
    sent.assert_not_sent("mail.other")
    assert [c.args for c in sent.named("mail.send")] == [["ada@example.com"],
                                                         ["bob@example.com"]]
    sent.clear()
    assert sent.calls == []


def test_assert_sent_fails_with_a_readable_diff(app: ivy.Ivy) -> None:
    @app.register_task(name="mail.send", queue="mail")
    def send(to: str) -> None: ...

    with capture(app) as sent:
        app.delayed_call(send, "ada@example.com")
    with pytest.raises(AssertionError) as caught:
        sent.assert_sent("mail.send", args=["bob@example.com"])
    text = str(caught.value)
    assert "expected mail.send('bob@example.com', **any) sent at least once" in text
    assert "- mail.send('ada@example.com') on queue 'mail'" in text
    assert "args:   ['ada@example.com']" in text
    assert "wanted: ['bob@example.com']" in text
    with pytest.raises(AssertionError, match=r"sent 2 time\(s\); 1 matching"):
        sent.assert_sent("mail.send", times=2)
    with pytest.raises(AssertionError, match="no call was sent"):
        with capture(app) as nothing:
            pass
        nothing.assert_sent("mail.send")


def test_capture_refuses_what_production_refuses_and_gives_the_backend_back(
        app: ivy.Ivy) -> None:
    @app.register_task(name="a.echo", queue="a")
    def echo(value: Any) -> Any:
        return value

    with capture(app) as sent, pytest.raises(ivy.SerializationError):
        app.delayed_call(echo, datetime.now(UTC))
    assert sent.calls == []
    app.delayed_call(echo, 1)  # after the block: the real queue again
    assert app.queue_backend.size("a") == 1


# -- inline ------------------------------------------------------------------------------------


def test_inline_runs_at_send_with_results_callbacks_and_await(app: ivy.Ivy) -> None:
    got: list[Any] = []

    def finished(result: int) -> None:
        got.append(("finished", result))

    def plus(a: int, b: int) -> int:
        return a + b

    add = app.register_task(plus, finished, name="m.add", queue="m")

    def callback(err: Exception | None, result: Any) -> None:
        got.append((err, result))

    with inline(app):
        call = app.delayed_call(add, 1, 2, callback=callback)
        assert call.status in ("successful", "done")  # settled before the send returned
        assert call.result(timeout=1) == 3  # returns once the callbacks ran
    assert sorted(got, key=repr) == [("finished", 3), (None, 3)]

    async def awaited() -> int:
        with inline(app):
            result: int = await app.delayed_call(add, 20, 22)
            return result

    assert asyncio.run(awaited()) == 42


def test_inline_errors_come_back_as_remote_task_errors(app: ivy.Ivy) -> None:
    @app.register_task(name="m.fail", queue="m")
    def fail(n: int) -> int:
        raise ValueError(f"bad {n}")

    with inline(app):
        call = app.delayed_call(fail, 3)
    with pytest.raises(ivy.RemoteTaskError) as caught:
        call.result(timeout=1)
    assert (caught.value.type, caught.value.message) == ("ValueError", "bad 3")
    assert "raise ValueError" in caught.value.traceback


def test_inline_refuses_a_non_json_argument_and_runs_nothing(app: ivy.Ivy) -> None:
    ran: list[Any] = []

    @app.register_task(name="m.when", queue="m")
    def when(at: Any) -> None:
        ran.append(at)

    with inline(app), pytest.raises(ivy.SerializationError, match="when"):
        app.delayed_call(when, datetime.now(UTC))
    with inline(app), pytest.raises(ivy.SerializationError):
        app.delayed_call(when, {1, 2})
    assert ran == []
    assert app.pending_calls() == []


def test_inline_applies_size_limits_and_signing(memory_url: str) -> None:
    with ivy.Ivy(memory_url, memory_url, max_message_bytes=2_000,
                 signing_key="k" * 32) as app:
        @app.register_task(name="m.size", queue="m")
        def size(text: str) -> int:
            return len(text)

        with inline(app):
            assert app.delayed_call(size, "x" * 100).result(timeout=1) == 100
            with pytest.raises(ivy.MessageTooLarge):
                app.delayed_call(size, "x" * 5_000)
            # a body without its signature is refused as a worker refuses it
            unsigned = ivy.Message(id="1" * 32, name="m.size", args=["x"], queue="m")
            app.queue_backend.publish("m", unsigned.encode(app.serializer))
        [dead] = app.dead_letters("m")
        assert "signature" in dead.reason or "signed" in dead.reason, dead.reason


def test_inline_retries_at_once_and_runs_the_calls_tasks_send(app: ivy.Ivy) -> None:
    attempts: list[int] = []
    order: list[str] = []

    @app.register_task(name="m.flaky", queue="m", retry=True, max_retries=3, backoff=[600])
    def flaky() -> str:
        attempts.append(len(attempts))
        if len(attempts) < 3:
            raise OSError("not yet")
        return "ok"

    @app.register_task(name="m.child", queue="other")
    def child(n: int) -> int:
        order.append(f"child {n}")
        return n

    @app.register_task(name="m.parent", queue="m")
    def parent() -> None:
        app.delayed_call(child, 1)
        app.delayed_call(child, 2)
        order.append("parent")

    with inline(app):
        call = app.delayed_call(flaky)
        assert call.result(timeout=1) == "ok"
        assert len(attempts) == 3 and call.attempt == 2
        app.delayed_call(parent).result(timeout=1)
        assert order == ["parent", "child 1", "child 2"]  # after the task that sent them


def test_inline_queues_delayed_calls_for_drain(app: ivy.Ivy) -> None:
    @app.register_task(name="m.later", queue="m")
    def later(n: int) -> int:
        return n

    with inline(app):
        call = app.send_task(later, [5], delay=3600)
        assert call.status == "scheduled"
        assert app.queue_backend.size("m") == 1
        assert drain(app, timeout=5) == 1
    assert call.result(timeout=5) == 5


def test_inline_stops_a_task_that_sends_itself_forever(
        app: ivy.Ivy, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ivy.testing.running, "MAX_INLINE_RUNS", 50)
    runs: list[int] = []

    @app.register_task(name="m.again", queue="m")
    def again(n: int) -> None:
        runs.append(n)
        app.delayed_call(again, n + 1)

    with inline(app), pytest.raises(InlineLimitExceeded, match="sends calls forever"):
        app.delayed_call(again, 0)
    assert runs == list(range(50))
    assert app.queue_backend.size("m") == 1  # the one left over is kept, not lost


def test_inline_and_drain_need_a_memory_app(tmp_path: Any) -> None:
    url = f"sqlite:///{tmp_path}/ivy.db"
    with ivy.Ivy(url, url) as app:
        with pytest.raises(ivy.ConfigurationError, match="memory queue backend"), \
                inline(app):
            pass
        with pytest.raises(ivy.ConfigurationError, match="ivy_app fixture"):
            drain(app)
    assert not (tmp_path / "ivy.db").exists()  # refused before anything was opened


# -- drain -------------------------------------------------------------------------------------


def test_drain_runs_queued_sent_delayed_and_retried_calls(app: ivy.Ivy) -> None:
    seen: list[str] = []

    @app.register_task(name="d.leaf", queue="d")
    def leaf(n: int) -> int:
        seen.append(f"leaf {n}")
        return n

    @app.register_task(name="d.root", queue="d")
    def root() -> None:
        seen.append("root")
        app.send_task(leaf, [2], delay=7200)  # two hours: drain does not wait them out

    @app.register_task(name="d.flaky", queue="d2", retry=True, max_retries=2, backoff=[600])
    def flaky() -> str:
        seen.append("flaky")
        if seen.count("flaky") < 2:
            raise OSError("once")
        return "ok"

    calls = [app.delayed_call(root), app.delayed_call(leaf, 1), app.delayed_call(flaky)]
    assert drain(app, timeout=5) == 5
    assert sorted(seen) == ["flaky", "flaky", "leaf 1", "leaf 2", "root"]
    assert [c.result(timeout=5) for c in calls] == [None, 1, "ok"]
    assert app.queue_backend.size("d") == app.queue_backend.size("d2") == 0
    assert drain(app, timeout=5) == 0  # nothing left: returns at once


def test_drain_raises_the_first_task_error(app: ivy.Ivy) -> None:
    @app.register_task(name="d.fail", queue="d")
    def fail(n: int) -> None:
        raise KeyError(f"missing {n}")

    first = app.delayed_call(fail, 1)
    app.delayed_call(fail, 2)
    with pytest.raises(ivy.RemoteTaskError) as caught:
        drain(app, timeout=5)
    assert caught.value.type == "KeyError"
    assert (caught.value.task, caught.value.call_id) == ("d.fail", first.id)
    assert any("raise KeyError" in note for note in caught.value.__notes__)
    assert app.queue_backend.size("d") == 1  # the rest stays queued
    assert drain(app, timeout=5, raise_errors=False) == 1


def test_drain_raises_for_a_dead_lettered_message(app: ivy.Ivy) -> None:
    app.send_task("d.unknown", [1], queue="d")
    with pytest.raises(ivy.RemoteTaskError) as caught:
        drain(app, timeout=5, queues=["d"])
    assert caught.value.type == "MessageRejected"
    assert "d.unknown" in caught.value.message
    assert len(app.dead_letters("d")) == 1


def test_drain_times_out_naming_what_is_queued(app: ivy.Ivy) -> None:
    @app.register_task(name="d.forever", queue="loop")
    def forever(n: int) -> None:
        app.delayed_call(forever, n + 1)

    app.delayed_call(forever, 0)
    with pytest.raises(DrainTimeout) as caught:
        drain(app, timeout=0.3)
    text = str(caught.value)
    assert "d.forever [" in text and "on queue 'loop', ready" in text
    assert "1 still queued" in text
    assert len(caught.value.queued) == 1


def test_drain_rejects_a_bad_timeout(app: ivy.Ivy) -> None:
    with pytest.raises(ValueError, match="timeout"):
        drain(app, timeout=0)


@pytest.mark.parametrize("how", ["inline", "drain"])
def test_a_thousand_calls(app: ivy.Ivy, how: str) -> None:
    @app.register_task(name="n.square", queue="n")
    def square(n: int) -> int:
        return n * n

    if how == "inline":
        with inline(app):
            calls = [app.delayed_call(square, n) for n in range(1000)]
    else:
        calls = app.delayed_calls(square, [[n] for n in range(1000)])
        assert drain(app, timeout=60) == 1000
    assert app.wait(calls, timeout=30) == [n * n for n in range(1000)]


# -- FakeClock ---------------------------------------------------------------------------------


def test_fake_clock_drives_now_ms_and_goes_only_forward() -> None:
    start = datetime(2030, 1, 1, tzinfo=UTC)
    with FakeClock(start) as clock:
        assert FakeClock.current() is clock
        assert now_ms() == int(start.timestamp() * 1000)
        clock.advance(1.5)
        assert now_ms() == int(start.timestamp() * 1000) + 1500
        assert clock.now() == datetime(2030, 1, 1, 0, 0, 1, 500000, tzinfo=UTC)
        with pytest.raises(ValueError, match="forward"):
            clock.advance(-1)
        with pytest.raises(ValueError, match="forward"):
            clock.advance_to(start)
        with pytest.raises(RuntimeError, match="installed already"):
            FakeClock().install()
        with pytest.raises(ValueError, match="time zone"):
            FakeClock(datetime(2030, 1, 1))
    assert FakeClock.current() is None
    assert abs(now_ms() - datetime.now(UTC).timestamp() * 1000) < 60_000


def test_fake_clock_makes_eta_and_retries_due_for_a_worker(app: ivy.Ivy) -> None:
    tries: list[int] = []

    @app.register_task(name="c.later", queue="c")
    def later() -> str:
        return "ran"

    @app.register_task(name="c.retry", queue="c", retry=True, max_retries=1, backoff=[300],
                       jitter=False)
    def retried() -> str:
        tries.append(1)
        if len(tries) == 1:
            raise OSError("first")
        return "second"

    with FakeClock() as clock:
        app.listen(queue="c", block=False, heartbeat=None)
        delayed = app.send_task(later, delay=60)
        flaky = app.delayed_call(retried)
        with pytest.raises(ivy.ResultTimeout):
            delayed.result(timeout=0.3)
        assert flaky.status != "successful" and len(tries) == 1
        clock.advance(300)
        assert delayed.result(timeout=5) == "ran"
        assert flaky.result(timeout=5) == "second"


def test_drain_moves_an_installed_clock_to_what_it_ran(app: ivy.Ivy) -> None:
    @app.register_task(name="c.at", queue="c")
    def at() -> int:
        return now_ms()

    with FakeClock(datetime(2030, 1, 1, tzinfo=UTC)) as clock:
        call = app.send_task(at, delay=86_400)
        drain(app, timeout=5)
        assert clock.now() >= datetime(2030, 1, 2, tzinfo=UTC)
        assert call.result(timeout=5) >= int(datetime(2030, 1, 2, tzinfo=UTC).timestamp()
                                              * 1000)


def test_fake_clock_drives_periodic_slots(app: ivy.Ivy) -> None:
    @app.periodic_task(every=30, name="c.tick", queue="c")
    def tick() -> None: ...

    with FakeClock(datetime(2030, 1, 1, 0, 0, 5, tzinfo=UTC)) as clock, \
            capture(app) as sent:
        scheduler = Scheduler(app, clock=clock)
        scheduler.tick()
        assert sent.calls == []
        for _ in range(4):
            clock.advance(30)
            scheduler.tick()
    assert len(sent.assert_sent("c.tick", times=4)) == 4
    assert [slot for _, slot in scheduler.sent] == [
        datetime(2030, 1, 1, 0, m // 60, m % 60, tzinfo=UTC).timestamp()
        for m in (30, 60, 90, 120)]


# -- the pytest plugin -------------------------------------------------------------------------


def test_importing_ivy_testing_does_not_import_pytest() -> None:
    out = subprocess.run([sys.executable, "-c", "import sys, ivy.testing; "
                          "print('pytest' in sys.modules)"],
                         capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False", out.stderr


PLUGIN_TESTS = '''
import threading
import pytest
import ivy
from ivy.testing import drain

@ivy.register_task(name="{prefix}.add", queue="{prefix}")
def add(a, b):
    return a + b

def test_app_is_memory_and_knows_default_tasks(ivy_app):
    assert ivy_app.queue_backend.url.startswith("memory://ivy-test-")
    assert ivy_app.registry.get("{prefix}.add") is add
    call = ivy_app.delayed_call(add, 1, 2)
    drain(ivy_app, timeout=5)
    assert call.result(timeout=5) == 3

def test_worker_runs_calls(ivy_app, ivy_worker):
    assert ivy_worker.running
    assert ivy_app.delayed_call(add, 2, 3).result(timeout=10) == 5

@pytest.mark.ivy(mode="capture")
def test_capture_mode(ivy_app, ivy_sent):
    ivy_app.delayed_call(add, 1, 1)
    ivy_sent.assert_sent("{prefix}.add", args=[1, 1], times=1)

@pytest.mark.ivy(mode="inline")
def test_inline_mode(ivy_app):
    call = ivy_app.delayed_call(add, 4, 4)
    assert call.status != "scheduled"
    assert call.result(timeout=1) == 8

def test_sent_without_marker(ivy_app, ivy_sent):
    ivy_app.delayed_call(add, 0, 0)
    assert [c.name for c in ivy_sent.calls] == ["{prefix}.add"]

def test_clock(ivy_clock):
    from ivy.message import now_ms
    before = now_ms()
    ivy_clock.advance(10)
    assert now_ms() == before + 10_000

APPS = []

def test_keep(ivy_app):
    APPS.append(ivy_app)

def test_closed_after_the_test():
    with pytest.raises(ivy.IvyError, match="closed"):
        APPS[0].delayed_call(add, 1, 1)
'''


def test_plugin_fixtures_and_marker(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_plugin=PLUGIN_TESTS.replace("{prefix}", unique("p")[:9]))
    result = pytester.runpytest("-p", "no:cacheprovider", "--strict-markers", "-q")
    result.assert_outcomes(passed=8)


def test_plugin_refuses_an_unknown_mode(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_bad='''
import pytest

@pytest.mark.ivy(mode="eager")
def test_bad(ivy_app):
    pass
''')
    result = pytester.runpytest("-p", "no:cacheprovider", "--strict-markers")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*@pytest.mark.ivy(mode='eager'): the modes are*"])


def test_plugin_marker_is_registered(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--markers")
    result.stdout.fnmatch_lines(["@pytest.mark.ivy(mode=None, queues=None):*"])
