"""What the helpers of :mod:`ivy.testing` share: putting a queue backend in an app's place
for a while, and reading a message body as a worker of that app would."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

from ivy.message import Message, decode_message
from ivy.queues.base import QueueBackend

if TYPE_CHECKING:
    from ivy.app import Ivy


@contextlib.contextmanager
def queue_backend_of(app: Ivy, backend: QueueBackend) -> Iterator[None]:
    """Make ``backend`` the queue backend ``app`` sends to, until the block ends; then put
    back the one it had (or none, made on the next send as before). Workers already started
    keep theirs."""
    with app.backends.queue_replaced(backend):
        yield


def decode(app: Ivy, body: bytes) -> Message:
    """``body`` decoded and checked as a worker of ``app`` decodes it (signature, size,
    depth, schema): a :class:`ivy.MessageError` if a worker would refuse it."""
    return decode_message(body, app.serializer, max_bytes=app.max_message_bytes,
                          max_depth=app.max_depth, signer=app.signer)
