"""ivy._flags: the one-object Event and send Future made per call, and what a waiting call
holds in all."""

from __future__ import annotations

import gc
import threading
from concurrent.futures import Future, InvalidStateError
from pathlib import Path

import pytest

import ivy
from ivy._flags import Flag, Sent


def test_a_flag_waits_until_set_from_another_thread() -> None:
    flag = Flag()
    assert not flag.is_set()
    assert flag.wait(0.01) is False  # times out unset
    woken: list[bool] = []
    waiters = [threading.Thread(target=lambda: woken.append(flag.wait(10))) for _ in range(4)]
    for t in waiters:
        t.start()
    flag.set()
    flag.set()  # a second set is harmless
    for t in waiters:
        t.join(10)
    assert woken == [True] * 4
    assert flag.is_set() and flag.wait(0) and flag.wait()


def test_a_flag_wait_that_times_out_leaves_no_waiter_behind() -> None:
    flag = Flag()
    for _ in range(100):
        assert not flag.wait(0)
    assert not flag._sleepers  # each timed-out waiter took itself out
    flag.set()


def test_flags_set_and_waited_on_by_many_threads_all_wake() -> None:
    flags = [Flag() for _ in range(2000)]
    results: list[bool] = []
    lock = threading.Lock()

    def wait_all(part: list[Flag]) -> None:
        ok = all(f.wait(30) for f in part)
        with lock:
            results.append(ok)

    waiters = [threading.Thread(target=wait_all, args=(flags[i::4],)) for i in range(4)]
    setters = [threading.Thread(target=lambda i=i: [f.set() for f in flags[i::3]])
               for i in range(3)]
    for t in waiters + setters:
        t.start()
    for t in waiters + setters:
        t.join(30)
    assert results == [True] * 4


def test_a_sent_future_behaves_as_a_future_for_its_users() -> None:
    future = Sent()
    assert isinstance(future, Future)
    assert not future.done() and not future.cancelled() and not future.cancel()
    with pytest.raises(TimeoutError):
        future.result(0.01)
    with pytest.raises(TimeoutError):
        future.exception(0)
    seen: list[BaseException | None] = []
    future.add_done_callback(lambda f: seen.append(f.exception()))
    threading.Timer(0.05, future.set_result, args=(None,)).start()
    assert future.result(10) is None
    assert future.done() and future.exception() is None
    assert seen == [None]
    late: list[bool] = []
    future.add_done_callback(lambda f: late.append(f.done()))  # done: runs at once
    assert late == [True]
    with pytest.raises(InvalidStateError):
        future.set_result(None)


def test_a_failed_sent_future_raises_its_error_and_runs_every_callback() -> None:
    future = Sent()
    calls: list[str] = []

    def bad(f: Future[None]) -> None:
        calls.append("bad")
        raise RuntimeError("callback bug")

    future.add_done_callback(bad)
    future.add_done_callback(lambda f: calls.append(type(f.exception()).__name__))
    error = ConnectionError("refused")
    future.set_exception(error)
    assert calls == ["bad", "ConnectionError"]  # a raising callback does not stop the rest
    assert future.exception() is error
    with pytest.raises(ConnectionError):
        future.result()
    with pytest.raises(InvalidStateError):
        future.set_exception(error)


def test_waiting_on_a_sent_future_from_many_threads() -> None:
    futures = [Sent() for _ in range(500)]
    errors: list[BaseException | None] = []

    def wait() -> None:
        for f in futures:
            errors.append(f.exception(30))

    waiters = [threading.Thread(target=wait) for _ in range(3)]
    for t in waiters:
        t.start()
    for i, f in enumerate(futures):
        f.set_exception(ValueError(i)) if i % 2 else f.set_result(None)
    for t in waiters:
        t.join(30)
    assert len(errors) == 1500
    assert sum(e is None for e in errors) == 750


def test_a_flag_and_a_sent_future_are_few_objects_for_the_collector() -> None:
    gc.collect()
    before = len(gc.get_objects())
    kept = [(Flag(), Flag(), Sent()) for _ in range(1000)]
    made = len(gc.get_objects()) - before
    # the standard pair of Events and Future: ~25 tracked objects; these: 4 (and the tuple)
    assert made < 1000 * 6, made
    del kept


def test_a_waiting_call_is_few_objects_for_the_collector(tmp_path: Path) -> None:
    # Given a producer with 2,000 calls sent and waiting for their results
    url = f"sqlite:///{tmp_path / 'gc.db'}"
    app = ivy.Ivy(url, url)

    @app.register_task(name="t.nothing", queue="gc")
    def nothing(i: int) -> int:
        return i

    app.delayed_call(nothing, -1)
    app.flush(10)
    gc.collect()
    before = len(gc.get_objects())
    calls = [app.delayed_call(nothing, i) for i in range(2000)]
    app.flush(10)
    gc.collect()
    made = len(gc.get_objects()) - before
    try:
        # Then each holds 4 objects that the collector walks on every full collection (the
        # call, its two flags, its send future): its lock, lists, cancel method and entry in
        # the pending table were 6 more, and the collector's time per call ~3x
        assert made < 2000 * 5, made / 2000
    finally:
        del calls
        app.close()
