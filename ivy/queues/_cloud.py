"""Dead letters on cloud queues (SQS, IronMQ): listing, requeueing and purging, written once."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Collection, Iterator
from typing import Any

from ivy.queues.base import DeadLetter, QueueBackend, Rewrite

#: Seconds that requeue_dead and purge_dead keep the dead letters they took hidden.
DEAD_HOLD = 60

#: One message of a dead-letter queue, as the service's client returns it.
CloudMessage = dict[str, Any]


class CloudQueueBackend(QueueBackend):
    """A queue backend whose dead letters wait in a second queue of the same service, where a
    message can only be taken by hiding it for a while (received with a visibility timeout,
    or reserved), then deleted or let go.

    A subclass provides those steps (the abstract methods below); this class builds
    :meth:`dead_letters`, :meth:`requeue_dead` and :meth:`purge_dead` from them. Requeueing
    takes batches of dead letters (hidden for :data:`DEAD_HOLD` seconds), sends each chosen
    one to the queue as a fresh message, then deletes it from the dead-letter queue: at least
    once (a crash in between leaves it in both places); the others are let go at the end.
    Purging takes and deletes batches, so that it can count what it deleted.
    """

    @abstractmethod
    def _peek_dead(self, queue: str, limit: int) -> list[DeadLetter]:
        """Up to ``limit`` dead letters of ``queue``, oldest first, hiding none."""

    @abstractmethod
    def _take_dead(self, queue: str) -> list[CloudMessage]:
        """One batch of dead letters of ``queue``, hidden for :data:`DEAD_HOLD` seconds;
        empty when there are none (or no dead-letter queue)."""

    @abstractmethod
    def _dead_id(self, message: CloudMessage) -> str:
        """The id of a taken dead letter, as :class:`DeadLetter` gives it."""

    @abstractmethod
    def _dead_body(self, message: CloudMessage) -> bytes:
        """The original body of a taken dead letter."""

    @abstractmethod
    def _send_again(self, queue: str, body: bytes) -> None:
        """Send ``body`` to ``queue`` as a fresh message, now."""

    @abstractmethod
    def _delete_dead(self, queue: str, message: CloudMessage) -> None:
        """Delete one taken dead letter of ``queue``."""

    @abstractmethod
    def _delete_dead_batch(self, queue: str, batch: list[CloudMessage]) -> int:
        """Delete a batch of taken dead letters of ``queue``; return how many were deleted."""

    @abstractmethod
    def _let_go(self, queue: str, held: list[CloudMessage]) -> None:
        """Make taken dead letters of ``queue`` visible again, ignoring the service's refusals
        (the hold runs out anyway)."""

    def dead_letters(self, queue: str, limit: int = 100) -> list[DeadLetter]:
        return self.live_dead_letters(self._peek_dead(queue, limit))

    def _drain_dead(self, queue: str) -> Iterator[list[CloudMessage]]:
        """Batches of taken dead letters until a batch is empty, or holds only ones seen."""
        seen: set[str] = set()
        while True:
            fresh = [m for m in self._take_dead(queue) if self._dead_id(m) not in seen]
            if not fresh:
                return
            seen.update(self._dead_id(m) for m in fresh)
            yield fresh

    def requeue_dead(self, queue: str, ids: Collection[str] | None = None, *,
                     rewrite: Rewrite | None = None) -> int:
        """Send to ``queue``, then delete from the dead-letter queue: at least once."""
        wanted = None if ids is None else set(ids)
        held: list[CloudMessage] = []  # taken and not chosen: let go at the end
        moved = 0
        try:
            for batch in self._drain_dead(queue):
                for m in batch:
                    message_id = self._dead_id(m)
                    if wanted is not None and message_id not in wanted:
                        held.append(m)
                        continue
                    body = self._dead_body(m)
                    if rewrite is not None:
                        body = rewrite(body)[0]
                    self._send_again(queue, body)
                    self._delete_dead(queue, m)
                    moved += 1
                    if wanted is not None:
                        wanted.discard(message_id)
                if wanted is not None and not wanted:
                    break
        finally:
            if held:
                self._let_go(queue, held)
        return moved

    def purge_dead(self, queue: str) -> int:
        return sum(self._delete_dead_batch(queue, batch) for batch in self._drain_dead(queue))
