"""The README's demo runs as a user runs it, in a fresh folder, and exits 0."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_factorial_demo(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, str(ROOT / "examples" / "factorial.py")],
                         cwd=tmp_path, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr
    assert "factorial(10) = 3628800" in out.stdout
    assert "200 results, all correct" in out.stdout
    assert "200/200" in out.stderr  # the progress bar reached the end
    assert (tmp_path / "ivy.db").exists()  # the embedded SQLite default


@pytest.mark.slow
@pytest.mark.parametrize("queue", ["amqp", "redis-streams"])
def test_production_example(queue: str, redis_url: str, tmp_path: Path,
                            request: pytest.FixtureRequest) -> None:
    import os
    import signal

    queue_url = request.getfixturevalue("amqp_url" if queue == "amqp" else "redis_streams_url")
    env = {**os.environ, "IVY_QUEUE_URL": queue_url, "IVY_NOTIFIER_URL": redis_url}
    example = str(ROOT / "examples" / "production.py")
    worker = subprocess.Popen([sys.executable, example, "worker"], cwd=tmp_path, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        out = subprocess.run([sys.executable, example, "producer"], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        assert "factorial(19) = 121645100408832000" in out.stdout
    finally:
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(30) == 0


@pytest.mark.slow
def test_the_originals_readme_example(redis_url: str, tmp_path: Path) -> None:
    """The original's README example, transcribed with only the syntax changed, runs: a worker
    on IronMQ (the fake v3 server) and a producer whose callback and finished both print 42."""
    import os
    import signal

    pytest.importorskip("iron_mq")
    from fake_ironmq import FakeIronMQ

    fake = FakeIronMQ(token="dummy", project_id="testpackage").start()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IRON", "IVY_"))}
    env.update(HOME=str(tmp_path), REDIS_URL=redis_url, IRON_HOST=fake.host,
               IRON_PORT=str(fake.port), IRON_PROTOCOL="http")
    example = str(ROOT / "examples" / "original.py")
    worker = subprocess.Popen([sys.executable, example], cwd=tmp_path,
                              env={**env, "NODE_ENV": "worker"},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out = subprocess.run(
            [sys.executable, example], cwd=tmp_path, capture_output=True, text=True,
            timeout=120, env={**env, "NODE_ENV": "producer", "IRON_TOKEN": "dummy",
                              "IRON_PROJECT_ID": "testpackage", "IVY_QUEUE_URL": "ironmq://"})
        assert out.returncode == 0, out.stderr
        assert "Factorial result is 42" in out.stdout
        assert "result is 42" in out.stdout.replace("Factorial result is 42", "")
    finally:
        worker.send_signal(signal.SIGTERM)
        _, err = worker.communicate(timeout=30)
        fake.stop()
    assert worker.returncode == 0, err


@pytest.mark.slow
def test_workflows_example(tmp_path: Path) -> None:
    """examples/workflows.py: chains, groups and chords over two worker processes on SQLite."""
    out = subprocess.run([sys.executable, str(ROOT / "examples" / "workflows.py")],
                         cwd=tmp_path, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        "chain: 30", "group: [2, 4]", "chord: 6", "chain with a group: 15",
        "chord of 200 members: 2686700",
        "failed: ValueError: in task 'workflows.check': 501 is over the limit of 100"]


@pytest.mark.slow
def test_schedules_example(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, str(ROOT / "examples" / "schedules.py")],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "unique: same call True, result 'weekly report'" in out.stdout
    assert "cancel: status cancelled, CallCancelled" in out.stdout
    seconds = float(out.stdout.split("rate limit: 10 calls in ")[1].split(" s")[0])
    assert 1.5 <= seconds < 10  # 5/s: the 10th call starts 1.8 s after the first
    assert int(out.stdout.split("periodic: demo.tick ran ")[1].split()[0]) >= 2
