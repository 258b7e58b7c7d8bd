"""The producer's side of workflows: ``delayed_call(chain(...))`` / ``send_task`` /
``app.delayed_call`` with a signature or a workflow.

A lone signature is sent as the plain call it describes. A workflow gets a fresh call id (the
id its :class:`ivy.Call` waits on), its node tree with an id per node derived from it
(``<call id>.<n>``, the message ids of its steps), and its first messages: the first step's,
or each member's of a leading group. Every argument is checked here, as far as this process
registers the tasks, so a mistake fails at ``delayed_call`` and not halfway through.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from ivy.call import Call, ResultCallback, result_callback_adapter
from ivy.errors import ConfigurationError
from ivy.message import NONCE, encode_call, new_id, new_nonce, now_ms
from ivy.workflows.canvas import Canvas, Signature
from ivy.workflows.nodes import FINAL, start

if TYPE_CHECKING:
    from ivy.app import Ivy


def send_workflow(
    app: Ivy, flow: Canvas, args: Iterable[Any], kwargs: Mapping[str, Any] | None, *,
    queue: str | None, priority: int | None, delay: float | None, max_retries: int | None,
    callback: ResultCallback | None, confirm: bool,
) -> Call[Any]:
    """Send ``flow`` through ``app``; return the Call of its final result."""
    if isinstance(flow, Signature):
        return app.send_task(
            flow.name, [*args, *flow.args], {**flow.kwargs, **(kwargs or {})},
            queue=queue or flow.queue or _registered_queue(app, flow.name),
            priority=priority if priority is not None else flow.priority, delay=delay,
            max_retries=max_retries if max_retries is not None else flow.max_retries,
            callback=callback, confirm=confirm)
    if kwargs or queue is not None or priority is not None or max_retries is not None:
        raise TypeError(f"sending a workflow ({flow.describe()}) takes positional arguments "
                        "for its first step and delay=, callback=, confirm=; set keyword "
                        "arguments and options on its signatures (task.s(..., k=v).set("
                        "queue=...))")
    if delay is not None and (not isinstance(delay, (int, float)) or delay < 0):
        raise ValueError(f"delay {delay!r} must be a number of seconds >= 0")
    app._check_open()
    _require_store(app)
    call_id = new_id()
    counter = itertools.count()
    prefix = list(args)
    root = flow.node(lambda: f"{call_id}.{next(counter)}", _defaults(app), _checker(app),
                     given=len(prefix))
    eta = now_ms() + int(delay * 1000) if delay else None
    nonce = new_nonce()  # every step carries it to the final notification (PROTOCOL.md)
    messages = start(root, prefix, FINAL,
                     {"id": call_id, "reply_to": app.channel, NONCE: nonce}, eta=eta)
    from ivy.producing import Outgoing as _Outgoing

    first_queue = messages[0].queue or "ivy"
    call: Call[Any] = Call(call_id, flow.describe(), first_queue)
    call.nonce = nonce
    call._canceller = app._canceller
    outs: list[_Outgoing] = []
    for message in messages:
        if app.middleware:
            app.middleware.before_publish(message)
        body = encode_call(message, app.serializer, max_depth=app.max_depth,
                           max_bytes=app.max_message_bytes)
        outs.append(_Outgoing(call, message, message.queue or "ivy", app.seal(body),
                              message.priority, delay or 0.0, None))
    if callback is not None:
        if not callable(callback):
            raise TypeError(f"callback {callback!r} is not callable: pass a function "
                            "callback(err, result)")
        call.add_done_callback(result_callback_adapter(callback))
    app._current_results().add(call)
    batches: dict[tuple[str, int], list[_Outgoing]] = {}
    for out in outs:
        batches.setdefault((out.queue, out.priority), []).append(out)
    for n, ((target, prio), batch) in enumerate(batches.items()):
        try:
            app._send(batch, target, prio, delay or 0.0, None)
        except Exception as exc:
            if n == 0:
                raise  # nothing was sent: the call is forgotten, the error is the caller's
            # earlier members are out: the call fails as if the broker had refused this one
            # (``sent()`` and ``result()`` raise PublishError), and is never silently lost
            refused: Future[None] = Future()
            refused.set_exception(exc)
            call._sending(refused)
            app._send_failed(call, exc)
            break
    if confirm:
        call.sent()
    return call


def _require_store(app: Ivy) -> None:
    """Refuse a workflow at once when the notifier keeps no workflow state (the AMQP
    notifier): its steps could not be joined, and its call would wait until its timeout."""
    notifier = app._current_results().notifier
    if notifier is not None and not notifier.keeps_workflows:
        raise ConfigurationError(notifier._unsupported_workflows())


def _registered_queue(app: Ivy, name: str) -> str | None:
    task = app.registry.get(name)
    return task.queue if task is not None else None


def _defaults(app: Ivy) -> Callable[[str], Mapping[str, Any] | None]:
    def defaults(name: str) -> Mapping[str, Any] | None:
        task = app.registry.get(name)
        if task is None:
            return None
        return {"queue": task.queue, "priority": task.priority,
                "max_retries": task.max_retries}
    return defaults


def _checker(app: Ivy) -> Callable[[str, list[Any], dict[str, Any]], None]:
    def check(name: str, args: list[Any], kwargs: dict[str, Any]) -> None:
        task = app.registry.get(name)
        if task is not None:
            task.check_arguments(args, kwargs)
    return check
