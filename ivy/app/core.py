"""Ivy: the settings, the registry of tasks and the composition of one app: its backends, its
producer (:mod:`ivy.producer`) and the workers it starts."""

from __future__ import annotations

import logging
import random
from collections.abc import Iterable
from typing import TYPE_CHECKING

from ivy.app.backends import Backends
from ivy.app.operating import Operating
from ivy.app.registering import Registering
from ivy.app.sending import Sending
from ivy.app.workers import Workers
from ivy.config import Spec
from ivy.errors import ConfigurationError
from ivy.message import (
    DEFAULT_MAX_DEPTH,
    DEFAULT_MAX_MESSAGE_BYTES,
    Notification,
    decode_notification,
    new_id,
    peek_id,
)
from ivy.middleware import Middleware, Pipeline
from ivy.notifiers.base import Notifier
from ivy.producer import Producer
from ivy.queues.base import QueueBackend
from ivy.results import DEFAULT_PENDING_TTL, Results
from ivy.serialization import Serializer, Signer, get_serializer, seal, signer_from
from ivy.task import Registry
from ivy.timing.schedule import Schedules

if TYPE_CHECKING:
    pass

log = logging.getLogger("ivy")

CHANNEL_PREFIX = "ivy:notify:"
#: The retry backoff doubles this many times at most (``Ivy.backoff``): 2**32 times the base
#: delay is past any ``retry_max_delay``, and 2.0 ** 1100 would raise OverflowError.
MAX_BACKOFF_EXPONENT = 32


