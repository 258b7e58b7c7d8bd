"""The pgqueuer 1.6 worker of ``benchmarks/postgres_peers.py``: one trivial entrypoint on an
asyncpg connection (pgqueuer's first driver: its psycopg driver waits for notifications with
``notifies(timeout=1.0)`` on the one connection that its queries share, so each query can
wait up to a second behind it); ``python bench_pgqueuer_app.py`` runs it with pgqueuer's
own runner, the function that ``pgqueuer run bench_pgqueuer_app:main`` calls."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
from pgqueuer import AsyncpgDriver, PgQueuer
from pgqueuer.models import Job

URL = os.environ.get("BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


@asynccontextmanager
async def main() -> AsyncIterator[PgQueuer]:
    """The factory (pgqueuer 1.6 wants an async context manager)."""
    conn = await asyncpg.connect(URL)
    try:
        pgq = PgQueuer(AsyncpgDriver(conn))

        @pgq.entrypoint("bench_noop")
        async def noop(job: Job) -> None:
            int(job.payload or b"0")  # the trivial task: read its argument

        yield pgq
    finally:
        await conn.close()


if __name__ == "__main__":
    # The CLI (``pgqueuer run``) fails at start here: pgqueuer 1.6 with typer 0.29 hands its
    # log level over as a str ("'str' object has no attribute 'name'").
    import asyncio

    import pgqueuer

    asyncio.run(pgqueuer.run("bench_pgqueuer_app:main"))
