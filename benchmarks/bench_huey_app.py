"""huey doing the embedded benchmark's work: SqliteHuey on the file named by BENCH_HUEY_DB,
results kept in huey's result store.

huey's SQLite connections run with ``synchronous=FULL`` unless told otherwise (an fsync of the
WAL per commit); ivy's run with ``synchronous=NORMAL`` (WAL synced at checkpoints). Set here
to NORMAL too, so that both keep what they commit the same way (a power cut may lose the last
commits of both; a crashed process loses nothing).

``huey_defaults`` is a second SqliteHuey, as huey comes (``synchronous=FULL``), on the file named
by BENCH_HUEY_DEFAULTS_DB, for ``embedded.py --huey-defaults``."""

from __future__ import annotations

import os
import sqlite3

from huey import SqliteHuey
from huey.storage import SqliteStorage


class NormalSyncStorage(SqliteStorage):  # type: ignore[misc]
    def _create_connection(self) -> sqlite3.Connection:
        conn: sqlite3.Connection = super()._create_connection()
        conn.execute("PRAGMA synchronous=NORMAL")
        return conn


class BenchHuey(SqliteHuey):  # type: ignore[misc]
    storage_class = NormalSyncStorage


huey = BenchHuey("bench", filename=os.environ["BENCH_HUEY_DB"], results=True)


@huey.task(name="bench.noop")
def noop(i: int) -> int:
    return i


huey_defaults = SqliteHuey("bench-defaults",
                           filename=os.environ.get("BENCH_HUEY_DEFAULTS_DB", "huey-defaults.db"),
                           results=True)


@huey_defaults.task(name="bench.noop")
def noop_defaults(i: int) -> int:
    return i
