"""Unique keys in the notifier's store, as the worker sees them: their names and values, and
their release once a call's outcome is recorded (the producer's side is
:mod:`ivy.timing.unique`)."""

from __future__ import annotations

import logging

from ivy.message import Message, now_ms
from ivy.stores import KeyStore

log = logging.getLogger("ivy.unique")

UNIQUE_PREFIX = "ivy:unique:"
#: The mark a key's value gets once the worker released it to expire at ``unique_until``.
RELEASED = "done"


def holder(value: str) -> str:
    """The call id in a unique key's value (``<id>``, or ``<id> done`` once released)."""
    return value.partition(" ")[0]


def release(notifier: KeyStore | None, message: Message, *, at_once: bool = False) -> None:
    """After a call's final outcome was recorded (the worker): let its unique key go at its
    ``unique_until``, or ``at_once`` (a cancelled call). A key kept on is marked ``<id>
    done``, so that its producer's keep (:mod:`ivy.timing.unique`, on the send's confirm,
    which may come later) finds nothing to keep. A failure is logged; the key's TTL ends it
    anyway."""
    key = message.extra.get("unique_key")
    if notifier is None or not isinstance(key, str):
        return
    until = message.extra.get("unique_until")
    remaining = (until - now_ms()) / 1000 if isinstance(until, int) and not at_once else 0.0
    try:
        notifier.release_key(UNIQUE_PREFIX + key, message.id, remaining,
                             new_value=f"{message.id} {RELEASED}")
    except Exception:
        log.warning("releasing unique key %r of call %s failed; it expires by itself", key,
                    message.id, exc_info=True)
