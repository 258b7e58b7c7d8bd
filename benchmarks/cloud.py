"""Round trips through SQS (moto's server) and IronMQ (the fake IronMQ v3 server from tests),
beside each raw client's floor (run by hand; results in docs/benchmarks.md).

ivy: one `ivy worker` process (4 threads) on the queue, results through Redis; the producer
sends N trivial calls with ``delayed_calls`` and awaits every result (tasks/s from the first
send to the last result). Floor: the bare client doing the queue's I/O for the same N
messages: send in batches, then 4 threads receive (long poll, batches of 10) and delete, with
no results at all. Both servers run in processes of their own.

    pip install -e '.[bench,sqs,ironmq]' 'moto[server]'
    python benchmarks/cloud.py [--n 2000]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
REDIS = "redis://127.0.0.1:6379/13"
TOKEN, PROJECT = "bench-token", "bench"
AWS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
       "AWS_DEFAULT_REGION": "us-east-1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int) -> None:
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def run_ivy(queue_url: str, env: dict[str, str], backend_spec: Any, n: int) -> float:
    import bench_tasks

    import ivy

    worker = subprocess.Popen(
        [sys.executable, "-m", "ivy", "worker", "bench_tasks", "--queue", "bench",
         "--queue-url", queue_url, "--notifier-url", REDIS, "--concurrency", "4",
         "--log-level", "WARNING"], cwd=HERE, env={**env, "PYTHONPATH": str(HERE)})
    app = ivy.Ivy(backend_spec, REDIS)
    app.registry.add(bench_tasks.noop)
    try:
        for i in range(10):  # warm-up
            assert app.delayed_call(bench_tasks.noop, i).result(120) == i
        started = time.perf_counter()
        calls = app.delayed_calls(bench_tasks.noop, [(i,) for i in range(n)])
        for i, c in enumerate(calls):
            assert c.result(600) == i
        return n / (time.perf_counter() - started)
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(60)
        app.close()


def floor(send_batch: Any, receive: Any, delete: Any, n: int, threads: int = 4) -> float:
    bodies = [json.dumps({"i": i}) for i in range(n)]
    started = time.perf_counter()
    for start in range(0, n, 10):
        send_batch(bodies[start:start + 10])
    done = [0]
    lock = threading.Lock()

    def consume() -> None:
        while True:
            with lock:
                if done[0] >= n:
                    return
            messages = receive()
            if messages:
                delete(messages)
                with lock:
                    done[0] += len(messages)

    workers = [threading.Thread(target=consume) for _ in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    return n / (time.perf_counter() - started)


def bench_sqs(n: int) -> tuple[float, float]:
    import boto3

    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1",
                               "-p", str(port)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    wait_port(port)
    endpoint = f"http://127.0.0.1:{port}"
    env = {**os.environ, **AWS, "AWS_ENDPOINT_URL_SQS": endpoint}
    try:
        spec = {"type": "sqs", "endpoint_url": endpoint, "region": "us-east-1",
                "auth": {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}}
        ivy_rate = run_ivy("sqs://", env, spec, n)
        client = boto3.client("sqs", endpoint_url=endpoint, region_name="us-east-1",
                              aws_access_key_id="testing", aws_secret_access_key="testing")
        url = client.create_queue(QueueName="floor")["QueueUrl"]
        floor_rate = floor(
            lambda bodies: client.send_message_batch(QueueUrl=url, Entries=[
                {"Id": str(i), "MessageBody": b} for i, b in enumerate(bodies)]),
            lambda: client.receive_message(QueueUrl=url, MaxNumberOfMessages=10,
                                           WaitTimeSeconds=1).get("Messages") or [],
            lambda ms: client.delete_message_batch(QueueUrl=url, Entries=[
                {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(ms)]),
            n)
        return ivy_rate, floor_rate
    finally:
        server.terminate()
        server.wait(10)


def bench_ironmq(n: int) -> tuple[float, float]:
    import iron_mq

    fake = ROOT / "tests" / "support" / "fake_ironmq.py"
    server = subprocess.Popen([sys.executable, str(fake), TOKEN, PROJECT], stdout=subprocess.PIPE)
    assert server.stdout is not None
    port = int(server.stdout.readline())
    env = {**os.environ, "IRON_TOKEN": TOKEN, "IRON_PROJECT_ID": PROJECT,
           "IRON_MQ_HOST": "127.0.0.1", "IRON_MQ_PORT": str(port), "IRON_MQ_PROTOCOL": "http"}
    try:
        spec = {"type": "ironmq", "auth": {"token": TOKEN, "project_id": PROJECT},
                "host": "127.0.0.1", "port": port, "protocol": "http", "min_reserve": 0}
        ivy_rate = run_ivy("ironmq://?min_reserve=0", env, spec, n)
        mq = iron_mq.IronMQ(token=TOKEN, project_id=PROJECT, host="127.0.0.1", port=port,
                            protocol="http")
        q = iron_mq.Queue(mq, "floor")
        floor_rate = floor(
            lambda bodies: q.post(*[{"body": b} for b in bodies]),
            lambda: q.reserve(max=10, timeout=60, wait=1).get("messages") or [],
            lambda ms: [q.delete(m["id"], reservation_id=m["reservation_id"]) for m in ms],
            n)
        return ivy_rate, floor_rate
    finally:
        server.terminate()
        server.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=2000)
    args = parser.parse_args()
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores; n={args.n}")
    print("| backend | ivy tasks/s (with results) | raw client floor msgs/s (no results) | "
          "ivy / floor |")
    print("| --- | ---: | ---: | ---: |")
    for name, run in (("SQS (moto server)", bench_sqs), ("IronMQ (fake v3 server)",
                                                         bench_ironmq)):
        ivy_rate, floor_rate = run(args.n)
        print(f"| {name} | {ivy_rate:.0f} | {floor_rate:.0f} | {ivy_rate / floor_rate:.0%} |",
              flush=True)


if __name__ == "__main__":
    main()
