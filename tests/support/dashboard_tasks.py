"""Tasks of the worker process that the dashboard's browser test starts."""

from __future__ import annotations

from pathlib import Path

import ivy


@ivy.register_task(name="dash.double", queue="dash")
def double(n: int) -> int:
    return n * 2


@ivy.register_task(name="dash.flaky", queue="dash", retry=True, max_retries=1)
def flaky(marker: str, n: int) -> int:
    """Fails while the file ``marker`` exists (so it is dead-lettered), then returns n * 10."""
    if Path(marker).exists():
        raise RuntimeError(f"{marker} still exists")
    return n * 10
