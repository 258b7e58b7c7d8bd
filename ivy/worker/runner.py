"""Hard time limits where nothing supervises the worker's process (``app.listen()``): each
time-limited call runs in a runner process, killed past its limit (docs/internals/workers.md;
supervised workers run them inline, :mod:`ivy.worker.limits`)."""

from __future__ import annotations

import contextlib
import logging
import os
import select
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from ivy.context import Progress
from ivy.errors import ConfigurationError
from ivy.serialization import Serializer
from ivy.worker.recycling import MB, rss_bytes

log = logging.getLogger("ivy.worker")

_HEADER = struct.Struct(">I")
#: the largest frame either side accepts (a call's arguments or result, with room)
MAX_FRAME = 64 * 1024 * 1024
#: set in a runner's environment
RUNNER_ENV = "IVY_RUNNER_PROCESS"
#: how often a runner looks whether its worker still lives
PARENT_CHECK = 0.5
#: seconds a new runner may take to start (Python and ivy imported) before it counts as dead:
#: a call's time limit counts from its start, not from the runner's
START_TIMEOUT = 60.0


class RunnerDied(Exception):
    """The runner process ended (or its socket closed) before it answered."""


def importable(func: Callable[..., Any]) -> str | None:
    """Why ``func`` cannot be imported by path in a runner (None: it can)."""
    module, qualname = getattr(func, "__module__", None), getattr(func, "__qualname__", "")
    if not module or module == "__main__":
        return "it is defined in the script run as __main__"
    if "<locals>" in qualname or "<lambda>" in qualname:
        return "it is defined inside a function"
    return None


def check_importable(name: str, func: Callable[..., Any]) -> None:
    """ConfigurationError naming the task and the fix when ``func`` cannot run in a runner."""
    why = importable(func)
    if why is not None:
        raise ConfigurationError(
            f"task {name!r} has a hard time limit, so it runs in a process of its own that "
            f"imports it by module path, but {why}: define it at module level in an "
            "importable module (for example tasks.py, run by `ivy worker tasks`)")


def send(sock: socket.socket, serializer: Serializer, data: dict[str, Any]) -> None:
    """Send one frame: its length, then ``data`` in ``serializer``."""
    body = serializer.dumps(data)
    sock.sendall(_HEADER.pack(len(body)) + body)


def _receive_exactly(sock: socket.socket, n: int, deadline: float | None) -> bytes:
    chunks: list[bytes] = []
    while n:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([sock], [], [], left)[0]:
                raise TimeoutError
        chunk = sock.recv(min(n, 1 << 20))
        if not chunk:
            raise RunnerDied("the runner's socket closed")
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def receive(sock: socket.socket, serializer: Serializer,
            deadline: float | None = None) -> dict[str, Any]:
    """One frame; TimeoutError past ``deadline``, RunnerDied when the socket closed."""
    (size,) = _HEADER.unpack(_receive_exactly(sock, _HEADER.size, deadline))
    if size > MAX_FRAME:
        raise RunnerDied(f"a frame of {size} bytes is over the limit")
    data = serializer.loads(_receive_exactly(sock, size, deadline))
    if not isinstance(data, dict):
        raise RunnerDied("a frame that is not an object")
    return data


