"""Periodic tasks: schedules, and schedulers that send each slot exactly once however many
run (threads on memory, SQLite and RabbitMQ + Redis; processes on SQLite)."""

from __future__ import annotations

import re
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from common import SUPPORT_DIR, wait_for
from servers import free_port

import ivy
from ivy.timing import scheduler as scheduler_module
from ivy.timing.schedule import Schedule
from ivy.timing.scheduler import CLAIM_TTL, SEND_CLAIM_TTL, Scheduler


@pytest.fixture
def urls(store_urls: tuple[str, str]) -> tuple[str, str]:
    """These features keep state in the notifier: every pairing but RabbitMQ alone, whose
    notifier refuses them (tests/notifiers/test_amqp_notifier.py)."""
    return store_urls


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def periodic(app: ivy.Ivy, **schedule: object) -> tuple[str, list[int]]:
    queue = f"qs{uuid.uuid4().hex[:8]}"
    runs: list[int] = []
    lock = threading.Lock()

    def job(tag: int) -> None:
        with lock:
            runs.append(tag)

    app.periodic_task(job, name=f"s.job{uuid.uuid4().hex[:6]}", queue=queue, args=(1,),
                      **schedule)
    return queue, runs


def tick_together(schedulers: list[Scheduler]) -> None:
    """Every scheduler looks at once, each from its own thread."""
    start = threading.Barrier(len(schedulers))

    def look(s: Scheduler) -> None:
        start.wait()
        s.tick()

    threads = [threading.Thread(target=look, args=(s,)) for s in schedulers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)


def test_three_schedulers_send_each_slot_once(app: ivy.Ivy) -> None:
    # Given three schedulers of one app sharing the notifier, every=1 s, and a worker
    queue, runs = periodic(app, every=1)
    clock = Clock(1_000_000.5)
    schedulers = [Scheduler(app, clock=clock) for _ in range(3)]
    tick_together(schedulers)  # start: slots before it are skipped
    assert [s.sent for s in schedulers] == [[], [], []]
    app.listen(queue=queue, block=False)
    # When they look together after each of 20 slots (and twice at some)
    for i in range(1, 21):
        clock.now = 1_000_000.5 + i
        tick_together(schedulers)
        if i % 5 == 0:
            tick_together(schedulers)
    # Then each slot was sent exactly once, by one of them
    sent = sorted(slot for s in schedulers for _, slot in s.sent)
    assert sent == [1_000_000.0 + i for i in range(1, 21)]
    wait_for(lambda: len(runs) == 20, timeout=30, message="20 runs")
    wait_for(lambda: app.queue_backend.size(queue) == 0, message="every message acknowledged")
    assert len(runs) == 20


def test_missed_slots_are_skipped_unless_caught_up(app: ivy.Ivy) -> None:
    _, _ = periodic(app, every=1, catch_up=5)
    plain_name = f"s.plain{uuid.uuid4().hex[:6]}"
    app.periodic_task(lambda: None, name=plain_name, queue="qs-plain", every=1)
    clock = Clock(2_000_000.5)
    first = Scheduler(app, clock=clock)
    first.tick()
    # the caught-up schedule sent the 5 slots before the start; the plain one none
    assert sorted(slot for name, slot in first.sent if name != plain_name) == [
        1_999_996.0, 1_999_997.0, 1_999_998.0, 1_999_999.0, 2_000_000.0]
    assert [slot for name, slot in first.sent if name == plain_name] == []
    # a second scheduler starting a little later finds those slots claimed
    clock.now += 0.2
    second = Scheduler(app, clock=clock)
    second.tick()
    assert second.sent == []
    # and one that looks late (a pause) sends only the recent slots
    clock.now += 60
    first.tick()
    assert len([1 for name, _ in first.sent if name == plain_name]) == 10


def test_cron_in_a_time_zone_across_daylight_saving() -> None:
    pytest.importorskip("cronsim")
    # Given 06:00 on weekdays in Prague, which moves to summer time on Sunday 2026-03-29
    s = Schedule("r", "t", cron="0 6 * * 1-5", tz="Europe/Prague")
    start = datetime(2026, 3, 26, 12, tzinfo=UTC).timestamp()
    slots = s.slots(start, start + 5 * 86400)
    # Then Fri 05:00 UTC, then Mon and Tue 04:00 UTC
    assert [datetime.fromtimestamp(t, UTC).strftime("%a %H:%M") for t in slots] == [
        "Fri 05:00", "Mon 04:00", "Tue 04:00"]
    assert s.next_slot(start) == slots[0]
    assert Schedule("e", "t", every=30).slots(100, 200) == [120, 150, 180]


