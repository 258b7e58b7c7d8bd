"""The documentation site (mkdocs.yml, docs/): its examples run as written, it builds with no
warning, and every public name has a docstring for its API reference.

Code blocks of the pages in RUN_PAGES are read as tests/project/test_readme.py reads
README.md, by the HTML comment on the last non-blank line before each block:

* ``<!-- file: NAME -->``: a file the reader saves as NAME; every such block of a page is
  saved first, in a fresh folder for the page;
* ``<!-- terminal 1 -->``: a command that starts a worker in that folder (a real subprocess,
  left running while the ``terminal 2`` blocks that follow it run, then stopped with SIGTERM:
  it must exit 0);
* ``<!-- terminal 2 -->``: a command run in that folder, which must exit 0 and print what its
  ``# prints ...`` comment says, if it has one;
* ``<!-- not run: REASON -->``: a fragment, or what needs a service or a machine the tests do
  not have; listed in NOT_RUN below, so that none is left out silently;
* nothing: a Python block that runs on its own in that folder (``python block.py`` exits 0);
  its ``# prints ...`` comments, if any, are the lines it must print, in order.

Blocks run in page order, in the page's folder, so a block can use the files of the page and
the ``ivy.db`` that earlier blocks filled.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from common import ROOT
from test_readme import Block, blocks, env_without_ivy_urls

import ivy

DOCS = ROOT / "docs"

#: the pages whose code blocks are examples (the measured pages keep their own commands)
RUN_PAGES = sorted(
    str(path.relative_to(DOCS)) for path in DOCS.rglob("*.md")
    if path.name not in ("benchmarks.md", "reliability.md", "security.md")
    or path.parent != DOCS
)

#: how each block a page marks as not run begins, per page: a new one is added here on purpose
NOT_RUN: dict[str, tuple[str, ...]] = {
    "deploy/docker.md": (
        "export IVY_DASHBOARD_TOKEN=",
        "docker compose -f deploy/docker-compose.yml run",
    ),
    "development.md": ("pip install -e '.[test]' && python -m pytest",),
    "deploy/opentelemetry.md": ("pip install opentelemetry-sdk", "# telemetry.py"),
    "deploy/kubernetes.md": (
        "docker build -f deploy/Dockerfile",
        "kubectl apply -f deploy/kubernetes/namespace.yaml",
        "kubectl -n ivy port-forward",
        "kubectl -n ivy create secret generic ivy-keda",
        "kubectl -n ivy create secret generic ivy-keda",
        "kubectl -n ivy create secret generic ivy-keda",
        "kubectl -n ivy create secret generic ivy-keda",
    ),
    "migrating/celery.md": (
        "from celery import Celery",
        "export IVY_QUEUE_URL=amqp://",
        "# Celery: chord(",
    ),
    "migrating/dramatiq.md": ("import dramatiq",),
    "migrating/rq.md": ("from redis import Redis", "export IVY_QUEUE_URL=redis://"),
    "backends/rabbitmq.md": (
        'ivy.setup_queue("amqp://guest:guest@127.0.0.1:5672/%2F")       # a producer',
        'ivy.setup_queue("amqp://app:pw@rabbit1:5672,rabbit2:5672,rabbit3:5672/prod',
        'ivy.setup_queue("amqp://guest:guest@127.0.0.1:5672/%2F")',
    ),
    "backends/redis.md": ('ivy.setup_queue("redis://127.0.0.1:6379/0")',),
    "backends/postgresql.md": ('app = ivy.Ivy("postgresql://', "ivy migrate --queue-url",
                               'with psycopg.connect("postgresql://app@db:5432/app")',
                               "ivy relay --from postgresql://"),
    "backends/sqs.md": ('ivy.setup_queue("sqs://?region=eu-west-1")',),
    "backends/ironmq.md": ("ivy.start_notification_producer({",),
    "getting-started.md": ("python3 -m venv .venv",),
    "guides/tasks.md": ("ivy.send_task(\"other.service.task\"",),
    "guides/workers.md": ("ivy.listen({",),
    "guides/retries.md": ("ivy dead list --queue shop",),
    "guides/workflows.md": ("from tasks import add",),
    "guides/results.md": ("ivy.setup_queue(\"amqp://", "call = ivy.delayed_call(add, 1, 2)"),
    "guides/monitoring.md": ("ivy inspect [--json]", "ivy dashboard --queue-url amqp://"),
    "guides/testing.md": ("import signal",),
    "guides/typing.md": ("pip install -e . --config-settings",),
    "guides/django.md": ("pip install -e '.[django]'",),
    "guides/asgi.md": ("pip install -e '.[asgi]'", "async with lifespan(queue)(web):"),
    "guides/scheduling.md": (
        "ivy.schedule(report",
        "ivy scheduler tasks",
        "@ivy.register_task(name=\"app.sync\"",
    ),
}

MARKERS = {"file", "terminal 1", "terminal 2", "not run"}
#: languages of blocks that are examples to run (others are data: JSON, YAML, unit files...)
CODE = {"python", "sh"}


def page_blocks(page: str) -> list[Block]:
    return blocks((DOCS / page).read_text(encoding="utf-8"))


def expected_prints(text: str) -> list[str]:
    """The ``# prints X`` comments of a block, in order."""
    return [line.split("# prints", 1)[1].strip() for line in text.splitlines()
            if "# prints" in line]


