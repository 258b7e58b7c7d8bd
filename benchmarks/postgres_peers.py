"""PostgreSQL queues side by side (issue 24's measures; run by hand, results in
docs/benchmarks.md): ivy (queue and notifier on PostgreSQL), Procrastinate 3 (its psycopg 3
connector), pgqueuer 1.6 and a floor of bare psycopg 3, all on one database of the benchmark's
own (created here, dropped at the end), each with one worker process of concurrency 4:

* **ivy**: ``ivy worker bench_tasks --concurrency 4`` (4 threads), queue and notifier
  ``postgresql://.../<db>``; the producer's ``delayed_call`` and ``call.result()``: the
  result (the task's return value) is pushed by ``NOTIFY`` and read from ivy's results table.
* **Procrastinate**: ``procrastinate worker --concurrency 4`` (an asyncio worker, the task
  an ``async def``), the producer's ``task.defer()``. Procrastinate has no result store: a
  job is done when its row in ``procrastinate_jobs`` says ``succeeded``, read with
  ``app.job_manager.get_job_status()`` (one indexed row) every millisecond for a round trip
  (a tighter poll than an application would use: it favours Procrastinate), and job after job
  every 5 ms in a throughput round (a job already done costs one query, no wait).
* **pgqueuer**: ``bench_pgqueuer_app.py`` (pgqueuer's own runner, what ``pgqueuer run``
  calls, with its defaults: an asyncio worker, batches of 10, the entrypoint an ``async def``)
  on asyncpg, its first driver (see that module for why not its psycopg driver), the
  producer's ``Queries.enqueue()``. pgqueuer keeps no results either: a job is done when its
  completion is in ``pgqueuer_log``, which its ``CompletionWatcher`` reads when the queue
  table's trigger sends ``NOTIFY`` (debounce set to 1 ms instead of its 50 ms default, in its
  favour). Its worker writes completions through a buffer flushed every 0.1 s or 10 jobs (its
  defaults): a round trip waits for that flush.
* **floor**: the least a PostgreSQL queue with results costs, with no framework code. A send
  is one autocommit statement (``INSERT`` the job, ``pg_notify``); the worker's 4 threads
  each ``LISTEN``, and take a job in a transaction (``SELECT ... FOR UPDATE SKIP LOCKED``,
  run, then one statement that deletes the job, inserts the result row and calls
  ``pg_notify`` with its id, commit); the producer's listener reads the result rows of the
  ids it is told. Workers: ``floor_pg_worker`` below (``--floor-worker``).

For each system, in ``--rounds`` rounds that take the systems in turn (a new seeded order for
each pass, as ``benchmarks/brokers.py`` does, so that the machine's drift is shared): N calls
sent one at a time and every completion awaited, twice, first by one producer thread, then by
4 producer threads sending N/4 each (threads that live for the whole run: ``_harness``), the
completions awaited by the main thread either way (end-to-end tasks/s, first send to last
completion); the enqueue rate (first send to the last send returned; for ivy, whose
``delayed_call`` returns once the message is handed to its sender, also with ``flush()``);
and a block of sequential round trips (send one, wait for it: p50/p99 over all blocks). At
the end, the worker's peak RSS (VmHWM summed over its process tree).

What a send from 4 threads uses: ivy's ``delayed_call`` is thread-safe (one app, its sender
and connection pool); Procrastinate's synchronous ``defer`` borrows a connection from its
connector's pool (psycopg_pool's default, 4 connections), so each thread has one; pgqueuer
gets an asyncpg connection (and ``Queries``) per producer thread, its coroutines submitted
to the one event loop thread of the producer (an asyncpg connection runs one query at a time:
pgqueuer's driver serialises them with a lock); the floor gets a psycopg connection per
producer thread.

    pip install -e '.[bench,postgres]'    # ivy, Procrastinate, pgqueuer and asyncpg
    python benchmarks/postgres_peers.py [--url postgresql://postgres@127.0.0.1:5432/postgres]
                                        [--n 2000] [--latency-n 300] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _harness import (  # noqa: E402 - the helpers shared with brokers.py
    THREADS,
    Producers,
    loadavg,
    spread,
    start,
    stop,
    tree_peak_rss_mb,
)

CONCURRENCY = 4
MODES = (1, THREADS)  # producer threads of a throughput round


@functools.cache
def producers() -> Producers:
    """The producer threads, started on first use (not in the floor's worker process)."""
    return Producers(THREADS)


@dataclass
class System:
    """One system under test, its worker running."""

    name: str
    send: Callable[[int], Any]
    wait: Callable[[Any, int], None]  # (handle, i): returns once call i completed, or raises
    worker: subprocess.Popen[bytes]
    close: Callable[[], None]
    wait_all: Callable[[list[Any]], None] | None = None
    flush: Callable[[], None] | None = None
    # by producer threads (1 or THREADS): one figure per round
    enqueue: dict[int, list[float]] = field(default_factory=dict)  # calls/s
    flushed: dict[int, list[float]] = field(default_factory=dict)
    e2e: dict[int, list[float]] = field(default_factory=dict)  # tasks/s
    latencies: list[list[float]] = field(default_factory=list)  # ms, one list per round

    def throughput_round(self, n: int, threads: int, record: bool = True) -> None:
        """n calls sent one at a time by ``threads`` producer threads (n/threads each), then
        every completion awaited by this thread."""
        started = time.perf_counter()
        if threads == 1:
            handles = [self.send(i) for i in range(n)]
        else:
            handles = producers().send(self.send, n)
            n = len(handles)
        enqueued = time.perf_counter()
        if self.flush is not None:
            self.flush()
        flushed = time.perf_counter()
        if self.wait_all is not None:
            self.wait_all(handles)
        else:
            for i, h in enumerate(handles):
                self.wait(h, i)
        ended = time.perf_counter()
        if record:
            self.enqueue.setdefault(threads, []).append(n / (enqueued - started))
            self.flushed.setdefault(threads, []).append(n / (flushed - started))
            self.e2e.setdefault(threads, []).append(n / (ended - started))

    def latency_round(self, n: int, warm: int = 5) -> None:
        block = []
        for i in range(warm + n):
            t = time.perf_counter()
            self.wait(self.send(i), i)
            if i >= warm:
                block.append((time.perf_counter() - t) * 1000)
        self.latencies.append(block)


# -- ivy ---------------------------------------------------------------------------------------

def start_ivy(url: str, env: dict[str, str]) -> System:
    import bench_tasks

    import ivy

    worker = start([sys.executable, "-m", "ivy", "worker", "bench_tasks", "--queue", "bench",
                    "--queue-url", url, "--notifier-url", url,
                    "--concurrency", str(CONCURRENCY), "--log-level", "WARNING"], env)
    app = ivy.Ivy(url, url)
    app.registry.add(bench_tasks.noop)

    def wait(call: Any, i: int) -> None:
        if call.result(120) != i:
            raise AssertionError(f"ivy: call {i} returned something else")

    def close() -> None:
        stop(worker)
        app.close()

    return System("ivy", lambda i: app.delayed_call(bench_tasks.noop, i), wait, worker, close,
                  flush=lambda: app.flush(120))


# -- Procrastinate -----------------------------------------------------------------------------

def start_procrastinate(url: str, env: dict[str, str]) -> System:
    import bench_procrastinate_app
    from procrastinate.jobs import Status

    app = bench_procrastinate_app.app
    app.open()
    app.schema_manager.apply_schema()
    worker = start([sys.executable, "-m", "procrastinate", "--app=bench_procrastinate_app.app",
                    "worker", "--queues", "bench_procrastinate",
                    "--concurrency", str(CONCURRENCY)], env)
    manager = app.job_manager

    def poll(job_id: int, pause: float) -> None:
        deadline = time.monotonic() + 120
        while (status := manager.get_job_status(job_id)) in (Status.TODO, Status.DOING):
            if time.monotonic() > deadline:
                raise TimeoutError(f"procrastinate: job {job_id} still {status}")
            time.sleep(pause)
        if status is not Status.SUCCEEDED:
            raise AssertionError(f"procrastinate: job {job_id} {status}")

    def wait(job_id: int, i: int) -> None:
        poll(job_id, 0.001)

    def wait_all(job_ids: list[int]) -> None:
        for job_id in job_ids:
            poll(job_id, 0.005)

    def close() -> None:
        stop(worker)
        app.close()

    return System("Procrastinate 3.10", lambda i: bench_procrastinate_app.noop.defer(i=i), wait,
                  worker, close, wait_all)


# -- pgqueuer ----------------------------------------------------------------------------------

class Loop:
    """An asyncio loop in a thread of its own, for the asynchronous clients."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Any, timeout: float = 120) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


def start_pgqueuer(url: str, env: dict[str, str]) -> System:
    import asyncpg
    from pgqueuer import AsyncpgDriver, Queries
    from pgqueuer.core.completion import CompletionWatcher

    loop = Loop()
    state: dict[str, Any] = {"conns": []}
    local = threading.local()  # each producer thread's Queries, on a connection of its own

    async def connect() -> Any:
        conn = await asyncpg.connect(url)
        state["conns"].append(conn)
        return Queries(AsyncpgDriver(conn))

    async def open_() -> None:
        state["queries"] = await connect()
        await state["queries"].install()
        watch_conn = await asyncpg.connect(url)
        state["conns"].append(watch_conn)
        watch_driver = AsyncpgDriver(watch_conn)
        state["watcher"] = CompletionWatcher(watch_driver, queries=Queries(watch_driver),
                                             debounce=timedelta(milliseconds=1))
        await state["watcher"].__aenter__()

    loop.run(open_())
    local.queries = state["queries"]  # this thread's: it sends in the 1-thread mode
    worker = start([sys.executable, str(HERE / "bench_pgqueuer_app.py")], env)

    async def enqueue(queries: Any, i: int) -> Any:
        return (await queries.enqueue("bench_noop", str(i).encode()))[0]

    def send(i: int) -> Any:
        queries = getattr(local, "queries", None)
        if queries is None:  # a producer thread's first send (in the warm-up)
            queries = local.queries = loop.run(connect())
        return loop.run(enqueue(queries, i))

    async def finished(job_ids: list[Any]) -> list[str]:
        return list(await asyncio.gather(*(state["watcher"].wait_for(j) for j in job_ids)))

    def wait_all(job_ids: list[Any]) -> None:
        statuses = loop.run(finished(job_ids))
        if any(s != "successful" for s in statuses):
            raise AssertionError(f"pgqueuer: {sorted(set(statuses))}")

    def close() -> None:
        stop(worker)

        async def close_() -> None:
            await state["watcher"].__aexit__(None, None, None)
            for conn in state["conns"]:
                await conn.close()

        loop.run(close_(), 30)
        loop.close()

    return System("pgqueuer 1.6", send, lambda job_id, i: wait_all([job_id]), worker, close,
                  wait_all)


# -- the floor ---------------------------------------------------------------------------------

FLOOR_DDL = """
CREATE TABLE IF NOT EXISTS floor_jobs (id bigserial PRIMARY KEY, args jsonb NOT NULL);
CREATE TABLE IF NOT EXISTS floor_results (id bigint PRIMARY KEY, result jsonb NOT NULL);
"""
FLOOR_TAKE = "SELECT id, args FROM floor_jobs ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED"
FLOOR_DONE = """WITH d AS (DELETE FROM floor_jobs WHERE id = %(id)s),
i AS (INSERT INTO floor_results (id, result) VALUES (%(id)s, %(result)s))
SELECT pg_notify('floor_results', %(key)s)"""


def floor_pg_worker(url: str) -> None:
    """The floor's worker process: CONCURRENCY threads, each on its own connection."""
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())

    def consume() -> None:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("LISTEN floor_jobs")
            while not stopping.is_set():
                with conn.transaction():
                    row = conn.execute(FLOOR_TAKE).fetchone()
                    if row is not None:
                        result = row[1][0]  # the task: return its argument
                        conn.execute(FLOOR_DONE, {"id": row[0], "result": json.dumps(result),
                                                  "key": str(row[0])})
                if row is None:
                    for _ in conn.notifies(timeout=1.0, stop_after=1):
                        pass

    threads = [threading.Thread(target=consume) for _ in range(CONCURRENCY)]
    for t in threads:
        t.start()
    print("ready", flush=True)
    for t in threads:
        t.join()


