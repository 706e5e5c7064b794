"""``pipeline topics`` and ``pipeline aggregates show`` without a broker: the topics a topology
needs, comparing declared and actual settings, rendering (fake metadata, a fake admin client),
the worker's HTTP API answered by a real local HTTP server, and the errors."""

from __future__ import annotations

import http.server
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
import yaml

from pipeline import topics as topics_module
from pipeline.cli import build_parser, main
from pipeline.runtime import admin
from pipeline.runtime.admin import TopicPlan
from pipeline.settings import Settings
from pipeline.topics import (
    PartitionInfo,
    TopicInfo,
    TopicsReport,
    format_create,
    format_describe,
    same_config_value,
)
from pipeline.topology import Topology

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "topologies" / "ecommerce.yaml"
GROUP = "pipeline-ecommerce"
NOWHERE = "127.0.0.1:1"


@pytest.fixture(autouse=True)
def _no_group_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("PIPELINE_GROUP_ID", "PIPELINE_BROKER", "PIPELINE_WEB_HOST", "PIPELINE_WEB_PORT"):
        monkeypatch.delenv(name, raising=False)


# ------------------------------------------------------------------ arguments


def test_topics_arguments() -> None:
    args = build_parser().parse_args(
        ["topics", "create", str(EXAMPLE), "--broker", "b:9", "--group-id", "g", "--dry-run",
         "--json", "--timeout", "3"]
    )
    assert (args.topology, args.broker, args.group_id, args.dry_run, args.json, args.timeout) == (
        EXAMPLE, "b:9", "g", True, True, 3.0
    )
    args = build_parser().parse_args(["topics", "describe", str(EXAMPLE)])
    assert (args.group_id, args.json, args.timeout, args.no_offsets) == (None, False, 10.0, False)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["topics", "describe", str(EXAMPLE), "--dry-run"])


def test_aggregates_arguments() -> None:
    args = build_parser().parse_args(["aggregates", "show", str(EXAMPLE)])
    assert (args.name, args.url, args.json, args.windows) == (None, None, False, 10)
    args = build_parser().parse_args(
        ["aggregates", "show", str(EXAMPLE), "events_per_minute", "--url", "http://h:1", "--json"]
    )
    assert (args.name, args.url, args.json) == ("events_per_minute", "http://h:1", True)


