"""Ctrl-C and the exit hook, in real producer processes on SQLite with no worker: a producer
blocked in ``ivy.wait`` stops at once, and the exit hook says when it waits for callbacks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import ROOT, wait_for

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


class Producer:
    """A producer script run in ``folder``, its output lines read by threads."""

    def __init__(self, folder: Path, script: str) -> None:
        (folder / "tasks.py").write_text(TASKS)
        (folder / "producer.py").write_text(script)
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        env.pop("IVY_QUEUE_URL", None)
        env.pop("IVY_NOTIFIER_URL", None)
        self.process = subprocess.Popen([sys.executable, "producer.py"], cwd=folder, env=env,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        text=True)
        self.out: list[str] = []
        self.err: list[str] = []
        self.readers = [threading.Thread(target=self._read, args=(stream, into), daemon=True)
                        for stream, into in ((self.process.stdout, self.out),
                                             (self.process.stderr, self.err))]
        for reader in self.readers:
            reader.start()

    @staticmethod
    def _read(stream: object, into: list[str]) -> None:
        for line in stream:  # type: ignore[attr-defined]
            into.append(line.rstrip("\n"))

    def wait_for(self, lines: list[str], text: str) -> None:
        wait_for(lambda: any(text in line for line in lines) or self.process.poll() is not None,
                 timeout=30, message=f"{text!r} from the producer")
        assert self.process.poll() is None, "\n".join(self.err)

    def interrupt_and_time_exit(self) -> float:
        """Send SIGINT; return how long the producer took to exit (at most 20 s)."""
        self.process.send_signal(signal.SIGINT)
        start = time.monotonic()
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
        took = time.monotonic() - start
        for reader in self.readers:  # every line read, up to the end of the streams
            reader.join(10)
        return took


@pytest.mark.slow
def test_ctrl_c_stops_a_producer_blocked_in_wait_at_once(tmp_path: Path) -> None:
    # Given a producer blocked in ivy.wait on calls that no worker takes
    producer = Producer(tmp_path, BLOCKED_IN_WAIT)
    producer.wait_for(producer.out, "waiting")
    # When Ctrl-C reaches it
    took = producer.interrupt_and_time_exit()
    # Then it stops at once, and its exit hook waited for nothing: ivy.wait's own callbacks
    # are not the user's
    err = "\n".join(producer.err)
    assert took < 5, err
    assert "KeyboardInterrupt" in err
    assert "Ctrl-C to skip" not in err


@pytest.mark.slow
def test_the_exit_hook_says_it_waits_and_a_ctrl_c_skips_it(tmp_path: Path) -> None:
    # Given a producer that ended with a callback of its own still due
    producer = Producer(tmp_path, ENDS_WITH_A_CALLBACK_DUE)
    producer.wait_for(producer.out, "sent")
    # Then its exit hook says once what it waits for, and how to skip it
    producer.wait_for(producer.err, "Ctrl-C to skip")
    [notice] = [line for line in producer.err if "Ctrl-C to skip" in line]
    assert "waiting up to 30 s for 1 callback" in notice
    # When Ctrl-C reaches it, it exits at once, saying so, with no traceback
    took = producer.interrupt_and_time_exit()
    err = "\n".join(producer.err)
    assert took < 5, err
    assert "stopped waiting (Ctrl-C)" in err and "Traceback" not in err
