"""The scheduler: sends the calls of an app's schedules when their slots come, each slot claimed
in the notifier's store so that any number of schedulers send it once
(docs/internals/timing.md, "The scheduler")."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import TYPE_CHECKING

from ivy._process import worker_name
from ivy.notifiers.base import Notifier
from ivy.timing.schedule import Schedule

if TYPE_CHECKING:
    from ivy.app import Ivy

log = logging.getLogger("ivy.scheduler")

SLOT_PREFIX = "ivy:schedule:"
#: Seconds a claim outlives its slot beyond ``catch_up``, once its message is confirmed.
CLAIM_TTL = 3600.0
#: Seconds a claim lasts until its message is confirmed: a slot whose scheduler died before
#: that is sent by another one this much later.
SEND_CLAIM_TTL = 30.0
#: Seconds before a scheduler tries again a slot it gave back (the others may at once).
RETRY_GIVEN_BACK = 5.0
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
        self.name = f"{worker_name()}:{os.urandom(4).hex()}"
        self._notifier = notifier
        self._last: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: slots this scheduler sent: (schedule name, slot time), latest last (bounded)
        self.sent: list[tuple[str, float]] = []
        #: slots claimed by others (or given back) that this one may still have to send:
        #: key -> (schedule, slot, watched until, not tried before), on this one's clock
        self._watching: dict[str, tuple[Schedule, float, float, float]] = {}
        #: sends completed since the last look: (key, kept for, schedule, slot, error);
        #: settled by the loop, not by the thread that completed the send (a broker's)
        self._completed: list[tuple[str, float, Schedule, float, BaseException | None]] = []
        self._completed_lock = threading.Lock()

    @property
    def notifier(self) -> Notifier:
        if self._notifier is None:
            results = self.app.producer.results()
            assert results.notifier is not None
            self._notifier = results.notifier
        return self._notifier

    def tick(self) -> float:
        """Send what is due now; return the seconds until the next slot (at most
        :data:`MAX_SLEEP`)."""
        self._settle_sends()
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
        self._look_at_watched(now)
        return max(0.0, wake - self.clock())

    def _fire(self, schedule: Schedule, slot: float) -> None:
        key = slot_key(schedule, slot)
        kept = (schedule.catch_up or 0.0) + CLAIM_TTL
        try:
            held = self.notifier.claim_key(key, self.name, min(SEND_CLAIM_TTL, kept))
        except Exception:
            log.exception("scheduler %s: claiming slot %s failed; skipped here", self.name,
                          key)
            return
        if held is not None:  # another scheduler has it: watch it until it is sent
            if held != self.name:
                self._watch(key, schedule, slot, 0.0)
            return
        self._watching.pop(key, None)
        try:
            call = self.app.send_task(schedule.task, schedule.args, schedule.kwargs,
                                      queue=schedule.queue)
        except Exception:
            log.exception("scheduler %s: sending %s of schedule %r failed; giving the slot "
                          "back", self.name, schedule.task, schedule.name)
            self._give_back(key, schedule, slot)
            return
        log.info("scheduler %s: sent %s [%s] for slot %s of %r", self.name, schedule.task,
                 call.id, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(slot)),
                 schedule.name)
        self.sent.append((schedule.name, slot))
        del self.sent[:-10_000]
        future = call._send
        if future is None:
            self._keep(key, kept)
        else:
            future.add_done_callback(
                lambda f: self._send_completed(key, kept, schedule, slot, f))

    def _send_completed(self, key: str, kept: float, schedule: Schedule, slot: float,
                        future: Future[None]) -> None:
        with self._completed_lock:
            self._completed.append((key, kept, schedule, slot, future.exception()))

    def _settle_sends(self) -> None:
        """Keep the claims of sends confirmed since the last look; give back those refused."""
        with self._completed_lock:
            completed, self._completed = self._completed, []
        for key, kept, schedule, slot, error in completed:
            if error is None:
                self._keep(key, kept)
                continue
            log.error("scheduler %s: the call of slot %s was not taken (%s); giving the slot "
                      "back", self.name, key, error)
            if (schedule.name, slot) in self.sent:
                self.sent.remove((schedule.name, slot))
            self._give_back(key, schedule, slot)

    def _keep(self, key: str, kept: float) -> None:
        try:
            if not self.notifier.extend_key(key, self.name, kept):
                log.warning("scheduler %s: the claim of slot %s expired before its call was "
                            "confirmed; another scheduler may send it too", self.name, key)
        except Exception:
            log.warning("scheduler %s: keeping the claim of slot %s failed; it lasts %.0f s",
                        self.name, key, SEND_CLAIM_TTL, exc_info=True)

    def _give_back(self, key: str, schedule: Schedule, slot: float) -> None:
        try:
            self.notifier.release_key(key, self.name, 0)
        except Exception:
            log.warning("giving back slot %s failed; it expires in %.0f s", key,
                        SEND_CLAIM_TTL, exc_info=True)
        # the others may send it at once; this one tries again only after RETRY_GIVEN_BACK
        self._watch(key, schedule, slot, self.clock() + RETRY_GIVEN_BACK)

    def _watch(self, key: str, schedule: Schedule, slot: float, not_before: float) -> None:
        until = slot + max(LATE_GRACE, schedule.catch_up or 0.0) + SEND_CLAIM_TTL
        self._watching[key] = (schedule, slot, max(until, not_before), not_before)

    def _look_at_watched(self, now: float) -> None:
        """Claim and send the watched slots whose claims were given back or expired."""
        for key in [k for k, (_, _, until, _) in self._watching.items() if until < now]:
            del self._watching[key]
        keys = [k for k, (_, _, _, not_before) in self._watching.items() if not_before <= now]
        if not keys:
            return
        try:
            held = self.notifier.get_keys(keys)
        except Exception:
            log.warning("scheduler %s: looking at %d claimed slots failed", self.name,
                        len(keys), exc_info=True)
            return
        for key, value in zip(keys, held, strict=True):
            if value is None and key in self._watching:
                schedule, slot, _, _ = self._watching.pop(key)
                log.warning("scheduler %s: slot %s was given back or its claim expired; "
                            "sending it", self.name, key)
                self._fire(schedule, slot)

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
