"""Ctrl-C and the exit hook, in real producer processes on SQLite with no worker: a producer
blocked in ``ivy.wait`` stops at once, the exit hook says when it waits for callbacks, and
sends still on their way at exit reach the queue."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest
from workers import Lines

TASKS = '''\
import ivy

@ivy.register_task(name="exit.add", queue="exit")
def add(a, b):
    return a + b
'''

#: sends 3 calls no worker takes, then waits for them; "waiting" once ivy.wait's callbacks
#: are in place (a thread watches for them), so that a Ctrl-C lands inside ivy.wait
BLOCKED_IN_WAIT = '''\
import threading
import ivy
import tasks

calls = [ivy.delayed_call(tasks.add, i, 1) for i in range(3)]
ivy.flush(10)

def announce():
    while not all(c.has_callbacks for c in calls):
        threading.Event().wait(0.01)
    print("waiting", flush=True)

threading.Thread(target=announce, daemon=True).start()
ivy.wait(calls)
'''

#: sends a call with a callback of the user's own, and ends: the exit hook waits for it
ENDS_WITH_A_CALLBACK_DUE = '''\
import ivy
import tasks

ivy.delayed_call(tasks.add, 1, 2, callback=lambda err, result: print("result", result))
ivy.flush(10)
print("sent", flush=True)
'''


#: sends a burst and ends at once, without a flush: the exit hook sends what is left
ENDS_RIGHT_AFTER_A_BURST = '''\
import ivy
import tasks

for i in range(2000):
    ivy.delayed_call(tasks.add, i, 1)
'''


def start_producer(folder: Path, script: str) -> Lines:
    """Save tasks.py and ``script`` as producer.py in ``folder``, and run the producer there,
    on the embedded SQLite default."""
    (folder / "tasks.py").write_text(TASKS)
    (folder / "producer.py").write_text(script)
    env = {k: v for k, v in os.environ.items() if not k.startswith("IVY_")}
    return Lines([sys.executable, "producer.py"], cwd=folder, env=env)


def time_interrupt(producer: Lines) -> float:
    """Ctrl-C the producer; how many seconds it took to exit."""
    start = time.monotonic()
    producer.interrupt()
    return time.monotonic() - start


@pytest.mark.slow
def test_ctrl_c_stops_a_producer_blocked_in_wait_at_once(tmp_path: Path) -> None:
    # Given a producer blocked in ivy.wait on calls that no worker takes
    producer = start_producer(tmp_path, BLOCKED_IN_WAIT)
    producer.wait_for_line(producer.out, "waiting")
    # When Ctrl-C reaches it
    took = time_interrupt(producer)
    # Then it stops at once, and its exit hook waited for nothing: ivy.wait's own callbacks
    # are not the user's
    err = "\n".join(producer.err)
    assert took < 5, err
    assert "KeyboardInterrupt" in err
    assert "Ctrl-C to skip" not in err


@pytest.mark.slow
def test_the_exit_hook_says_it_waits_and_a_ctrl_c_skips_it(tmp_path: Path) -> None:
    # Given a producer that ended with a callback of its own still due
    producer = start_producer(tmp_path, ENDS_WITH_A_CALLBACK_DUE)
    producer.wait_for_line(producer.out, "sent")
    # Then its exit hook says once what it waits for, and how to skip it
    producer.wait_for_line(producer.err, "Ctrl-C to skip")
    [notice] = [line for line in producer.err if "Ctrl-C to skip" in line]
    assert "waiting up to 30 s for 1 callback" in notice
    # When Ctrl-C reaches it, it exits at once, saying so, with no traceback
    took = time_interrupt(producer)
    err = "\n".join(producer.err)
    assert took < 5, err
    assert "stopped waiting (Ctrl-C)" in err and "Traceback" not in err


@pytest.mark.slow
def test_sends_on_their_way_at_exit_reach_the_queue(tmp_path: Path) -> None:
    from ivy.queues.sqlite import SQLiteQueueBackend

    # Given a producer that sends 2000 calls and ends at once
    producer = start_producer(tmp_path, ENDS_RIGHT_AFTER_A_BURST)
    assert producer.wait(60) == 0
    # Then its exit hook sent every one: none failed, all are in the queue
    assert not [line for line in producer.err if "not taken" in line], producer.err[-3:]
    backend = SQLiteQueueBackend(str(tmp_path / "ivy.db"))
    try:
        assert backend.size("exit") == 2000
    finally:
        backend.close()