@pytest.mark.parametrize(
    "argv", [["topics", "create"], ["topics", "describe"], ["aggregates", "show"]]
)
def test_help(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main([*argv, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: pipeline {' '.join(argv)}")
    if argv[0] == "topics":
        assert "Faust" in out  # the changelog topics are Faust's


# ------------------------------------------------------------------ the topics a topology needs


def test_the_topics_of_the_example(example_topology: Topology) -> None:
    settings = Settings.from_env(env={})
    plans = admin.planned_topics(example_topology)
    roles = {p.name: p.role for p in plans}
    assert roles["raw_events"] == admin.SOURCE
    assert roles["invalid_events"] == admin.DEAD_LETTERS
    assert roles["processed_events"] == admin.OUTPUT
    internal = admin.internal_topics(example_topology, settings, partitions=6)
    assert [(p.name, p.partitions, p.role) for p in internal] == [
        (f"{GROUP}-dedupe-repartition", 6, admin.REPARTITION),
        (f"{GROUP}-aggregate-partials", 6, admin.PARTIALS),
    ]
    assert all(p.config == {"retention.ms": str(7 * 86_400_000)} for p in internal)
    assert admin.changelog_topic_names(example_topology, settings) == [
        f"{GROUP}-dedupe-dedupe-changelog", f"{GROUP}-aggregates-changelog"
    ]
    custom = Settings.from_env(env={}, group_id="g")
    assert admin.internal_topic_names(example_topology, custom) == [
        "g-dedupe-repartition", "g-aggregate-partials"
    ]


def test_the_names_are_the_ones_the_worker_uses(example_topology: Topology, tmp_path: Path) -> None:
    """admin.py names the worker's topics without importing Faust; the runtime must agree."""
    from pipeline.runtime import aggregates as runtime_aggregates
    from pipeline.runtime import app as runtime_app

    settings = Settings(broker=NOWHERE, data_dir=tmp_path, group_id="grp",
                        extra_kafka={"log_level": "0"})
    # One definition of each name, in admin.py, which the runtime imports.
    assert runtime_app.group_id_for is admin.group_id_for
    assert runtime_app.repartition_topic_name is admin.repartition_topic_name
    assert not hasattr(runtime_aggregates, "partials_topic_name")
    app = runtime_app.create_app(example_topology, settings)
    try:
        changelogs = sorted(t.changelog_topic.get_topic_name() for t in app.tables.values())
        assert changelogs == sorted(admin.changelog_topic_names(example_topology, settings))
        consumed = {t for topic in app.topics for t in topic.topics}
        assert set(admin.internal_topic_names(example_topology, settings)) <= consumed
    finally:
        output = app.topology_agent.output
        output.close(timeout=0)
        output._producer.close()


def test_an_internal_topic_with_another_partition_count_is_refused() -> None:
    plan = TopicPlan("g-aggregate-partials", 4, 1, {}, role=admin.PARTIALS)
    assert admin.internal_partition_problem(plan, 4) is None
    assert admin.internal_partition_problem(plan, 2) == (
        "topic g-aggregate-partials has 2 partitions but the source has 4: delete it (it only "
        "holds data in transit) or give the source its old count"
    )


@pytest.mark.parametrize(
    ("declared", "actual", "same"),
    [
        ("604800000", "604800000", True),
        ("604800000", "604800000.0", True),
        ("true", "True", True),
        ("compact,delete", "delete, compact", True),
        ("604800000", "86400000", False),
        ("compact", "compact,delete", False),
        ("lz4", None, False),
    ],
)
def test_same_config_value(declared: str, actual: str | None, same: bool) -> None:
    assert same_config_value(declared, actual) is same


# ------------------------------------------------------------------ comparing and rendering


def partitions(n: int, *, high: int = 10, committed: int | None = None,
               isr: tuple[int, ...] = (1,)) -> list[PartitionInfo]:
    return [PartitionInfo(p, 1, (1,), isr, 0, high, committed) for p in range(n)]


def fake_report() -> TopicsReport:
    source = TopicPlan("raw", 4, 1, {"retention.ms": "604800000"}, role=admin.SOURCE)
    bots = TopicPlan("bots", 1, 1, {"retention.ms": "259200000"}, role=admin.OUTPUT)
    partials = TopicPlan("g-aggregate-partials", 4, 1, {}, role=admin.PARTIALS)
    raw = TopicInfo("raw", source.role, source, exists=True,
                    partitions=partitions(4, high=100, committed=None),
                    configs={"retention.ms": "604800000", "cleanup.policy": "delete"},
                    overrides={"retention.ms": "604800000"})
    raw.partitions[0].committed = 90
    raw.partitions[1].committed = 100
    return TopicsReport(
        "ecommerce", "k:9092", "g",
        [
            raw,
            TopicInfo("bots", bots.role, bots, exists=True,
                      partitions=[PartitionInfo(0, 1, (1, 2), (1,), 5, 7)],
                      configs={"retention.ms": "1000"}),
            TopicInfo("g-aggregate-partials", partials.role, partials, exists=True,
                      partitions=partitions(2, high=0), configs={},
                      problem=admin.internal_partition_problem(partials, 2)),
            TopicInfo("g-aggregates-changelog", admin.CHANGELOG),
        ],
        group_offsets=True,
    )


def test_warnings_say_what_differs() -> None:
    report = fake_report()
    assert report.warnings() == [
        "topic bots has replication factor 2, the topology declares 1",
        ("topic bots: retention.ms is 1000 on the broker, the topology declares 259200000; "
        "not changed (use kafka-configs.sh --alter)"),
        "topic bots: partitions [0] are under-replicated",
    ]
    assert report.problems() == [
        ("topic g-aggregate-partials has 2 partitions but the source has 4: delete it (it only "
        "holds data in transit) or give the source its old count")
    ]
    wrong_count = TopicInfo("raw", admin.SOURCE, TopicPlan("raw", 4, 1, {}), exists=True,
                            partitions=partitions(2), configs={})
    assert wrong_count.warnings() == [
        ("topic raw has 2 partitions, the topology declares 4; left as it is (more partitions "
        "would move keys between partitions and break per-key order)")
    ]
    wrong_count.status = topics_module.CREATED
    assert wrong_count.warnings() == []


def test_lag_counts_uncommitted_partitions_of_a_consumed_topic_from_the_start() -> None:
    raw = fake_report().topics[0]
    assert [raw.partition_lag(p) for p in raw.partitions] == [10, 0, 100, 100]
    assert (raw.messages, raw.lag) == (400, 210)
    bots = fake_report().topics[1]
    assert (bots.messages, bots.lag) == (2, None)


def test_format_describe() -> None:
    text = format_describe(fake_report())
    lines = text.splitlines()
    assert lines[0] == "topology ecommerce: 4 topics on k:9092, worker group g"
    assert [line.split() for line in lines[2:5]] == [
        ["TOPIC", "ROLE", "PARTITIONS", "RF", "~MESSAGES", "GROUP", "LAG", "STATUS"],
        ["raw", "source", "4", "1", "400", "210", "ok"],
        ["bots", "output", "1", "2", "2", "-", "DIFFERS:", "see", "warnings"],
    ]
    assert lines[5].endswith("0          -  PROBLEM: see below")
    assert lines[6].endswith("-   -          -          -  MISSING: Faust creates it when the worker starts")
    config_line = next(line for line in lines if line.startswith("  bots") and "DIFFERS" in line)
    assert config_line.split() == ["bots", "retention.ms", "259200000", "1000", "DIFFERS"]
    partition_line = next(line for line in lines if line.strip().startswith("raw  ") and
                          line.split()[1] == "0")
    assert partition_line.split() == ["raw", "0", "0", "100", "100", "90", "10", "1", "1"]
    bots_line = next(line for line in lines if line.strip().startswith("bots  ") and "1 (" in line)
    assert bots_line.split() == ["bots", "0", "5", "7", "2", "-", "-", "1", "1", "(under-replicated)"]
    assert "warning: topic bots: retention.ms is 1000" in text
    assert "problem: topic g-aggregate-partials has 2 partitions" in text


def test_describe_json() -> None:
    data = orjson.loads(orjson.dumps(fake_report().to_json()))
    raw, bots, partials, changelog = data["topics"]
    assert raw["configs"] == {"retention.ms": {"declared": "604800000", "actual": "604800000",
                                               "same": True}}
    assert raw["partition_offsets"][2] == {
        "partition": 2, "leader": 1, "replicas": [1], "isr": [1], "low": 0, "high": 100,
        "messages": 100, "committed": None, "lag": 100,
    }
    assert (raw["messages"], raw["lag"], raw["created_by"]) == (400, 210, "pipeline")
    assert bots["configs"]["retention.ms"]["same"] is False and bots["warnings"]
    assert partials["problem"].startswith("topic g-aggregate-partials has 2 partitions")
    assert changelog == {**changelog, "exists": False, "created_by": "faust", "declared": None}
    assert len(data["warnings"]) == 3 and len(data["problems"]) == 1


def test_format_create() -> None:
    report = fake_report()
    statuses = [topics_module.CREATED, topics_module.EXISTS, topics_module.EXISTS]
    for info, status in zip(report.managed, statuses, strict=True):
        info.status = status
    text = format_create(report)
    lines = text.splitlines()
    assert lines[0] == "topology ecommerce on k:9092 (worker group g):"
    assert lines[2].split() == ["created", "raw", "source", "4", "1", "retention.ms=604800000"]
    assert "1 created, 2 already existed" in lines
    assert (
        "Faust creates the tables' changelog topics when the worker starts: g-aggregates-changelog"
        in lines
    )
    assert "warning: topic bots: retention.ms is 1000 on the broker" in text


# ------------------------------------------------------------------ the Kafka glue, faked


def done(value: Any = None, error: BaseException | None = None) -> Future:
    future: Future = Future()
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)
    return future


class FakeAdmin:
    """What ``pipeline.topics`` asks an AdminClient, answered from a dict of topics."""

    def __init__(self, topics: dict[str, int], *, committed: dict[tuple[str, int], int] | None = None,
                 configs: dict[str, dict[str, str]] | None = None, fail: dict[str, Any] | None = None) -> None:
        self.topics = dict(topics)
        self.committed = committed or {}
        self.configs = configs or {}
        self.fail = fail or {}
        self.created: list[Any] = []

    def list_topics(self, timeout: float) -> Any:
        def topic(n: int) -> Any:
            return SimpleNamespace(error=None, partitions={
                p: SimpleNamespace(id=p, leader=1, replicas=[1], isrs=[1]) for p in range(n)
            })
        return SimpleNamespace(topics={name: topic(n) for name, n in self.topics.items()})

    def describe_configs(self, resources: list[Any], request_timeout: float) -> dict[Any, Future]:
        from confluent_kafka.admin import ConfigEntry, ConfigSource

        return {
            r: done({k: ConfigEntry(k, v, source=ConfigSource.DYNAMIC_TOPIC_CONFIG)
                     for k, v in self.configs.get(r.name, {}).items()})
            for r in resources
        }

    def list_offsets(self, request: dict[Any, Any], request_timeout: float) -> dict[Any, Future]:
        from confluent_kafka.admin import OffsetSpec

        latest = OffsetSpec.latest()
        return {
            tp: done(SimpleNamespace(offset=(10 * (tp.partition + 1)) if type(spec) is type(latest) else 0))
            for tp, spec in request.items()
        }

    def list_consumer_group_offsets(self, requests: list[Any], request_timeout: float) -> dict[str, Future]:
        group = requests[0].group_id
        tps = [SimpleNamespace(topic=t, partition=p, offset=o, error=None)
               for (t, p), o in self.committed.items()]
        return {group: done(SimpleNamespace(topic_partitions=tps))}

    def create_topics(self, new: list[Any], request_timeout: float) -> dict[str, Future]:
        from confluent_kafka import KafkaError, KafkaException

        futures = {}
        for topic in new:
            self.created.append(topic)
            why = self.fail.get(topic.topic)
            if why == "exists":
                futures[topic.topic] = done(error=KafkaException(KafkaError(KafkaError.TOPIC_ALREADY_EXISTS)))
            elif why:
                futures[topic.topic] = done(error=KafkaException(KafkaError(KafkaError.POLICY_VIOLATION, why)))
            else:
                futures[topic.topic] = done()
        return futures


@pytest.fixture
def fake_admin(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeAdmin]:
    fake = FakeAdmin({})
    monkeypatch.setattr(topics_module, "quiet_admin_client", lambda settings: (fake, admin.ClientLog()))
    yield fake


def test_describe_with_a_fake_admin(fake_admin: FakeAdmin, capsys: pytest.CaptureFixture[str]) -> None:
    fake_admin.topics = {"raw_events": 4, "processed_events": 4, f"{GROUP}-dedupe-repartition": 4,
                         f"{GROUP}-aggregates-changelog": 4}
    fake_admin.configs = {"raw_events": {"retention.ms": "604800000"},
                          f"{GROUP}-aggregates-changelog": {"cleanup.policy": "compact"}}
    fake_admin.committed = {("raw_events", 0): 4, ("raw_events", 3): 40}
    assert main(["topics", "describe", str(EXAMPLE), "--json"]) == 0
    data = orjson.loads(capsys.readouterr().out)
    by_name = {t["name"]: t for t in data["topics"]}
    assert len(by_name) == 11 and data["group_id"] == GROUP and data["group_has_offsets"] is True
    raw = by_name["raw_events"]
    assert (raw["exists"], raw["partitions"], raw["messages"], raw["lag"]) == (True, 4, 100, 6 + 20 + 30 + 0)
    assert by_name["processed_events"]["configs"]["retention.ms"]["actual"] is None
    assert by_name["bot_events"]["exists"] is False
    assert by_name[f"{GROUP}-aggregates-changelog"]["overrides"] == {"cleanup.policy": "compact"}
    assert main(["topics", "describe", str(EXAMPLE)]) == 0
    text = capsys.readouterr().out
    assert "MISSING: pipeline topics create" in text
    assert "cleanup.policy=compact" in text


def test_create_reports_each_topic(fake_admin: FakeAdmin, capsys: pytest.CaptureFixture[str]) -> None:
    fake_admin.topics = {"raw_events": 6}  # more partitions than declared: internal topics follow it
    fake_admin.configs = {"raw_events": {"retention.ms": "1"}}
    fake_admin.fail = {"bot_events": "exists"}
    assert main(["topics", "create", str(EXAMPLE), "--json", "--group-id", "g"]) == 0
    data = orjson.loads(capsys.readouterr().out)
    statuses = {t["name"]: t["status"] for t in data["topics"] if t["created_by"] == "pipeline"}
    assert statuses == {
        "raw_events": "exists", "bot_events": "exists", "revenue_events": "created",
        "error_events": "created", "processed_events": "created", "aggregates": "created",
        "invalid_events": "created", "g-dedupe-repartition": "created",
        "g-aggregate-partials": "created",
    }
    created = {t.topic: t for t in fake_admin.created}
    assert created["g-aggregate-partials"].num_partitions == 6
    assert created["revenue_events"].num_partitions == 4
    assert created["revenue_events"].config == {"retention.ms": "2592000000"}
    assert len(data["warnings"]) == 2  # raw_events: 6 partitions, not 4; retention.ms 1
    assert main(["topics", "create", str(EXAMPLE), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "would create  revenue_events" in out and "dry run, nothing created" in out


def test_create_fails_with_exit_two_after_reporting(
    fake_admin: FakeAdmin, capsys: pytest.CaptureFixture[str]
) -> None:
    fake_admin.fail = {"aggregates": "topic name not allowed"}
    assert main(["topics", "create", str(EXAMPLE)]) == 2
    captured = capsys.readouterr()
    assert "failed   aggregates" in captured.out
    assert captured.err.startswith("error: cannot create topic aggregates: ")
    assert "topic name not allowed" in captured.err and captured.err.count("\n") == 1


def test_create_refuses_an_internal_topic_the_worker_would_refuse(
    fake_admin: FakeAdmin, capsys: pytest.CaptureFixture[str]
) -> None:
    fake_admin.topics = {"raw_events": 4, f"{GROUP}-aggregate-partials": 1}
    assert main(["topics", "create", str(EXAMPLE)]) == 2
    captured = capsys.readouterr()
    assert captured.err == (
        f"error: topic {GROUP}-aggregate-partials has 1 partitions but the source has 4: delete "
        "it (it only holds data in transit) or give the source its old count\n"
    )


# ------------------------------------------------------------------ an unreachable broker


@pytest.mark.parametrize(
    "argv", [["topics", "create"], ["topics", "create", "--dry-run"], ["topics", "describe"],
             ["topics", "describe", "--json"]],
)
def test_an_unreachable_broker_is_a_one_line_error_in_bounded_time(
    argv: list[str], capfd: pytest.CaptureFixture[str]
) -> None:
    started = time.monotonic()
    code = main([*argv[:2], str(EXAMPLE), *argv[2:], "--broker", NOWHERE, "--timeout", "1"])
    elapsed = time.monotonic() - started
    out, err = capfd.readouterr()
    assert code == 2 and out == ""
    assert err.startswith(f"error: cannot reach Kafka at {NOWHERE}: ")
    assert err.count("\n") == 1, err  # librdkafka's connection errors are not printed...
    assert err.endswith("(Connect to ipv4#127.0.0.1:1 failed: Connection refused)\n")  # ...but said
    assert elapsed < 8


def test_produce_with_an_unreachable_broker_names_it(
    monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    real = admin.existing_topics
    monkeypatch.setattr(admin, "existing_topics", lambda a, **kw: real(a, **{**kw, "timeout": 1.0}))
    assert main(["produce", str(EXAMPLE), "--generate", "1", "--broker", NOWHERE]) == 2
    _out, err = capfd.readouterr()
    assert err.startswith(f"error: cannot reach Kafka at {NOWHERE}: ") and err.count("\n") == 1


@pytest.mark.parametrize(
    ("logged", "reason"),
    [
        (("FAIL [rdkafka#producer-1] [thrd:127.0.0.1:1/bootstrap]: 127.0.0.1:1/bootstrap: Connect to "
         "ipv4#127.0.0.1:1 failed: Connection refused (after 0ms in state CONNECT)"),
         "Connect to ipv4#127.0.0.1:1 failed: Connection refused"),
        (("FAIL [rdkafka#producer-2] [thrd:sasl_plaintext://127.0.0.1:9094/bootstrap]: "
         "sasl_plaintext://127.0.0.1:9094/bootstrap: SASL authentication error: Authentication "
         "failed: Invalid username or password (after 301ms in state AUTH_REQ)"),
         "SASL authentication error: Authentication failed: Invalid username or password"),
        ("something else entirely", "something else entirely"),
    ],
)
def test_the_reason_librdkafka_logged(logged: str, reason: str) -> None:
    client_log = admin.ClientLog()
    assert client_log.reason() is None
    client_log.log(40, "%s", logged)
    client_log.log(20, "%s", "an info line is not a reason")
    assert client_log.reason() == reason


def test_a_bad_timeout(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["topics", "describe", str(EXAMPLE), "--timeout", "0"]) == 2
    assert capsys.readouterr().err == "error: --timeout must be more than 0 seconds\n"


# ------------------------------------------------------------------ aggregates show

LISTING = {
    "aggregates": [
        {
            "aggregate": "events_per_minute",
            "window": {"type": "tumbling", "size_ms": 60_000, "advance_ms": 60_000, "grace_ms": 30_000},
            "group_by": ["event"],
            "measures": [{"id": "events", "type": "count"}],
            "output_topic": "aggregates",
            "late_events_topic": None,
            "combined_in_partition": 2,
            "combined_here": True,
        },
        {
            "aggregate": "revenue_per_minute",
            "window": {"type": "tumbling", "size_ms": 60_000, "advance_ms": 60_000, "grace_ms": 30_000},
            "group_by": ["properties.currency"],
            "measures": [{"id": "orders", "type": "count"},
                         {"id": "revenue", "type": "sum", "field": "properties.revenue"}],
            "output_topic": "aggregates",
            "late_events_topic": None,
            "combined_in_partition": 0,
            "combined_here": False,
        },
    ]
}
T0 = 1_795_000_020_000 - 1_795_000_020_000 % 60_000


def record(start: int, event: str, events: int, *, overflow: bool = False) -> dict[str, Any]:
    return {"aggregate": "events_per_minute", "window_start": start, "window_end": start + 60_000,
            "group": {} if overflow else {"event": event}, "overflow": overflow,
            "measures": {"events": events}, "skipped": {}, "partitions": [0, 1]}


SNAPSHOT = {
    "aggregate": "events_per_minute",
    "partitions": [0, 1],
    "watermarks": {"0": T0 + 61_000, "1": T0 + 65_000},
    "stale_partials": 0,
    "windows": [
        {"window_start": T0, "window_end": T0 + 60_000, "closed": True, "final": True,
         "groups": [record(T0, "page_viewed", 120), record(T0, "", 3, overflow=True)]},
        {"window_start": T0 + 60_000, "window_end": T0 + 120_000, "closed": False, "final": False,
         "groups": [record(T0 + 60_000, "page_viewed", 7)]},
    ],
    "late_events_here": 2,
}

ROUTES: dict[str, tuple[int, bytes]] = {
    "/aggregates": (200, orjson.dumps(LISTING)),
    "/aggregates/events_per_minute": (200, orjson.dumps(SNAPSHOT)),
    "/aggregates/revenue_per_minute": (503, orjson.dumps({"error": "no worker combines it right now (rebalance?)"})),
    "/aggregates/nope": (404, orjson.dumps({"error": "no aggregate 'nope'",
                                            "aggregates": ["events_per_minute", "revenue_per_minute"]})),
}


class CannedWorker(http.server.BaseHTTPRequestHandler):
    routes = ROUTES

    def do_GET(self) -> None:
        status, body = self.routes.get(self.path, (404, b"404: Not Found"))
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def worker_url() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), CannedWorker)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_aggregates_show_lists_every_aggregate(worker_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["aggregates", "show", str(EXAMPLE), "--url", worker_url]) == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert lines[0] == f"aggregates of the worker at {worker_url}:"
    assert lines[1].split() == ["AGGREGATE", "WINDOW", "GROUP", "BY", "MEASURES", "OUTPUT", "WINDOWS"]
    assert lines[2].startswith("events_per_minute")
    assert "tumbling 1m, grace 30s" in lines[2] and "events (count)" in lines[2]
    assert lines[2].endswith("1 pending, 1 recent final; latest 2026-11-18 11:08")
    assert "orders (count), revenue (sum of properties.revenue)" in lines[3]
    assert lines[3].endswith("rebalancing, try again (no worker combines it right now (rebalance?))")
    # The worker serves two of the example's five aggregates: said, on stderr.
    assert captured.err.startswith(f"warning: the worker at {worker_url} serves aggregates "
                                   "events_per_minute, revenue_per_minute; topology ecommerce declares")


def test_aggregates_show_one(worker_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["aggregates", "show", str(EXAMPLE), "events_per_minute", "--url", worker_url]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == ("aggregate events_per_minute: partitions reporting 0, 1; watermarks "
                        "0: 2026-11-18T11:08:01.000Z, 1: 2026-11-18T11:08:05.000Z")
    assert [line.split() for line in lines[1:5]] == [
        ["WINDOW", "(UTC)", "STATE", "event", "events"],
        ["2026-11-18", "11:07", "-", "2026-11-18", "11:08", "final", "page_viewed", "120"],
        ["2026-11-18", "11:07", "-", "2026-11-18", "11:08", "final", "(other", "groups)", "3"],
        ["2026-11-18", "11:08", "-", "2026-11-18", "11:09", "pending", "page_viewed", "7"],
    ]
    assert lines[5] == "late events (counted, not added) on this worker: 2"
    assert main(["aggregates", "show", str(EXAMPLE), "events_per_minute", "--url", worker_url,
                 "--windows", "1"]) == 0
    out = capsys.readouterr().out
    assert "final" not in out and "(1 earlier window(s) not shown; --windows 0 shows all)" in out


def test_aggregates_show_json_is_the_worker_answer(worker_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["aggregates", "show", str(EXAMPLE), "events_per_minute", "--url", worker_url, "--json"]) == 0
    assert orjson.loads(capsys.readouterr().out) == SNAPSHOT
    assert main(["aggregates", "show", str(EXAMPLE), "--url", worker_url, "--json"]) == 0
    data = orjson.loads(capsys.readouterr().out)
    assert data["aggregates"] == LISTING["aggregates"]
    assert data["windows"]["events_per_minute"] == SNAPSHOT
    assert data["windows"]["revenue_per_minute"]["error"].startswith("rebalancing, try again")


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("nope", "error: unknown aggregate nope (known: events_per_minute, revenue_per_minute)\n"),
        ("revenue_per_minute", ("error: aggregate revenue_per_minute: rebalancing, try again (no "
         "worker combines it right now (rebalance?))\n")),
    ],
)
def test_aggregates_show_errors(
    name: str, message: str, worker_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["aggregates", "show", str(EXAMPLE), name, "--url", worker_url]) == 2
    assert capsys.readouterr().err == message


def test_aggregates_show_without_a_worker(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nobody listens there
    assert main(["aggregates", "show", str(EXAMPLE), "--url", f"127.0.0.1:{port}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: no worker answers at http://127.0.0.1:{port}: ")
    assert "refused" in err and err.count("\n") == 1


def test_aggregates_show_gives_up_on_a_silent_worker(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)  # accepts connections (the backlog), never answers
        port = silent.getsockname()[1]
        started = time.monotonic()
        code = main(["aggregates", "show", str(EXAMPLE), "--url", f"http://127.0.0.1:{port}",
                     "--timeout", "0.5"])
        assert time.monotonic() - started < 5
    assert code == 2
    assert capsys.readouterr().err == (
        f"error: no worker answers at http://127.0.0.1:{port}: no answer within 0.5s (is "
        "`pipeline worker` running there? see --url)\n"
    )


def test_aggregates_show_of_a_worker_without_aggregates(
    worker_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(CannedWorker, "routes", {})
    assert main(["aggregates", "show", str(EXAMPLE), "--url", worker_url]) == 2
    assert capsys.readouterr().err == (
        f"error: the worker at {worker_url} serves no aggregates (its topology has no aggregate "
        "stage)\n"
    )


def test_aggregates_show_of_a_topology_without_aggregates(
    tmp_path: Path, example_text: str, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = yaml.safe_load(example_text)
    doc["stages"] = [s for s in doc["stages"] if s["type"] != "aggregate"]
    path = tmp_path / "plain.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    assert main(["aggregates", "show", str(path), "--url", "127.0.0.1:1"]) == 2
    assert capsys.readouterr().err == "error: topology ecommerce has no aggregate stage\n"


def test_aggregates_show_default_url(
    monkeypatch: pytest.MonkeyPatch, worker_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PIPELINE_WEB_PORT", worker_url.rsplit(":", 1)[1])
    assert main(["aggregates", "show", str(EXAMPLE), "events_per_minute"]) == 0
    assert "aggregate events_per_minute" in capsys.readouterr().out
