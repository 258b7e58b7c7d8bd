"""What a worker asks before it runs a message, and while it runs: is the call cancelled, is its
task over its rate limit? (docs/internals/timing.md)"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from ivy.message import Message
from ivy.queues.base import Delivery
from ivy.stores import KeyStore
from ivy.task import Task
from ivy.timing.cancel import (
    CANCELS_FLAG,
    POLL_RUNNING,
    cancel_ids,
    cancel_key,
    cancelled_notification,
)
from ivy.timing.ratelimit import RateLimit
from ivy.worker.execution import Executor
from ivy.worker.outcomes import Recorder

log = logging.getLogger("ivy.worker")

#: Seconds a message waits when the store could not say whether its rate limit allows it.
RATE_STORE_RETRY = 1.0


class Gate:
    """One worker's checks against the notifier's store."""

    def __init__(self, notifier: KeyStore | None, executor: Executor, recorder: Recorder,
                 worker: str) -> None:
        self.notifier = notifier
        self.executor = executor
        self.recorder = recorder
        self.worker = worker
        self._keys = notifier is not None
        self._stopped: set[str] = set()  # call ids this worker cancelled while they ran
        self._lock = threading.Lock()
        self._next_poll = 0.0
        self._warned: set[str] = set()
        #: whether a cancel may be live (the flag was set at the last look), and when to look
        self._cancels = False
        self._next_flag = 0.0

    def _unsupported(self, exc: NotImplementedError) -> None:
        if self._keys:
            self._keys = False
            # said once, at debug level: a RabbitMQ-only set-up has no store (README)
            log.debug("worker %s: cancels and rate limits are off: %s", self.worker, exc)

    # -- before a message runs ---------------------------------------------------------------

    def admit(self, delivery: Delivery, task: Task[Any, Any], message: Message) -> bool:
        """True if ``message`` may run now; otherwise it was dealt with (a cancelled call
        acknowledged and notified, a call over its task's rate limit deferred)."""
        if not self._keys or self.notifier is None:
            return True
        if not message.legacy and self._any_cancels() and self._is_cancelled(
                cancel_ids(message)):
            self._acknowledge_cancel(delivery, message, running=False)
            return False
        if task.rate_limit is not None:
            wait = self._rate_wait(task, task.rate_limit, message.id)
            if wait > 0:
                delivery.defer(wait)  # not an attempt, no retry spent
                return False
        return True

    def _any_cancels(self) -> bool:
        """Whether the cancels flag was set at the last look (looked at again after
        :data:`POLL_RUNNING` seconds); True when the store cannot say."""
        now = time.monotonic()
        if now < self._next_flag:
            return self._cancels
        self._next_flag = now + POLL_RUNNING
        assert self.notifier is not None
        try:
            self._cancels = self.notifier.get_keys([CANCELS_FLAG])[0] is not None
        except NotImplementedError as exc:
            self._unsupported(exc)
            self._cancels = False
        except Exception:
            log.warning("worker %s: could not read the cancels flag", self.worker,
                        exc_info=True)
            self._cancels = True
        return self._cancels

    def _is_cancelled(self, call_ids: list[str]) -> bool:
        assert self.notifier is not None
        try:
            return any(v is not None for v in self.notifier.get_keys(
                [cancel_key(i) for i in call_ids]))
        except NotImplementedError as exc:
            self._unsupported(exc)
        except Exception:
            log.warning("worker %s: could not read the cancels of %s; running it",
                        self.worker, call_ids[0], exc_info=True)
        return False

    def _rate_wait(self, task: Task[Any, Any], limit: RateLimit, call_id: str) -> float:
        assert self.notifier is not None
        try:
            return limit.wait(self.notifier, task.name, call_id)
        except NotImplementedError as exc:
            if task.name not in self._warned:
                self._warned.add(task.name)
                log.error("worker %s: the rate limit of task %s does not hold: %s",
                          self.worker, task.name, exc)
            return 0.0
        except Exception:
            log.warning("worker %s: the rate limit of %s could not be read; deferring its "
                        "message %.0f s", self.worker, task.name, RATE_STORE_RETRY,
                        exc_info=True)
            return RATE_STORE_RETRY

    # -- while messages run --------------------------------------------------------------------

    def poll_due(self, now: float) -> bool:
        """Whether the heartbeat should call :meth:`poll` now (every :data:`POLL_RUNNING`
        seconds, while the store keeps keys)."""
        if not self._keys or self.notifier is None or now < self._next_poll:
            return False
        self._next_poll = now + POLL_RUNNING
        return True

    def poll(self, running: list[Message]) -> None:
        """Stop the ``running`` calls that were cancelled."""
        if self.notifier is None:
            return
        asked = [(m.id, i) for m in running if not m.legacy for i in cancel_ids(m)]
        if not asked or not self._any_cancels():
            return
        try:
            found = self.notifier.get_keys([cancel_key(i) for _, i in asked])
        except NotImplementedError as exc:
            self._unsupported(exc)
            return
        except Exception:
            log.warning("worker %s: could not read cancels", self.worker, exc_info=True)
            return
        cancelled = {m for (m, _), value in zip(asked, found, strict=True) if value is not None}
        for call_id in cancelled:
            with self._lock:  # before the cancel: the run may end at once
                seen = call_id in self._stopped
                self._stopped.add(call_id)
            if self.executor.cancel(call_id):
                if not seen:  # a function blocked in a C call stays "running": say it once
                    log.info("worker %s: stopping cancelled call %s", self.worker, call_id)
            else:  # not running here (yet, or any more): looked at again next time
                with self._lock:
                    self._stopped.discard(call_id)

    def settle_cancelled(self, delivery: Delivery, message: Message, ok: bool,
                         value: Any) -> bool:
        """After a run: if this worker stopped the call for a cancel, notify ``cancelled``,
        acknowledge it and return True (the caller does nothing more)."""
        with self._lock:
            stopped = message.id in self._stopped
            self._stopped.discard(message.id)
        if ok or not stopped or not isinstance(value, dict) or (
                value.get("type") != "TaskCancelled"):
            return False
        self._acknowledge_cancel(delivery, message, running=True)
        return True

    def _acknowledge_cancel(self, delivery: Delivery, message: Message, *,
                            running: bool) -> None:
        """Notify the final ``cancelled`` status of ``message``, then acknowledge it."""
        log.info("task %s [%s] was cancelled %s; acknowledged", message.name, message.id,
                 "while it ran" if running else "before it ran")
        self.recorder.record(message, cancelled_notification(
            message.id, message.name, attempt=message.attempt, worker=self.worker,
            running=running), then=delivery.ack)
