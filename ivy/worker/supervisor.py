"""Workers on every core: the parent behind ``ivy worker --processes N`` that starts the children,
restarts or replaces them, and stops them all on a signal (docs/internals/workers.md)."""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ivy._process import signal_handlers
from ivy.worker.limits import GRACE, Board

log = logging.getLogger("ivy.supervisor")

#: A child's exit code after ``--max-tasks-per-child`` or ``--max-memory-per-child``: replaced
#: at once, without backoff
#: (billiard's code for the same event).
EXIT_RECYCLE = 155
#: A child's exit code after one of its calls passed its hard time limit (ivy.worker.limits):
#: replaced at once, without backoff.
EXIT_TIME_LIMIT = 156
#: ``ivy worker``'s exit code for a usage error (a module that does not import, a bad option).
EXIT_USAGE = 2
BACKOFF_FIRST = 1.0
BACKOFF_MAX = 30.0
#: A child up this long has recovered: the next crash of its slot restarts after BACKOFF_FIRST.
STABLE_AFTER = 60.0
#: How often the parent looks at its children and at signals received.
POLL = 0.1

_STOP = b"s"
_READY = b"r"


@dataclass
class _Child:
    process: subprocess.Popen[bytes]
    link: socket.socket
    started: float
    #: the deadlines of its time-limited calls (ivy.worker.limits)
    board: Board | None = None
    ready_at: float | None = None
    killed: bool = False


@dataclass
class _Slot:
    """One of the N places a child runs in; it keeps its backoff across restarts."""

    index: int
    child: _Child | None = None
    restart_at: float | None = None
    delay: float = BACKOFF_FIRST


