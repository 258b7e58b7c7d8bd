"""The Procrastinate 3 app of ``benchmarks/postgres_peers.py``: one trivial task on its
psycopg 3 connector; imported by the benchmark and by its worker
(``python -m procrastinate --app=bench_procrastinate_app.app worker``)."""

from __future__ import annotations

import os

import procrastinate

app = procrastinate.App(connector=procrastinate.PsycopgConnector(
    conninfo=os.environ.get("BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")))


@app.task(name="bench_noop", queue="bench_procrastinate")
async def noop(i: int) -> int:
    return i
