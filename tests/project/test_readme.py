"""Every code block of README.md runs as its text says, or says why not.

A block is read with the HTML comment on the last non-blank line before it:

* ``<!-- file: NAME -->``: a file the reader saves as NAME (the quick start's tasks.py and
  producer.py);
* ``<!-- terminal N -->``: a command the reader types in terminal N, in the folder of those
  files: terminal 1 starts a worker (a real subprocess, stopped with SIGTERM), terminal 2 runs
  the producer, whose output must be what the block's ``# prints ...`` comment says;
* ``<!-- not run: REASON -->``: a fragment or a command that needs what a reader's machine
  may not have; listed in NOT_RUN below, so that none is left out silently;
* nothing: a Python block that runs on its own (``python block.py`` exits 0).
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from common import ROOT

README = ROOT / "README.md"

#: how each block the README marks as not run begins: a new one is added here on purpose
NOT_RUN = (
    "pip install -e '.[demo]' && python examples/factorial.py",
)


@dataclass
class Block:
    line: int  # of the opening fence
    language: str
    text: str
    marker: str  # the comment before it, without <!-- -->, or ""

    @property
    def first_line(self) -> str:
        return self.text.splitlines()[0]


def blocks(markdown: str) -> list[Block]:
    found: list[Block] = []
    lines = markdown.splitlines()
    i = 0
    while i < len(lines):
        fence = re.match(r"^```(\w*)\s*$", lines[i])
        if fence is None:
            i += 1
            continue
        end = lines.index("```", i + 1)
        before = [line for line in lines[:i] if line.strip()]
        comment = re.fullmatch(r"<!--\s*(.*?)\s*-->", before[-1].strip()) if before else None
        found.append(Block(i + 1, fence.group(1), "\n".join(lines[i + 1:end]) + "\n",
                           comment.group(1) if comment else ""))
        i = end + 1
    return found


README_BLOCKS = blocks(README.read_text())


def env_without_ivy_urls() -> dict[str, str]:
    """The reader's environment: this interpreter's ``ivy`` and ``python`` first on PATH, and no
    backend URLs, so the embedded SQLite default is used."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("IVY_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def command(block: Block) -> str:
    [line] = [line for line in block.text.splitlines() if line.strip()]
    return line.split("#")[0].strip()


def test_every_block_is_run_or_says_why_not() -> None:
    markers = {b.marker.split(":")[0] for b in README_BLOCKS if b.marker}
    assert markers <= {"file", "terminal 1", "terminal 2", "not run"}, markers
    not_run = [b for b in README_BLOCKS if b.marker.startswith("not run:")]
    for block in not_run:
        assert block.marker.removeprefix("not run:").strip(), f"line {block.line}: no reason"
    assert len(not_run) == len(NOT_RUN), [b.first_line for b in not_run]
    for block, begins in zip(not_run, NOT_RUN, strict=True):
        assert block.first_line.startswith(begins), (block.line, block.first_line, begins)
    unmarked = [b for b in README_BLOCKS if not b.marker]
    assert all(b.language == "python" for b in unmarked), [b.line for b in unmarked]


@pytest.mark.slow
def test_quick_start_runs_as_written(tmp_path: Path) -> None:
    # Given the files the quick start names, saved in an empty folder
    files = [b for b in README_BLOCKS if b.marker.startswith("file:")]
    assert [b.marker for b in files] == ["file: tasks.py", "file: producer.py"]
    for block in files:
        (tmp_path / block.marker.removeprefix("file:").strip()).write_text(block.text)
    [worker_block] = [b for b in README_BLOCKS if b.marker == "terminal 1"]
    [producer_block] = [b for b in README_BLOCKS if b.marker == "terminal 2"]
    env = env_without_ivy_urls()
    # When terminal 1 starts the worker, and terminal 2 runs the producer
    worker = subprocess.Popen(shlex.split(command(worker_block)), cwd=tmp_path, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out = subprocess.run(shlex.split(command(producer_block)), cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=60)
        # Then the producer prints what the block says, and exits 0
        assert out.returncode == 0, out.stderr
        expected = producer_block.text.split("# prints", 1)[1].strip()
        assert out.stdout.strip() == expected
    finally:
        # and the worker stops cleanly on SIGTERM, as its "runs until Ctrl-C" promises
        worker.send_signal(signal.SIGTERM)
        try:
            _, err = worker.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
            _, err = worker.communicate(timeout=10)
    assert worker.returncode == 0, err
    assert (tmp_path / "ivy.db").exists()  # the embedded SQLite default, in that folder


@pytest.mark.parametrize("block", [b for b in README_BLOCKS if not b.marker],
                         ids=lambda b: f"README.md:{b.line}")
def test_standalone_block_runs(block: Block, tmp_path: Path) -> None:
    (tmp_path / "block.py").write_text(block.text)
    out = subprocess.run([sys.executable, "block.py"], cwd=tmp_path, env=env_without_ivy_urls(),
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
