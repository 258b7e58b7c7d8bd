"""What a change costs the worker's hot path: this checkout against an earlier revision, on the
memory backend (no I/O, so the per-call code is all there is to measure), in one run.

For each revision a child process (``PYTHONPATH`` on a ``git worktree`` of it, or on this
checkout) sends ``--n`` trivial calls in one batch to a one-thread worker in the same process
and waits for every result; the end-to-end rate is calls/s from the first send to the last
result. The revisions take turns, ``--rounds`` times, in a new order each round, so that the
machine's drift weighs on both alike. Prints, per revision, the median and min-max rate, and
the ratio of the medians.

    python benchmarks/hotpath.py --base e2cbdec [--n 20000] [--rounds 7] [--time-limit 30]

With ``--time-limit S``, this checkout also runs with ``listen(time_limit=S)``: every call
then goes through a runner process (:mod:`ivy.worker.runner`), which shows what a declared
hard limit costs a trivial task there. With ``--inline S``, it also runs with the limit inline
under the process's watch and board (:mod:`ivy.worker.limits`), as a worker process that ``ivy
worker`` supervises does: what a declared limit costs there.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
#: where the task's module is written (both revisions import it from there)
TASKS = Path(tempfile.gettempdir()) / "ivy-hotpath-tasks"

CHILD = r"""
import json, sys, time, uuid
import ivy
import hotpath_task

url = f"memory://hotpath-{uuid.uuid4().hex}"
app = ivy.Ivy(url, url)
noop = hotpath_task.noop
app.registry.add(noop)
limit = float(sys.argv[2])
options = {"time_limit": limit} if limit else {}  # an earlier revision may not know it
if sys.argv[3] == "inline":  # as in a process `ivy worker` supervises: no runner
    from ivy.worker import limits
    limits.install(limits.Board.create(1))
app.listen(queue="hot", concurrency=1, block=False, **options)
app.delayed_call(noop, 0).result(30)  # warm up
n = int(sys.argv[1])
start = time.perf_counter()
calls = app.delayed_calls(noop, [[i] for i in range(n)])
for call in calls:
    call.result(120)
print(json.dumps(n / (time.perf_counter() - start)))
app.close()
"""


#: the task, in a module of its own: a time-limited task is imported by path in its runner
TASK = """
import ivy


@ivy.register_task(name="hot.noop", queue="hot")
def noop(i: int) -> int:
    return i
"""


def rate(tree: Path, n: int, time_limit: float = 0.0, form: str = "runner") -> float:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tree), str(TASKS)])}
    out = subprocess.run([sys.executable, "-c", CHILD, str(n), str(time_limit), form],
                         capture_output=True, text=True, env=env, timeout=600, check=True)
    return float(json.loads(out.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", required=True, help="the earlier revision (git rev)")
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--time-limit", type=float, default=0.0,
                        help="also run this checkout with a worker time limit of S seconds "
                             "on the task: each call then goes through a runner process")
    parser.add_argument("--inline", type=float, default=0.0, metavar="S",
                        help="also run this checkout with a time limit of S seconds run inline "
                             "under a watch, as in a worker process `ivy worker` supervises")
    args = parser.parse_args()
    TASKS.mkdir(parents=True, exist_ok=True)
    (TASKS / "hotpath_task.py").write_text(TASK)
    with tempfile.TemporaryDirectory(prefix="ivy-hotpath-") as tmp:
        base = Path(tmp) / "base"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(base),
                        args.base], check=True, capture_output=True)
        try:
            runs = {args.base: (base, 0.0, "runner"), "this checkout": (ROOT, 0.0, "runner")}
            if args.time_limit:
                runs[f"this checkout, time_limit={args.time_limit:g}"] = (
                    ROOT, args.time_limit, "runner")
            if args.inline:
                runs[f"this checkout, time_limit={args.inline:g} inline"] = (
                    ROOT, args.inline, "inline")
            rates: dict[str, list[float]] = {name: [] for name in runs}
            for _ in range(args.rounds):
                order = list(runs)
                random.shuffle(order)
                for name in order:
                    tree, limit, form = runs[name]
                    rates[name].append(rate(tree, args.n, limit, form))
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force",
                            str(base)], check=False, capture_output=True)
    medians = {name: statistics.median(values) for name, values in rates.items()}
    for name, values in rates.items():
        print(f"{name}: {medians[name]:,.0f} calls/s end to end "
              f"(min-max {min(values):,.0f}-{max(values):,.0f}, {len(values)} rounds of "
              f"{args.n})")
    for name in rates:
        if name == args.base:
            continue
        ratio = medians[name] / medians[args.base]
        print(f"{name} / {args.base}: {ratio:.3f} ({(1 - ratio) * 100:.1f}% slower)"
              if ratio < 1 else f"{name} / {args.base}: {ratio:.3f} (not slower)")


if __name__ == "__main__":
    main()