def start_floor(url: str, env: dict[str, str]) -> System:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(FLOOR_DDL)
    worker = start([sys.executable, str(Path(__file__).resolve()), "--floor-worker",
                    "--url", url], env)
    listen_conn = psycopg.connect(url, autocommit=True)
    read_conn = psycopg.connect(url, autocommit=True)
    listen_conn.execute("LISTEN floor_results")
    events: dict[int, threading.Event] = {}
    values: dict[int, Any] = {}
    lock = threading.Lock()
    stopping = threading.Event()
    local = threading.local()  # each producer thread sends on a connection of its own
    local.conn = psycopg.connect(url, autocommit=True)  # this thread's (the 1-thread mode)
    conns = [listen_conn, read_conn, local.conn]

    def listen() -> None:
        while not stopping.is_set():
            ids = [int(n.payload) for n in listen_conn.notifies(timeout=0.5, stop_after=1)]
            if not ids:
                continue
            rows = read_conn.execute("SELECT id, result FROM floor_results WHERE id = ANY(%s)",
                                     [ids]).fetchall()
            with lock:
                for job_id, result in rows:
                    values[job_id] = result
                    events.setdefault(job_id, threading.Event()).set()

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()

    def send(i: int) -> int:
        conn = getattr(local, "conn", None)
        if conn is None:  # a producer thread's first send (in the warm-up)
            conn = local.conn = psycopg.connect(url, autocommit=True)
            with lock:
                conns.append(conn)
        row = conn.execute(
            "WITH j AS (INSERT INTO floor_jobs (args) VALUES (%s) RETURNING id) "
            "SELECT id, pg_notify('floor_jobs', '') FROM j", [json.dumps([i])]).fetchone()
        assert row is not None
        with lock:
            events.setdefault(row[0], threading.Event())
        return int(row[0])

    def wait(job_id: int, i: int) -> None:
        if not events[job_id].wait(120):
            raise TimeoutError(f"floor: job {job_id}")
        with lock:
            del events[job_id]
            value = values.pop(job_id)
        if value != i:
            raise AssertionError(f"floor: job {job_id} returned {value!r}")

    def close() -> None:
        stopping.set()
        listener.join(2)
        stop(worker)
        for conn in conns:  # some are the producer threads': the run is over
            conn.close()

    return System("floor (bare psycopg 3)", send, wait, worker, close)


