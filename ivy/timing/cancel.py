"""Cancelling calls: ``call.cancel()`` and ``ivy.cancel(call_id)``.

A cancel is a key ``ivy:cancel:<call id>`` in the notifier's store, kept for ``ttl`` seconds
(the app's ``pending_ttl``, a day by default), so it survives worker restarts and reaches every
worker sharing the notifier:

* a worker that receives a cancelled call acknowledges it without running it and notifies the
  final status ``cancelled``. Workers read the flag ``ivy:cancels`` (set with every cancel)
  every :data:`POLL_RUNNING` seconds and look up each message's cancel only while it is set, so
  a call fetched within that quarter second after its cancel may start, and is then stopped as
  below;
* a worker running a call looks for cancels of its running calls every
  :data:`POLL_RUNNING` seconds and stops them: a coroutine is cancelled, a plain function gets
  :class:`ivy.TaskCancelled` raised in its thread (as timeouts do), a callback-style task stops
  being waited for. The call is acknowledged (not retried) and notified ``cancelled``;
* the producer that sent the call also publishes the final ``cancelled`` notification itself,
  so the call settles at once even while no worker runs. The notifier keeps the first final
  notification of a call: if the task's outcome was recorded first, the cancel changes nothing
  and the call keeps its result.

The producer's side, ``Ivy.cancel``, is :func:`ivy.producing.cancel_call`.

``result()`` of a cancelled call raises :class:`ivy.CallCancelled`. A plain function that
catches ``TaskCancelled`` and returns anyway has its result recorded unless the producer's
``cancelled`` came first.
"""

from __future__ import annotations

from ivy.message import Message, Notification, wire_error
from ivy.notifiers.base import Notifier

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


def store_cancel(notifier: Notifier, call_id: str, ttl: float) -> None:
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
