"""Chaos soak: N calls through RabbitMQ + Redis with two worker processes while workers are
SIGKILLed (and restarted), Redis restarts, RabbitMQ restarts, and the producer's RabbitMQ
connection is closed by the broker while calls are unconfirmed. Prints one summary line: calls
sent, results received, calls failed loudly (PublishError), calls silently lost (neither: must
be 0), calls whose callback ran more than once (must be 0), task bodies executed more than once
(allowed: delivery is at least once), and the wall time.

The connection-close fault: while a burst of calls is being sent (one ``send_task`` after
another, confirms asynchronous), ``rabbitmqctl close_connection`` closes every connection of
this process on the node. For the calls of that burst the line shows how many completed, failed
loudly or were lost, and how many messages were unconfirmed when the connection went
(``unconfirmed_at_close``: the ones ivy must send again on the next connection).

It starts its own redis-server (AOF, fsync always) and its own RabbitMQ node (own
RABBITMQ_NODENAME, ports, config and data folder, 127.0.0.1 only) on free ports, so the
machine's services are never touched. Needs root (RabbitMQ runs as the rabbitmq user).

``--broker redis`` runs the same soak on Redis alone: Redis Streams as the queue and pub/sub as
the notifier, on the one private redis-server (no RabbitMQ, so no RabbitMQ restarts or
connection closes; root is not needed). Its workers reserve messages for
``REDIS_RESERVE_TIME`` seconds, so that a killed worker's messages come back within the run.

    python benchmarks/chaos.py [--n 10000] [--kills 5] [--redis-restarts 1] [--rabbit-restarts 1]
                               [--connection-closes 1] [--broker rabbitmq|redis]
                               [--notifier redis|amqp] [--poison-every 200] [--reply-deletes 1]

``--broker postgres`` runs it on a private PostgreSQL cluster alone (queue and notifier), with
two faults of its own: ``--pg-kills`` (the server terminates every client connection) and
``--pg-restarts`` (a restart mid-run).

``--notifier amqp`` runs it on RabbitMQ alone: results go back through the AMQP notifier's
reply queues, no Redis is started (``--redis-restarts`` must then be 0).

Two more faults (issue 20):

* ``--poison-every N`` (default 200): one call in N is a poison message, a task that SIGKILLs
  its own worker every time it runs (restarted by the soak, as a supervisor would). The queue
  allows ``POISON_LIMIT`` lost deliveries (``?max_deliveries=``), so each poison call must end
  errored with a reason starting "delivery limit"; a work call prefetched by a killed worker
  may reach the limit too, and then ends errored the same way, which the line counts
  (``errored``, ``poison_stopped``): every call gets exactly one result or an error that says
  why.
* ``--reply-deletes N`` (RabbitMQ alone): the producer's reply queue is deleted mid-run, as an
  operator or a policy might; results published meanwhile come back unroutable and are sent
  again once the queue is declared anew. The results sitting in the queue when it is deleted
  are destroyed by the broker (``results_destroyed``, from its delete-ok): those calls, and no
  others, may stay pending (``lost``); the producer fails them with ``ResultExpired`` after
  ``pending_ttl``.

``--time-limit S`` starts the workers with a hard time limit on every task (``ivy worker
--time-limit S``): each worker is then a supervisor whose worker process runs the tasks inline
under the limit (ivy.worker.limits). The soak's kills hit the supervisors (their worker
processes see them gone and stop); a poison call kills a worker process, which its supervisor
replaces, and ends at the delivery limit as without a time limit. (A worker that no supervisor
watches, ``app.listen()``, runs such calls in runner processes: there a poison call kills its
runner and ends errored as ``WorkerLost``, which ``poison_stopped`` counts too.)

tests/worker/test_chaos.py runs a short form of each.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests" / "support"))

from servers import PrivatePostgres, PrivateRabbit, PrivateRedis  # noqa: E402

import ivy  # noqa: E402

#: the reservation of the Redis Streams soak's workers (RabbitMQ redelivers on connection loss)
REDIS_RESERVE_TIME = 3.0
#: lost deliveries a message may have before it is dead-lettered (the poison fault's limit)
POISON_LIMIT = 3
#: seconds before a reply queue deletion within which a finished task's result may still be
#: on its way into that queue (published, not yet enqueued) when it goes
IN_TRANSIT = 0.5
#: seconds without any result settling after which the soak stops waiting for the rest
IDLE = 30.0


@dataclass
class Summary:
    sent: int
    received: int
    lost: int
    double_callbacks: int
    executed_more_than_once: int
    kills: int
    redis_restarts: int
    rabbit_restarts: int
    send_retries: int
    wall: float
    failed_loudly: int = 0
    connection_closes: int = 0
    close_burst: int = 0  # calls sent in the bursts during which the connection was closed
    close_completed: int = 0
    close_failed_loudly: int = 0
    close_lost: int = 0
    unconfirmed_at_close: int = 0
    errored: int = 0  # calls that ended with an error naming why (RemoteTaskError)
    poison: int = 0  # poison calls sent
    poison_stopped: int = 0  # poison calls errored with "delivery limit"
    worker_deaths: int = 0  # workers that died (killed by the soak or by a poison message)
    reply_deletes: int = 0
    results_destroyed: int = 0  # results the broker deleted with the reply queue
    #: lost calls whose task ran within IN_TRANSIT s before a reply queue deletion (or just
    #: after): results on their way into the queue as it went, which RabbitMQ confirms to
    #: the worker and drops, with no return (measured: docs/reliability.md)
    results_in_transit: int = 0
    pg_kills: int = 0  # every client connection terminated by the server (--broker postgres)
    pg_restarts: int = 0

    def line(self) -> str:
        return (f"chaos: sent={self.sent} received={self.received} "
                f"failed_loudly={self.failed_loudly} lost={self.lost} "
                f"double_callbacks={self.double_callbacks} "
                f"executed_more_than_once={self.executed_more_than_once} "
                f"kills={self.kills} redis_restarts={self.redis_restarts} "
                f"rabbit_restarts={self.rabbit_restarts} "
                f"connection_closes={self.connection_closes} "
                f"[burst={self.close_burst} unconfirmed_at_close={self.unconfirmed_at_close} "
                f"completed={self.close_completed} failed_loudly={self.close_failed_loudly} "
                f"lost={self.close_lost}] "
                f"errored={self.errored} poison={self.poison} "
                f"poison_stopped={self.poison_stopped} worker_deaths={self.worker_deaths} "
                f"reply_deletes={self.reply_deletes} "
                f"results_destroyed={self.results_destroyed} "
                f"results_in_transit={self.results_in_transit} "
                f"pg_kills={self.pg_kills} pg_restarts={self.pg_restarts} "
                f"send_retries={self.send_retries} wall={self.wall:.1f}s")

    @property
    def ok(self) -> bool:
        """Nothing lost but what the broker destroyed with a deleted reply queue, no callback
        twice, every poison call stopped with its reason."""
        return (self.lost <= self.results_destroyed + self.results_in_transit
                and self.double_callbacks == 0
                and self.poison_stopped == self.poison)


def own_amqp_ports(server_port: int) -> set[int]:
    """Local ports of this process's TCP connections to ``server_port`` (Linux /proc)."""
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = set()
    for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, remote, state, inode = fields[1], fields[2], fields[3], fields[9]
            if (state == "01" and inode in inodes
                    and int(remote.rsplit(":", 1)[1], 16) == server_port):
                ports.add(int(local.rsplit(":", 1)[1], 16))
    return ports


