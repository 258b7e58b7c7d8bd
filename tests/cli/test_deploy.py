"""The Kubernetes manifests (deploy/kubernetes/) and the Grafana dashboard (deploy/grafana/),
which CI cannot apply or import: every YAML document parses, and what they rely on holds.

* Workers: the grace period outlasts ``--shutdown-timeout``, the memory limit the processes'
  ``--max-memory-per-child``, the metrics port is the one the annotations and the Service
  name, and every flag exists in ``ivy worker --help`` (the dashboard's in ``ivy dashboard
  --help``).
* KEDA (one ScaledObject per file of keda/): each scales a Deployment of deploy/kubernetes/,
  with a TriggerAuthentication of its own file, on a queue the workers consume, named as ivy
  names it on that broker (the Redis stream and its consumer group, the SQS queue, the
  PostgreSQL table and columns).
* Secrets: every Secret and key the manifests read is made by a command of
  docs/deploy/kubernetes.md.
* Grafana, and the Prometheus trigger: every PromQL expression names only metrics that
  ivy.middleware.Prometheus defines.
"""

from __future__ import annotations

import functools
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from common import ROOT

yaml = pytest.importorskip("yaml")

KUBERNETES = ROOT / "deploy" / "kubernetes"
GRAFANA = ROOT / "deploy" / "grafana" / "ivy-dashboard.json"
PAGE = ROOT / "docs" / "deploy" / "kubernetes.md"
NAMESPACE = "ivy"

Doc = dict[str, Any]


def documents(path: Path) -> list[Doc]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8"))
            if doc is not None]


def manifests() -> dict[Path, list[Doc]]:
    return {path: documents(path) for path in sorted(KUBERNETES.rglob("*.yaml"))}


def of_kind(kind: str, where: list[Doc] | None = None) -> list[Doc]:
    found = where if where is not None else [d for docs in manifests().values() for d in docs]
    return [doc for doc in found if doc["kind"] == kind]


def deployment(name: str) -> Doc:
    [found] = [d for d in of_kind("Deployment") if d["metadata"]["name"] == name]
    return found


def container(name: str) -> Doc:
    only: Doc
    [only] = deployment(name)["spec"]["template"]["spec"]["containers"]
    return only


