"""The worker's side of workflows: what happens when a step's task has ended (result recorded, next
step sent or group joined, final result published), at least once made idempotent."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from ivy.errors import SerializationError
from ivy.message import NONCE, Message, Notification, encode_call, nonce_of, wire_error
from ivy.middleware import Pipeline
from ivy.notifiers.base import Notifier
from ivy.queues.base import QueueBackend
from ivy.serialization import Serializer, Signer, seal
from ivy.worker.outcomes import Recorder
from ivy.workflows.nodes import Cont, describe, start

log = logging.getLogger("ivy.workflows")

#: Seconds the store keeps a group's member results: a week, longer than any group should
#: take (a producer stops waiting after its ``pending_ttl``, a day by default).
WORKFLOW_TTL = 7 * 86400.0
#: Seconds the store keeps a step's result: a day, as Redis keeps a call's final result; it
#: only has to outlive the redeliveries and duplicates of the step and of the next one.
STEP_TTL = 86400.0
#: Store key prefixes: a step's result (member 0) and a group's member results.
STEP_KEY = "step:"
GROUP_KEY = "group:"


def workflow_of(message: Message) -> dict[str, Any] | None:
    """The ``workflow`` field of a message, or None for a plain call."""
    flow = message.extra.get("workflow") if message.extra else None
    return flow if isinstance(flow, dict) else None


class WorkflowRecorder(Recorder):
    """A :class:`ivy.worker.outcomes.Recorder` that continues workflows: plain calls are recorded as
    before; the outcome of a workflow step goes on to the next step
    (docs/internals/workflows.md)."""

    def __init__(self, notifier: Notifier | None, worker: str, *, backend: QueueBackend,
                 middleware: Pipeline, serializer: Serializer, signer: Signer | None,
                 max_message_bytes: int, max_depth: int) -> None:
        super().__init__(notifier, worker, serializer=serializer, signer=signer,
                         max_message_bytes=max_message_bytes, max_depth=max_depth)
        self.backend = backend
        self.middleware = middleware

    def _store(self) -> Notifier:
        if self.notifier is None:
            raise RuntimeError("no notifier: workflows keep their state in the notifier; call "
                               "start_notification_producer() before listen()")
        return self.notifier

    def replay(self, message: Message) -> tuple[bool, Any] | None:
        """``(True, result)`` when this workflow step ran to its end before (its result is
        stored: the message came again after a crash), so its task is not run again; None
        otherwise (also for plain calls)."""
        if workflow_of(message) is None:
            return None
        stored = self._store().workflow_members(STEP_KEY + message.id)
        if 0 not in stored:
            return None
        log.info("workflow step %s [%s] ran before; continuing with its stored result",
                 message.name, message.id)
        return True, self._loads(stored[0])

    def record(self, message: Message, note: Notification,
               then: Callable[[], None] | None = None) -> None:
        """Record a plain call as :class:`ivy.worker.outcomes.Recorder` does; continue a workflow
        step (docs/internals/workflows.md). ``then`` (the ack, or the dead letter) follows
        once what the step leads to is kept: the next steps sent, the group member recorded,
        or the workflow's final notification stored."""
        flow = workflow_of(message)
        if flow is None:
            super().record(message, note, then)
            return
        if note.status == "successful":
            self._step_succeeded(message, flow, note.result, then)
        elif note.status == "cancelled":  # ivy.timing: the workflow (or this step) cancelled
            self._final(message, flow, Notification(
                str(flow["id"]), "cancelled", message.name, error=note.error,
                attempt=message.attempt, worker=self.worker), then)
        else:
            self._fail(message, flow, note.error or wire_error("Error"), then)

    def rejected(self, reason: str, fields: dict[str, Any], message: Message | None = None,
                 then: Callable[[], None] | None = None) -> None:
        flow = fields.get("workflow")
        if not isinstance(flow, dict):
            super().rejected(reason, fields, message, then)
            return
        step = Message(id=str(fields.get("id")), name=str(fields.get("name")), args=[])
        try:
            self._fail(step, flow, wire_error("MessageRejected", reason), then)
            return
        except Exception:
            log.exception("worker: failing workflow %s after a rejected step failed",
                          flow.get("id"))
        if then is not None:
            then()

    # -- continuing ---------------------------------------------------------------------------

    def _dumps(self, value: Any) -> bytes:
        """A stored result: the value in a one-item list (the serializers take containers)."""
        return self.serializer.dumps([value])

    def _loads(self, stored: bytes) -> Any:
        return self.serializer.loads(stored)[0]

    def _step_succeeded(self, message: Message, flow: dict[str, Any], value: Any,
                        then: Callable[[], None] | None) -> None:
        store = self._store()
        try:
            encoded = self._dumps(value)
        except SerializationError as exc:
            self._fail(message, flow, wire_error(
                "SerializationError", f"the result cannot be passed on: {exc}"), then)
            return
        inserted, _ = store.workflow_record(STEP_KEY + message.id, 0, encoded, STEP_TTL)
        if not inserted:  # a copy of this step finished first: its result goes on
            value = self._loads(store.workflow_members(STEP_KEY + message.id)[0])
        cont: Cont = {"next": flow.get("next") or [], "join": flow.get("join")}
        while True:
            if cont["next"]:
                rest = {"next": cont["next"][1:], "join": cont["join"]}
                self._send(message, flow, start(cont["next"][0], [value], rest, flow), then)
                return
            join = cont["join"]
            if join is None:
                self._final(message, flow, Notification(
                    flow["id"], "successful", message.name, result=value,
                    attempt=message.attempt, worker=self.worker), then)
                return
            key = GROUP_KEY + str(join["group"])
            _, count = store.workflow_record(key, int(join["index"]),
                                             self._dumps(value), WORKFLOW_TTL)
            size = int(join["size"])
            if count < size:
                if then is not None:  # the member is recorded
                    then()
                return
            # complete: this worker goes on (a re-run of any member may go on again: the
            # next messages keep their ids, and the final result is stored first wins)
            members = store.workflow_members(key)
            value = [self._loads(members[i]) for i in range(size)]
            cont = {"next": join.get("next") or [], "join": join.get("join")}
            log.debug("workflow %s: group %s complete (%d members); next: %s", flow["id"],
                      join["group"], size, describe(cont))

    def _send(self, message: Message, flow: dict[str, Any], messages: list[Message],
              then: Callable[[], None] | None) -> None:
        """Publish the next messages (grouped by queue and priority), then ``then`` (the
        current one's ack); a next message that breaks the limits fails the workflow."""
        batches: dict[tuple[str, int], list[bytes]] = {}
        middleware = self.middleware
        for step in messages:
            step.headers = dict(message.headers)
            if middleware:
                middleware.before_publish(step)
            try:
                body = encode_call(step, self.serializer, max_depth=self.max_depth,
                                   max_bytes=self.max_message_bytes)
            except SerializationError as exc:
                self._fail(message, flow, wire_error(
                    type(exc).__name__, f"the next step {step.name!r} cannot be sent: {exc}"),
                    then)
                return
            batches.setdefault((step.queue or "ivy", step.priority), []).append(
                self.body_from(body))
        for (queue, priority), bodies in batches.items():
            self.backend.publish_many(queue, bodies, priority=priority)
        if middleware:
            for step in messages:
                middleware.after_publish(step)
        if then is not None:
            then()

    def body_from(self, encoded: bytes) -> bytes:
        return seal(self.signer, encoded)

    def _final(self, message: Message, flow: dict[str, Any], note: Notification,
               then: Callable[[], None] | None) -> None:
        reply_to = flow.get("reply_to")
        if not isinstance(reply_to, str) or not reply_to:
            if then is not None:  # sent without a reply channel: nobody waits for the result
                then()
            return
        nonce = nonce_of(flow)
        whole = Message(id=str(flow["id"]), name=message.name, args=[], reply_to=reply_to,
                        attempt=message.attempt, extra={} if nonce is None else {NONCE: nonce})
        super().record(whole, note, then)

    def _fail(self, message: Message, flow: dict[str, Any], error: dict[str, str],
              then: Callable[[], None] | None) -> None:
        """The workflow's call fails with ``error``, named after the failing task."""
        error = dict(error)
        error["message"] = f"in task {message.name!r}: {error.get('message', '')}"
        log.info("workflow %s failed at step %s [%s]: %s: %s", flow.get("id"), message.name,
                 message.id, error.get("type"), error["message"])
        self._final(message, flow, Notification(
            str(flow["id"]), "errored", message.name, error=error, attempt=message.attempt,
            worker=self.worker), then)
