"""Workers on every core: the parent behind ``ivy worker --processes N`` (and
``--max-tasks-per-child N``) that starts N worker processes, restarts one that dies, replaces
one that reached its quota, and stops them all on SIGTERM or SIGINT.

How children start: each child is a fresh ``python -m ivy worker ...`` with the parent's own
arguments plus a hidden ``--supervisor-fd``, not a fork of the parent. A fork copies the locks
of threads that do not exist in the child (a notifier or pika I/O thread), which deadlocks at
random; and forking after importing the task modules, to share their memory copy-on-write,
would make the parent import user code, while the parent is the one process that must not leak
or crash. A fresh interpreter costs an interpreter start and the modules' import per child
start (about 0.3 s here), and behaves the same on every platform. Each child opens its own
connections. (Dramatiq forks or spawns children that import the modules themselves;
Celery's billiard forks after importing them.)

The control channel is a socket pair per child, the child's end passed as that fd:

- parent -> child ``s``: stop gracefully, exactly as SIGTERM would. The parent does not send
  SIGTERM itself: Ctrl-C in a terminal and ``systemctl stop`` already signal every process of
  the group, and a forwarded signal on top would be a child's *second* signal, which makes a
  worker exit at once.
- child -> parent ``r``: the worker listens.
- end of file at the child: the parent is gone (even SIGKILLed); the child stops gracefully,
  so no orphan keeps running.

Exits:

- :data:`EXIT_RECYCLE` after ``--max-tasks-per-child`` or ``--max-memory-per-child`` (see
  :mod:`ivy.recycling`): a planned exit, replaced at once. The
  child's worker counts the messages itself (``Worker(max_messages=N)``): it starts no more
  than N, gives back the ones it fetched beyond them, and stops once its N have ended.
- the first child fails before it listens (a module that does not import, an unknown URL
  scheme): a retry would fail the same way, so the parent starts no other and exits with that
  child's code, 2 for a usage error as ``ivy worker`` alone, having printed its message once.
  A later child that exits 2 before listening stops the whole group the same way.
- any other exit (a crash, SIGKILL, the OOM killer) is logged with its code or signal and the
  child restarted after a backoff of 1 s doubling to 30 s, per slot, back to 1 s once a child
  has stayed up for a minute.

Signals to the parent: the first SIGTERM or SIGINT asks every child to stop; each finishes its
in-flight tasks and gives back what it fetched but did not start, and the parent exits 0 once
all have (1 if one of them did not stop cleanly). A second one SIGKILLs every child and exits 1;
their unfinished messages come back when their reservations expire, as for one worker killed.
SIGUSR1 is passed on to every child, each of which prints its threads' stacks.

Metrics (``--metrics-port``): the parent serves ``/metrics``, summing what the children write
to a directory it made for them (prometheus-client's multiprocess mode, see
:mod:`ivy.middleware.prometheus`); the children bind no port.
"""

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

log = logging.getLogger("ivy.supervisor")

#: A child's exit code after ``--max-tasks-per-child`` or ``--max-memory-per-child``: replaced
#: at once, without backoff
#: (billiard's code for the same event).
EXIT_RECYCLE = 155
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
    ready_at: float | None = None


@dataclass
class _Slot:
    """One of the N places a child runs in; it keeps its backoff across restarts."""

    index: int
    child: _Child | None = None
    restart_at: float | None = None
    delay: float = BACKOFF_FIRST


class Supervisor:
    """Runs ``processes`` children built by ``command(fd)`` (the argv of a child whose end of
    the control channel is ``fd``) until a signal or a fatal start-up error; see the module
    docstring for the rules. ``env`` is added to the children's environment, and
    ``on_exit(pid)`` is called for each child that exited (the metrics' bookkeeping)."""

    def __init__(self, command: Callable[[int], list[str]], processes: int, *,
                 env: Mapping[str, str] | None = None,
                 on_exit: Callable[[int], None] | None = None) -> None:
        if processes < 1:
            raise ValueError(f"processes {processes!r} must be at least 1")
        self.command = command
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
        try:
            process = subprocess.Popen(self.command(child_end.fileno()),
                                       pass_fds=(child_end.fileno(),), env=self.env)
        except BaseException:
            parent_end.close()
            raise
        finally:
            child_end.close()
        parent_end.setblocking(False)
        slot.child = _Child(process, parent_end, time.monotonic())
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

    def _forget(self, slot: _Slot) -> None:
        child = slot.child
        slot.child = None
        if child is not None:
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(child.link)
            child.link.close()

    def _exited(self, slot: _Slot, child: _Child) -> None:
        code = child.process.returncode
        pid = child.process.pid
        how = _describe(code)
        if self._stopping:
            if code not in (0, EXIT_RECYCLE) and not self._killed:
                log.warning("supervisor %d: worker process %d %s while stopping", os.getpid(),
                            pid, how)
                self._code = max(self._code, 1)
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
