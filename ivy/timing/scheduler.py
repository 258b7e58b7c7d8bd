"""The scheduler: sends the calls of an app's schedules (:mod:`ivy.timing.schedule`) when
their slots come. ``ivy scheduler MODULE`` runs one alone, ``ivy worker MODULE --scheduler``
beside a worker (each process of ``--processes N``), ``Scheduler(app).start()`` in code.

Any number of schedulers may run at once, on any hosts sharing the notifier: each slot is
claimed in the notifier's store (``ivy:schedule:<schedule name>:<slot ms>``, set only if
absent), and only the scheduler whose claim took sends the call, so each slot is sent exactly
once while one scheduler or more runs, and there is no single process to keep alive (Celery
beat's weak point). A scheduler whose send fails gives its claim back, so another one may send
the slot on its next look.

Missed slots: a scheduler starts with the slots after its start; those that came while no
scheduler ran are skipped, unless the schedule has ``catch_up=<seconds>``: then a starting
scheduler also sends the slots of that many seconds before its start that nobody claimed
(claims are kept ``catch_up`` + one hour). A running scheduler that looks late (a pause, a
slow store) still sends the slots of the last :data:`LATE_GRACE` seconds (or ``catch_up``, if
longer) and skips older ones.

Clocks: slots are compared with this host's clock (``clock``, injectable for tests); hosts
should keep their clocks in sync (NTP), as for any cron.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from ivy.notifiers.base import Notifier
from ivy.timing.schedule import Schedule

if TYPE_CHECKING:
    from ivy.app import Ivy

log = logging.getLogger("ivy.scheduler")

SLOT_PREFIX = "ivy:schedule:"
#: Seconds a claim outlives its slot beyond ``catch_up``.
CLAIM_TTL = 3600.0
#: Longest a scheduler sleeps between looks (it wakes at the next slot when sooner).
MAX_SLEEP = 1.0
#: A late look still sends the slots of this many seconds before it.
LATE_GRACE = 10.0


def slot_key(schedule: Schedule, slot: float) -> str:
    return f"{SLOT_PREFIX}{schedule.name}:{round(slot * 1000)}"


class Scheduler:
    """Sends the calls of ``app.schedules`` at their slots, claiming each slot first in the
    notifier's store (``notifier``, default: the app's)."""

    def __init__(self, app: Ivy, *, notifier: Notifier | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.app = app
        self.clock = clock
        self.name = f"{socket.gethostname()}:{os.getpid()}:{os.urandom(4).hex()}"
        self._notifier = notifier
        self._last: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: slots this scheduler sent: (schedule name, slot time), latest last (bounded)
        self.sent: list[tuple[str, float]] = []

    @property
    def notifier(self) -> Notifier:
        if self._notifier is None:
            results = self.app._current_results()
            assert results.notifier is not None
            self._notifier = results.notifier
        return self._notifier

    def tick(self) -> float:
        """Send what is due now; return the seconds until the next slot (at most
        :data:`MAX_SLEEP`)."""
        now = self.clock()
        wake = now + MAX_SLEEP
        for schedule in self.app.schedules:
            last = self._last.get(schedule.name)
            if last is None:  # first look: only the catch_up window is behind us
                last = now - (schedule.catch_up or 0.0)
            else:
                last = max(last, now - max(LATE_GRACE, schedule.catch_up or 0.0))
            for slot in schedule.slots(last, now):
                self._fire(schedule, slot)
            self._last[schedule.name] = now
            wake = min(wake, schedule.next_slot(now))
        return max(0.0, wake - self.clock())

    def _fire(self, schedule: Schedule, slot: float) -> None:
        key = slot_key(schedule, slot)
        try:
            held = self.notifier.claim_key(key, self.name,
                                           (schedule.catch_up or 0.0) + CLAIM_TTL)
        except Exception:
            log.exception("scheduler %s: claiming slot %s failed; skipped here", self.name,
                          key)
            return
        if held is not None:
            return  # another scheduler has it
        try:
            call = self.app.send_task(schedule.task, schedule.args, schedule.kwargs,
                                      queue=schedule.queue)
        except Exception:
            log.exception("scheduler %s: sending %s of schedule %r failed; giving the slot "
                          "back", self.name, schedule.task, schedule.name)
            try:
                self.notifier.release_key(key, self.name, 0)
            except Exception:
                log.warning("giving back slot %s failed", key, exc_info=True)
            return
        log.info("scheduler %s: sent %s [%s] for slot %s of %r", self.name, schedule.task,
                 call.id, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(slot)),
                 schedule.name)
        self.sent.append((schedule.name, slot))
        del self.sent[:-10_000]

    # -- running -------------------------------------------------------------------------------

    def run(self, stop: threading.Event | None = None) -> None:
        """Look and send until ``stop`` (or :meth:`stop`); a failing look is logged and the
        scheduler goes on."""
        stop = stop or self._stop
        schedules = list(self.app.schedules)
        log.info("scheduler %s: running %d schedule(s): %s", self.name, len(schedules),
                 ", ".join(s.name for s in schedules) or "(none)")
        while not stop.is_set() and not self._stop.is_set():
            try:
                delay = self.tick()
            except Exception:
                log.exception("scheduler %s: a look at the schedules failed", self.name)
                delay = MAX_SLEEP
            stop.wait(min(max(delay, 0.001), MAX_SLEEP))
        log.info("scheduler %s: stopped", self.name)

    def start(self) -> Scheduler:
        """Run in a daemon thread; :meth:`stop` ends it."""
        self._thread = threading.Thread(target=self.run, name="ivy-scheduler", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float | None = 10.0) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