class Supervisor:
    """Runs ``processes`` children built by ``command(fd)`` (the argv of a child whose end of
    the control channel is ``fd``) until a signal or a fatal start-up error; the rules are in
    docs/internals/workers.md. ``env`` is added to the children's environment, and
    ``on_exit(pid)`` is called for each child that exited (the metrics' bookkeeping).

    With ``limit_slots`` (a child's executor threads), each child also gets a board
    (ivy.worker.limits) as ``--limits-fd FD`` after its command: it runs time-limited calls
    inline, and the supervisor kills it once a call is ``GRACE`` s past its deadline."""

    def __init__(self, command: Callable[[int], list[str]], processes: int, *,
                 env: Mapping[str, str] | None = None,
                 on_exit: Callable[[int], None] | None = None,
                 limit_slots: int | None = None) -> None:
        if processes < 1:
            raise ValueError(f"processes {processes!r} must be at least 1")
        self.command = command
        self.limit_slots = limit_slots
        self.env = None if env is None else {**os.environ, **env}
        self.on_exit = on_exit
        self.slots = [_Slot(i) for i in range(processes)]
        self._selector = selectors.DefaultSelector()
        self._signals: list[int] = []
        self._stopping = False
        self._killed = False
        self._ever_ready = False
        self._code = 0

    def run(self) -> int:
        """Start the children and supervise them; return the exit code for the parent."""
        with signal_handlers(self._on_stop_signal, usr1=self._on_usr1):
            try:
                self._start(self.slots[0])  # the others start once it listens (see _launch)
                while not (self._stopping and self._alive() == 0):
                    self._step()
            finally:
                for slot in self.slots:  # only after an internal error: closing the channel
                    if slot.child is not None:  # stops each child gracefully by itself
                        slot.child.link.close()
                self._selector.close()
        log.info("supervisor %d: stopped", os.getpid())
        return self._code

    def pids(self) -> list[int]:
        """The pids of the children running now."""
        return [s.child.process.pid for s in self.slots if s.child is not None]

    # -- the loop --------------------------------------------------------------------------

    def _step(self) -> None:
        for key, _ in self._selector.select(POLL):
            self._read(key.data)
        self._handle_signals()
        for slot in self.slots:
            child = slot.child
            if child is not None and child.process.poll() is not None:
                self._read(child)  # a "ready" sent just before exiting counts
                self._forget(slot)
                if self.on_exit is not None:
                    self.on_exit(child.process.pid)
                self._exited(slot, child)
            elif child is not None:
                self._watch_limits(child)
        if self._stopping:
            return
        self._launch()
        now = time.monotonic()
        for slot in self.slots:
            if slot.restart_at is not None and slot.restart_at <= now:
                self._start(slot)

    def _launch(self) -> None:
        """Start the other slots once the first child listens: a module that does not import
        then fails once, with one message, instead of N times."""
        first = self.slots[0].child
        if not self._ever_ready and first is not None and first.ready_at is not None:
            self._ever_ready = True
            for slot in self.slots[1:]:
                if slot.child is None:
                    self._start(slot)

    def _start(self, slot: _Slot) -> None:
        parent_end, child_end = socket.socketpair()
        command, fds = self.command(child_end.fileno()), [child_end.fileno()]
        board = None if self.limit_slots is None else Board.create(self.limit_slots)
        if board is not None:
            command += ["--limits-fd", str(board.fileno())]
            fds.append(board.fileno())
        try:
            process = subprocess.Popen(command, pass_fds=fds, env=self.env)
        except BaseException:
            parent_end.close()
            if board is not None:
                board.close()
            raise
        finally:
            child_end.close()
        parent_end.setblocking(False)
        slot.child = _Child(process, parent_end, time.monotonic(), board)
        slot.restart_at = None
        self._selector.register(parent_end, selectors.EVENT_READ, slot.child)
        log.info("supervisor %d: started worker process %d (slot %d of %d)", os.getpid(),
                 process.pid, slot.index + 1, len(self.slots))

    def _read(self, child: _Child) -> None:
        try:
            data = child.link.recv(64)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if _READY in data and child.ready_at is None:
            child.ready_at = time.monotonic()
        if not data:  # the child closed its end: it is exiting; poll() will tell
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(child.link)

    def _watch_limits(self, child: _Child) -> None:
        """Kill a child whose time-limited call is ``GRACE`` s past its deadline: its own
        watch did not end it (a C call holding the GIL, or the child is wedged)."""
        if child.board is None or child.killed:
            return
        late = child.board.late(time.monotonic())
        if late <= GRACE:
            return
        log.error("supervisor %d: worker process %d has a call %.1f s past its time limit and "
                  "did not end it (a C call holding the GIL?); killing it: the calls it held "
                  "come back as after a crash", os.getpid(), child.process.pid, late)
        child.killed = True
        with contextlib.suppress(OSError):
            child.process.kill()

    def _forget(self, slot: _Slot) -> None:
        child = slot.child
        slot.child = None
        if child is not None:
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(child.link)
            child.link.close()
            if child.board is not None:
                child.board.close()

    def _exited(self, slot: _Slot, child: _Child) -> None:
        code = child.process.returncode
        pid = child.process.pid
        how = _describe(code)
        if self._stopping:
            if code not in (0, EXIT_RECYCLE, EXIT_TIME_LIMIT) and not self._killed:
                log.warning("supervisor %d: worker process %d %s while stopping", os.getpid(),
                            pid, how)
                self._code = max(self._code, 1)
            return
        if code == EXIT_TIME_LIMIT or child.killed:
            log.info("supervisor %d: worker process %d ended after a call passed its time "
                     "limit; starting a fresh one", os.getpid(), pid)
            self._start(slot)
            return
        if code == EXIT_RECYCLE:
            log.info("supervisor %d: worker process %d reached --max-tasks-per-child or "
                     "--max-memory-per-child; starting a fresh one", os.getpid(), pid)
            self._start(slot)
            return
        if child.ready_at is None and (code == EXIT_USAGE or not self._ever_ready):
            log.error("supervisor %d: worker process %d %s before it listened; not restarting "
                      "it: fix the error above and start again", os.getpid(), pid, how)
            self._code = code if code > 0 else 1
            self._stop()
            return
        now = time.monotonic()
        if child.ready_at is not None and now - child.ready_at >= STABLE_AFTER:
            slot.delay = BACKOFF_FIRST
        log.warning("supervisor %d: worker process %d %s; restarting it in %.0f s", os.getpid(),
                    pid, how, slot.delay)
        slot.restart_at = now + slot.delay
        slot.delay = min(slot.delay * 2, BACKOFF_MAX)

    # -- stopping --------------------------------------------------------------------------

    def _on_stop_signal(self, signum: int, frame: Any) -> None:
        self._signals.append(signum)  # acted on by the loop, not in the handler

    def _on_usr1(self, signum: int, frame: Any) -> None:
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGUSR1)

    def _handle_signals(self) -> None:
        if not self._signals:
            return
        signals, self._signals = self._signals, []
        for signum in signals:
            name = signal.Signals(signum).name
            if not self._stopping:
                log.info("supervisor %d: received %s; stopping %d worker process(es), each "
                         "finishing its in-flight tasks", os.getpid(), name, self._alive())
                self._stop()
            elif not self._killed:
                log.warning("supervisor %d: second signal (%s); killing worker processes %s; "
                            "unfinished messages come back when their reservation expires",
                            os.getpid(), name, self.pids())
                self._killed = True
                self._code = 1
                for pid in self.pids():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)

    def _stop(self) -> None:
        self._stopping = True
        for slot in self.slots:
            slot.restart_at = None
            if slot.child is not None:
                with contextlib.suppress(OSError):
                    slot.child.link.send(_STOP)

    def _alive(self) -> int:
        return sum(1 for s in self.slots if s.child is not None)


def _describe(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-code).name}"
        return f"was killed by signal {-code}"
    return f"exited with code {code}"


# -- the child's side ----------------------------------------------------------------------


class ChildLink:
    """A worker process's end of the control channel: calls ``on_stop`` when the parent asks
    for a graceful stop or is gone, and tells the parent when the worker listens."""

    def __init__(self, fd: int, on_stop: Callable[[], None]) -> None:
        self._sock = socket.socket(fileno=fd)
        self._on_stop = on_stop
        self._parent = os.getppid()
        threading.Thread(target=self._watch, name="ivy-supervisor-link", daemon=True).start()

    def _watch(self) -> None:
        while True:
            try:
                data = self._sock.recv(64)
            except OSError:
                data = b""
            if not data:
                log.warning("worker process %d: its supervisor %d is gone; stopping",
                            os.getpid(), self._parent)
                self._on_stop()
                return
            if _STOP in data:
                self._on_stop()

    def ready(self) -> None:
        """Tell the parent that the worker listens."""
        with contextlib.suppress(OSError):
            self._sock.sendall(_READY)


def child_command(python: str, argv: Sequence[str], fd: int) -> list[str]:
    """The argv of a child: ``python -m ivy`` with the parent's ``argv`` and ``fd`` as its end
    of the control channel (the child ignores ``--processes``)."""
    args = list(argv)
    at = args.index("worker") + 1 if "worker" in args else len(args)
    return [python, "-m", "ivy", *args[:at], "--supervisor-fd", str(fd), *args[at:]]
