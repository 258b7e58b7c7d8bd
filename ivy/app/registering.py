"""Registering tasks and periodic schedules: the part of :class:`ivy.Ivy` that fills its
registry (:class:`ivy.task.Registry`) and its schedules (:mod:`ivy.timing.schedule`). ``Ivy``
inherits it; it uses nothing of the app but those two."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, overload

from ivy.retries import Backoff
from ivy.task import Finished, Registry, Style, Task, build_task, merge_dicts, merge_options
from ivy.timing.schedule import Schedule, Schedules, add_schedule

if TYPE_CHECKING:
    from ivy.call import Call

P = ParamSpec("P")
R = TypeVar("R")


class Registering:
    """``register_task``, ``periodic_task`` and ``schedule`` of :class:`ivy.Ivy`."""

    # made by Ivy.__init__
    registry: Registry
    schedules: Schedules

    if TYPE_CHECKING:  # Ivy's: what a registered task's delay() sends through (Task.app)
        def send_task(self, task: Any, args: Iterable[Any] = (),
                      kwargs: Mapping[str, Any] | None = None) -> Call[Any]: ...

    # -- registry ----------------------------------------------------------------------------

    @overload
    def register_task(
        self, func: Callable[P, R], finished: Finished | Mapping[str, Any] | None = None,
        options: Mapping[str, Any] | None = None, *, name: str | None = ...,
        queue: str | None = ..., priority: int | None = ..., retry: bool | None = ...,
        max_retries: int | None = ..., reserve_time: float | None = ...,
        timeout: float | None = ..., time_limit: float | None = ...,
        style: Style | None = ..., route: str | None = ...,
        rate_limit: str | None = ..., unique_for: float | None = ...,
        retry_on: type[BaseException] | tuple[type[BaseException], ...] | None = ...,
        dont_retry_on: type[BaseException] | tuple[type[BaseException], ...] | None = ...,
        backoff: Backoff | None = ..., jitter: bool | None = ...,
    ) -> Task[P, R]: ...

    @overload
    def register_task(
        self, func: Mapping[str, Any] | None = None, finished: Finished | None = None,
        options: Mapping[str, Any] | None = None, *, name: str | None = ...,
        queue: str | None = ..., priority: int | None = ..., retry: bool | None = ...,
        max_retries: int | None = ..., reserve_time: float | None = ...,
        timeout: float | None = ..., time_limit: float | None = ...,
        style: Style | None = ..., route: str | None = ...,
        rate_limit: str | None = ..., unique_for: float | None = ...,
        retry_on: type[BaseException] | tuple[type[BaseException], ...] | None = ...,
        dont_retry_on: type[BaseException] | tuple[type[BaseException], ...] | None = ...,
        backoff: Backoff | None = ..., jitter: bool | None = ...,
    ) -> Callable[[Callable[P, R]], Task[P, R]]: ...

    def register_task(
        self, func: Callable[..., Any] | Mapping[str, Any] | None = None,
        finished: Finished | Mapping[str, Any] | None = None,
        options: Mapping[str, Any] | None = None, *,
        name: str | None = None, queue: str | None = None, priority: int | None = None,
        retry: bool | None = None, max_retries: int | None = None,
        reserve_time: float | None = None, timeout: float | None = None,
        time_limit: float | None = None, style: Style | None = None, route: str | None = None,
        rate_limit: str | None = None, unique_for: float | None = None,
        retry_on: type[BaseException] | tuple[type[BaseException], ...] | None = None,
        dont_retry_on: type[BaseException] | tuple[type[BaseException], ...] | None = None,
        backoff: Backoff | None = None, jitter: bool | None = None,
    ) -> Any:
        """Register ``func`` under a unique dotted ``name`` (default ``module.qualname``).

        Works directly, ``register_task(func, finished, name=...)``, as a decorator,
        ``@register_task(name=...)``, and in the original's form with an options dict and its
        camelCase keys: ``register_task(func, finished, {"name": "pkg.f", "queue": "pkg",
        "retry": True, "maxRetries": 10, "route": "pkg.route1", "reserveTime": 3600})``.
        Keywords and the dict may be mixed as long as they agree. Defaults: queue ``ivy``,
        priority 0, no retries. Returns a :class:`Task`, which still calls the function
        locally when called. ``finished(result)`` runs in the producer whenever a call of this
        task succeeds. ``rate_limit="N/s|m|h"`` holds across all workers
        (:mod:`ivy.timing.ratelimit`); ``unique_for=N`` makes a call with the same arguments
        a no-op while one is pending or for N seconds after it was sent
        (:mod:`ivy.producer.unique`). ``timeout=S`` is soft (an exception raised in the task);
        ``time_limit=S`` is hard: past S seconds the process running the call ends (under
        ``ivy worker``, the worker process, replaced by its supervisor; under ``listen()``, a
        runner process of its own: :mod:`ivy.worker.limits`). ``retry_on``,
        ``dont_retry_on``, ``backoff`` (a list of seconds, or ``backoff(attempt) ->
        seconds``) and ``jitter`` make the task's retry
        policy (:mod:`ivy.retries`); inside the task, ``raise ivy.Retry(delay)``,
        ``ivy.Snooze(delay)`` or ``ivy.Discard(reason)`` decide for one run.

        Args:
            func: the function; None (or the options dict) when used as a decorator.
            finished: ``finished(result)``, run in the producer whenever a call of this task
                succeeds; or the original's options dict in its place.
            options: the original's options dict (camelCase or snake_case keys).
            name: the task's unique dotted name; None: ``module.qualname``.
            queue: the queue its calls go to; None: ``ivy``.
            priority: its messages' priority, 0 to 255; None: 0.
            retry: retry a failed run (``max_retries`` times, or a default number).
            max_retries: how many times a failed run is retried; None: 0 (or the default with
                ``retry=True``).
            reserve_time: seconds a worker's message stays reserved (extended while the task
                runs); None: the worker's.
            timeout: the soft limit, in seconds: an exception raised in the task; None: none.
            time_limit: the hard limit, in seconds: the process running a call past it
                ends, and the call fails with TaskTimeout; None: the worker's, if any.
            style: ``"sync"``, ``"async"`` or ``"callback"``; None: found from the function.
            route: the AMQP routing key where the queue URL names an exchange (other backends
                ignore it).
            rate_limit: ``"N/s"``, ``"N/m"`` or ``"N/h"``: calls started per period across all
                workers; None: no limit.
            unique_for: seconds during which a call with the same arguments is not sent again;
                None: every call is sent.
            retry_on: the exception types retried; None: any.
            dont_retry_on: exception types never retried.
            backoff: seconds before each retry: a list, or ``backoff(attempt) -> seconds``;
                None: the app's exponential backoff.
            jitter: randomize the backoff (50-100% of it); None: True.

        Returns:
            The :class:`Task`; used as a decorator (no ``func``), the decorator that makes it.

        Raises:
            ivy.ConfigurationError: an invalid option (name, queue, priority, limits, style,
                route, rate limit, retry policy), an option given twice that disagrees, an
                unknown option key, ``func`` not a function, or ``name`` already registered
                to another function.
        """
        if isinstance(func, Mapping):  # @register_task({...})
            options = merge_dicts(options, func)
            func = None
        if isinstance(finished, Mapping):  # register_task(func, {...})
            options = merge_dicts(options, finished)
            finished = None
        given = merge_options(options, {
            "name": name, "queue": queue, "priority": priority, "retry": retry,
            "max_retries": max_retries, "reserve_time": reserve_time, "timeout": timeout,
            "time_limit": time_limit, "style": style, "route": route, "rate_limit": rate_limit,
            "unique_for": unique_for, "retry_on": retry_on, "dont_retry_on": dont_retry_on,
            "backoff": backoff, "jitter": jitter})
        finished_fn: Finished | None = finished

        def register(f: Callable[..., Any]) -> Task[Any, Any]:
            task = build_task(f, finished_fn, given)
            self.registry.add(task)
            task.app = self  # where task.delay() sends
            return task

        if func is None:
            return register
        return register(func)

    # -- periodic tasks (ivy/timing/schedule.py, ivy/timing/scheduler.py) ------------------

    def periodic_task(
        self, func: Callable[..., Any] | None = None, *, every: float | None = None,
        cron: str | None = None, tz: str | None = None, name: str | None = None,
        queue: str | None = None, args: Iterable[Any] = (),
        kwargs: Mapping[str, Any] | None = None, catch_up: float | None = None,
        **options: Any,
    ) -> Any:
        """Register a task and run it on a schedule: ``@periodic_task(every=30, name=...,
        queue=...)`` or ``cron="*/5 * * * *"`` (UTC unless ``tz`` names a zone). ``args`` and
        ``kwargs`` are those of each call; ``catch_up`` (seconds) sends the slots a starting
        scheduler missed within that window; ``options`` go to :meth:`register_task`. The
        schedule is named after the task. A scheduler sends the calls (``ivy scheduler
        MODULE``, ``ivy worker MODULE --scheduler``).

        Args:
            func: the function; None when used as a decorator.
            every: seconds between calls (give ``every`` or ``cron``, not both).
            cron: a five-field cron expression (needs ``cronsim``).
            tz: the IANA time zone of ``cron``; None: UTC.
            name: the task's name, which the schedule takes; None: ``module.qualname``.
            queue: the task's queue; None: ``ivy``.
            args: the positional arguments of each call.
            kwargs: the keyword arguments of each call; None: none.
            catch_up: seconds within which a starting scheduler sends the slots it missed;
                None: none are.
            **options: more :meth:`register_task` keywords.

        Returns:
            The :class:`Task`; used as a decorator (no ``func``), the decorator that makes it.

        Raises:
            ivy.ConfigurationError: an invalid task option, neither or both of ``every`` and
                ``cron``, an invalid ``every``, ``cron``, ``tz`` or ``catch_up``, or ``cron``
                without cronsim installed.
        """

        def register(f: Callable[..., Any]) -> Task[Any, Any]:
            task = self.register_task(f, name=name, queue=queue, **options)
            self.schedule(task, every=every, cron=cron, tz=tz, args=args, kwargs=kwargs,
                          name=task.name, catch_up=catch_up)
            return task

        return register if func is None else register(func)

    def schedule(
        self, task: Any, *, every: float | None = None, cron: str | None = None,
        tz: str | None = None, args: Iterable[Any] = (),
        kwargs: Mapping[str, Any] | None = None, name: str | None = None,
        queue: str | None = None, catch_up: float | None = None,
    ) -> Schedule:
        """Put a task (a Task, a registered function, or a name with ``queue``) on a
        schedule; see :meth:`periodic_task`. ``name`` (default: the task's name, the
        schedule and its arguments) must be unique: schedulers claim slots under it.

        Args:
            task: a :class:`Task`, a registered function, or a task name (with ``queue``).
            every: seconds between calls (give ``every`` or ``cron``, not both).
            cron: a five-field cron expression (needs ``cronsim``).
            tz: the IANA time zone of ``cron``; None: UTC.
            args: the positional arguments of each call.
            kwargs: the keyword arguments of each call; None: none.
            name: the schedule's unique name; None: made from the task's name, the schedule
                and its arguments.
            queue: the queue of a task given by name; None: the registered task's.
            catch_up: seconds within which a starting scheduler sends the slots it missed;
                None: none are.

        Returns:
            The schedule, added to this app's schedules.

        Raises:
            ivy.ConfigurationError: neither or both of ``every`` and ``cron``, an invalid
                ``every``, ``cron``, ``tz`` or ``catch_up``, ``cron`` without cronsim
                installed, a ``name`` already taken, or arguments the task refuses.
            ivy.TaskNotRegistered: ``task`` is not registered here and no ``queue`` is given.
        """
        return add_schedule(self.registry, self.schedules, task, every=every, cron=cron,
                            tz=tz, args=args, kwargs=kwargs, name=name, queue=queue,
                            catch_up=catch_up)
