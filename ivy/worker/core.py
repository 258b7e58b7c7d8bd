"""The worker: fetch -> execute -> record -> ack, with retries, dead letters, leases kept while
it lives and a graceful stop (docs/internals/workers.md)."""

from __future__ import annotations

import logging
import queue as queue_mod
import threading
import time
from typing import Any

from ivy._process import Backoff, run_until_signal, worker_name
from ivy._process import signal_handlers as signal_handlers
from ivy.message import Message, compile_message_validator
from ivy.notifiers.base import Notifier
from ivy.queues.base import Consumer, Delivery, QueueBackend
from ivy.task import Task
from ivy.timing.pause import Pauses
from ivy.worker import limits
from ivy.worker.continuation import WorkflowRecorder
from ivy.worker.execution import LOOP_CLOSE_TIMEOUT as LOOP_CLOSE_TIMEOUT
from ivy.worker.execution import Executor
from ivy.worker.execution import error_info as error_info
from ivy.worker.gate import Gate
from ivy.worker.holdings import Holdings
from ivy.worker.outcomes import ERROR_MESSAGE_CHARS as ERROR_MESSAGE_CHARS
from ivy.worker.outcomes import ERROR_TRACEBACK_CHARS as ERROR_TRACEBACK_CHARS
from ivy.worker.outcomes import RECORD_ATTEMPTS as RECORD_ATTEMPTS
from ivy.worker.processing import Processor, logged
from ivy.worker.processing import WorkerContext as WorkerContext
from ivy.worker.recycling import Recycling
from ivy.worker.settle import Settler

log = logging.getLogger("ivy.worker")

FETCH_TIMEOUT = 0.5
HEARTBEAT = 0.05
#: A task that has run this long gets its ``running`` status published (by the heartbeat);
#: quicker tasks go from scheduled to their outcome without it, which saves a notification per
#: call (Celery publishes no STARTED state at all by default).
RUNNING_AFTER = 0.05
#: Messages a consumer may hold per executor thread: the next ones are fetched while the first
#: runs, which hides the broker round trip and lets one socket read bring several (Celery's
#: default is 4 as well). On RabbitMQ, 4 drained ~15% more trivial tasks per second than 2
#: here (2,200 vs 1,900 tasks/s), 8 only ~3% more than 4. A graceful stop gives the unstarted
#: ones back at once.
PREFETCH_MULTIPLIER = 4
#: Seconds a ``--burst`` worker waits with nothing held and nothing received before it stops.
BURST_IDLE = 1.0


