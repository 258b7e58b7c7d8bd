"""Private Redis, RabbitMQ and PostgreSQL servers on free ports, for tests and the chaos soak
that restart them (the machine's own services are never touched)."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def answers(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
    except OSError:
        return False
    return True


def wait_until(condition: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} within {timeout} s")
        time.sleep(0.05)


class PrivateRedis:
    """A redis-server of our own, with AOF (fsync always) so a restart keeps the data."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "yes", "--appendfsync", "always", "--dir", str(self.dir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(lambda: answers(self.port), 30, "redis-server did not start")

    def stop(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(30)
            self.process = None


class PrivateRabbit:
    """A RabbitMQ node of our own: its own RABBITMQ_NODENAME, ports, config and data folder,
    listening on 127.0.0.1 only. Needs the Debian rabbitmq-server package and root (the
    server runs as the rabbitmq user, which must own the folder)."""

    def __init__(self, directory: Path, prefix: str = "ivy") -> None:
        self.port = free_port()
        self.dist_port = free_port()
        self.node = f"{prefix}{self.port}@localhost"
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "rabbitmq.conf").write_text(f"listeners.tcp.local = 127.0.0.1:{self.port}\n")
        (self.dir / "enabled_plugins").write_text("[].\n")
        for sub in ("mnesia", "log"):
            (self.dir / sub).mkdir(exist_ok=True)
        if os.geteuid() == 0:
            user = pwd.getpwnam("rabbitmq")
            for path in [self.dir, *self.dir.rglob("*")]:
                os.chown(path, user.pw_uid, user.pw_gid)
        self.env = {**os.environ, "RABBITMQ_NODENAME": self.node,
                    "RABBITMQ_NODE_PORT": str(self.port), "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
                    "RABBITMQ_DIST_PORT": str(self.dist_port),
                    "RABBITMQ_CONFIG_FILE": str(self.dir / "rabbitmq.conf"),
                    "RABBITMQ_MNESIA_BASE": str(self.dir / "mnesia"),
                    "RABBITMQ_LOG_BASE": str(self.dir / "log"),
                    "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.dir / "enabled_plugins"),
                    "RABBITMQ_PID_FILE": str(self.dir / "pid")}
        self.process: subprocess.Popen[bytes] | None = None

    @staticmethod
    def available() -> str | None:
        """None if a private node can be started here, else why not."""
        if shutil.which("rabbitmq-server") is None or shutil.which("rabbitmqctl") is None:
            return "rabbitmq-server is not installed"
        if os.geteuid() != 0:
            return "starting a private RabbitMQ node needs root"
        try:
            pwd.getpwnam("rabbitmq")
        except KeyError:
            return "there is no rabbitmq user"
        return None

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/%2F"

    def start(self) -> None:
        self.launch()
        self.wait_started()

    def launch(self) -> None:
        """Start the node's process, not waiting for it (see :meth:`wait_started`)."""
        self.process = subprocess.Popen(["rabbitmq-server"], env=self.env,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def wait_started(self, timeout: float = 120) -> None:
        wait_until(lambda: answers(self.port), timeout, f"RabbitMQ node {self.node} did not start")

    def ctl(self, *args: str, timeout: float = 120) -> str:
        """Run ``rabbitmqctl -n NODE ARGS`` against this node; its output, or raise with it."""
        done = subprocess.run(["rabbitmqctl", "-n", self.node, *args], env=self.env,
                              capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise RuntimeError(f"rabbitmqctl -n {self.node} {' '.join(args)} failed "
                               f"({done.returncode}): {done.stdout}{done.stderr}")
        return done.stdout

    def vm_pid(self) -> int:
        """The process id of the node's Erlang VM."""
        return int(self.ctl("eval", "list_to_integer(os:getpid()).").strip())

    def kill(self, pid: int | None = None) -> None:
        """SIGKILL the node's Erlang VM (``pid``, found first if not given): a crash, with no
        goodbye to clients or peers."""
        os.kill(self.vm_pid() if pid is None else pid, signal.SIGKILL)
        if self.process is not None:
            self.process.wait(60)
            self.process = None
        wait_until(lambda: not answers(self.port), 30, f"RabbitMQ node {self.node} still answers")

    def stop(self) -> None:
        subprocess.run(["rabbitmqctl", "-n", self.node, "stop"], env=self.env,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120)
        if self.process is not None:
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None
        wait_until(lambda: not answers(self.port), 30, "RabbitMQ did not stop")


class PrivateRabbitCluster:
    """Three (``size``) private RabbitMQ nodes on this machine joined into one cluster with
    ``rabbitmqctl join_cluster``: each with its own node name, AMQP and distribution ports,
    config file and data and log folders (see :class:`PrivateRabbit`). The machine's own node
    is never touched."""

    def __init__(self, directory: Path, size: int = 3) -> None:
        self.nodes = [PrivateRabbit(directory / f"node{i}", prefix="ivyc") for i in range(size)]

    def url(self, vhost: str = "%2F", order: list[PrivateRabbit] | None = None) -> str:
        """One AMQP URL naming every node (``order``: which first), as ivy accepts it."""
        hosts = ",".join(f"127.0.0.1:{n.port}" for n in (order or self.nodes))
        return f"amqp://guest:guest@{hosts}/{vhost}"

    def start(self) -> None:
        """Start every node at once, then join the others to the first."""
        for node in self.nodes:
            node.launch()
        for node in self.nodes:
            node.wait_started()
            node.ctl("await_startup")
        first = self.nodes[0]
        for node in self.nodes[1:]:  # one at a time: joins at once can break mnesia's start
            node.ctl("stop_app")
            node.ctl("join_cluster", first.node)
            node.ctl("start_app")
        for node in self.nodes[1:]:
            node.wait_started()
        running = first.ctl("eval", "length(rabbit_nodes:all_running()).").strip()
        if running != str(len(self.nodes)):
            raise RuntimeError(f"only {running} of {len(self.nodes)} nodes run in the cluster")

    def leader(self, queue: str, vhost: str = "/") -> PrivateRabbit:
        """The node that leads the quorum queue ``queue`` now."""
        for node in self.nodes:
            if node.process is None:
                continue
            out = node.ctl("list_queues", "-p", vhost, "name", "leader", "--no-table-headers",
                           "--quiet")
            for line in out.splitlines():
                name, _, leader = line.partition("\t")
                if name == queue:
                    return next(n for n in self.nodes if n.node == leader.strip())
        raise LookupError(f"no running node knows a leader of {queue!r}")

    def restart_stopped(self) -> None:
        """Start again the nodes that were stopped or killed; they rejoin the cluster."""
        down = [n for n in self.nodes if n.process is None]
        for node in down:
            node.launch()
        for node in down:
            node.wait_started()
            node.ctl("await_startup")

    def stop(self) -> None:
        for node in self.nodes:
            if node.process is not None:
                node.stop()


class PrivatePostgres:
    """A PostgreSQL cluster of our own (initdb into a temporary directory, a free port, run as
    the ``postgres`` user since the server refuses root), for tests that kill its connections
    or restart it. ``fsync=off``: a test server, restarted with ``pg_ctl stop -m fast``."""

    def __init__(self) -> None:
        self.port = free_port()
        versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
        if not versions:
            raise RuntimeError("no PostgreSQL server binaries under /usr/lib/postgresql")
        self.bin = versions[-1].parent
        account = pwd.getpwnam("postgres")
        self.dir = Path(tempfile.mkdtemp(prefix="ivy-pg-"))
        os.chown(self.dir, account.pw_uid, account.pw_gid)
        self.data = self.dir / "data"
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres",
                  "--no-sync", "-E", "UTF8")

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, tool: str, *args: str) -> None:
        subprocess.run([str(self.bin / tool), *args], check=True, user="postgres",
                       cwd=self.dir, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                       timeout=120)

    def start(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.dir / "server.log"), "-w",
                  "-o", f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 "
                        "-c fsync=off -c full_page_writes=off", "start")
        wait_until(lambda: answers(self.port), 30, "PostgreSQL did not start")

    def stop(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def restart(self) -> None:
        self.stop()
        self.start()

    def terminate_connections(self) -> int:
        """Have the server terminate every client connection but the asking one (pools,
        listeners, subscriptions alike); how many."""
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE pid <> pg_backend_pid() AND backend_type = 'client backend'").fetchall()
        return len(rows)

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
