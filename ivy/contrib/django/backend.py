"""``IvyBackend``: Django's tasks interface (``django.tasks`` in Django 6, the ``django-tasks``
backport before) over an ivy app; its settings, flags and priorities are in
docs/guides/django.md, its design in docs/internals/integrations.md."""

from __future__ import annotations

import atexit
import json
import logging
import threading
from collections.abc import Iterable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ParamSpec, TypeVar

from django.conf import settings
from django.core import checks
from django.core.exceptions import ImproperlyConfigured
from django.db import transaction

from ivy.app import Ivy
from ivy.errors import MessageError
from ivy.message import Notification, decode_notification, new_id
from ivy.notifiers.base import Notifier

from . import records
from ._compat import (
    READY,
    BaseTaskBackend,
    Task,
    TaskResult,
    task_enqueued,
)
from .running import DjangoTasks

log = logging.getLogger("ivy.contrib.django")

P = ParamSpec("P")
T = TypeVar("T")

#: Django's priorities (-100..100) plus this are ivy's (0..200 of 0..255)
PRIORITY_OFFSET = 100
OPTIONS = ("queue_url", "notifier_url", "max_retries", "result_ttl", "ivy")


def ivy_priority(priority: int) -> int:
    """The ivy priority of a Django task priority: ``priority + 100``, order kept.

    Args:
        priority: Django's priority, -100 to 100.

    Returns:
        ivy's priority, 0 to 200.
    """
    return int(priority) + PRIORITY_OFFSET


@dataclass
class _Shared:
    """The ivy app of one alias and configuration, and the notifier its records use."""

    app: Ivy
    notifier: Notifier | None = None


_shared: dict[tuple[str, str], _Shared] = {}
_lock = threading.Lock()
#: alias -> (queue URL, notifier URL) given to ``ivy_worker``, over OPTIONS
_url_overrides: dict[str, tuple[str | None, str | None]] = {}


def override_urls(alias: str, queue_url: str | None, notifier_url: str | None) -> None:
    """Use these URLs (those not None) for backend ``alias`` instead of its OPTIONS', in
    every thread of this process: what ``ivy_worker --queue-url/--notifier-url`` does before
    the backend is first used.

    Args:
        alias: the ``TASKS`` entry.
        queue_url: the ivy queue backend's URL; None: the entry's ``OPTIONS``.
        notifier_url: the notifier's URL; None: the entry's ``OPTIONS``.
    """
    _url_overrides[alias] = (queue_url, notifier_url)


def close_all(timeout: float = 10.0) -> None:
    """Close every ivy app the backends of this process made (at interpreter exit, and in
    tests): unconfirmed sends are flushed, within ``timeout`` seconds per app.

    Args:
        timeout: seconds each app may wait for its unconfirmed sends.
    """
    with _lock:
        apps = [shared.app for shared in _shared.values()]
        _shared.clear()
    for app in apps:
        app.close(timeout)


atexit.register(close_all)


