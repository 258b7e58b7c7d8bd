"""Schedules, unique sends, cancel and rate limits, in one process.

Run it with ``python examples/schedules.py`` (``pip install -e '.[schedule]'`` for the cron
line). It uses the embedded SQLite default (``ivy.db`` in the working directory), runs a worker
and a scheduler in threads of this process, and exits 0 after about three seconds. In
production the worker and the schedulers are processes of their own: ``ivy worker schedules
--scheduler`` or ``ivy scheduler schedules`` (as many as you like: each slot is sent once).
"""

from __future__ import annotations

import time

import ivy
from ivy.timing.scheduler import Scheduler

ticks: list[float] = []


@ivy.periodic_task(every=1, name="demo.tick", queue="demo")
def tick() -> None:
    """Runs once a second, at each whole second, wherever a worker listens."""
    ticks.append(time.time())


@ivy.register_task(name="demo.report", queue="demo")
def report(kind: str) -> str:
    return f"{kind} report"


# An existing task on a cron schedule: 06:00 on weekdays, Prague time.
ivy.schedule(report, cron="0 6 * * 1-5", tz="Europe/Prague", args=("daily",))


@ivy.register_task(name="demo.slow", queue="demo")
def slow(seconds: float) -> str:
    time.sleep(seconds)
    return "finished"


@ivy.register_task(name="demo.fetch", queue="demo", rate_limit="5/s")
def fetch(page: int) -> int:
    """At most 5 calls a second start, across every worker sharing the notifier."""
    return page


def main() -> None:
    worker = ivy.listen(queue="demo", concurrency=4, block=False)
    scheduler = Scheduler(ivy.default).start()
    try:
        # Unique sends: the second send returns the first call and sends nothing.
        first = ivy.send_task(report, ["weekly"], unique_key="report:weekly", unique_for=60)
        again = ivy.send_task(report, ["weekly"], unique_key="report:weekly", unique_for=60)
        print(f"unique: same call {again is first}, result {first.result(10)!r}")

        # Cancel: a call that has not run yet never runs; result() raises CallCancelled.
        long = ivy.send_task(slow, [30], delay=60)  # waits a minute in the queue
        long.cancel()
        try:
            long.result(10)
        except ivy.CallCancelled as exc:
            print(f"cancel: status {long.status}, {exc.type}")

        # Rate limit: 10 calls of a 5/s task take about 2 seconds.
        start = time.monotonic()
        calls = ivy.delayed_calls(fetch, [(page,) for page in range(10)])
        pages = [c.result(30) for c in calls]
        print(f"rate limit: {len(pages)} calls in {time.monotonic() - start:.1f} s")

        # The periodic task ran at each second meanwhile (sent by the scheduler).
        deadline = time.monotonic() + 10
        while len(ticks) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        print(f"periodic: demo.tick ran {len(ticks)} times")
    finally:
        scheduler.stop()
        worker.stop()
        ivy.close()


if __name__ == "__main__":
    main()
