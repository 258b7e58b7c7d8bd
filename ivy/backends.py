"""The backends of :class:`ivy.Ivy`: the queue backend producers send to, and the notifiers of
both roles (the producer's consumer of results, the worker's publisher of them). A role's spec
that names a notifier already in use shares it rather than opening a second connection; a
notification consumer switched to another notifier keeps the old one until the calls it holds
are settled. The app closes the backends it built, never an object handed in (that one the
caller closes). The app keeps the state; these are its steps."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from ivy.config import Spec, make_notifier, make_queue_backend
from ivy.notifiers.base import Notifier
from ivy.queues.base import QueueBackend

if TYPE_CHECKING:
    from ivy.app import Ivy

log = logging.getLogger("ivy")
T = TypeVar("T", QueueBackend, Notifier)


def setup_queue(app: Ivy, spec: Spec) -> QueueBackend:
    """What :meth:`ivy.Ivy.setup_queue` documents."""
    with app._lock:
        app._check_open()
        backend = own(app, spec, make_queue_backend)
        app._queue = backend
        app._queue_spec = spec
        return backend


def start_notification_consumer(app: Ivy, spec: Spec) -> None:
    """What :meth:`ivy.Ivy.start_notification_consumer` documents: start receiving results
    on the notifier ``spec`` names, or switch to it."""
    with app._lock:
        app._check_open()
        current = app._results.notifier
        if current is not None and (spec is None or spec is current
                                    or spec == app._consumer_spec):
            return
        notifier = notifier_for(app, spec)
        if notifier is current:
            return
        app._consumer_notifier = notifier
        app._consumer_spec = spec if spec is not None else app._notifier_spec
        app._results.start(notifier)


def notifier_retired(app: Ivy, notifier: Notifier) -> None:
    """A retired consumer has settled every call it held: close its notifier unless it is
    still in use here, or was handed in by the caller."""
    with app._lock:
        in_use = notifier is app._producer_notifier or notifier is app._consumer_notifier
        if in_use or not any(thing is notifier for thing in app._owned):
            return
        app._owned = [thing for thing in app._owned if thing is not notifier]
    try:
        notifier.close()
    except Exception:
        log.debug("closing %s raised", notifier.url, exc_info=True)


def start_notification_producer(app: Ivy, spec: Spec) -> Notifier:
    """What :meth:`ivy.Ivy.start_notification_producer` documents."""
    with app._lock:
        app._check_open()
        app._producer_notifier = notifier_for(app, spec)
        # the spec it was built from (the app's default when None), so that the consumer
        # side asking for the same one shares this object, not a second connection
        app._producer_spec = spec if spec is not None else app._notifier_spec
        return app._producer_notifier


def notifier_for(app: Ivy, spec: Spec) -> Notifier:
    """The notifier ``spec`` names (None: the app's default): one of either role already in
    use if it is the same, else a new one the app owns."""
    spec = spec if spec is not None else app._notifier_spec
    for existing, existing_spec in ((app._consumer_notifier, app._consumer_spec),
                                    (app._producer_notifier, app._producer_spec)):
        if existing is not None and (spec is None or spec is existing
                                     or spec == existing_spec):
            return existing
    return own(app, spec, make_notifier)


def own(app: Ivy, spec: Spec, make: Callable[[Spec], T]) -> T:
    """Build a backend from ``spec``; ivy closes what it built, never an object the caller
    passed in (that one the caller closes)."""
    thing = make(spec)
    if thing is not spec:
        app._owned.append(thing)
    if isinstance(thing, QueueBackend):
        thing.priority_hint = app.queue_uses_priority  # type: ignore[method-assign]
        thing.routes_hint = app.queue_routes  # type: ignore[method-assign]
    return thing


def store_notifier(app: Ivy) -> Notifier:
    """The notifier whose store holds the app's shared state (paused queues): the one its
    workers use, else its consumer's, else the default one, started as the workers' would."""
    with app._lock:
        app._check_open()
        found = app._producer_notifier or app._consumer_notifier
        return found if found is not None else start_notification_producer(app, None)


def close(app: Ivy, timeout: float) -> None:
    """What :meth:`ivy.Ivy.close` documents."""
    with app._lock:
        if app._closed:
            return
        app._closed = True
        workers, app._workers = app._workers, []
        heartbeats, app._heartbeats = app._heartbeats, []
        events, app._events = app._events, []
    app._flush_quietly(timeout)
    for worker in workers:
        worker.stop()
    for publisher in events:  # the workers' last events, before the notifier closes
        publisher.close()
    for beat in heartbeats:  # their entries go before the notifiers close
        beat.stop()
    app._results.close("IvyClosed", f"{app!r} was closed before the result of this "
                       "call arrived; the task may still run")
    # notifiers first: one that stores in the background (SQLite) acks what it stored
    # on closing, through the queue backends, which must still be open then
    owned = sorted(reversed(app._owned), key=lambda thing: not isinstance(thing, Notifier))
    for thing in owned:
        try:
            thing.close()
        except Exception:
            log.debug("closing %r raised", thing, exc_info=True)
    app._owned.clear()