def flag(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def flags(command: list[str], name: str) -> list[str]:
    return [command[i + 1] for i, word in enumerate(command) if word == name]


def mebibytes(quantity: str) -> float:
    units = {"Ki": 1 / 1024, "Mi": 1, "Gi": 1024}
    match = re.fullmatch(r"(\d+)(Ki|Mi|Gi)", quantity)
    assert match, f"write memory quantities in Ki, Mi or Gi: {quantity!r}"
    return int(match.group(1)) * units[match.group(2)]


@functools.cache
def help_of(command: str) -> str:
    return subprocess.run([sys.executable, "-m", "ivy", command, "--help"], capture_output=True,
                          text=True, timeout=60, check=True).stdout


def worker_queues() -> set[str]:
    return set(flags(container("ivy-worker")["command"], "--queue"))


def test_every_document_parses_and_names_itself() -> None:
    found = manifests()
    assert {p.relative_to(KUBERNETES).as_posix() for p in found} >= {
        "namespace.yaml", "worker.yaml", "dashboard.yaml", "monitoring.yaml",
        "keda/rabbitmq.yaml", "keda/redis-streams.yaml", "keda/sqs.yaml",
        "keda/postgresql.yaml"}
    for path, docs in found.items():
        assert docs, path
        for doc in docs:
            assert {"apiVersion", "kind", "metadata"} <= set(doc), (path, doc)
            assert doc["metadata"]["name"], path
            if doc["kind"] != "Namespace":  # KEDA scales only within one namespace
                assert doc["metadata"].get("namespace") == NAMESPACE, (path, doc["kind"])


def test_workers_stop_within_their_grace_period() -> None:
    spec = deployment("ivy-worker")["spec"]["template"]["spec"]
    command = container("ivy-worker")["command"]
    # exec form: ivy is PID 1 and gets the SIGTERM itself, no shell in between
    assert command[:2] == ["ivy", "worker"], command
    shutdown = float(flag(command, "--shutdown-timeout"))
    grace = spec["terminationGracePeriodSeconds"]
    # what still runs at the deadline is handed back, then the worker closes its connections
    assert grace >= shutdown + 15, (grace, shutdown)
    assert "lifecycle" not in container("ivy-worker"), "a preStop hook's time counts in grace"


def test_memory_limit_covers_the_recycled_processes() -> None:
    command = container("ivy-worker")["command"]
    processes = int(flag(command, "--processes"))
    per_child = float(flag(command, "--max-memory-per-child"))  # MiB (ivy.worker.recycling.MB)
    limit = mebibytes(container("ivy-worker")["resources"]["limits"]["memory"])
    assert limit > processes * per_child, (limit, processes, per_child)


def test_metrics_port_is_the_one_announced() -> None:
    worker = container("ivy-worker")
    port = int(flag(worker["command"], "--metrics-port"))
    assert flag(worker["command"], "--metrics-host") == "0.0.0.0"  # reachable by Prometheus
    annotations = deployment("ivy-worker")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(port)
    [named] = [p for p in worker["ports"] if p["name"] == "metrics"]
    assert named["containerPort"] == port
    [service] = [s for s in of_kind("Service") if s["metadata"]["name"] == "ivy-worker-metrics"]
    labels = deployment("ivy-worker")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    [monitor] = of_kind("ServiceMonitor")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"][
        "labels"].items()
    assert {e["port"] for e in monitor["spec"]["endpoints"]} <= {
        p["name"] for p in service["spec"]["ports"]}


def test_commands_use_flags_that_exist() -> None:
    for name in ("ivy-worker", "ivy-dashboard"):
        command = container(name)["command"]
        assert command[0] == "ivy", command
        text = help_of(command[1])
        for word in command[2:]:
            if word.startswith("--"):
                assert word in text, (name, word)


def test_dashboard_off_loopback_has_a_token_from_a_secret() -> None:
    dashboard = container("ivy-dashboard")
    assert "--token" not in dashboard["command"]  # visible in the process list
    if flag(dashboard["command"], "--host") not in ("127.0.0.1", "localhost", "::1"):
        [token] = [e for e in dashboard["env"] if e["name"] == "IVY_DASHBOARD_TOKEN"]
        assert "secretKeyRef" in token["valueFrom"]
    [service] = [s for s in of_kind("Service") if s["metadata"]["name"] == "ivy-dashboard"]
    assert service["spec"].get("type", "ClusterIP") == "ClusterIP"  # not exposed by itself


def scalers() -> dict[str, tuple[Doc, list[Doc]]]:
    """keda/NAME.yaml -> (its one ScaledObject, its documents)."""
    found = {}
    for path in sorted((KUBERNETES / "keda").glob("*.yaml")):
        docs = documents(path)
        [scaled] = of_kind("ScaledObject", docs)
        found[path.stem] = (scaled, docs)
    return found


def trigger(name: str) -> Doc:
    scaled, _ = scalers()[name]
    only: Doc
    [only] = scaled["spec"]["triggers"]
    return only


def test_scaled_objects_scale_an_existing_deployment() -> None:
    found = scalers()
    assert {"rabbitmq", "redis-streams", "sqs", "postgresql"} <= set(found)
    for name, (scaled, docs) in found.items():
        target = scaled["spec"]["scaleTargetRef"]["name"]
        assert deployment(target)["metadata"]["namespace"] == scaled["metadata"]["namespace"]
        assert scaled["spec"]["minReplicaCount"] <= scaled["spec"]["maxReplicaCount"], name
        for each in scaled["spec"]["triggers"]:
            if "authenticationRef" in each:
                auths = {d["metadata"]["name"] for d in of_kind("TriggerAuthentication", docs)}
                assert each["authenticationRef"]["name"] in auths, name