def command_of(block: Block) -> str:
    [line] = [line for line in block.text.splitlines() if line.strip()]
    return line.split("#")[0].strip()


def stop(process: subprocess.Popen[str]) -> tuple[int, str]:
    process.send_signal(signal.SIGTERM)
    try:
        _, err = process.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        _, err = process.communicate(timeout=10)
    return process.returncode, err


def run_page(page: str, folder: Path) -> None:
    env = env_without_ivy_urls()
    env["PYTHONPATH"] = str(folder)
    found = page_blocks(page)
    for block in found:
        if block.marker.startswith("file:"):
            (folder / block.marker.removeprefix("file:").strip()).write_text(block.text)
    workers: list[subprocess.Popen[str]] = []
    stopped: list[tuple[int, str]] = []
    try:
        for block in found:
            where = f"{page}:{block.line}"
            if block.marker != "terminal 2" and not block.marker.startswith("file:"):
                # the reader's worker of terminal 1 served the commands typed beside it
                stopped += [stop(worker) for worker in workers]
                workers.clear()
            if block.marker == "terminal 1":
                workers.append(subprocess.Popen(
                    shlex.split(command_of(block)), cwd=folder, env=env,
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
                time.sleep(0.5)  # as a reader would, before typing in terminal 2
            elif block.marker == "terminal 2":
                out = subprocess.run(shlex.split(command_of(block)), cwd=folder, env=env,
                                     capture_output=True, text=True, timeout=60)
                assert out.returncode == 0, (where, out.stdout, out.stderr)
                if "# prints" in block.text:
                    assert out.stdout.strip() == " ".join(expected_prints(block.text)), (
                        where, out.stdout, out.stderr)
            elif not block.marker and block.language == "python":
                (folder / "block.py").write_text(block.text)
                out = subprocess.run([sys.executable, "block.py"], cwd=folder, env=env,
                                     capture_output=True, text=True, timeout=60)
                assert out.returncode == 0, (where, out.stderr)
                prints = expected_prints(block.text)
                if prints:
                    assert out.stdout.splitlines() == prints, (where, out.stdout, out.stderr)
    finally:
        stopped += [stop(worker) for worker in workers]
    for code, err in stopped:
        assert code == 0, (page, err)


def test_every_block_is_run_or_says_why_not() -> None:
    for page in RUN_PAGES:
        found = page_blocks(page)
        markers = {b.marker.split(":")[0] for b in found if b.marker}
        assert markers <= MARKERS, (page, markers)
        not_run = [b for b in found if b.marker.startswith("not run:")]
        for block in not_run:
            assert block.marker.removeprefix("not run:").strip(), (page, block.line)
        listed = NOT_RUN.get(page, ())
        assert len(not_run) == len(listed), (page, [b.first_line for b in not_run])
        for block, begins in zip(not_run, listed, strict=True):
            assert block.first_line.startswith(begins), (page, block.line, block.first_line)
        for block in found:
            if not block.marker:
                assert block.language == "python" or block.language not in CODE, (
                    f"{page}:{block.line}: a {block.language} block needs a marker")
            if block.marker.startswith(("file:", "terminal")):
                assert block.language in CODE, (page, block.line)
    assert set(NOT_RUN) <= set(RUN_PAGES), set(NOT_RUN) - set(RUN_PAGES)


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("page", [p for p in RUN_PAGES if any(
    b.language in CODE and not b.marker.startswith("not run:") for b in page_blocks(p))])
def test_page_runs_as_written(page: str, tmp_path: Path) -> None:
    run_page(page, tmp_path)


def test_site_builds_without_warnings(tmp_path: Path) -> None:
    pytest.importorskip("mkdocs")
    mkdocs = shutil.which("mkdocs", path=str(Path(sys.executable).parent)) or "mkdocs"
    out = subprocess.run([mkdocs, "build", "--strict", "--site-dir", str(tmp_path / "site")],
                         cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "site" / "index.html").exists()
    assert (tmp_path / "site" / "search" / "search_index.json").exists()  # offline search


def docstring_of(name: str) -> str:
    """The docstring of ``ivy.<name>``: a class's or function's own, else (a constant, the
    default instance) the string literal after its assignment, as the API reference reads it."""
    obj = getattr(ivy, name)
    if inspect.isclass(obj) or inspect.isroutine(obj):
        return (obj.__doc__ or "").strip()
    griffe = importlib.import_module("griffe")
    loaded = griffe.load("ivy", search_paths=[str(ROOT)])
    return (loaded[name].docstring.value if loaded[name].docstring else "").strip()


def test_every_public_name_has_a_docstring() -> None:
    pytest.importorskip("griffe")
    missing = [name for name in ivy.__all__ if not docstring_of(name)]
    assert not missing, f"public names without a docstring: {missing}"


REFERENCE = DOCS / "reference"
#: Rendered callables still without their sections (none now; the list only shrinks: the test
#: fails while one listed here is complete)
KNOWN_INCOMPLETE_DOCSTRINGS: set[str] = set()


def reference_directives() -> list[tuple[str, list[str] | None]]:
    """The ``::: path`` directives of docs/reference/*.md, each with its ``members:`` list
    (None: mkdocstrings renders the object's own public members)."""
    yaml = pytest.importorskip("yaml")
    found: list[tuple[str, list[str] | None]] = []
    for page in sorted(REFERENCE.glob("*.md")):
        lines = page.read_text(encoding="utf-8").splitlines()
        for i, line in enumerate(lines):
            if not line.startswith("::: "):
                continue
            block = []
            for following in lines[i + 1:]:
                if following.strip() and not following.startswith(" "):
                    break
                block.append(following)
            options = (yaml.safe_load("\n".join(block)) or {}).get("options") or {}
            members = options.get("members")
            found.append((line.removeprefix("::: ").strip(),
                          list(members) if isinstance(members, list) else None))
    return found


def rendered_objects(root: Path) -> dict[str, Any]:
    """Every object the API reference renders, by its public path (``ivy.Ivy.listen``): the
    directives' targets and their members, loaded by griffe (what mkdocstrings uses) from
    the source under ``root``."""
    griffe = importlib.import_module("griffe")
    package = griffe.load("ivy", search_paths=[str(root)], docstring_parser="google")
    found: dict[str, Any] = {}
    for path, members in reference_directives():
        obj = package
        for part in path.split(".")[1:]:
            obj = obj[part]
        obj = obj.final_target if obj.is_alias else obj
        found[path] = obj
        if not (obj.is_class or obj.is_module):
            continue
        if members is None:
            members = [name for name, member in obj.members.items()
                       if not name.startswith("_") and not member.is_alias]
        for name in members:
            member = obj.all_members[name]
            found[f"{path}.{name}"] = member.final_target if member.is_alias else member
    return found


def docstring_problems(obj: Any) -> list[str]:
    """What a rendered object's docstring lacks: a docstring at all (classes and functions);
    for a function, an ``Args:`` entry for each parameter (``self``/``cls`` aside) and none
    for a parameter it does not have, and ``Returns:`` when it returns something."""
    if not (obj.is_class or obj.is_function):
        return []
    if obj.docstring is None or not obj.docstring.value.strip():
        return ["no docstring"]
    if not obj.is_function:
        return []
    sections = obj.docstring.parse("google")
    kinds = {section.kind.value for section in sections}
    documented = [p.name.lstrip("*") for section in sections
                  if section.kind.value in ("parameters", "other parameters")
                  for p in section.value]
    params = [p.name for p in obj.parameters if p.name not in ("self", "cls")]
    problems = []
    if [p for p in params if p not in documented]:
        problems.append(f"Args lacks {[p for p in params if p not in documented]}")
    if [p for p in documented if p not in params]:
        problems.append(f"Args names what is no parameter: "
                        f"{[p for p in documented if p not in params]}")
    returns = "None" if obj.returns is None else str(obj.returns)
    if obj.name != "__init__" and returns != "None" and not kinds & {"returns", "yields"}:
        problems.append(f"returns {returns} but has no Returns (or Yields) section")
    return problems


def incomplete_docstrings(root: Path) -> dict[str, list[str]]:
    """The rendered objects whose docstrings lack something, with what."""
    return {path: problems for path, obj in rendered_objects(root).items()
            if (problems := docstring_problems(obj))}


def test_docstring_problems_are_found() -> None:
    griffe = pytest.importorskip("griffe")
    code = '''
def complete(a: int, *rest: int, key: str = "") -> int:
    """Add.

    Args:
        a: one.
        *rest: more.
        key: a key.

    Returns:
        The sum.
    """

def bare(a: int) -> int:
    """Add."""

def typo(a: int) -> None:
    """Add.

    Args:
        b: one.
    """

def nothing(self) -> None:
    """Nothing to document."""

def undocumented() -> None: ...

class Documented:
    """What it is."""
'''
    module = griffe.visit("example", Path("example.py"), code)
    assert {name: docstring_problems(module[name]) for name in module.members} == {
        "complete": [],
        "bare": ["Args lacks ['a']", "returns int but has no Returns (or Yields) section"],
        "typo": ["Args lacks ['a']", "Args names what is no parameter: ['b']"],
        "nothing": [],
        "undocumented": ["no docstring"],
        "Documented": [],
    }


def test_reference_docstrings_have_their_sections() -> None:
    pytest.importorskip("griffe")
    objects = rendered_objects(ROOT)
    assert {"ivy.Ivy.send_task", "ivy.Call.result", "ivy.chain", "ivy.Middleware.after_task",
            "ivy.Task.delay", "ivy.Retry"} <= set(objects), sorted(objects)
    incomplete = incomplete_docstrings(ROOT)
    missing = {p: why for p, why in incomplete.items() if p not in KNOWN_INCOMPLETE_DOCSTRINGS}
    assert not missing, (
        "docstrings of the API reference without their google-style sections (Args: for "
        f"each parameter, Returns: for a result): {missing}")
    done = KNOWN_INCOMPLETE_DOCSTRINGS - set(incomplete)
    assert not done, f"complete now, take them off KNOWN_INCOMPLETE_DOCSTRINGS: {sorted(done)}"


DEPLOY = ROOT / "deploy"


def ivy_commands() -> list[list[str]]:
    """The ``ivy`` command lines of the deploy files: the compose services', the Dockerfile's
    CMD and the systemd units' ExecStart."""
    yaml = pytest.importorskip("yaml")
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    found = [service["command"] for service in compose["services"].values()
             if isinstance(service.get("command"), list) and service["command"][0] == "ivy"]
    [cmd] = [line for line in (DEPLOY / "Dockerfile").read_text().splitlines()
             if line.startswith("CMD ")]
    found.append(json.loads(cmd.removeprefix("CMD ")))
    for unit in sorted((DEPLOY / "systemd").glob("*.service")):
        for line in unit.read_text().splitlines():
            if line.startswith("ExecStart="):
                words = shlex.split(line.removeprefix("ExecStart="))
                found.append(["ivy", *words[1:]] if words[0].endswith("/ivy") else words)
    return found


def test_deploy_files_name_what_exists() -> None:
    yaml = pytest.importorskip("yaml")
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    assert {"rabbitmq", "redis", "worker", "dashboard"} <= set(compose["services"])
    commands = ivy_commands()
    assert len(commands) >= 5, commands
    helps: dict[str, str] = {}
    for words in commands:
        assert words[0] == "ivy", words
        command = words[1]
        if command not in helps:
            helps[command] = subprocess.run(
                [sys.executable, "-m", "ivy", command, "--help"], capture_output=True,
                text=True, timeout=60, check=True).stdout
        flags = [w for w in words[2:] if w.startswith("--")]
        assert all(flag in helps[command] for flag in flags), (words, helps[command])
    # the image's task module is the example that registers the queue the workers consume
    assert "queue=\"testpackage\"" in (ROOT / "examples" / "production.py").read_text()


def compose_command() -> list[str] | None:
    """``docker compose`` (the plugin) or ``docker-compose`` (Debian's package, which .ci/run
    installs when neither is there), whichever this machine has."""
    docker = shutil.which("docker")
    if docker is not None and subprocess.run([docker, "compose", "version"],
                                             capture_output=True, timeout=60).returncode == 0:
        return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy is not None else None


def test_compose_file_is_valid() -> None:
    command = compose_command()
    if command is None:
        if os.environ.get("IVY_REQUIRE_SERVICES") == "1":
            pytest.fail("neither `docker compose` nor `docker-compose` is installed (.ci/run "
                        "installs Debian's docker-compose)")
        pytest.skip("docker compose is not installed")
    out = subprocess.run([*command, "-f", str(DEPLOY / "docker-compose.yml"), "config", "-q"],
                         capture_output=True, text=True, timeout=60,
                         env={**os.environ, "IVY_DASHBOARD_TOKEN": "x" * 32})
    assert out.returncode == 0, out.stderr
