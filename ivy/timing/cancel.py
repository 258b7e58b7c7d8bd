"""Cancelling calls: ``call.cancel()`` and ``ivy.cancel(call_id)``, a key in the notifier's store
that every worker sharing it honours (docs/internals/timing.md)."""

from __future__ import annotations

from ivy.message import Message, Notification, wire_error
from ivy.stores import KeyStore

CANCEL_PREFIX = "ivy:cancel:"
#: Present while any cancel may be live: workers look up each message's cancel only then, so
#: an app that never cancels pays no store read per message (it cost ~15-30% of the trivial
#: task rate on RabbitMQ + Redis).
CANCELS_FLAG = "ivy:cancels"
#: The flag outlives each cancel by at least this long; a later cancel with a shorter ttl never
#: cuts it back (it is only ever extended).
FLAG_MIN_TTL = 7 * 86400.0
#: Seconds between a worker's looks at the flag and at the cancels of the calls it runs.
POLL_RUNNING = 0.25


def cancel_key(call_id: str) -> str:
    return CANCEL_PREFIX + call_id


def store_cancel(notifier: KeyStore, call_id: str, ttl: float) -> None:
    """Write the cancel of ``call_id`` and (re)set the flag that workers look at."""
    notifier.claim_key(cancel_key(call_id), "1", ttl)
    flag_ttl = max(ttl, FLAG_MIN_TTL)
    if notifier.claim_key(CANCELS_FLAG, "1", flag_ttl) is not None:
        notifier.extend_key(CANCELS_FLAG, "1", flag_ttl)  # held: keep it as long as needed


def cancel_ids(message: Message) -> list[str]:
    """The call ids whose cancel stops ``message``: its own, and for a workflow step the
    workflow's (cancelling a chain, group or chord stops its steps)."""
    flow = message.extra.get("workflow") if message.extra else None
    if isinstance(flow, dict) and isinstance(flow.get("id"), str):
        return [message.id, flow["id"]]
    return [message.id]


def check_call_id(call_id: object) -> str:
    if not isinstance(call_id, str) or not call_id or len(call_id) > 200:
        raise ValueError(f"call id {call_id!r} is not one: pass a Call or its .id (a string "
                         "of 1-200 characters)")
    return call_id


def cancelled_notification(call_id: str, name: str | None, *, attempt: int = 0,
                           worker: str | None = None, running: bool | None = None
                           ) -> Notification:
    """The final ``cancelled`` notification of a call (``running``: whether a worker stopped
    it, or never ran it; None: the producer's own, before any worker saw the cancel)."""
    when = {True: " while it ran", False: " before it ran", None: ""}[running]
    return Notification(call_id, "cancelled", name, attempt=attempt, worker=worker,
                        error=wire_error("CallCancelled",
                                         f"call {call_id} of task {name!r} was cancelled{when}"))
