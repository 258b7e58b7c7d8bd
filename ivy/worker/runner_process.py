"""The runner process of :mod:`ivy.worker.runner` (``python -m ivy.worker.runner_process FD
SERIALIZER PARENT_PID``): runs the calls of a time-limited task one at a time."""

from __future__ import annotations

import importlib
import os
import socket
import sys
import threading
import time
from typing import Any

from ivy.context import Progress
from ivy.errors import SerializationError
from ivy.message import Message, wire_error
from ivy.retries import POLICY
from ivy.serialization import Serializer, get_serializer
from ivy.task import Task
from ivy.worker.execution import Executor
from ivy.worker.runner import PARENT_CHECK, RunnerDied, receive, send


def _resolve(request: dict[str, Any], cache: dict[tuple[str, str], Any]) -> Any:
    key = (str(request["module"]), str(request["qualname"]))
    if key not in cache:
        found: Any = importlib.import_module(key[0])
        for part in key[1].split("."):
            found = getattr(found, part)
        if not isinstance(found, Task):
            # a function registered by a plain call, register_task(func, ...): importing its
            # module registered it again, on ivy.default (the module imported ivy for that)
            default = getattr(sys.modules.get("ivy"), "default", None)
            registered = None if default is None else default.registry.get(str(request["name"]))
            found = registered or Task(found, name=str(request["name"]))
        cache[key] = found
    return cache[key]


def _watch_parent(parent: int) -> None:
    while True:
        time.sleep(PARENT_CHECK)
        if os.getppid() != parent:
            os._exit(1)  # the worker is gone: nothing may run on unsupervised


def _serve(sock: socket.socket, serializer: Serializer) -> None:
    executor = Executor(f"runner:{os.getpid()}")
    executor.isolates = False  # here the call runs: never a runner of a runner
    tasks: dict[tuple[str, str], Any] = {}

    def send_progress(message: Any, update: Progress) -> None:
        send(sock, serializer, {"progress": {"fraction": update.fraction, "note": update.note}})

    executor.on_progress = send_progress

    def fire() -> None:  # the soft timeouts of plain functions (a worker's heartbeat does it)
        while True:
            time.sleep(0.05)
            executor.fire_timeouts(time.monotonic())

    threading.Thread(target=fire, daemon=True).start()
    while True:
        try:
            request = receive(sock, serializer)
        except (RunnerDied, OSError):
            return  # the worker closed the socket: done
        message = Message(id=str(request["id"]), name=str(request["name"]),
                          args=list(request["args"]), kwargs=dict(request["kwargs"]),
                          queue=request.get("queue"), reply_to=request.get("reply_to"),
                          attempt=int(request.get("attempt") or 0))
        executor.owner = str(request.get("worker") or executor.owner)
        try:
            task = _resolve(request, tasks)
        except Exception as exc:
            send(sock, serializer, {"ok": False, "verdict": {"kind": "final", "delay": None},
                                     "error": wire_error(
                                         type(exc).__name__, f"the runner cannot import "
                                         f"{request['module']}.{request['qualname']}: {exc}")})
            continue
        ok, value = executor.run(task, message)
        if ok:
            try:
                send(sock, serializer, {"ok": True, "value": value})
            except SerializationError as exc:
                send(sock, serializer, {"ok": False, "verdict": {"kind": "final",
                                                                   "delay": None},
                                         "error": wire_error("SerializationError", str(exc))})
            continue
        verdict = getattr(value, "verdict", POLICY)
        send(sock, serializer, {"ok": False, "error": dict(value),
                                 "verdict": {"kind": verdict.kind, "delay": verdict.delay}})


def main(argv: list[str]) -> int:
    """``python -m ivy.worker.runner FD SERIALIZER PARENT_PID``: serve calls until the socket
    closes."""
    fd, serializer_name, parent = int(argv[0]), argv[1], int(argv[2])
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
    sock = socket.socket(fileno=fd)
    serializer = get_serializer(serializer_name)
    send(sock, serializer, {"ready": True})  # the first call's time limit counts from here
    _serve(sock, serializer)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
