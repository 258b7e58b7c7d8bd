"""Periodic tasks: what runs when (``every=`` seconds or a ``cron`` expression, in UTC or ``tz``);
:mod:`ivy.timing.scheduler` sends the calls."""

from __future__ import annotations

import hashlib
import json
import math
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from typing import Any

from ivy.errors import ConfigurationError
from ivy.task import Registry

#: Most slots one schedule sends in one look (a long catch_up of a frequent schedule).
MAX_SLOTS = 1000


def _zone(tz: str | None, where: str) -> tzinfo:
    if tz is None:
        return UTC
    if not isinstance(tz, str) or not tz:
        raise ConfigurationError(f"tz {tz!r} of {where} must be an IANA zone name such as "
                                 "'Europe/Prague', or None for UTC")
    # imported here: zoneinfo (with sysconfig) costs every process ~0.3 MB, and few schedules
    # name a zone
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ConfigurationError(f"tz {tz!r} of {where} is not a time zone ({exc}): use an "
                                 "IANA name such as 'Europe/Prague' or 'America/New_York' "
                                 "(on Windows: pip install tzdata)") from None


def _cronsim() -> Any:
    try:
        import cronsim
    except ImportError:
        raise ConfigurationError("cron schedules need cronsim: pip install "
                                 "'ivy-queue[schedule]' (or use every=SECONDS)") from None
    return cronsim


@dataclass(frozen=True)
class Schedule:
    """One schedule: call ``task`` (a name) with ``args``/``kwargs`` at every slot."""

    name: str
    task: str
    every: float | None = None
    cron: str | None = None
    tz: str | None = None
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    queue: str | None = None
    #: seconds before a scheduler's start whose missed slots it still sends (None: none)
    catch_up: float | None = None

    def __post_init__(self) -> None:
        where = f"schedule {self.name!r}"
        if (self.every is None) == (self.cron is None):
            raise ConfigurationError(f"{where} needs exactly one of every=SECONDS or "
                                     f"cron='* * * * *' (got every={self.every!r}, "
                                     f"cron={self.cron!r})")
        if self.every is not None and (isinstance(self.every, bool) or not isinstance(
                self.every, (int, float)) or not 0 < self.every < math.inf):
            raise ConfigurationError(f"every={self.every!r} of {where} must be a number of "
                                     "seconds > 0")
        if self.every is not None and self.tz is not None:
            raise ConfigurationError(f"tz={self.tz!r} of {where} applies to cron schedules "
                                     "only: every=N counts seconds since the Unix epoch")
        zone = _zone(self.tz, where)
        if self.cron is not None:
            if not isinstance(self.cron, str):
                raise ConfigurationError(f"cron={self.cron!r} of {where} must be a string "
                                         "such as '*/5 * * * *'")
            cronsim = _cronsim()
            try:
                cronsim.CronSim(self.cron, datetime.now(zone))
            except cronsim.CronSimError as exc:
                raise ConfigurationError(
                    f"cron={self.cron!r} of {where} is not a cron expression ({exc}): use 5 "
                    "fields, minute hour day-of-month month day-of-week, such as "
                    "'0 6 * * 1-5'") from None
        if self.catch_up is not None and (isinstance(self.catch_up, bool) or not isinstance(
                self.catch_up, (int, float)) or self.catch_up < 0):
            raise ConfigurationError(f"catch_up={self.catch_up!r} of {where} must be a number "
                                     "of seconds >= 0, or None to skip missed slots")

    def slots(self, after: float, until: float) -> list[float]:
        """The slots in ``(after, until]`` (Unix seconds), the latest :data:`MAX_SLOTS`."""
        if until <= after:
            return []
        if self.every is not None:
            first = math.floor(after / self.every) + 1
            last = math.floor(until / self.every)
            first = max(first, last - MAX_SLOTS + 1)
            return [k * self.every for k in range(first, last + 1)]
        zone = _zone(self.tz, self.name)
        start = datetime.fromtimestamp(after, zone)
        found: list[float] = []
        for when in _cronsim().CronSim(self.cron, start):
            stamp = when.timestamp()
            if stamp > until:
                break
            found.append(stamp)
        return found[-MAX_SLOTS:]

    def next_slot(self, after: float) -> float:
        """The first slot after ``after``."""
        if self.every is not None:
            return (math.floor(after / self.every) + 1) * self.every
        when = next(_cronsim().CronSim(self.cron, datetime.fromtimestamp(after, _zone(
            self.tz, self.name))))
        stamp: float = when.timestamp()
        return stamp


def default_name(task: str, every: float | None, cron: str | None, args: tuple[Any, ...],
                 kwargs: Mapping[str, Any]) -> str:
    """``task[every 30]``, ``task[cron 0 6 * * 1-5]``, plus a digest of the arguments."""
    spec = f"every {every:g}" if every is not None else f"cron {cron}"
    name = f"{task}[{spec}]"
    if args or kwargs:
        text = json.dumps([list(args), dict(kwargs)], sort_keys=True, default=repr)
        name += ":" + hashlib.sha256(text.encode()).hexdigest()[:12]
    return name


class Schedules:
    """An app's schedules, by name (unique)."""

    def __init__(self) -> None:
        self._items: dict[str, Schedule] = {}
        self._lock = threading.Lock()

    def add(self, schedule: Schedule) -> Schedule:
        with self._lock:
            old = self._items.get(schedule.name)
            if old is not None and old != schedule:
                raise ConfigurationError(
                    f"schedule name {schedule.name!r} is taken by {old}: give name=... to "
                    "tell them apart")
            self._items[schedule.name] = schedule
            return schedule

    def __iter__(self) -> Any:
        with self._lock:
            return iter(list(self._items.values()))

    def __len__(self) -> int:
        return len(self._items)


def add_schedule(registry: Registry, schedules: Schedules, task: Any, *,
                 every: float | None, cron: str | None, tz: str | None, args: Iterable[Any],
                 kwargs: Mapping[str, Any] | None, name: str | None, queue: str | None,
                 catch_up: float | None) -> Schedule:
    """``Ivy.schedule``: check the task and its arguments, and add the schedule."""
    if isinstance(task, str) and queue is not None and registry.get(task) is None:
        task_name = task
    else:
        registered = registry.resolve(task)
        task_name = registered.name
        try:
            registered.check_arguments(tuple(args), dict(kwargs or {}))
        except TypeError as exc:
            raise ConfigurationError(f"the arguments of the schedule of {task_name!r} do not "
                                     f"fit the task: {exc}") from None
    args, kwargs = tuple(args), dict(kwargs or {})
    return schedules.add(Schedule(
        name=name or default_name(task_name, every, cron, args, kwargs), task=task_name,
        every=every, cron=cron, tz=tz, args=args, kwargs=kwargs, queue=queue,
        catch_up=catch_up))