# -- the run -----------------------------------------------------------------------------------

def run(systems: list[System], n: int, latency_n: int, rounds: int) -> list[str]:
    """Warm every system up, then ``rounds`` turns over the systems: a throughput round of n
    calls by one producer thread for each system (in a new seeded order), the same by
    ``THREADS`` producer threads (another order), then (another order) a block of
    latency_n/rounds round trips (the first 5 left out of the figures). Returns the load seen
    at each turn and at the end."""
    order = random.Random(7)
    for s in systems:  # worker ready (the first calls wait for it), connections open
        for threads in MODES:  # (one per producer thread where a system needs one)
            s.throughput_round(48, threads, record=False)
        s.latency_round(10)
        s.latencies.clear()
    loads = []
    for k in range(rounds):
        loads.append(loadavg())
        print(f"round {k + 1}: load {loads[-1]}", flush=True)
        for threads in MODES:
            for s in order.sample(systems, len(systems)):
                s.throughput_round(n, threads)
                print(f"  {s.name:<24} {threads} producer thread{'s' if threads > 1 else ' '} "
                      f"enqueue {s.enqueue[threads][-1]:>7,.0f}/s  end-to-end "
                      f"{s.e2e[threads][-1]:>7,.0f}/s", flush=True)
        for s in order.sample(systems, len(systems)):
            s.latency_round(max(1, latency_n // rounds))
            print(f"  {s.name:<24} round trip p50 {statistics.median(s.latencies[-1]):.2f} ms",
                  flush=True)
    loads.append(loadavg())
    return loads


def report(systems: list[System]) -> None:
    print("| system | enqueue calls/s, 1 thread | 4 threads | enqueue + flush, 1 thread "
          "| 4 threads | end-to-end tasks/s, 1 thread | end-to-end, 4 threads | p50 ms "
          "| p99 ms | round-trip p50 per round, ms | worker peak RSS MB |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    rss: dict[str, float] = {}
    for s in systems:
        lat = sorted(x for block in s.latencies for x in block)
        p50, p99 = statistics.median(lat), lat[max(0, int(len(lat) * 0.99) - 1)]
        rss[s.name] = tree_peak_rss_mb(s.worker.pid)
        cells = [spread(s.enqueue[t]) for t in MODES]
        cells += [spread(s.flushed[t]) if s.flush is not None else "-" for t in MODES]
        cells += [spread(s.e2e[t]) for t in MODES]
        per_round = spread([statistics.median(b) for b in s.latencies], ".2f")
        print(f"| {s.name} | {' | '.join(cells)} | {p50:.2f} | {p99:.2f} | {per_round} | "
              f"{rss[s.name]:.1f} |", flush=True)
    by = {s.name: s for s in systems}
    ivy_s = by.get("ivy")
    if ivy_s is None:
        return

    def ratio(a: list[float], b: list[float]) -> str:
        return f"x{statistics.median(a) / statistics.median(b):.2f}"

    lat_i = statistics.median([x for b in ivy_s.latencies for x in b])
    for other in systems:
        if other is ivy_s:
            continue
        lat_o = statistics.median([x for b in other.latencies for x in b])
        modes = "; ".join(f"{t} thread{'s' if t > 1 else ''}: end-to-end "
                          f"{ratio(ivy_s.e2e[t], other.e2e[t])}, enqueue "
                          f"{ratio(ivy_s.enqueue[t], other.enqueue[t])}" for t in MODES)
        print(f"ivy / {other.name}: {modes}; p50 {lat_i - lat_o:+.2f} ms "
              f"(x{lat_i / lat_o:.2f}), RSS x{rss['ivy'] / rss[other.name]:.2f}")
    peers = [s for s in systems if s is not ivy_s and not s.name.startswith("floor")]
    for t in MODES:
        if not peers:
            break
        faster = max(peers, key=lambda s: statistics.median(s.e2e[t]))
        print(f"{t} producer thread{'s' if t > 1 else ''}: the faster peer is {faster.name}; "
              f"ivy end to end {ratio(ivy_s.e2e[t], faster.e2e[t])} its median, "
              f"x{min(ivy_s.e2e[t]) / max(faster.e2e[t]):.2f} ivy's slowest round over its "
              f"fastest")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", default="postgresql://postgres@127.0.0.1:5432/postgres",
                        help="a database where this one may create and drop its own")
    parser.add_argument("--n", type=int, default=2000, help="calls per throughput round")
    parser.add_argument("--latency-n", type=int, default=300,
                        help="sequential round trips per system, over all rounds")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", action="append",
                        choices=["ivy", "procrastinate", "pgqueuer", "floor"])
    parser.add_argument("--floor-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.floor_worker:
        floor_pg_worker(args.url)
        return
    db = f"bench_peers_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(args.url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{db}"')
    url = f"{args.url.rsplit('/', 1)[0]}/{db}"
    env = {**os.environ, "BENCH_PG_URL": url,
           "PYTHONPATH": os.pathsep.join([str(HERE), str(HERE.parent)])}
    os.environ["BENCH_PG_URL"] = url  # read by the peers' apps, here too
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores, load {loadavg()}; "
          f"database {db}; n={args.n} per round by 1 and by {THREADS} producer threads, "
          f"{args.rounds} rounds, {args.latency_n} round trips per system, systems taken in "
          f"turn", flush=True)
    starters: dict[str, Callable[[str, dict[str, str]], System]] = {
        "ivy": start_ivy, "procrastinate": start_procrastinate,
        "pgqueuer": start_pgqueuer, "floor": start_floor}
    systems: list[System] = []
    try:
        for key in args.only or list(starters):
            systems.append(starters[key](url, env))
        loads = run(systems, args.n, args.latency_n, args.rounds)
        for s in systems:
            if s.worker.poll() is not None:
                raise RuntimeError(f"{s.name}'s worker exited: {s.worker.tail}")  # type: ignore[attr-defined]
        report(systems)
        print("load at each round and at the end: " + "; ".join(loads))
    finally:
        for s in systems:
            try:
                s.close()
            except Exception as exc:  # the others still close, the database still goes
                print(f"closing {s.name}: {exc!r}", file=sys.stderr)
        with psycopg.connect(args.url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')


if __name__ == "__main__":
    main()
