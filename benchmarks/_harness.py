"""What the interleaved benchmarks share (``benchmarks/brokers.py``, whose helpers other scripts
import from it, and ``benchmarks/postgres_peers.py``): a worker process started and stopped with
its output drained, its tree's peak RSS, the load average, the producer threads that live for a
whole run, and the median (min-max) of per-round figures."""

from __future__ import annotations

import compileall
import functools
import py_compile
import queue as queue_module
import signal
import statistics
import subprocess
import threading
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
THREADS = 4  # producer threads in the multi-producer mode
@functools.cache  # once per run (two threads compiling at once would only repeat the work)
def compile_ivy() -> None:
    """Write the bytecode of ivy's modules (``ivy/**/__pycache__``), once per run: the peers
    come from site-packages, where pip compiled them at install, and a pip-installed ivy is
    compiled the same way; a checkout is not, and under ``PYTHONDONTWRITEBYTECODE`` (set on
    this machine) every ivy worker would compile its modules from source at each start, which
    raises its peak RSS. The bytecode is checked against its source's hash at each import
    (never stale, whatever the timestamps of an edit)."""
    compileall.compile_dir(HERE.parent / "ivy", quiet=1,
                           invalidation_mode=py_compile.PycInvalidationMode.CHECKED_HASH)


def loadavg() -> str:
    """/proc/loadavg as it reads: the 1-, 5- and 15-minute load, runnable/all, last pid."""
    return Path("/proc/loadavg").read_text().strip()


def tree_peak_rss_mb(pid: int) -> float:
    """Sum of VmHWM (peak resident set) over a process and its descendants (Linux)."""
    total = 0
    pids = [pid]
    while pids:
        p = pids.pop()
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1])
            for task in Path(f"/proc/{p}/task").iterdir():
                pids.extend(int(c) for c in (task / "children").read_text().split())
        except OSError:
            continue
    return total / 1024


def start(cmd: list[str], env: dict[str, str], ready: str | None = None) -> subprocess.Popen[bytes]:
    """Start a worker in ``benchmarks/``; with ``ready``, return once a line of its output holds
    it. Its output is read to the end by a thread (so the pipe never fills), which keeps the
    last 20 lines as ``process.tail`` for a worker that dies. ivy's bytecode is written first
    (:func:`compile_ivy`)."""
    compile_ivy()
    process = subprocess.Popen(cmd, cwd=HERE, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT)
    assert process.stdout is not None
    stdout = process.stdout
    lines: list[bytes] = []
    if ready is not None:
        for line in stdout:
            if ready.encode() in line:
                break
            lines.append(line)
            del lines[:-20]
        else:
            raise RuntimeError(f"{cmd[0]} exited: {process.wait()}")

    def drain() -> None:
        for line in stdout:
            lines.append(line)
            del lines[:-20]

    threading.Thread(target=drain, daemon=True).start()
    process.tail = lines  # type: ignore[attr-defined]
    return process


def stop(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM,
         timeout: float = 60) -> None:
    """Signal the process (if it still runs) and wait for it; kill it after ``timeout`` s."""
    if process.poll() is None:
        process.send_signal(sig)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class Producers:
    """Producer threads that live for the whole run (clients that keep a connection per thread
    keep it), each running the jobs handed to it."""

    def __init__(self, count: int) -> None:
        self.inboxes: list[queue_module.SimpleQueue[Any]] = []
        for k in range(count):
            inbox: queue_module.SimpleQueue[Any] = queue_module.SimpleQueue()
            self.inboxes.append(inbox)
            threading.Thread(target=self._serve, args=(inbox,), daemon=True,
                             name=f"producer-{k}").start()

    @staticmethod
    def _serve(inbox: queue_module.SimpleQueue[Any]) -> None:
        while True:
            job, future = inbox.get()
            try:
                future.set_result(job())
            except BaseException as exc:  # handed to the caller
                future.set_exception(exc)

    def map(self, jobs: list[Callable[[], Any]]) -> list[Any]:
        """Run job k on thread k, all at once; return their results in order."""
        futures: list[Future[Any]] = []
        for inbox, job in zip(self.inboxes, jobs, strict=True):
            future: Future[Any] = Future()
            inbox.put((job, future))
            futures.append(future)
        return [f.result() for f in futures]

    def send(self, send: Callable[[int], Any], n: int) -> list[Any]:
        """Calls 0..n-1 (n rounded down to a multiple of the threads), thread k sending its
        share k*n/threads.. one at a time; returns every call's handle, in the order of i."""
        share = n // len(self.inboxes)
        jobs = [lambda k=k: [send(i) for i in range(k * share, (k + 1) * share)]
                for k in range(len(self.inboxes))]
        return [h for part in self.map(jobs) for h in part]


def spread(values: list[float], fmt: str = ",.0f") -> str:
    """``median (min-max)`` of per-round figures."""
    return (f"{statistics.median(values):{fmt}} "
            f"({min(values):{fmt}}-{max(values):{fmt}})")
