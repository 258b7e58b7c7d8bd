"""Waiting for many calls at once: :func:`wait` (``ivy.wait``), with one deadline for all and
an optional progress bar (tqdm, ``pip install 'ivy-queue[progress]'``), and what
``ivy call --each`` prints."""

from __future__ import annotations

import json
import queue as queue_mod
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any, TextIO

from ivy.annotations import plain
from ivy.call import Call
from ivy.errors import ConfigurationError, PublishError, RemoteTaskError, ResultTimeout


def progress_bar(total: int, desc: str, file: TextIO | None = None) -> Any:
    """A tqdm bar on stderr (``file``) counting calls; a clear error when tqdm is missing."""
    try:
        from tqdm import tqdm
    except ImportError:
        raise ConfigurationError("progress=True needs tqdm: pip install 'ivy-queue[progress]', "
                                 "or wait without progress") from None
    return tqdm(total=total, desc=desc, unit="call", file=file or sys.stderr, leave=True,
                dynamic_ncols=True)


def wait(calls: Iterable[Call[Any]], timeout: float | None = None, progress: bool = False, *,
         return_exceptions: bool = False) -> list[Any]:
    """Wait for every call; return their results in the order given.

    ``timeout`` bounds the whole wait (None: no limit); when it passes first,
    :class:`ivy.ResultTimeout` says how many calls had finished and names one still waiting
    (they may all complete later). A failed call raises its error (:class:`ivy.RemoteTaskError`,
    or :class:`ivy.PublishError` if its message was not taken) as soon as it is known, whatever
    its place in ``calls``; with ``return_exceptions=True`` the error takes the call's place in
    the list instead, as with :func:`asyncio.gather`. ``progress=True`` shows a tqdm bar on
    stderr that advances as calls finish, in any order."""
    calls = list(calls)
    if timeout is not None and (not isinstance(timeout, (int, float)) or timeout < 0):
        raise ValueError(f"timeout {timeout!r} must be a number of seconds >= 0, or None")
    bar = progress_bar(len(calls), "ivy.wait") if progress else None
    deadline = None if timeout is None else time.monotonic() + timeout
    finished: queue_mod.SimpleQueue[int] = queue_mod.SimpleQueue()
    results: list[Any] = [None] * len(calls)
    left = set(range(len(calls)))
    places: dict[int, list[int]] = {}  # a call listed twice fills both places
    for i, call in enumerate(calls):
        places.setdefault(id(call), []).append(i)

    def settled(call: Call[Any]) -> None:
        for i in places[id(call)]:
            finished.put(i)

    distinct = {id(c): c for c in calls}.values()
    try:
        for call in distinct:
            call.add_done_callback(settled)
        while left:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                i = finished.get(timeout=remaining)
            except queue_mod.Empty:
                raise ResultTimeout(_timeout_message(calls, left, timeout)) from None
            # settled: result() returns once the call's other callbacks ran as well
            error = calls[i].exception(None if remaining is None else max(remaining, 0.1))
            if error is not None and not return_exceptions:
                raise error
            results[i] = error if error is not None else calls[i].result(0)
            left.discard(i)
            if bar is not None:
                bar.update(1)
    finally:
        # on a timeout or Ctrl-C: nobody waits any more, and the exit hook waits only for
        # calls with callbacks of the user's own
        for call in distinct:
            call.remove_done_callback(settled)
        if bar is not None:
            bar.close()
    return results


def _timeout_message(calls: list[Call[Any]], left: set[int], timeout: float | None) -> str:
    first = calls[min(left)]
    more = f" and {len(left) - 1} more" if len(left) > 1 else ""
    return (f"{len(calls) - len(left)} of {len(calls)} calls finished within {timeout} s; "
            f"still waiting for call {first.id} of {first.task!r} (status {first.status!r})"
            f"{more}. They may still complete: wait again, or raise the timeout")


def print_outcomes(calls: list[Call[Any]], outcomes: list[Any], out: TextIO) -> int:
    """``ivy call --each --wait``: one JSON line per call, in input order (``{"id", "status":
    "successful", "result"}`` or ``{"id", "status": "errored", "error": {"type", "message"}}``);
    returns how many errored."""
    errored = 0
    for call, outcome in zip(calls, outcomes, strict=True):
        line: dict[str, Any] = {"id": call.id}
        if isinstance(outcome, RemoteTaskError):
            errored += 1
            line.update(status="errored", error={"type": outcome.type,
                                                 "message": outcome.message})
        elif isinstance(outcome, PublishError):
            errored += 1
            line.update(status="errored", error={"type": type(outcome).__name__,
                                                 "message": str(outcome)})
        else:
            line.update(status="successful", result=outcome)
        out.write(json.dumps(line, default=plain) + "\n")  # results decoded by annotations
    out.flush()
    return errored


def read_each(lines: Iterable[str]) -> list[list[Any]]:
    """``ivy call --each FILE``: the argument lists, one per non-blank line, each a JSON array
    of positional arguments; a line that is not one is an error naming it."""
    from ivy.errors import IvyError

    arg_lists: list[list[Any]] = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            args = json.loads(line)
        except json.JSONDecodeError as exc:
            raise IvyError(f"--each: line {number} is not valid JSON ({exc}): {line.strip()[:80]}"
                           ) from None
        if not isinstance(args, list):
            raise IvyError(f"--each: line {number} must be a JSON array of positional "
                           f"arguments, like [5] or [\"a\", 2]; got {line.strip()[:80]}")
        arg_lists.append(args)
    return arg_lists


def call_each(app: Any, name: str, arg_lists: list[list[Any]], *, kwargs: dict[str, Any],
              queue: str | None, wait_for_results: bool, timeout: float, out: TextIO,
              hint: Callable[[str], str] | None = None) -> int:
    """``ivy call NAME --each FILE``: one call per argument list (``kwargs`` for all). Prints
    the call ids, or with ``wait_for_results`` one outcome line per call
    (:func:`print_outcomes`) after a progress bar on stderr (when tqdm is installed). Exit
    status: 0, 1 if a call errored, 3 on timeout. Without ``wait_for_results`` the ids are
    printed once every message was taken (:class:`ivy.PublishError` if one was not).
    ``hint(queue)`` adds to a timeout's line what is known of the workers of the calls'
    queue."""
    calls = [app.send_task(name, args, kwargs, queue=queue) for args in arg_lists]
    if not wait_for_results:
        app.flush(timeout)  # PublishError if one was not taken: no id of a lost call is printed
        for call in calls:
            out.write(call.id + "\n")
        out.flush()
        return 0
    try:
        import tqdm  # noqa: F401 - only whether the bar can be drawn
        progress = True
    except ImportError:
        progress = False
    try:
        outcomes = wait(calls, timeout, progress, return_exceptions=True)
    except ResultTimeout as exc:
        why = f"; {hint(calls[0].queue)}" if hint is not None and calls else ""
        print(f"ivy: {exc}{why}", file=sys.stderr)
        return 3
    return 1 if print_outcomes(calls, outcomes, out) else 0
