"""A full disk holds SQLite writes back, it never drops them (issue 20, row 2): on a real
3 MiB tmpfs, a worker's result written while the disk is full is retried with a warning, and
committed, its ``then`` (the ack) run, once space returns. Mounting needs root, as CI has."""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from common import wait_for

from ivy._sqlite.database import Database


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 3 MiB tmpfs of its own, unmounted at the end."""
    if os.geteuid() != 0:
        if os.environ.get("IVY_REQUIRE_SERVICES") == "1":
            pytest.fail("mounting a small tmpfs needs root (IVY_REQUIRE_SERVICES=1)")
        pytest.skip("mounting a small tmpfs needs root")
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.fail(f"mount -t tmpfs failed: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(directory: Path) -> Path:
    """Fill the file system of ``directory`` to the last byte."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (65536, 4096, 1):  # big steps, then the last bytes
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * size)
    finally:
        os.close(fd)
    with pytest.raises(OSError) as full:
        (directory / "probe").write_bytes(b"\0" * 4096)
    assert full.value.errno == errno.ENOSPC
    return filler


def test_a_write_on_a_full_disk_waits_for_space_and_then_runs_its_then(
        small_disk: Path, caplog: pytest.LogCaptureFixture) -> None:
    # Given a database on a small disk that is then filled up
    db = Database(small_disk / "ivy.db")
    try:
        db.execute("INSERT INTO ivy_events (body, created) VALUES (?, ?)", (b"before", 0.0))
        # (a small page cache on the writer's connection: a large write then spills to the
        # log mid-statement, where a full disk makes SQLite roll back by itself)
        db.writer.write("PRAGMA cache_size=5")
        filler = fill(small_disk)
        # When a write that needs new pages is handed to the writer thread
        done = threading.Event()
        db.writer.submit("INSERT INTO ivy_events (body, created) VALUES (?, ?)",
                         (os.urandom(512 * 1024), 1.0), then=done.set)
        # Then it is retried with a warning naming the full disk, not dropped
        wait_for(lambda: "trying again" in caplog.text, timeout=20,
                 message="a warning that the commit is tried again")
        assert "full" in caplog.text
        assert "was dropped" not in caplog.text
        assert not done.is_set()
        # and once space returns it is committed and what follows it runs
        filler.unlink()
        assert done.wait(20), "the write was never committed after space returned"
        count = db.conn().execute("SELECT count(*) FROM ivy_events").fetchone()[0]
        assert count == 2
    finally:
        db.close()