class Ivy(Sending, Operating, Registering):
    """The ivy API as an object. The module-level functions use one default instance.

    ``queue`` and ``notifier`` are URLs, dicts or backend objects; left out, they come from
    ``IVY_QUEUE_URL`` / ``IVY_NOTIFIER_URL`` or default to the SQLite file ``ivy.db``.
    """

    def __init__(
        self,
        queue: Spec = None,
        notifier: Spec = None,
        *,
        serializer: str | Serializer = "json",
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        retry_base_delay: float = 1.0,
        retry_max_delay: float = 300.0,
        reserve_time: float = 30.0,
        max_depth: int = DEFAULT_MAX_DEPTH,
        signing_key: str | bytes | list[str | bytes] | None = None,
        pending_ttl: float = DEFAULT_PENDING_TTL,
        exit_timeout: float = 30.0,
        middleware: Iterable[Middleware] = (),
        max_message_age: float | None = None,
        dead_letter_failures: bool = True,
    ) -> None:
        """Make an app: its settings now, its backends on first use.

        Args:
            queue: the queue backend producers send to and workers consume (a URL, a dict or
                a backend object); None: ``IVY_QUEUE_URL``, else the SQLite file ``ivy.db``.
            notifier: the notifier that carries statuses and results back (a URL, a dict or a
                backend object); None: ``IVY_NOTIFIER_URL``, else the SQLite file ``ivy.db``.
            serializer: the message format: ``"json"`` (the default, the wire protocol's) or
                a :class:`ivy.serialization.Serializer`.
            max_message_bytes: the largest encoded message or notification sent or accepted.
            retry_base_delay: seconds before the first retry; the delay doubles on each one
                (with jitter: 50-100% of it).
            retry_max_delay: the longest delay between retries, in seconds.
            reserve_time: seconds a worker's message stays reserved (extended while its task
                runs) when neither the task nor ``listen`` sets one.
            max_depth: how deeply arguments and results may nest.
            signing_key: the HMAC key that signs messages (several: the first signs, all
                verify); None: ``IVY_SIGNING_KEY``, read on first use, else unsigned.
            pending_ttl: seconds a call waits for its result before it is settled with
                ``ResultExpired``; also how long a cancel is kept by default.
            exit_timeout: seconds the interpreter's exit waits for the default instance's
                unconfirmed messages and for pending calls that have callbacks.
            middleware: middleware to call, in order (see :meth:`add_middleware`).
            max_message_age: seconds a message may be old (from its send, or its eta) when a
                worker of this app takes it; older ones are dead-lettered. None: no limit.
            dead_letter_failures: whether a worker dead-letters a task that failed after its
                retries (False: its error is stored and the message acknowledged).

        Raises:
            ivy.ConfigurationError: a ``pending_ttl`` or ``max_message_age`` that is not a
                number of seconds > 0, an unknown ``serializer``, or a malformed
                ``signing_key``.
        """
        self.registry = Registry()
        #: periodic tasks (ivy.timing.schedule): what a Scheduler of this app sends
        self.schedules = Schedules()
        #: the middleware, in order (see :mod:`ivy.middleware`)
        self.middleware = Pipeline(middleware)
        self.max_depth = max_depth
        # An explicit key is checked now; IVY_SIGNING_KEY on first use, so that `import ivy`
        # (which builds the default instance) never fails on a bad environment.
        self._signer: Signer | None = signer_from(signing_key) if signing_key is not None else None
        self._signer_known = signing_key is not None
        if not isinstance(pending_ttl, (int, float)) or pending_ttl <= 0:
            raise ConfigurationError(f"pending_ttl {pending_ttl!r} must be a number of seconds "
                                     "> 0 (how long a call may wait for its result)")
        #: seconds a call waits for its result before it is settled with ResultExpired
        self.pending_ttl = float(pending_ttl)
        #: seconds the interpreter's exit waits for pending calls that have callbacks
        self.exit_timeout = exit_timeout
        if max_message_age is not None and (
                isinstance(max_message_age, bool) or not isinstance(max_message_age, (int, float))
                or not max_message_age > 0):
            raise ConfigurationError(
                f"max_message_age {max_message_age!r} must be a number of seconds > 0, or None "
                "(no limit): how old a message may be when a worker takes it")
        #: seconds a message may be old (from its send, or its eta) when a worker of this app
        #: takes it; older ones are dead-lettered (a replay's window). None: no limit
        self.max_message_age = None if max_message_age is None else float(max_message_age)
        #: whether a worker of this app dead-letters a task that failed after its retries
        #: (False: its error is stored and the message acknowledged, as for a task without
        #: retries; the dead letters then hold only messages that could not run)
        self.dead_letter_failures = bool(dead_letter_failures)
        self.serializer = get_serializer(serializer)
        self.max_message_bytes = max_message_bytes
        self.retry_base_delay = retry_base_delay
        self.retry_max_delay = retry_max_delay
        self.reserve_time = reserve_time
        self.producer_id = new_id()
        self.channel = CHANNEL_PREFIX + self.producer_id
        results = Results(
            self.channel, decode=self._decode_notification,
            peek_id=lambda body: peek_id(body, self.serializer, self.max_message_bytes),
            pending_ttl=self.pending_ttl,
            on_retired=lambda notifier: self.backends.notifier_retired(notifier))
        #: the queue backend, the notifiers of both roles and the result consumers
        self.backends = Backends(queue, notifier, name=f"<Ivy {self.producer_id}>",
                                 results=results, uses_priority=self.queue_uses_priority,
                                 routes=self.queue_routes)
        #: sends this app's calls and follows their confirms and results
        self.producer = Producer(self, self.backends)
        self._workers = Workers()

    def add_middleware(self, middleware: Middleware) -> None:
        """Add ``middleware`` after those already there.

        Producers and running workers of this app call it from then on (a worker started with
        ``events=True`` keeps the list it started with).

        Args:
            middleware: a :class:`ivy.Middleware`.
        """
        self.middleware.add(middleware)

    def __repr__(self) -> str:
        return f"<Ivy {self.producer_id}{' closed' if self.closed else ''}>"

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self.backends.closed

    @property
    def signer(self) -> Signer | None:
        """HMAC signer from ``signing_key`` or IVY_SIGNING_KEY; None: messages are not signed.
        A malformed IVY_SIGNING_KEY raises :class:`ivy.ConfigurationError` here, on first use."""
        if not self._signer_known:
            try:
                self._signer = signer_from(None)
            except ConfigurationError as exc:
                raise ConfigurationError(
                    f"IVY_SIGNING_KEY is malformed: {exc}. Set it to one key, or several "
                    "separated by commas (the first signs), or unset it") from None
            self._signer_known = True
        return self._signer

    def __enter__(self) -> Ivy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- configuration -----------------------------------------------------------------------

    def setup_queue(self, spec: Spec = None) -> QueueBackend:
        """Choose the queue backend producers send to.

        Args:
            spec: a URL, a dict or a backend object; None: the app's default
                (``IVY_QUEUE_URL``, else the SQLite file ``ivy.db``).

        Returns:
            The queue backend, which this app now owns unless it was handed in.

        Raises:
            ivy.ConfigurationError: a malformed URL, an unknown scheme, or a backend whose
                package is missing.
            ivy.IvyError: the app was closed.
        """
        return self.backends.setup_queue(spec)

    @property
    def queue_backend(self) -> QueueBackend:
        """The queue backend producers send to, built on first use."""
        return self.backends.queue

    def start_notification_consumer(self, spec: Spec = None) -> None:
        """Producer side: receive statuses and results of this process's calls.

        Called on the first delayed call with the default notifier if not called before.

        Called again with another notifier, it switches: new calls wait on the new one, and
        calls already sent are still delivered through the old one, which closes once they are
        all settled (README, "Semantics").

        Args:
            spec: the notifier: a URL, a dict or a notifier object; None: the app's default
                (``IVY_NOTIFIER_URL``, else the SQLite file ``ivy.db``).

        Raises:
            ivy.ConfigurationError: a malformed URL, an unknown scheme, or a notifier whose
                package is missing.
            ivy.IvyError: the app was closed.
        """
        self.backends.start_consumer(spec)

    def _decode_notification(self, body: bytes) -> Notification:
        return decode_notification(body, self.serializer, max_bytes=self.max_message_bytes,
                                   max_depth=self.max_depth, signer=self.signer)

    def start_notification_producer(self, spec: Spec = None) -> Notifier:
        """Worker side: choose the notifier that carries statuses and results back to producers.

        Args:
            spec: the notifier: a URL, a dict or a notifier object; None: the app's default
                (``IVY_NOTIFIER_URL``, else the SQLite file ``ivy.db``).

        Returns:
            The notifier the workers of this app report through.

        Raises:
            ivy.ConfigurationError: a malformed URL, an unknown scheme, or a notifier whose
                package is missing.
            ivy.IvyError: the app was closed.
        """
        return self.backends.start_producer(spec)

    def queue_routes(self, queue: str) -> list[str]:
        """The routes of the tasks registered here for ``queue`` (AMQP binds them)."""
        return sorted({t.route for t in self.registry.tasks() if t.queue == queue and t.route})

    def queue_uses_priority(self, queue: str) -> bool:
        """Whether a task registered here for ``queue`` has a priority above 0."""
        return any(t.queue == queue and t.priority > 0 for t in self.registry.tasks())

    def backoff(self, attempt: int) -> float:
        """Seconds before retry ``attempt + 1``: exponential, capped, with jitter (50-100%).
        The exponent stops at ``MAX_BACKOFF_EXPONENT``: an attempt number from the wire
        (1100, say) never overflows the arithmetic."""
        exponent = min(max(attempt, 0), MAX_BACKOFF_EXPONENT)
        delay: float = min(self.retry_max_delay, self.retry_base_delay * 2.0 ** exponent)
        return delay * random.uniform(0.5, 1.0)

    def seal(self, body: bytes) -> bytes:
        """Sign an encoded message or notification when a signing key is configured."""
        return seal(self.signer, body)

    def close(self, timeout: float = 10.0) -> None:
        """Close the app: flush, stop its workers and close the backends it built.

        Waits up to ``timeout`` seconds for unconfirmed messages (logging what stays
        unconfirmed), stops workers and the notification consumers, and closes the backends
        this object built (not the backend objects handed in: their owner closes them). Calls
        still waiting are settled with an ``IvyClosed`` error, so no ``result()`` hangs; using
        the object after this raises :class:`ivy.IvyError`. Closing twice does nothing.

        Args:
            timeout: seconds to wait for unconfirmed messages.
        """
        if not self.backends.mark_closed():
            return
        self.producer.flush_quietly(timeout)
        self._workers.stop()  # their last events and heartbeat entries before the notifiers
        self.backends.results.close("IvyClosed", f"{self!r} was closed before the result of "
                                    "this call arrived; the task may still run")
        self.backends.close_owned()