class Runner:
    """One runner process, seen from the worker."""

    def __init__(self, serializer: Serializer) -> None:
        if os.environ.get(RUNNER_ENV):  # never a runner of a runner (a fork bomb)
            raise RuntimeError("a runner process does not start runners")
        self.serializer = serializer
        ours, theirs = socket.socketpair()
        env = dict(os.environ)
        env[RUNNER_ENV] = "1"
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "ivy.worker.runner_process", str(theirs.fileno()),
                 serializer.name, str(os.getpid())], pass_fds=[theirs.fileno()], env=env)
        finally:
            theirs.close()
        self.sock = ours
        self._started = False

    @property
    def pid(self) -> int:
        return self.process.pid

    def call(self, request: dict[str, Any], limit: float | None,
             on_progress: Callable[[Progress], None]) -> dict[str, Any]:
        """Run one call; its outcome frame. TimeoutError once it ran ``limit`` seconds (on a
        new runner, counted once the runner started), RunnerDied if the process ended
        first."""
        try:
            if not self._started:
                try:
                    ready = receive(self.sock, self.serializer,
                                    time.monotonic() + START_TIMEOUT)
                except TimeoutError:
                    raise RunnerDied(f"it did not start within {START_TIMEOUT:g} s") from None
                if not ready.get("ready"):
                    raise RunnerDied("its first frame was not the ready frame")
                self._started = True
            deadline = None if limit is None else time.monotonic() + limit
            send(self.sock, self.serializer, request)
            while True:
                frame = receive(self.sock, self.serializer, deadline)
                progress = frame.get("progress")
                if isinstance(progress, dict):
                    with contextlib.suppress(Exception):  # best effort, as in the worker
                        on_progress(Progress(float(progress["fraction"]), progress.get("note")))
                    continue
                return frame
        except TimeoutError:  # an OSError too: past the deadline, the runner lives
            raise
        except OSError as exc:
            raise RunnerDied(str(exc)) from None

    def kill(self) -> None:
        """End the process at once (SIGKILL) and reap it."""
        with contextlib.suppress(OSError):
            self.process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(5)
        self.sock.close()

    def close(self) -> None:
        """Let an idle runner exit (its socket closes), and reap it; killed if it lingers."""
        self.sock.close()
        try:
            self.process.wait(2)
        except subprocess.TimeoutExpired:
            self.kill()

    def exit_description(self) -> str:
        """How the process ended ("exited with status 7"), once it did (waited up to 1 s)."""
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(1)
        code = self.process.poll()
        if code is None:
            return "still running"
        return f"killed by signal {-code}" if code < 0 else f"exited with status {code}"


class Runners:
    """A worker's idle runners, shared by its executor threads (at most one each at once).
    With ``max_memory`` (MB), a runner whose RSS passed it after a call is replaced: the
    worker's ``--max-memory-per-child`` holds for the processes that run its time-limited
    tasks too."""

    def __init__(self, serializer: Serializer, max_memory: float | None = None) -> None:
        self.serializer = serializer
        self.max_memory = max_memory
        self._idle: list[Runner] = []
        self._lock = threading.Lock()
        self._closed = False

    def take(self) -> Runner:
        with self._lock:
            if self._closed:
                raise RuntimeError("the worker is stopped: its runners are closed")
            if self._idle:
                return self._idle.pop()
        return Runner(self.serializer)

    def give_back(self, runner: Runner) -> None:
        over = self._over_memory(runner)
        with self._lock:
            if not self._closed and not over and runner.process.poll() is None:
                self._idle.append(runner)
                return
        runner.close()

    def _over_memory(self, runner: Runner) -> bool:
        """Whether ``runner`` passed ``max_memory`` (logged: it is replaced)."""
        if self.max_memory is None:
            return False
        try:
            rss = rss_bytes(runner.pid) / MB
        except (OSError, ConfigurationError):
            return False  # gone, or unreadable: poll() decides
        if rss <= self.max_memory:
            return False
        log.info("runner process %d: RSS %.0f MB past max_memory (%.0f MB); replacing it",
                 runner.pid, rss, self.max_memory)
        return True

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for runner in idle:
            runner.close()


def request_of(task: Any, message: Any, worker: str) -> dict[str, Any]:
    """What a runner needs to run ``message`` of ``task``."""
    return {"module": task.func.__module__, "qualname": task.func.__qualname__,
            "name": task.name, "id": message.id, "args": message.args,
            "kwargs": message.kwargs, "queue": message.queue, "attempt": message.attempt,
            "reply_to": message.reply_to, "worker": worker}