def test_rabbitmq_trigger_counts_the_workers_queue() -> None:
    rabbit = trigger("rabbitmq")
    assert rabbit["type"] == "rabbitmq"
    # over AMQP KEDA sees only ready messages; the management API adds the unacknowledged
    assert rabbit["metadata"]["protocol"] == "http"
    assert rabbit["metadata"]["mode"] == "QueueLength"
    assert rabbit["metadata"]["queueName"] in worker_queues()


def test_redis_trigger_names_ivys_stream_and_group() -> None:
    pytest.importorskip("redis")
    from ivy.queues.redis_streams import GROUP, Keys

    redis = trigger("redis-streams")
    assert redis["type"] == "redis-streams"
    streams = {Keys(queue).stream: queue for queue in worker_queues()}
    assert redis["metadata"]["stream"] in streams, (redis["metadata"]["stream"], streams)
    assert redis["metadata"]["consumerGroup"] == GROUP


def test_sqs_trigger_names_ivys_queue() -> None:
    sqs = trigger("sqs")
    assert sqs["type"] == "aws-sqs-queue"
    # the queue's name or its URL, whose last segment is the name; ivy's queue Q is SQS's Q
    assert sqs["metadata"]["queueURL"].rsplit("/", 1)[-1] in worker_queues()
    assert sqs["metadata"]["awsRegion"]


def test_postgresql_query_reads_ivys_table() -> None:
    pytest.importorskip("psycopg")
    from ivy._postgres.connection import DEFAULT_SCHEMA
    from ivy._postgres.schema import MIGRATIONS

    postgres = trigger("postgresql")
    assert postgres["type"] == "postgresql"
    query = " ".join(postgres["metadata"]["query"].split())
    match = re.fullmatch(r"SELECT count\(\*\) FROM (\w+)\.(\w+) WHERE queue = '([^']+)' "
                         r"AND \((.*)\)", query)
    assert match, query
    schema, table, queue, condition = match.groups()
    assert (schema, table) == (DEFAULT_SCHEMA, "messages")
    assert queue in worker_queues()
    [create] = [s for _, statements in MIGRATIONS for s in statements
                if s.startswith("CREATE TABLE {schema}.messages ")]
    columns = set(re.findall(r"^\s+(\w+) ", create, re.MULTILINE))
    used = set(re.findall(r"\b([a-z_]+)\b", condition)) - {"or", "and", "is", "not", "null",
                                                          "now"}
    assert used and used <= columns, (used, columns)


def test_every_secret_the_manifests_read_is_made_on_the_page() -> None:
    page = PAGE.read_text(encoding="utf-8")
    made: dict[str, set[str]] = {}
    for command in re.findall(r"kubectl -n ivy create secret generic .*?(?<!\\)\n",
                              page.replace("\\\n", " "), re.DOTALL):
        words = shlex.split(command)
        keys = {w.split("=", 1)[1].split("=", 1)[0] for w in words
                if w.startswith("--from-literal=")}
        made.setdefault(words[words.index("generic") + 1], set()).update(keys)
    read: set[tuple[str, str]] = set()
    for docs in manifests().values():
        for doc in docs:
            text = json.dumps(doc)
            for ref in re.findall(r'"secretKeyRef": (\{[^}]*\})', text):
                found = json.loads(ref)
                if not found.get("optional"):
                    read.add((found["name"], found["key"]))
            for ref in doc.get("spec", {}).get("secretTargetRef", []):
                read.add((ref["name"], ref["key"]))
    assert read
    missing = {(name, key) for name, key in read if key not in made.get(name, set())}
    assert not missing, (missing, made)


# -- PromQL: the Grafana dashboard and KEDA's prometheus trigger ---------------------------