def producer_connections(rabbit: PrivateRabbit) -> list[str]:
    """The broker's ids (Erlang pids) of every connection of this process to ``rabbit``."""
    ports = own_amqp_ports(rabbit.port)
    listed = subprocess.run(
        ["rabbitmqctl", "-n", rabbit.node, "list_connections", "pid", "peer_port", "--quiet",
         "--no-table-headers"], env=rabbit.env, capture_output=True, text=True, timeout=60)
    return [parts[0] for parts in map(str.split, listed.stdout.splitlines())
            if len(parts) == 2 and parts[1].isdigit() and int(parts[1]) in ports]


def close_connections(rabbit: PrivateRabbit, pids: list[str]) -> None:
    """Close connections from the broker's side, as an operator or a broker failover does."""
    for pid in pids:
        subprocess.run(["rabbitmqctl", "-n", rabbit.node, "close_connection", pid,
                        "chaos: the producer's connection closed by the broker"],
                       env=rabbit.env, capture_output=True, timeout=60)


def run(n: int = 10_000, kills: int = 5, redis_restarts: int = 1, rabbit_restarts: int = 1,
        batch: int = 50, log: Any = print, connection_closes: int = 0,
        broker: str = "rabbitmq", notifier: str = "redis", poison_every: int = 0,
        reply_deletes: int = 0, pg_kills: int = 0, pg_restarts: int = 0,
        time_limit: float | None = None) -> Summary:
    if broker not in ("rabbitmq", "redis", "postgres"):
        raise ValueError(f"broker={broker!r}: expected 'rabbitmq', 'redis' or 'postgres'")
    if broker == "postgres":
        notifier = "postgres"
        if redis_restarts or rabbit_restarts or connection_closes or reply_deletes:
            raise ValueError("broker='postgres' runs PostgreSQL alone: its faults are "
                             "pg_kills and pg_restarts")
    elif pg_kills or pg_restarts:
        raise ValueError("pg_kills and pg_restarts need broker='postgres'")
    if notifier not in ("redis", "amqp", "postgres"):
        raise ValueError(f"notifier {notifier!r}: use 'redis' or 'amqp'")
    if broker == "redis" and (rabbit_restarts or connection_closes or notifier == "amqp"):
        raise ValueError("RabbitMQ restarts, connection closes and the AMQP notifier need "
                         "broker='rabbitmq'")
    if notifier == "amqp" and redis_restarts:
        raise ValueError("with notifier='amqp' there is no Redis to restart: redis_restarts=0")
    if reply_deletes and notifier != "amqp":
        raise ValueError("reply queues are deleted on RabbitMQ alone: notifier='amqp'")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="ivy-chaos-") as tmp:
        base = Path(tmp)
        os.chmod(base, 0o755)  # the rabbitmq user reaches its folder through this one
        execs = base / "execs"
        execs.mkdir()
        redis = PrivateRedis(base / "redis") if notifier == "redis" else None
        rabbit = PrivateRabbit(base / "rabbit")
        postgres = PrivatePostgres() if broker == "postgres" else None
        if redis is not None:
            redis.start()
        if postgres is not None:
            postgres.start()
            queue_url = (f"{postgres.url}?max_deliveries={POISON_LIMIT}&poll_interval=0.5")
            extra = ["--reserve-time", str(REDIS_RESERVE_TIME)]
            notifier_url = postgres.url
            log(f"chaos: PostgreSQL on {postgres.port} is queue and notifier")
        elif broker == "rabbitmq":
            rabbit.start()
            queue_url, extra = f"{rabbit.url}?max_deliveries={POISON_LIMIT}", []
            notifier_url = redis.url if redis is not None else rabbit.url
            log(f"chaos: RabbitMQ node {rabbit.node} on {rabbit.port}, notifier {notifier_url}")
        else:
            assert redis is not None
            queue_url = f"{redis.url}?max_deliveries={POISON_LIMIT}"
            extra = ["--reserve-time", str(REDIS_RESERVE_TIME)]
            notifier_url = redis.url
            log(f"chaos: redis on {redis.port} is queue (Streams) and notifier")
        env = {**os.environ, "CHAOS_LOG_DIR": str(execs), "PYTHONPATH": str(HERE)}
        if time_limit is not None:  # every task under a hard limit: supervised workers
            extra = [*extra, "--time-limit", str(time_limit)]

        def start_worker() -> subprocess.Popen[bytes]:
            return subprocess.Popen(
                [sys.executable, "-m", "ivy", "worker", "chaos_tasks", "--queue", "chaos",
                 "--queue-url", queue_url, "--notifier-url", notifier_url, "--concurrency", "4",
                 "--log-level", "ERROR", *extra], cwd=HERE, env=env, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL)

        workers = [start_worker(), start_worker()]
        deaths = [0]
        reaping = threading.Event()
        workers_lock = threading.Lock()  # the reaper and the kill fault restart workers

        def reap() -> None:
            """Restart a worker that died (a poison message killed it), as a supervisor
            does; the soak's own kills restart theirs at once."""
            while not reaping.wait(0.2):
                with workers_lock:
                    for k, w in enumerate(workers):
                        if w.poll() is not None:
                            deaths[0] += 1
                            workers[k] = start_worker()

        reaper = threading.Thread(target=reap, daemon=True)
        reaper.start()
        app = ivy.Ivy(queue_url, notifier_url)
        import chaos_tasks

        app.registry.add(chaos_tasks.work)
        app.registry.add(chaos_tasks.poison)
        poison_calls: list[ivy.Call[Any]] = []
        destroyed: list[int] = []  # results in the reply queue when it was deleted
        deletions: list[tuple[float, float]] = []  # when each deletion was asked, and done
        pending_at_close: set[str] = set()
        counts: Counter[int] = Counter()
        lock = threading.Lock()

        def callback(i: int) -> Any:
            def done(err: Any, result: Any) -> None:
                with lock:
                    counts[i] += 1

            return done

        # how many messages were unconfirmed (handed to the lost channel) when a connection of
        # the publisher went: read from the backend just before its own handler runs
        publisher: Any = getattr(app.queue_backend, "_publishing", None)
        unconfirmed_at_loss: list[int] = []
        if broker == "rabbitmq":
            original_lost = publisher._channel_lost

            def publisher_lost() -> None:
                with publisher._lock:
                    unconfirmed_at_loss.append(sum(
                        1 for p in publisher._unconfirmed.values()
                        if p.handed and not p.future.done()))
                original_lost()

            publisher._channel_lost = publisher_lost
        burst_calls: list[ivy.Call[Any]] = []
        unconfirmed_at_close: list[int] = []

        tokens: dict[str, str] = {}  # call id -> the token its runs write to the exec logs

        def send(j: int) -> ivy.Call[Any]:
            token = uuid.uuid4().hex
            if poison_every and j < n and j % poison_every == poison_every - 1:
                call = app.send_task(chaos_tasks.poison, (j, token), callback=callback(j))
                poison_calls.append(call)
            else:
                call = app.send_task(chaos_tasks.work, (j, token), callback=callback(j))
            tokens[call.id] = token
            return call

        def delete_reply_queue() -> None:
            """Delete the producer's reply queue from another connection."""
            import pika

            conn = pika.BlockingConnection(pika.URLParameters(rabbit.url))
            try:
                deleting = time.time()
                deleted = conn.channel().queue_delete(app.channel)
                deletions.append((deleting, time.time()))
            finally:
                conn.close()
            destroyed.append(int(getattr(deleted.method, "message_count", 0) or 0))
            log(f"chaos: deleted the reply queue with {destroyed[-1]} result(s) in it")

        def close_during_burst() -> None:
            """Send calls as fast as one thread can while another closes the producer's
            connections from the broker's side, and 0.3 s beyond. The burst's calls are extra
            (numbered from n + 1,000,000 on), so the plan of the other faults stands."""
            deadline = time.monotonic() + 60
            pids = producer_connections(rabbit)
            while not pids and time.monotonic() < deadline:  # still reconnecting after a
                time.sleep(0.5)  # restart (its backoff grows while the node is down)
                pids = producer_connections(rabbit)
            losses = len(unconfirmed_at_loss)
            closer = threading.Thread(target=close_connections, args=(rabbit, pids))
            j = n + 1_000_000 * (1 + done_faults["close"])
            closer.start()
            until = None
            while until is None or time.monotonic() < until:
                if until is None and not closer.is_alive():
                    until = time.monotonic() + 0.3
                try:
                    sent = [send(k) for k in range(j, j + batch)]
                except ivy.IvyError as exc:  # refused at once: loud, and a user would retry
                    log(f"chaos: send failed during the close ({exc}); retrying")
                    time.sleep(0.05)
                    continue
                calls.extend(sent)
                burst_calls.extend(sent)
                j += batch
            closer.join()
            unconfirmed_at_close.append(sum(unconfirmed_at_loss[losses:]))
            log(f"chaos: closed {len(pids)} producer connection(s) during a burst of "
                f"{len(burst_calls)} calls; {unconfirmed_at_close[-1]} message(s) were "
                "unconfirmed at the loss")

        faults = (["kill"] * kills + ["redis"] * redis_restarts + ["rabbit"] * rabbit_restarts
                  + ["close"] * connection_closes + ["reply"] * reply_deletes
                  + ["pgkill"] * pg_kills + ["pgrestart"] * pg_restarts)
        random.shuffle(faults)
        plan = [(int(n * (0.1 + 0.7 * k / max(1, len(faults)))), f)
                for k, f in enumerate(faults)]
        calls: list[ivy.Call[Any]] = []
        send_retries = 0
        done_faults = Counter[str]()
        try:
            i = 0
            while i < n:
                while plan and plan[0][0] <= i:
                    _, fault = plan.pop(0)
                    if fault == "kill":
                        with workers_lock:
                            k = random.randrange(len(workers))
                            workers[k].kill()
                            workers[k].wait()
                            workers[k] = start_worker()
                    elif fault == "redis" and redis is not None:
                        redis.stop()
                        redis.start()
                    elif fault == "close":
                        close_during_burst()
                    elif fault == "reply":
                        delete_reply_queue()
                    elif fault == "pgkill" and postgres is not None:
                        postgres.terminate_connections()
                    elif fault == "pgrestart" and postgres is not None:
                        postgres.restart()
                    else:
                        rabbit.stop()
                        rabbit.start()
                    done_faults[fault] += 1
                    log(f"chaos: {fault} at call {i}")
                size = min(batch, n - i)
                try:
                    sent = [send(j) for j in range(i, i + size)]
                except ivy.IvyError as exc:  # the broker is away: a user would retry
                    send_retries += 1
                    log(f"chaos: send failed ({exc}); retrying")
                    time.sleep(0.5)
                    continue
                calls.extend(sent)
                i += size
            # wait for every result: until the deadline, or until none has come for IDLE s
            # (what is still pending then is lost; waiting longer only slows a failing run)
            deadline = time.monotonic() + 120 + len(calls) / 50
            settled, idle_since = 0, time.monotonic()
            for call in calls:
                while not call.done():
                    now = time.monotonic()
                    done_now = sum(1 for c in calls if c.done())
                    if done_now > settled:
                        settled, idle_since = done_now, now
                    if now >= deadline or now - idle_since >= IDLE:
                        break
                    time.sleep(0.2)
                if not call.done():
                    break
                try:
                    call.result(0)
                except ivy.ResultTimeout:
                    break
                except ivy.RemoteTaskError as exc:
                    log(f"chaos: call {call.id} errored: {exc}")
                except ivy.PublishError as exc:
                    log(f"chaos: call {call.id} failed loudly: {exc}")
        finally:
            # what is still pending now is lost: close() fails it with an error of its own
            pending_at_close.update(c.id for c in calls if not c.done())
            reaping.set()
            reaper.join()
            for w in workers:
                w.send_signal(signal.SIGTERM)
            for w in workers:
                try:
                    w.wait(60)
                except subprocess.TimeoutExpired:
                    w.kill()
            app.close()
            if broker == "rabbitmq":
                rabbit.stop()
            if redis is not None:
                redis.stop()
            if postgres is not None:
                postgres.remove()

        def outcome(c: ivy.Call[Any]) -> str:
            if not c.done() or c.id in pending_at_close:
                return "lost"
            error = c.exception(0)
            if isinstance(error, ivy.PublishError):
                return "failed"
            return "errored" if error is not None else "received"

        def stopped(c: ivy.Call[Any]) -> bool:
            error = c.exception(0) if c.done() else None
            return isinstance(error, ivy.RemoteTaskError) and (
                "delivery limit" in str(error)
                or (time_limit is not None and error.type == "WorkerLost"))

        outcomes = Counter(map(outcome, calls))
        burst = Counter(map(outcome, burst_calls))
        # the exec logs: one line per run, "<token> <time it ended>"
        ends: dict[str, list[float]] = {}
        for f in execs.iterdir():
            for line in f.read_text().splitlines():
                token, _, when = line.partition(" ")
                ends.setdefault(token, []).append(float(when or 0))
        runs = Counter({token: len(times) for token, times in ends.items()})

        def in_transit(c: ivy.Call[Any]) -> bool:
            """Its task ended just before (or while) a reply queue was deleted."""
            return any(start - IN_TRANSIT <= end <= done + 0.2
                       for end in ends.get(tokens.get(c.id, ""), [])
                       for start, done in deletions)

        # where a lost call was lost: its task never ran (the message), or ran (the result)
        for c in [c for c in calls if outcome(c) == "lost"][:20]:
            log(f"chaos: lost call {c.id} ({'burst' if c in burst_calls else 'plan'}): its "
                f"task ran {runs[tokens.get(c.id, '')]} time(s)"
                f"{', as the reply queue was deleted' if in_transit(c) else ''}")
        return Summary(
            sent=len(calls), received=outcomes["received"], lost=outcomes["lost"],
            double_callbacks=sum(1 for c in counts.values() if c > 1),
            executed_more_than_once=sum(1 for c in runs.values() if c > 1),
            kills=done_faults["kill"], redis_restarts=done_faults["redis"],
            rabbit_restarts=done_faults["rabbit"], send_retries=send_retries,
            wall=time.monotonic() - started, failed_loudly=outcomes["failed"],
            connection_closes=done_faults["close"], close_burst=len(burst_calls),
            close_completed=burst["received"], close_failed_loudly=burst["failed"],
            close_lost=burst["lost"], unconfirmed_at_close=sum(unconfirmed_at_close),
            errored=outcomes["errored"], poison=len(poison_calls),
            poison_stopped=sum(map(stopped, poison_calls)),
            worker_deaths=deaths[0] + done_faults["kill"], reply_deletes=done_faults["reply"],
            results_destroyed=sum(destroyed),
            results_in_transit=sum(1 for c in calls if outcome(c) == "lost" and in_transit(c)),
            pg_kills=done_faults["pgkill"], pg_restarts=done_faults["pgrestart"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--redis-restarts", type=int, default=None,
                        help="default 1, or 0 with --notifier amqp")
    parser.add_argument("--rabbit-restarts", type=int, default=1)
    parser.add_argument("--connection-closes", type=int, default=1,
                        help="closes of the producer's RabbitMQ connection during a burst")
    parser.add_argument("--broker", choices=["rabbitmq", "redis", "postgres"],
                        default="rabbitmq",
                        help="the queue: a private RabbitMQ node (default), Redis Streams "
                             "on the private redis-server, or a private PostgreSQL cluster "
                             "(queue and notifier)")
    parser.add_argument("--pg-kills", type=int, default=1,
                        help="--broker postgres: the server terminates every connection")
    parser.add_argument("--pg-restarts", type=int, default=1,
                        help="--broker postgres: the server restarts")
    parser.add_argument("--notifier", choices=("redis", "amqp"), default="redis",
                        help="where results go back: Redis, or RabbitMQ's reply queues")
    parser.add_argument("--poison-every", type=int, default=200, metavar="N",
                        help="one call in N kills its worker each time it runs (0: none)")
    parser.add_argument("--reply-deletes", type=int, default=None,
                        help="deletes of the producer's reply queue (default 1 with --notifier "
                             "amqp, else 0)")
    parser.add_argument("--time-limit", type=float, default=None, metavar="S",
                        help="run every task in a runner process (ivy worker --time-limit S)")
    parser.add_argument("--quiet", action="store_true", help="print the summary line only")
    args = parser.parse_args()
    if args.broker in ("redis", "postgres"):
        args.rabbit_restarts = args.connection_closes = 0
    if args.broker == "postgres":
        args.redis_restarts = 0
    else:
        args.pg_kills = args.pg_restarts = 0
    if args.broker == "rabbitmq":
        why = PrivateRabbit.available()
        if why is not None:
            sys.exit(f"chaos: cannot run: {why}")
    redis_restarts = args.redis_restarts
    if redis_restarts is None:
        redis_restarts = 0 if args.notifier == "amqp" else 1
    summary = run(args.n, args.kills, redis_restarts, args.rabbit_restarts,
                  log=(lambda *a: None) if args.quiet else print,
                  connection_closes=args.connection_closes, broker=args.broker,
                  notifier=args.notifier, poison_every=args.poison_every,
                  reply_deletes=(args.reply_deletes if args.reply_deletes is not None
                                 else int(args.notifier == "amqp")),
                  pg_kills=args.pg_kills, pg_restarts=args.pg_restarts,
                  time_limit=args.time_limit)
    print(summary.line())
    sys.exit(0 if summary.ok else 1)


if __name__ == "__main__":
    main()
