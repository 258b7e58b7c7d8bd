"""Who may read the SQLite file and use its wake-ups (issue 28 #11): the database and its
``-wal``/``-shm`` files are created 0600, since they hold the calls' arguments, results and
dead letters; the wake-up directory in the temporary folder is this user's own (0700, named
after the uid), and one that another user made first cannot stop a worker."""

from __future__ import annotations

import logging
import os
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from common import wait_for

import ivy
from ivy._sqlite import wake as _sqlite_wake
from ivy._sqlite.database import Database
from ivy._sqlite.wake import WakeListener

NOBODY = 65534


def mode(path: str | Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.fixture
def db_path(tmp_path: Path) -> Iterator[Path]:
    """A database path, and its wake directories in the temporary folder removed after."""
    path = tmp_path / "ivy.db"
    yield path
    for kind in ("q", "n", "e"):
        shutil.rmtree(wake_dir(path, kind), ignore_errors=True)


def wake_dir(path: Path, kind: str) -> str:
    db = Database.__new__(Database)  # its name only: no file is opened
    db.path = os.path.abspath(path)
    return db.wake_dir(kind)


def test_a_new_database_its_logs_and_wake_directories_are_the_owners_only(
        db_path: Path) -> None:
    # Given a worker and a producer on a new SQLite file
    url = f"sqlite:///{db_path}"
    app = ivy.Ivy(url, url)

    @app.register_task(name="t.secret", queue="private")
    def secret(text: str) -> str:
        return text.upper()

    worker = app.listen(queue="private", block=False)
    try:
        # When a call with arguments runs and its result is stored
        assert app.delayed_call(secret, "arguments").result(20) == "ARGUMENTS"
        # Then the file and its write-ahead log and shared memory are 0600
        for suffix in ("", "-wal", "-shm"):
            found = f"{db_path}{suffix}"
            wait_for(lambda f=found: os.path.exists(f),
                     message=f"{found} to exist")
            assert mode(found) == 0o600, f"{found} is {oct(mode(found))}"
        # and the wake directories are this user's, 0700, named after the uid
        for kind in ("q", "n"):
            directory = wake_dir(db_path, kind)
            assert f"-{os.getuid()}-" in os.path.basename(directory)
            assert os.lstat(directory).st_uid == os.getuid()
            assert mode(directory) == 0o700, f"{directory} is {oct(mode(directory))}"
    finally:
        worker.stop()
        app.close()


def test_a_database_that_exists_keeps_its_mode(db_path: Path) -> None:
    # Given a file its owner shares with a group on purpose
    db_path.touch(0o640)
    os.chmod(db_path, 0o640)
    # When ivy opens it
    db = Database(db_path)
    try:
        db.execute("INSERT INTO ivy_events (body, created) VALUES (?, ?)", (b"x", 0.0))
        # Then its mode is left as it was
        assert mode(db_path) == 0o640
    finally:
        db.close()


def test_a_wake_directory_of_another_user_does_not_stop_a_worker(
        db_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    if os.getuid() != 0:
        pytest.skip("making a directory of another user's needs root")
    # Given another local user who made the worker's wake directories first, 0755 (so that
    # the worker could not bind its sockets there, or would bind them where they can reach)
    planted = [wake_dir(db_path, kind) for kind in ("q", "n")]
    for directory in planted:
        os.mkdir(directory, 0o755)
        os.chown(directory, NOBODY, NOBODY)
    url = f"sqlite:///{db_path}"
    app = ivy.Ivy(url, url)

    @app.register_task(name="t.double", queue="planted")
    def double(n: int) -> int:
        return 2 * n

    # When a worker starts and a call is made
    with caplog.at_level(logging.WARNING, logger="ivy"):
        worker = app.listen(queue="planted", block=False)
        try:
            # Then the call runs all the same (waiting sides poll instead of waking)
            assert app.delayed_call(double, 21).result(20) == 42
        finally:
            worker.stop()
            app.close()
    # and the directories were not used, and a warning says why, naming each
    for directory in planted:
        assert os.listdir(directory) == [], f"a socket was bound in {directory}"
        assert os.lstat(directory).st_uid == NOBODY and mode(directory) == 0o755
        assert any(directory in r.getMessage() and f"uid {NOBODY}" in r.getMessage()
                   for r in caplog.records), f"no warning names {directory}"


def test_a_wake_directory_that_is_a_link_is_not_followed(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    target = tmp_path / "elsewhere"
    target.mkdir()
    link = tmp_path / "wake"
    link.symlink_to(target)
    with caplog.at_level(logging.WARNING, logger="ivy"):
        assert _sqlite_wake.private_dir(str(link)) is False
        listener = WakeListener(str(link))
    assert listener.path == "" and list(target.iterdir()) == []
    listener.wait(0.01)  # polls: returns
    listener.close()
    assert str(link) in caplog.text


def test_a_wake_directory_of_ours_with_a_wide_mode_is_narrowed(tmp_path: Path) -> None:
    # Given a directory of this user's that others may write in (an older ivy's, or a umask)
    directory = tmp_path / "wake"
    directory.mkdir()
    os.chmod(directory, 0o777)
    # When a listener uses it
    listener = WakeListener(str(directory))
    try:
        # Then it is narrowed to 0700 and used
        assert mode(directory) == 0o700
        assert listener.path and os.path.dirname(listener.path) == str(directory)
    finally:
        listener.close()