class IvyBackend(BaseTaskBackend):
    """Django's task backend on ivy; its settings are in docs/guides/django.md ("Settings")."""

    supports_defer = True
    supports_async_task = True
    supports_get_result = True
    supports_priority = True

    def __init__(self, alias: str, params: dict[str, Any]) -> None:
        """Django makes it, per thread, from ``TASKS[alias]``.

        Args:
            alias: the ``TASKS`` entry's name.
            params: the entry: ``BACKEND``, ``QUEUES``, ``ENQUEUE_ON_COMMIT``, ``OPTIONS``.

        Raises:
            django.core.exceptions.ImproperlyConfigured: an unknown ``OPTIONS`` key, or an
                ``OPTIONS["ivy"]`` that is not a dict.
        """
        super().__init__(alias, params)
        options = dict(self.options)
        unknown = sorted(set(options) - set(OPTIONS))
        if unknown:
            raise ImproperlyConfigured(
                f"TASKS[{alias!r}]['OPTIONS'] has unknown keys {unknown}: ivy's backend takes "
                f"{', '.join(OPTIONS)}")
        queue_url, notifier_url = _url_overrides.get(alias, (None, None))
        #: the ivy queue backend's URL (None: $IVY_QUEUE_URL or the SQLite file ivy.db)
        self.queue_url: str | None = queue_url or options.get("queue_url")
        #: the notifier's URL (None: $IVY_NOTIFIER_URL or the SQLite file ivy.db)
        self.notifier_url: str | None = notifier_url or options.get("notifier_url")
        #: ivy retries of a failed call (each retry is another attempt)
        self.max_retries = int(options.get("max_retries", 0))
        #: seconds a result's record is kept for get_result
        self.result_ttl = float(options.get("result_ttl", records.DEFAULT_RESULT_TTL))
        ivy_options = options.get("ivy", {})
        if not isinstance(ivy_options, Mapping):
            raise ImproperlyConfigured(f"TASKS[{alias!r}]['OPTIONS']['ivy'] must be a dict "
                                       "of keyword arguments of ivy.Ivy()")
        self.ivy_options: dict[str, Any] = dict(ivy_options)
        #: send on ``transaction.on_commit`` (the result id is known at once)
        self.enqueue_on_commit = bool(params.get("ENQUEUE_ON_COMMIT", False))
        self._key = (alias, repr((self.queue_url, self.notifier_url,
                                  sorted(self.ivy_options.items()))))

    # -- the ivy app --------------------------------------------------------------------------

    def _shared_app(self) -> _Shared:
        with _lock:
            shared = _shared.get(self._key)
            if shared is None:
                app = Ivy(self.queue_url, self.notifier_url, **self.ivy_options)
                app.registry = DjangoTasks(self.alias)
                shared = _shared[self._key] = _Shared(app)
            return shared

    @property
    def app(self) -> Ivy:
        """The ivy app of this backend (one per alias and settings, shared by threads)."""
        return self._shared_app().app

    def store(self) -> Notifier:
        """The notifier that keeps final results and the records of this backend's results.

        Returns:
            The app's worker-side notifier, started on first use.
        """
        shared = self._shared_app()
        if shared.notifier is None:
            shared.notifier = shared.app.start_notification_producer()
        return shared.notifier

    def close(self, timeout: float = 10.0) -> None:
        """Close this backend's ivy app (a backend used afterwards makes a new one).

        Args:
            timeout: seconds to wait for unconfirmed sends.
        """
        with _lock:
            shared = _shared.pop(self._key, None)
        if shared is not None:
            shared.app.close(timeout)

    # -- Django's interface -------------------------------------------------------------------

    def enqueue(self, task: Task[P, T], args: Any, kwargs: Any) -> TaskResult[T]:
        """Send ``task(*args, **kwargs)`` to the task's ivy queue, now or, with
        ``ENQUEUE_ON_COMMIT``, when the current transaction commits (nothing is sent if it
        rolls back); the result, whose id is the ivy call id, is returned at once.

        Inside ``transaction.atomic()`` on PostgreSQL, with the ivy queue in that database,
        the message is written in Django's transaction instead (docs/guides/django.md).

        Args:
            task: the Django task.
            args: its positional arguments.
            kwargs: its keyword arguments.

        Returns:
            The task's result, ``READY``.

        Raises:
            InvalidTaskError: a task Django's validation refuses (not a module-level
                function, a queue not in ``QUEUES``, a priority out of range, ...).
            TypeError: arguments the task's function refuses (when this process knows it).
            ivy.SerializationError: an argument JSON cannot carry.
            ivy.PublishError: the queue backend refused the message at once.
        """
        self.validate_task(task)
        result: TaskResult[T] = TaskResult(
            task=task, id=new_id(), status=READY, enqueued_at=None,
            started_at=None, finished_at=None, last_attempted_at=None, args=list(args),
            kwargs=dict(kwargs), backend=self.alias, errors=[], worker_ids=[])
        ivy_task = self.app.registry.get(task.module_path)
        if ivy_task is not None:  # wrong arguments fail here, not on a worker
            try:
                ivy_task.check_arguments(tuple(result.args), result.kwargs)
            except TypeError as exc:
                raise TypeError(f"wrong arguments for task {task.module_path!r}: {exc}"
                                ) from None
        connection = self._atomic_connection()
        if connection is not None:  # the enqueue commits or rolls back with the block
            with self.app.transaction(connection):
                self._send(result)
        elif self.enqueue_on_commit:
            transaction.on_commit(lambda: self._send(result))
        else:
            self._send(result)
        return result

    def _atomic_connection(self) -> Any:
        """Django's own psycopg 3 connection, when the enqueue happens inside
        ``transaction.atomic()`` on PostgreSQL and the ivy queue is in that same database;
        else None. Then the message is written in Django's transaction (see
        :mod:`ivy.transactional`): visible to workers once it commits, never if it rolls
        back."""
        from django.db import connections

        from ivy.transactional import TransactionalQueue

        django_db = connections["default"]
        if django_db.vendor != "postgresql" or not django_db.in_atomic_block:
            return None
        backend = self.app.queue_backend
        if not isinstance(backend, TransactionalQueue):
            return None
        django_db.ensure_connection()
        raw = django_db.connection
        info = getattr(raw, "info", None)  # psycopg 3 (psycopg2's connections have none)
        conninfo = getattr(getattr(backend, "settings", None), "conninfo", None)
        if info is None or conninfo is None:
            return None
        from psycopg.conninfo import conninfo_to_dict

        params = conninfo_to_dict(conninfo)
        same = info.dbname == (params.get("dbname") or params.get("user"))
        if params.get("port") and str(info.port) != str(params["port"]).split(",")[0]:
            same = False  # another server, whatever its database is called
        return raw if same else None

    def _send(self, result: TaskResult[Any]) -> None:
        """Write the record, send the ivy call, send ``task_enqueued``."""
        app, task, store = self.app, result.task, self.store()
        enqueued = records.now()
        out = app.producer.prepare(
            task.module_path, result.args, result.kwargs, queue=task.queue_name,
            priority=ivy_priority(task.priority), delay=_delay(task.run_after),
            max_retries=self.max_retries, call_id=result.id)
        record = {
            "task": task.module_path, "backend": self.alias, "queue": task.queue_name,
            "priority": task.priority, "args": result.args, "kwargs": result.kwargs,
            "run_after": None if task.run_after is None else records.from_datetime(
                task.run_after),
            "enqueued_at": enqueued, "state": "READY", "worker_ids": [], "errors": [],
            "nonce": out.call.nonce}
        try:
            records.create(store, result.id, record, self.result_ttl)
        except BaseException:
            app.producer.forget([out.call])
            raise
        try:
            app.producer.hand_over([out], out.queue, out.priority, out.delay, out.route)
        except BaseException:
            records.forget(store, result.id)
            raise
        sending = out.call._send
        if sending is not None:  # refused later (a nack), or rolled back with Django's block
            sending.add_done_callback(lambda f: _forget_if_failed(f, store, result.id))
        object.__setattr__(result, "enqueued_at", records.to_datetime(enqueued))
        task_enqueued.send(type(self), task_result=result)

    def get_result(self, result_id: str) -> TaskResult[Any]:
        """The result of ``result_id`` from any process sharing this backend's notifier:
        ``READY``, ``RUNNING``, ``SUCCESSFUL`` (with ``return_value``) or ``FAILED`` (with
        ``errors``).

        Args:
            result_id: the result's id (the ivy call id).

        Returns:
            The result, as its record and ivy's stored final notification give it.

        Raises:
            TaskResultDoesNotExist: an id it does not know (or whose record and result
                expired).
        """
        store = self.store()
        text = records.read_text(store, result_id)
        record = json.loads(text) if text is not None else None
        nonce = record.get("nonce") if record is not None else None
        body = store.stored(result_id, nonce)
        note = self._decode(body, nonce) if body is not None else None
        return records.build(result_id, self.alias, record, note)

    def _decode(self, body: bytes, nonce: str | None) -> Notification | None:
        """ivy's stored final notification, verified as the producer verifies it; None if it
        is not the call's own (another nonce) or does not decode."""
        app = self.app
        try:
            note = decode_notification(body, app.serializer, max_bytes=app.max_message_bytes,
                                       max_depth=app.max_depth, signer=app.signer)
        except MessageError as exc:
            log.warning("the stored result of a Django task is refused: %s", exc)
            return None
        if nonce is not None and note.nonce != nonce:
            log.warning("the stored result of Django task %s is not its own (another nonce): "
                        "ignored", note.id)
            return None
        return note

    def check(self, **kwargs: Any) -> Iterable[checks.CheckMessage]:
        """Django's system checks: ``ENQUEUE_ON_COMMIT`` needs a database.

        Args:
            **kwargs: what Django's check framework passes.

        Returns:
            The errors found (``ivy.E001``).
        """
        if self.enqueue_on_commit and not settings.DATABASES:
            yield checks.Error(
                f"TASKS[{self.alias!r}] sets ENQUEUE_ON_COMMIT but no database is configured",
                hint="Set ENQUEUE_ON_COMMIT to False, or configure DATABASES",
                id="ivy.E001")


def _delay(run_after: datetime | None) -> float | None:
    """Seconds until ``run_after`` (aware, or naive local time as Django's ``timezone.now()``
    without ``USE_TZ``); None when it is None, 0 when it has passed."""
    if run_after is None:
        return None
    now = datetime.now(UTC) if run_after.tzinfo is not None else datetime.now()
    return max(0.0, (run_after - now).total_seconds())


def _forget_if_failed(future: Future[None], store: Notifier, result_id: str) -> None:
    """A send that failed after ``enqueue`` returned (its transaction rolled back, or the
    broker refused the message) leaves no record behind: ``get_result`` then raises
    ``TaskResultDoesNotExist``, as for an id never enqueued. The store round trip runs on a
    thread of its own, not on the one that completed the send."""
    if future.cancelled() or future.exception() is None:
        return
    threading.Thread(target=records.forget, args=(store, result_id),
                     name="ivy-django-forget", daemon=True).start()