@functools.cache
def ivy_metric_names() -> frozenset[str]:
    """The sample names ivy's metrics are scraped under, from the families that
    ``ivy.middleware.Prometheus`` registers (a counter ``ivy_tasks`` is ``ivy_tasks_total``,
    a histogram gives ``_bucket``, ``_sum`` and ``_count``)."""
    client = pytest.importorskip("prometheus_client")
    from ivy.middleware.prometheus import Prometheus

    registry = client.CollectorRegistry()
    Prometheus(registry)
    suffixes = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_sum",
                                                                        "_count")}
    names = {family.name + suffix for family in registry.collect()
             for suffix in suffixes[family.type]}
    assert "ivy_tasks_total" in names
    return frozenset(names)


#: words of PromQL that are not metric names
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or",
            "unless", "offset", "bool", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """The metric names in a PromQL expression: what is left once strings, label matchers,
    ranges, groupings, Grafana's variables, numbers, functions and keywords are taken out."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^{}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\$\{?\w+\}?", " ", text)
    words = re.findall(r"(?<![\w.])([a-zA-Z_:][\w:]*)(\s*\()?", text)
    return {word for word, call in words if not call and word.lower() not in KEYWORDS}


def test_metric_names_are_read_out_of_promql() -> None:
    assert metric_names('histogram_quantile(0.95, sum by (le, task) (rate('
                        'ivy_task_duration_seconds_bucket{queue=~"$queue"}[$__rate_interval])))'
                        ) == {"ivy_task_duration_seconds_bucket"}
    assert metric_names('sum(rate(a_total{x="{y}"}[5m])) / on (q) b') == {"a_total", "b"}
    assert metric_names("max(ivy_queue_messages) > bool 3") == {"ivy_queue_messages"}


def grafana_expressions(dashboard: Doc) -> list[str]:
    found = []
    for panel in dashboard["panels"]:
        found += [t["expr"] for t in panel.get("targets", [])]
        for inner in panel.get("panels", []):
            found += [t["expr"] for t in inner.get("targets", [])]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            found.append(query["query"] if isinstance(query, dict) else query)
    return found


def test_grafana_dashboard_uses_only_ivys_metrics() -> None:
    dashboard = json.loads(GRAFANA.read_text(encoding="utf-8"))
    expressions = grafana_expressions(dashboard)
    assert len(expressions) >= 10
    used: set[str] = set()
    for expr in expressions:
        names = metric_names(re.sub(r"^label_values\((\w+),.*\)$", r"\1", expr))
        assert names, expr
        assert names <= ivy_metric_names(), (expr, names - ivy_metric_names())
        used |= names
    # throughput and failures, latency, depth, in flight, publishes: each has a panel
    assert {"ivy_tasks_total", "ivy_task_duration_seconds_bucket", "ivy_queue_messages",
            "ivy_tasks_running", "ivy_messages_published_total"} <= used
    assert any('outcome="dead_lettered"' in e for e in expressions)
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def test_alerts_of_the_prometheus_page_use_ivys_metrics() -> None:
    page = (ROOT / "docs" / "deploy" / "prometheus.md").read_text(encoding="utf-8")
    rules = [rule for block in re.findall(r"```yaml\n(.*?)```", page, re.DOTALL)
             if "groups:" in block
             for group in yaml.safe_load(block)["groups"] for rule in group["rules"]]
    assert rules
    for rule in rules:
        names = metric_names(rule["expr"])
        assert names and names <= ivy_metric_names(), (rule["alert"], names)


def test_prometheus_trigger_uses_ivys_metrics() -> None:
    prom = trigger("prometheus")
    names = metric_names(prom["metadata"]["query"])
    assert names and names <= ivy_metric_names(), names
    queues = set(re.findall(r'queue="([^"]+)"', prom["metadata"]["query"]))
    assert queues and queues <= worker_queues()