def test_a_cron_schedule_is_sent_at_its_slot(app: ivy.Ivy) -> None:
    pytest.importorskip("cronsim")
    queue, runs = periodic(app, cron="*/5 * * * *")
    clock = Clock(datetime(2026, 1, 1, 0, 4, 59, tzinfo=UTC).timestamp())
    scheduler = Scheduler(app, clock=clock)
    assert scheduler.tick() == pytest.approx(1.0)  # wakes at the slot
    clock.now += 1.5
    scheduler.tick()
    assert [slot for _, slot in scheduler.sent] == [
        datetime(2026, 1, 1, 0, 5, tzinfo=UTC).timestamp()]
    app.listen(queue=queue, block=False)
    wait_for(lambda: runs == [1], message="the cron call to run")


@pytest.mark.parametrize(("schedule", "error"), [
    ({}, "exactly one of every"),
    ({"every": 1, "cron": "* * * * *"}, "exactly one of every"),
    ({"every": 0}, "every=0"),
    ({"every": 5, "tz": "Europe/Prague"}, "cron schedules only"),
    ({"cron": "61 * * * *"}, "is not a cron expression"),
    ({"cron": "* * * * *", "tz": "Mars/Olympus"}, "is not a time zone"),
    ({"every": 1, "catch_up": -1}, "catch_up=-1"),
])
def test_bad_schedules_are_refused(schedule: dict[str, object], error: str) -> None:
    pytest.importorskip("cronsim")
    app = ivy.Ivy("memory://bad-schedules", "memory://bad-schedules")
    with pytest.raises(ivy.ConfigurationError, match=error):
        app.periodic_task(lambda: None, name="s.bad", **schedule)
    task = app.register_task(lambda a: a, name="s.one")
    with pytest.raises(ivy.ConfigurationError, match="do not fit"):
        app.schedule(task, every=1, args=(1, 2))
    app.schedule(task, every=1, args=(1,), name="same")
    with pytest.raises(ivy.ConfigurationError, match="is taken"):
        app.schedule(task, every=2, args=(1,), name="same")
    app.close()


SLOT = re.compile(r"for slot (\S+) of 'timing.tick'")


@pytest.mark.slow
def test_scheduler_processes_send_each_slot_once(sqlite_url: str, tmp_path: Path) -> None:
    """Three `ivy scheduler` processes and a worker with --scheduler (two processes): every
    second's slot is sent by exactly one of them and runs once."""
    from timing_workers import start
    from workers import stop_worker

    tick_log = tmp_path / "ticks.log"
    env = {"IVY_TEST_TICK_LOG": str(tick_log)}
    schedulers = [start("scheduler", sqlite_url, sqlite_url, env=env, ready="running")
                  for _ in range(3)]
    worker = start("worker", sqlite_url, sqlite_url, "--scheduler", "--processes", "2",
                   env=env, ready="running 1 schedule")
    try:
        wait_for(lambda: tick_log.exists() and len(tick_log.read_text().splitlines()) >= 5,
                 timeout=60, message="5 ticks")
    finally:
        outputs = [stop_worker(s) for s in schedulers] + [stop_worker(worker)]
    slots = [m.group(1) for out in outputs for m in SLOT.finditer(out)]
    assert len(slots) == len(set(slots)), f"a slot was sent twice: {sorted(slots)}"
    seconds = sorted(datetime.strptime(s, "%Y-%m-%dT%H:%M:%SZ").replace(
        tzinfo=UTC).timestamp() for s in slots)
    assert seconds == [seconds[0] + i for i in range(len(seconds))], "a slot was skipped"
    senders = {i for i, out in enumerate(outputs) if SLOT.search(out)}
    assert len(senders) >= 2, "one process sent everything: the test shows nothing"
    runs = tick_log.read_text().splitlines()
    assert len(runs) <= len(slots)


