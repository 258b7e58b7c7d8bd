"""The producer's side of workflows: a chain, group or chord sent as one call, its first
messages handed over (the design: docs/internals/producer.md)."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future
from typing import Any

from ivy.call import Call, ResultCallback, result_callback_adapter
from ivy.errors import ConfigurationError
from ivy.message import NONCE, Message, encode_call, new_id, new_nonce, now_ms
from ivy.producer.roles import Outgoing, Sender
from ivy.task import Registry
from ivy.workflows.canvas import ArgumentCheck, Canvas, Chain, Group, Signature
from ivy.workflows.nodes import FINAL, start


def signature_call(registry: Registry, flow: Signature[Any], args: Iterable[Any],
                   kwargs: Mapping[str, Any] | None, *, queue: str | None,
                   priority: int | None, max_retries: int | None) -> dict[str, Any]:
    """The ``send_task`` arguments of a lone signature: the plain call it describes, the
    arguments given at send before its own."""
    registered = registry.get(flow.name)
    return {
        "task": flow.name, "args": [*args, *flow.args],
        "kwargs": {**flow.kwargs, **(kwargs or {})},
        "queue": queue or flow.queue or (registered.queue if registered is not None else None),
        "priority": priority if priority is not None else flow.priority,
        "max_retries": max_retries if max_retries is not None else flow.max_retries,
    }


def send_workflow(
    sender: Sender, flow: Canvas, args: Iterable[Any], kwargs: Mapping[str, Any] | None, *,
    queue: str | None, priority: int | None, delay: float | None, max_retries: int | None,
    callback: ResultCallback | None, confirm: bool,
) -> Call[Any]:
    """Send ``flow`` (a chain, group or chord: a lone signature is a plain call, see
    :func:`signature_call`); return the Call of its final result.

    Raises:
        TypeError: Keyword arguments or per-call options given for a whole workflow; a
            callback that is not callable.
        ValueError: A negative ``delay``.
        ConfigurationError: The notifier keeps no workflow state (the AMQP notifier).
    """
    if kwargs or queue is not None or priority is not None or max_retries is not None:
        raise TypeError(f"sending a workflow ({flow.describe()}) takes positional arguments "
                        "for its first step and delay=, callback=, confirm=; set keyword "
                        "arguments and options on its signatures (task.s(..., k=v).set("
                        "queue=...))")
    if delay is not None and (not isinstance(delay, (int, float)) or delay < 0):
        raise ValueError(f"delay {delay!r} must be a number of seconds >= 0")
    settings = sender.settings
    sender.sources.check_open()
    _require_store(sender)
    call_id = new_id()
    counter = itertools.count()
    prefix = list(args)
    root = flow.node(lambda: f"{call_id}.{next(counter)}", _defaults(settings.registry),
                     _checker(settings.registry), given=len(prefix))
    eta = now_ms() + int(delay * 1000) if delay else None
    nonce = new_nonce()  # every step carries it to the final notification (PROTOCOL.md)
    messages = start(root, prefix, FINAL,
                     {"id": call_id, "reply_to": settings.channel, NONCE: nonce}, eta=eta)
    for message in messages:
        _encode_prefix(settings.registry, message, len(prefix))
    first_queue = messages[0].queue or "ivy"
    call: Call[Any] = Call(call_id, flow.describe(), first_queue)
    call.nonce = nonce
    call._canceller = sender.canceller
    call._decode = final_decoder(flow, settings.registry)
    outs: list[Outgoing] = []
    for message in messages:
        if settings.middleware:
            settings.middleware.before_publish(message)
        body = encode_call(message, settings.serializer, max_depth=settings.max_depth,
                           max_bytes=settings.max_message_bytes)
        outs.append(Outgoing(call, message, message.queue or "ivy", settings.seal(body),
                             message.priority, delay or 0.0, None))
    if callback is not None:
        if not callable(callback):
            raise TypeError(f"callback {callback!r} is not callable: pass a function "
                            "callback(err, result)")
        call.add_done_callback(result_callback_adapter(callback))
    sender.results().add(call)
    batches: dict[tuple[str, int], list[Outgoing]] = {}
    for out in outs:
        batches.setdefault((out.queue, out.priority), []).append(out)
    for n, ((target, prio), batch) in enumerate(batches.items()):
        try:
            sender.hand_over(batch, target, prio, delay or 0.0, None)
        except Exception as exc:
            if n == 0:
                raise  # nothing was sent: the call is forgotten, the error is the caller's
            # earlier members are out: the call fails as if the broker had refused this one
            # (``sent()`` and ``result()`` raise PublishError), and is never silently lost
            refused: Future[None] = Future()
            refused.set_exception(exc)
            call._sending(refused)
            sender.send_failed(call, exc)
            break
    if confirm:
        call.sent()
    return call


def final_decoder(flow: Canvas, registry: Registry) -> Callable[[Any], Any] | None:
    """How the producer decodes a workflow's result by the annotations of the tasks that
    make it (as far as this process registers them): a chain's by its last step's, a
    group's list member by member; None when nothing converts."""
    if isinstance(flow, Chain):
        return final_decoder(flow.steps[-1], registry)
    if isinstance(flow, Signature):
        task = registry.get(flow.name)
        codec = None if task is None else task.codec
        return None if codec is None or codec.result is None else codec.decode_result
    if isinstance(flow, Group):
        decoders = [final_decoder(member, registry) for member in flow.members]
        if not any(decoders):
            return None

        def decode(values: Any) -> Any:
            if not isinstance(values, list) or len(values) != len(decoders):
                raise ValueError(f"a group of {len(decoders)} members gave {values!r}, not a "
                                 "list of their results")
            return [v if d is None else d(v) for d, v in zip(decoders, values, strict=True)]
        return decode
    return None


def _require_store(sender: Sender) -> None:
    """Refuse a workflow at once when the notifier keeps no workflow state (the AMQP
    notifier): its steps could not be joined, and its call would wait until its timeout."""
    notifier = sender.results().notifier
    if notifier is not None and not notifier.keeps_workflows:
        raise ConfigurationError(notifier._unsupported_workflows())


def _defaults(registry: Registry) -> Callable[[str], Mapping[str, Any] | None]:
    def defaults(name: str) -> Mapping[str, Any] | None:
        task = registry.get(name)
        if task is None:
            return None
        return {"queue": task.queue, "priority": task.priority,
                "max_retries": task.max_retries}
    return defaults


def _checker(registry: Registry) -> ArgumentCheck:
    """Each step's arguments checked against its task's signature and converted by its
    annotations, as far as this process registers the task (else sent as given)."""
    def check(name: str, args: list[Any], kwargs: dict[str, Any], given: int
              ) -> tuple[list[Any], dict[str, Any]]:
        task = registry.get(name)
        if task is None:
            return args, kwargs
        full = [None] * given + args  # the leading ones come from the step before
        task.check_arguments(full, kwargs)
        codec = task.codec
        if codec is None or not codec.converts_args:
            return args, kwargs
        encoded, kwargs = codec.encode_args(full, kwargs, first=given)
        return encoded[given:], kwargs
    return check


def _encode_prefix(registry: Registry, message: Message, given: int) -> None:
    """The arguments given at send go before a first step's own: convert them by that
    step's annotations (its own are converted already)."""
    task = registry.get(message.name)
    codec = None if task is None else task.codec
    if given and codec is not None and codec.converts_args:
        head, _ = codec.encode_args(message.args[:given], {})
        message.args[:given] = head
