"""Publisher confirms over one :class:`Link`, shared by the AMQP queue backend and notifier: a
future per publish, completed by the broker's confirm; sent again after a lost connection, a
return (unroutable) or a nack the role retries (docs/internals/amqp.md)."""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import pika
from pika.channel import Channel
from pika.spec import Basic, BasicProperties

from ivy._amqp.link import Link, pop_confirmed
from ivy._flags import Sent, complete
from ivy.errors import PublishError

log = logging.getLogger("ivy.amqp")

#: seconds before refused (nacked) or returned publishes are sent again
RESEND_AFTER = 0.25
#: returned bodies remembered at most until their confirms come (one channel)
MAX_RETURNS = 10_000
_seq = itertools.count()


@dataclass(eq=False)
class Publish:
    """One publish and its confirm: to ``exchange`` with ``routing_key``, until ``deadline``
    (``time.monotonic()``); ``mandatory``: one that no queue takes comes back (and is sent
    again after declaring afresh) instead of being confirmed and dropped."""

    exchange: str
    routing_key: str
    body: bytes
    properties: BasicProperties
    deadline: float
    mandatory: bool = True
    future: Future[None] = field(default_factory=Sent)
    seq: int = field(default_factory=lambda: next(_seq))
    #: True once it reached a channel (published, or waiting for a declaration there)
    handed: bool = False
    #: its caller gave up: it is not sent again
    cancelled: bool = False
    #: how many times the broker refused it
    nacks: int = 0
    #: why the broker last returned it as unroutable ("" = never)
    returned: str = ""


P = TypeVar("P", bound=Publish)


