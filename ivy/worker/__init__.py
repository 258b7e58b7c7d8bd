"""The worker side of ivy: :class:`Worker` fetches, runs, records and settles calls; its parts
(processing, execution, outcomes, settling, the gate, workflow continuation, hard time
limits, recycling, the heartbeat and the supervisor) live beside it in this package."""

from ivy.worker.core import (
    BURST_IDLE,
    ERROR_MESSAGE_CHARS,
    ERROR_TRACEBACK_CHARS,
    FETCH_TIMEOUT,
    HEARTBEAT,
    LOOP_CLOSE_TIMEOUT,
    PREFETCH_MULTIPLIER,
    RECORD_ATTEMPTS,
    RUNNING_AFTER,
    Worker,
    WorkerContext,
    error_info,
    signal_handlers,
)

__all__ = [
    "BURST_IDLE", "ERROR_MESSAGE_CHARS", "ERROR_TRACEBACK_CHARS", "FETCH_TIMEOUT", "HEARTBEAT",
    "LOOP_CLOSE_TIMEOUT", "PREFETCH_MULTIPLIER", "RECORD_ATTEMPTS", "RUNNING_AFTER", "Worker",
    "WorkerContext", "error_info", "signal_handlers",
]