class Worker:
    """Consumes queue names of one queue backend and runs the app's registered tasks; after
    ``max_messages`` deliveries, or past ``max_memory`` MB of RSS (None: no limit), it admits
    no more and stops once those it holds ended (:mod:`ivy.worker.recycling`)."""

    def __init__(
        self,
        context: WorkerContext,
        backend: QueueBackend,
        notifier: Notifier | None,
        queues: list[str],
        *,
        concurrency: int = 1,
        reserve_time: float = 30.0,
        max_messages: int | None = None,
        max_memory: float | None = None,
    ) -> None:
        if not queues:
            raise ValueError("a worker needs at least one queue name")
        if concurrency < 1:
            raise ValueError(f"concurrency {concurrency!r} must be at least 1")
        #: when it stops to be replaced: max_messages, max_memory
        self.recycling = Recycling(max_messages, max_memory)
        self.context = context
        self.backend = backend
        self.notifier = notifier
        self.queues = list(dict.fromkeys(queues))
        self.concurrency = concurrency
        self.reserve_time = reserve_time
        self.name = worker_name()
        self.max_messages = max_messages
        self._stopping = threading.Event()
        #: set once no more deliveries are admitted: the worker is stopping or is full
        self._refusing = threading.Event()
        self._stopped = threading.Event()
        self._slots = threading.Semaphore(concurrency)
        self._work: queue_mod.SimpleQueue[Delivery | None] = queue_mod.SimpleQueue()
        #: the deliveries it holds; their lock is the worker's
        self._holdings = Holdings()
        self._lock = self._holdings.lock
        self._threads: list[threading.Thread] = []
        #: how long one consumer.get() may wait: long polls on cloud queues, short elsewhere
        self.poll: float = backend.poll_seconds
        self._consumers: list[Consumer] = []
        self._executor = Executor(self.name)
        self._executor.runner_max_memory = max_memory  # its runner processes too
        board = limits.installed()  # a supervisor watches this process: limits run inline
        if board is not None:
            self._executor.watch = limits.Watch(board, self._time_limit_passed)
        #: why the worker ended early: a call passed its hard time limit (None: none did)
        self.limit_passed: str | None = None
        # continues workflow steps (chains, groups, chords); records plain calls as Recorder
        self._recorder = WorkflowRecorder(
            notifier, self.name, backend=backend, middleware=context.middleware,
            serializer=context.serializer, signer=context.signer,
            max_message_bytes=context.max_message_bytes, max_depth=context.max_depth)
        #: cancels and rate limits, from the notifier's store (ivy.timing)
        self._gate = Gate(notifier, self._executor, self._recorder, self.name)
        #: the queues paused in the notifier's store, looked at each second (ivy.timing.pause)
        self.pauses = Pauses(notifier, self.queues, self.name)
        #: one delivery, start to end: decode, check, admit, run, settle (ivy.worker.processing)
        self._processor = Processor(
            context, backend, self.name, reserve_time=reserve_time, executor=self._executor,
            gate=self._gate, recorder=self._recorder, started=self._started,
            settler=Settler(context.middleware, context.backoff, self._recorder, self.name,
                            dead_letter_failures=context.dead_letter_failures))

    def __repr__(self) -> str:
        return f"<Worker {self.name} queues={self.queues} on {self.backend.url}>"

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> Worker:
        # before the executors: compiling takes MBs, which an executor thread's malloc arena
        # would keep resident, and this thread's gives back
        compile_message_validator()
        self._consumers = []
        for q in self.queues:
            try:
                self._consumers.append(self.pauses.consume(
                    self.backend, q, prefetch=self.concurrency * PREFETCH_MULTIPLIER,
                    reserve_time=self.reserve_time))
            except Exception:  # e.g. ivy.QueueMismatch: close the consumers started so far
                for started in self._consumers:
                    with logged("closing a consumer"):
                        started.close()
                self._consumers = []
                raise
        # "listening" is said once every consumer receives: at once, or (a consumer that
        # connects on its own thread, AMQP) from a thread that waits for them
        if all(c.wait_ready(0) for c in self._consumers):
            self._listening()
        else:
            self._spawn(self._listening_once_ready, "ivy-ready")
        # One queue: executors fetch for themselves (no hand-off between threads). Several:
        # a fetcher per queue hands deliveries over, fetching only while an executor is free.
        direct = self._consumers[0] if len(self._consumers) == 1 else None
        for i in range(self.concurrency):
            self._spawn(self._execute_loop, f"ivy-exec-{i}", direct)
        if direct is None:
            for q, consumer in zip(self.queues, self._consumers, strict=True):
                self._spawn(self._fetch_loop, f"ivy-fetch-{q}", consumer)
        self._spawn(self._heartbeat_loop, "ivy-heartbeat")
        if self._executor.watch is not None:
            self._executor.watch.start()
        if self.context.middleware:
            self.context.middleware.on_worker_start(self)
        return self

    def _listening(self) -> None:
        with self._lock:  # a burst worker's idle time counts from here
            self._holdings.active_at = time.monotonic()
        log.info("worker %s: listening on %s at %s, concurrency %d, tasks: %s", self.name,
                 ", ".join(self.queues), self.backend.url, self.concurrency,
                 ", ".join(self.context.registry.names()) or "(none)")

    def _listening_once_ready(self) -> None:
        for consumer in self._consumers:
            while not consumer.wait_ready(0.5):
                if self._stopping.is_set():
                    return
        self._listening()

    def _spawn(self, target: Any, name: str, *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def stop(self, timeout: float | None = None) -> None:
        """Stop fetching, give back what was fetched but not started, finish in-flight tasks.
        Any thread may call it, several at once: the first one stops the worker, and each
        waits for the stop as :meth:`join` does.

        Args:
            timeout: Seconds to wait for the tasks in flight (None: as long as they run).
        """
        with self._lock:  # one step: from now on no delivery is admitted (see _hold)
            first = not self._stopping.is_set()
            self._stopping.set()
            self._refusing.set()
        if not first:
            self.join(timeout)
            return
        log.info("worker %s: stopping; finishing in-flight tasks", self.name)
        for consumer in self._consumers:  # interrupts waiting gets; returns unstarted ones
            with logged("closing consumer"):
                consumer.close()
        for _ in range(self.concurrency):
            self._work.put(None)
        self.join(timeout)

    def join(self, timeout: float | None = None) -> bool:
        """Wait until the worker stopped and holds no message. Threads still waiting in a
        long poll (SQS, IronMQ) are not waited for: whatever they receive after the stop goes
        straight back to the queue.

        Args:
            timeout: Seconds to wait at most (None: until it stopped).

        Returns:
            Whether it stopped within ``timeout``.
        """
        if not self._holdings.wait_empty(self._stopping.is_set, timeout):
            return False
        with self._lock:  # the first joiner to see the stop closes it, once
            first = not self._stopped.is_set()
            self._stopped.set()
        if first:
            if self._executor.watch is not None:
                self._executor.watch.stop()
            self._executor.close()
            log.info("worker %s: stopped after %d messages", self.name, self.processed)
            if self.context.middleware:
                self.context.middleware.on_worker_stop(self)
        return True

    @property
    def running(self) -> bool:
        return not self._stopping.is_set()

    @property
    def in_flight(self) -> int:
        """Deliveries held now: running, or fetched and waiting for an executor."""
        return len(self._holdings)

    def wait_stopped(self, timeout: float | None = None) -> bool:
        """Wait until the worker has stopped (``stop()`` or ``join()`` saw it end). For
        threads that live as long as the worker (its heartbeat).

        Args:
            timeout: Seconds to wait at most (None: until it stopped).

        Returns:
            Whether it stopped within ``timeout``.
        """
        return self._stopped.wait(timeout)

    @property
    def full(self) -> bool:
        """Whether the worker reached its ``max_messages`` or ``max_memory``, and so stops
        (or stopped) once what it holds ended."""
        return self.recycling.full

    @property
    def admitted(self) -> int:
        """Deliveries admitted for processing so far (see ``max_messages``)."""
        return self.recycling.admitted

    def _recycle(self, reason: str | None) -> None:
        """A limit was reached (``reason``): admit no more; stop now if nothing is held."""
        if reason is None:
            return
        self._refusing.set()
        log.info("worker %s: %s; stopping once its %d held message(s) end, to be replaced",
                 self.name, reason, self.in_flight)
        if not len(self._holdings) and not self._stopping.is_set():
            self.stop()

    def run_forever(self, stop: threading.Event | None = None, *, burst: bool = False,
                    shutdown_timeout: float | None = None) -> None:
        """Block until SIGTERM or SIGINT (first: graceful stop; second: exit at once) or until
        ``stop`` is set. With ``burst``, also stop once the worker holds nothing and has
        received nothing for ``BURST_IDLE`` s since it began listening: its queues have nothing
        due (messages delayed to later, such as retries waiting out their backoff, stay).
        ``shutdown_timeout``: seconds the graceful stop waits for running calls; then they are
        handed back to their queue at once (:meth:`hand_back`) and this returns (None: wait)."""
        run_until_signal(self, stop, burst=burst, shutdown_timeout=shutdown_timeout)

    def hand_back(self, why: str = "shutdown deadline passed") -> int:
        """Give every delivery the worker still holds back to its queue now, running or not,
        so that another worker starts it without waiting for its lease to run out (not counted
        as an attempt); a task still running here can no longer settle it. Returns how many.
        For a stop whose deadline passed (``why``, logged): the process is about to end."""
        held = self._holdings.all()
        for h in held:
            with logged(f"handing back a message ({why})"):
                h.delivery.release()
        if held:
            log.warning("worker %s: %s; handed back %d call(s) still running to their queue: %s",
                        self.name, why, len(held), ", ".join(
                            f"{h.message.name} [{h.message.id}]" if h.message else "(unstarted)"
                            for h in held))
        self._holdings.clear()
        self.join(0)
        return len(held)

    def _time_limit_passed(self, call_id: str, limit: float) -> None:
        """The watch's word that call ``call_id`` passed its hard ``limit`` (only in a process
        a supervisor watches, ivy.worker.limits): admit nothing more, settle the call as
        timed out, hand every other held call back, and stop, for the supervisor to start a
        fresh process. The call's thread stays where it is until the process exits."""
        self._refusing.set()
        self.limit_passed = f"call {call_id} passed its time limit of {limit:g} s"
        held = self._holdings.running(call_id)
        if held is not None and held.message is not None:
            log.warning("worker %s: call %s of task %r passed its time limit of %g s; this "
                        "process ends, to be replaced by a fresh one", self.name, call_id,
                        held.message.name, limit)
            with logged("settling a call past its time limit"):
                self._processor.time_out(held.delivery, held.message, limit)
            self._unhold(held.delivery)
        self.hand_back(f"{self.limit_passed}, so the process ends")
        self.stop()

    def drained(self) -> bool:
        """Listening, holding nothing, and nothing received for ``BURST_IDLE`` s."""
        return self._holdings.idle_for(BURST_IDLE)

    # -- threads ---------------------------------------------------------------------------

    def _fetch(self, consumer: Consumer, backoff: Backoff) -> Delivery | None:
        """One get(): a delivery admitted for processing, or None (nothing came, the worker
        is stopping, or the backend failed: logged, and waited off with backoff)."""
        try:
            delivery = consumer.get(self.poll)
            backoff.reset()
        except Exception:
            if not self._refusing.is_set():
                log.exception("worker %s: fetching from %s failed; retrying in %.1f s",
                              self.name, self.backend.url, backoff.delay)
                backoff.wait(self._refusing)
            return None
        if delivery is not None and not self._hold(delivery, self.reserve_time):
            with logged("giving back a delivery"):
                delivery.release()  # the worker is stopping: it goes back unstarted
            return None
        return delivery

    def _fetch_loop(self, consumer: Consumer) -> None:
        """Several queues: fetch one delivery, then wait for a free executor to hand it to.
        A fetcher takes no executor slot while it waits on its queue (that starved the other
        queues' fetchers when slots were fewer than queues); it holds at most one delivery
        beyond the consumer's prefetch, leased like those (the heartbeat extends it)."""
        backoff = Backoff()
        while not self._refusing.is_set():
            delivery = self._fetch(consumer, backoff)
            if delivery is not None:
                self._hand_over(delivery)

    def _hand_over(self, delivery: Delivery) -> None:
        """Give an admitted delivery to an executor once one is free; give it back to the
        queue if the worker stops first."""
        while not self._slots.acquire(timeout=FETCH_TIMEOUT):
            if self._stopping.is_set() or self.pauses.holds(delivery.queue):
                break
        else:
            with self._lock:  # stop() puts its None markers after setting _stopping
                if not self._stopping.is_set():
                    self._work.put(delivery)
                    return
            self._slots.release()
        with logged("giving back a delivery"):
            delivery.release()  # the worker is stopping, or its queue paused: unstarted
        self._unhold(delivery)

    def _execute_loop(self, consumer: Consumer | None) -> None:
        backoff = Backoff()
        while True:
            if consumer is None:
                delivery = self._work.get()
                if delivery is None:
                    return
            elif self._refusing.is_set():
                return
            else:
                delivery = self._fetch(consumer, backoff)
                if delivery is None:
                    continue
            try:
                self.process(delivery)
                self._recycle(self.recycling.check_memory())
            finally:
                last = self._unhold(delivery)
                if consumer is None:
                    self._slots.release()
            if last:
                self.stop()

    def _heartbeat_loop(self) -> None:
        """Every ``HEARTBEAT`` s: extend the leases that are a third of the way through, send
        ``running`` statuses, fire task timeouts. Deliveries waiting in a consumer's prefetch
        buffer are swept every third of the worker's ``reserve_time`` (one list per consumer,
        nothing per message in between)."""
        sweep_at = time.monotonic() + self.reserve_time / 3
        waiting: list[Delivery] = []  # buffered ones whose extend met an op in progress
        while not self._stopped.wait(HEARTBEAT):
            now = time.monotonic()
            due, running = self._holdings.due(now, RUNNING_AFTER)
            self._executor.fire_timeouts(now)
            self._recycle(self.recycling.check_memory(timed=True))
            self.pauses.poll(now)
            if self._gate.poll_due(now):
                with logged("looking for cancels"):
                    self._gate.poll(self._holdings.messages())
            for h in due:
                if not self._extend(h.delivery, h.lease):
                    self._holdings.extend_again(h, now)
            if now >= sweep_at:
                sweep_at = now + self.reserve_time / 3
                for consumer in self._consumers:
                    with logged("listing prefetched deliveries"):
                        waiting.extend(consumer.buffered())
            if waiting:
                waiting = [d for d in waiting if not self._extend(d, self.reserve_time)]
            for h in running:
                if h.message is not None:
                    self._recorder.running(h.message)

    @staticmethod
    def _extend(delivery: Delivery, lease: float) -> bool:
        """The heartbeat's extend: never waits for an operation in progress on the delivery.
        False if it should be tried again on the next tick (that operation was in progress
        and did not end the delivery)."""
        try:
            return delivery.extend(lease, wait=False) or delivery.ended is not None
        except Exception:
            log.exception("worker: extending the reservation of a message of %s failed",
                          delivery.queue)
            return True  # a failing backend is not hammered every tick: next third

    def _hold(self, delivery: Delivery, lease: float) -> bool:
        """Admit a delivery for processing; False once the worker is stopping or full."""
        with self._lock:
            if self._refusing.is_set():
                return False
            self._holdings.add(delivery, lease)
            if self.recycling.admit() is not None:
                self._refusing.set()
                log.info("worker %s: admitted its %d messages (max_messages); stopping once "
                         "they end", self.name, self.admitted)
            return True

    def _unhold(self, delivery: Delivery) -> bool:
        """Forget a delivery that ended; True if the worker is full, not yet stopping, and
        this was the last delivery it held: the caller stops it."""
        if not self._holdings.remove(delivery):
            return False
        return self.full and not self._stopping.is_set()

    # -- one message -----------------------------------------------------------------------

    @property
    def processed(self) -> int:
        """Deliveries processed so far."""
        return self._processor.processed

    @property
    def failed(self) -> int:
        """Task runs that raised or timed out, and messages dead-lettered as unrunnable."""
        return self._processor.failed

    def process(self, delivery: Delivery) -> None:
        """Run one delivery to its end: ack, retry or dead letter. Never raises. The steps
        are in :mod:`ivy.worker.processing`."""
        self._processor.process(delivery)

    def lease(self, task: Task[Any, Any]) -> float:
        """How long a running message of ``task`` stays reserved between extends: the
        context's ``reserve_times`` entry, else the task's ``reserve_time``, else the worker's."""
        return self._processor.lease(task)

    def _started(self, delivery: Delivery, message: Message, lease: float) -> None:
        """A delivery this worker holds started running under ``lease``: the heartbeat
        extends it on that lease from now on, and reports its message."""
        self._holdings.started(delivery, message, lease)