class Confirms(Generic[P]):
    """Confirmed publishes of one role over one :class:`Link`, opened on first use.

    A role (the queue backend's publisher, the notifier's) says what a publish needs declared
    first (:meth:`_declare`), which nacks it sends again (:meth:`_retries`) and how a failure
    reads (:meth:`_nacked_error`, :meth:`_unroutable_error`); the rest is here: the tags and
    their confirms, returns, sending again after a lost connection (at least once), and
    completing each publish's future once, through :meth:`_finish`.

    Parameters:
        nodes: The broker's nodes (pika parameters), tried in turn.
        url: The broker's URL without credentials, for errors.
        label: The link's name in logs (``publish``, ``notify``).
    """

    def __init__(self, nodes: pika.URLParameters | Sequence[pika.URLParameters], url: str,
                 label: str) -> None:
        self.nodes = nodes
        self.url = url
        self.label = label
        self._lock = threading.Lock()
        self._link: Link | None = None
        self._tag = 0
        self._by_tag: dict[int, P] = {}
        #: sent and not settled yet, oldest first
        self._unconfirmed: dict[int, P] = {}
        #: refused or returned publishes to send again, and the timer that will
        self._again: list[P] = []
        self._resender: threading.Timer | None = None
        #: bodies the broker returned as unroutable on this channel, and why: each return
        #: comes before the confirm of its publish, which looks it up (I/O thread only)
        self._returns: dict[bytes, str] = {}
        #: the last connection error of the link ``close`` dropped
        self._closed_error = ""

    # -- what a role says ---------------------------------------------------------------------

    def _declare(self, channel: Channel, p: P, now: Callable[[], None]) -> None:
        """Run ``now`` (which publishes ``p``) once what ``p`` needs exists on ``channel``."""
        now()

    def _refusal(self, p: P) -> BaseException | None:
        """An error that fails ``p`` when it reaches a channel, instead of publishing it."""
        return None

    def _holds(self, channel: Channel, p: P) -> bool:
        """Whether ``p`` must wait for the next channel instead of going out on ``channel``
        (under the lock; the role keeps it and hands it on later)."""
        return False

    def _retries(self, p: P) -> bool:
        """Whether a nacked ``p`` is sent again (before its deadline)."""
        return not p.cancelled and time.monotonic() < p.deadline

    def _nacked_error(self, p: P) -> PublishError:
        return PublishError(f"the broker {self.url} refused (nack) a publish to "
                            f"{p.routing_key or p.exchange!r}")

    def _unroutable_error(self, p: P) -> PublishError:
        return PublishError(f"the broker {self.url} returned a publish to {p.routing_key!r} "
                            f"as unroutable ({p.returned}) until its deadline, even after "
                            "declaring again: is something deleting it?")

    def _ready(self, channel: Channel) -> None:
        """A new channel is open (the role forgets what it declared)."""

    def _lost(self, reason: BaseException | None) -> None:
        """The channel was lost for ``reason`` (before what was handed is sent again)."""

    def _after_confirm(self, nacked: list[P], returned: list[P]) -> None:
        """A confirm settled what it could: ``nacked`` and ``returned`` go out again soon."""

    # -- the engine ---------------------------------------------------------------------------

    @property
    def last_error(self) -> str:
        link = self._link
        return (link.last_error if link is not None else self._closed_error) or "none"

    def link(self) -> Link:
        link = self._link  # made once (until close): no lock once it exists
        if link is not None:
            return link
        with self._lock:
            if self._link is None:
                self._link = Link(self.nodes, self.label, on_channel=self._channel_ready,
                                  on_confirm=self._confirmed, on_lost=self._channel_lost)
                self._link.start()
            return self._link

    def submit(self, batch: list[P]) -> None:
        """Hand ``batch`` to the connection; each future completes on its confirm."""
        link = self.link()
        with self._lock:
            for p in batch:
                self._unconfirmed[p.seq] = p
        link.call_each([self._sender(p) for p in batch])

    def cancel(self, p: P) -> None:
        """Give up on ``p`` (its caller stopped waiting): it is not sent again."""
        p.cancelled = True
        with self._lock:
            self._unconfirmed.pop(p.seq, None)

    def _finish(self, p: P, error: BaseException | None) -> None:
        """Settle ``p``: its future completes (once), and it is confirmed no longer."""
        with self._lock:
            self._unconfirmed.pop(p.seq, None)
        complete(p.future, error)

    def _channel_ready(self, channel: Channel) -> None:
        self._tag = 0
        self._returns.clear()
        channel.add_on_return_callback(self._returned)
        self._ready(channel)

    def _channel_lost(self) -> None:
        """What reached the lost channel unconfirmed (including what waited there for a
        declaration) is sent again on the next connection: at least once. What was not handed
        to a channel yet is still queued on the link."""
        link = self._link
        if link is None:
            return
        reason = link.last_reason
        link.last_reason = None
        with self._lock:
            self._by_tag = {}
        self._lost(reason)
        with self._lock:
            resend = [p for p in self._unconfirmed.values()
                      if p.handed and not p.cancelled and not p.future.done()]
        for p in resend:
            p.handed = False
            link._ops.append(self._sender(p))

    def _sender(self, p: P) -> Callable[[Channel], None]:
        def send(channel: Channel) -> None:
            if p.cancelled or p.future.done():
                return
            refused = self._refusal(p)
            if refused is not None:
                self._finish(p, refused)
                return
            p.handed = True

            def now() -> None:
                if p.cancelled or p.future.done() or not channel.is_open:
                    return
                with self._lock:
                    if self._holds(channel, p):
                        p.handed = False
                        return
                    self._tag += 1
                    self._by_tag[self._tag] = p
                channel.basic_publish(p.exchange, p.routing_key, p.body, p.properties,
                                      mandatory=p.mandatory)

            self._declare(channel, p, now)

        return send

    def _returned(self, channel: Channel, method: Any, properties: BasicProperties,
                  body: bytes) -> None:
        """The broker returned a publish that no queue took (deleted after this channel
        declared it): its confirm, which comes next, sends it again after declaring afresh
        (until its deadline), instead of counting it as delivered."""
        if len(self._returns) < MAX_RETURNS:
            self._returns[body] = f"{method.reply_code} {method.reply_text}"

    def _confirmed(self, frame: Any) -> None:
        method = frame.method
        ok = isinstance(method, Basic.Ack)
        now = time.monotonic()
        with self._lock:
            settled = pop_confirmed(self._by_tag, method)
        nacked: list[P] = []
        returned: list[P] = []
        for p in settled:
            why = self._returns.pop(p.body, None) if self._returns else None
            if why is not None:
                p.returned = why
                if not p.cancelled and now < p.deadline:
                    p.handed = False
                    returned.append(p)
                else:
                    self._finish(p, self._unroutable_error(p))
            elif ok:
                self._finish(p, None)
            elif self._retries(p):
                p.nacks += 1
                p.handed = False  # on no channel now: a lost connection does not resend it
                nacked.append(p)
            else:
                self._finish(p, self._nacked_error(p))
        self._after_confirm(nacked, returned)
        if nacked or returned:
            self._send_again_soon([*nacked, *returned])

    def _send_again_soon(self, batch: list[P]) -> None:
        """Publish ``batch`` again in a moment (one timer for all that come meanwhile), on
        whatever connection is open then."""
        with self._lock:
            self._again.extend(batch)
            self._arm()

    def _arm(self) -> None:
        """Start the timer that sends publishes again (under the lock)."""
        if self._resender is None:
            self._resender = threading.Timer(RESEND_AFTER, self._resend)
            self._resender.daemon = True
            self._resender.start()

    def _resend(self) -> None:
        with self._lock:
            again, self._again, self._resender = self._again, [], None
            link = self._link
        self._before_resend()
        if link is not None:
            link.call_each([self._sender(p) for p in again])

    def _before_resend(self) -> None:
        """Runs on the resend timer, before the publishes go out again."""

    def close(self) -> None:
        with self._lock:
            link, self._link = self._link, None
        if link is not None:
            self._closed_error = link.last_error
            link.close()