def test_the_scheduler_command_needs_periodic_tasks(sqlite_url: str) -> None:
    out = subprocess.run([sys.executable, "-m", "ivy", "scheduler", "tasks_for_workers",
                          "--notifier-url", sqlite_url], cwd=SUPPORT_DIR, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 2
    assert "declare no periodic task" in out.stderr


def scheduled_pair(tmp_path: Path, broken_queue_url: str) -> tuple[ivy.Ivy, ivy.Ivy, str]:
    """Two apps with the same every=1 schedule sharing one SQLite notifier: the first sends
    to ``broken_queue_url``, the second to the SQLite file."""
    store = f"sqlite:///{tmp_path / 'ivy.db'}"
    broken = ivy.Ivy(broken_queue_url, store)
    working = ivy.Ivy(store, store)
    queue = f"qs{uuid.uuid4().hex[:8]}"
    for app in (broken, working):
        app.periodic_task(lambda: None, name="s.shared", queue=queue, every=1)
    return broken, working, queue


def test_a_slot_whose_send_is_refused_later_is_sent_by_another_scheduler(
        tmp_path: Path) -> None:
    # Given a scheduler whose broker never confirms, and another one (issue 20, row 5)
    url = f"amqp://guest:guest@127.0.0.1:{free_port()}/%2F?publish_timeout=0.5"
    broken, working, queue = scheduled_pair(tmp_path, url)
    clock = Clock(3_000_000.5)
    first, second = Scheduler(broken, clock=clock), Scheduler(working, clock=clock)
    try:
        first.tick()
        second.tick()
        clock.now += 1
        first.tick()  # claims slot 3,000,001 and hands its call over
        second.tick()  # finds it claimed
        assert [slot for _, slot in first.sent] == [3_000_001.0] and second.sent == []
        # When that send fails after the hand-over

        def sent_by_second() -> bool:
            first.tick()  # gives the slot back once it knows
            second.tick()  # sends what was given back
            return bool(second.sent)

        # Then the other scheduler sends the slot: nothing is lost
        wait_for(sent_by_second, timeout=20, message="the slot sent by the second scheduler")
        assert [slot for _, slot in second.sent] == [3_000_001.0]
        assert first.sent == []
        working.flush(10)
        assert working.queue_backend.size(queue) == 1
    finally:
        broken.close(timeout=0.5)
        working.close()


def test_a_slot_whose_scheduler_died_before_the_confirm_is_sent_by_another(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a scheduler that claims a slot and then hears nothing from its broker (it is
    # as good as dead), and another scheduler
    monkeypatch.setattr(scheduler_module, "SEND_CLAIM_TTL", 0.5)
    url = f"amqp://guest:guest@127.0.0.1:{free_port()}/%2F?publish_timeout=60"
    silent, working, queue = scheduled_pair(tmp_path, url)
    clock = Clock(4_000_000.5)
    first, second = Scheduler(silent, clock=clock), Scheduler(working, clock=clock)
    try:
        first.tick()
        second.tick()
        clock.now += 1
        first.tick()
        second.tick()
        assert first.sent and second.sent == []
        # When its short claim expires without a confirm, another scheduler sends the slot

        def sent_by_second() -> bool:
            second.tick()
            return bool(second.sent)

        wait_for(sent_by_second, timeout=20, message="the slot sent by the second scheduler")
        assert [slot for _, slot in second.sent] == [4_000_001.0]
        working.flush(10)
        assert working.queue_backend.size(queue) == 1
    finally:
        silent.close(timeout=0.5)
        working.close()


def test_a_confirmed_slot_is_kept_for_its_whole_time(sqlite_url: str, tmp_path: Path) -> None:
    # Given a scheduler whose send of a slot is confirmed
    app = ivy.Ivy(sqlite_url, sqlite_url)
    app.periodic_task(lambda: None, name="s.kept", queue="qs-kept", every=1)
    clock = Clock(5_000_000.5)
    scheduler = Scheduler(app, clock=clock)

    def claim_left() -> float:
        conn = sqlite3.connect(tmp_path / "ivy.db")
        try:
            rows = conn.execute("SELECT expires FROM ivy_keys WHERE key LIKE "
                                "'ivy:schedule:%'").fetchall()
        finally:
            conn.close()
        return float(rows[0][0]) - time.time() if rows else 0.0

    try:
        scheduler.tick()
        clock.now += 1
        scheduler.tick()
        assert scheduler.sent and 0 < claim_left() <= SEND_CLAIM_TTL
        # Then, once the confirm is settled on a later look, the claim lasts its whole time
        wait_for(lambda: scheduler.tick() is not None and claim_left() > SEND_CLAIM_TTL,
                 timeout=10, message="the claim kept")
        assert claim_left() <= CLAIM_TTL + 1
    finally:
        app.close()
