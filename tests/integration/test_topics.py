"""``pipeline topics create|describe`` against the real broker: every topic the worker needs,
idempotent, declared configs shown next to the broker's, drift and refusals reported."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewTopic,
    ResourceType,
)

from pipeline.cli import main
from pipeline.errors import PipelineError
from pipeline.runtime import admin
from pipeline.settings import Settings
from pipeline.topology import load_topology
from tests.integration.kafka_helpers import BOOTSTRAP, REPO, make_topology
from tests.integration.kafka_helpers import TestTopology as Topology

pytestmark = pytest.mark.kafka


def topics_cli(
    capsys: pytest.CaptureFixture[str], command: str, topology: Topology, *extra: str,
    expect: int = 0,
) -> dict:
    code = main(["topics", command, str(topology.path), "--broker", BOOTSTRAP,
                 "--group-id", topology.group_id, "--json", *extra])
    captured = capsys.readouterr()
    assert code == expect, captured.err
    return orjson.loads(captured.out)


def managed_topics(topology: Topology) -> dict[str, int]:
    """What the worker creates, by name → partitions (the example declares them)."""
    declared = {topology.source: 4, **{name: 1 for name in topology.outputs}}
    for name in ("revenue_events", "error_events", "processed_events"):
        declared[topology.topic(name)] = 4
    declared[topology.aggregates] = 1
    declared[f"{topology.group_id}-dedupe-repartition"] = 4
    declared[f"{topology.group_id}-aggregate-partials"] = 4
    return declared


def broker_topics(admin_client: AdminClient, prefix: str) -> dict[str, int]:
    metadata = admin_client.list_topics(timeout=10)
    return {n: len(t.partitions) for n, t in metadata.topics.items() if n.startswith(prefix)}


def test_create_then_describe(
    kafka_broker: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    topology = make_topology(tmp_path)
    client = AdminClient({"bootstrap.servers": BOOTSTRAP})
    expected = managed_topics(topology)

    # ---- a dry run creates nothing
    dry = topics_cli(capsys, "create", topology, "--dry-run")
    assert {t["name"]: t["status"] for t in dry["topics"] if t["created_by"] == "pipeline"} == {
        name: "would create" for name in expected
    }
    assert broker_topics(client, topology.prefix) == {}

    # ---- every topic the worker needs, with its declared partitions and configs
    first = topics_cli(capsys, "create", topology)
    assert {t["name"]: t["status"] for t in first["topics"] if t["created_by"] == "pipeline"} == {
        name: "created" for name in expected
    }
    assert broker_topics(client, topology.prefix) == expected
    assert first["warnings"] == [] and first["problems"] == []

    # ---- idempotent: a second run finds them all, as declared
    second = topics_cli(capsys, "create", topology)
    assert {t["status"] for t in second["topics"] if t["created_by"] == "pipeline"} == {"exists"}
    assert second["warnings"] == []
    assert broker_topics(client, topology.prefix) == expected
    # ... and the worker would create nothing more (the same plan as ``pipeline worker``).
    settings = Settings.from_env(env={}, broker=BOOTSTRAP, group_id=topology.group_id)
    loaded = load_topology(topology.path)
    assert admin.ensure_topics(loaded, settings) == []
    assert admin.ensure_internal_topics(loaded, settings) == 4
    assert broker_topics(client, topology.prefix) == expected

    # ---- describe: the declared configs next to the broker's, messages and the group's lag
    producer = Producer({"bootstrap.servers": BOOTSTRAP})
    for i in range(40):
        producer.produce(topology.source, b"event %d" % i, b"key-%d" % i)
    assert producer.flush(30) == 0
    consumer = Consumer({"bootstrap.servers": BOOTSTRAP, "group.id": topology.group_id})
    try:
        consumer.commit(offsets=[TopicPartition(topology.source, 0, 3)], asynchronous=False)
    finally:
        consumer.close()
    described = topics_cli(capsys, "describe", topology)
    by_name = {t["name"]: t for t in described["topics"]}
    assert set(by_name) == set(expected) | {
        f"{topology.group_id}-dedupe-dedupe-changelog", f"{topology.group_id}-aggregates-changelog"
    }
    for name, partitions in expected.items():
        topic = by_name[name]
        assert (topic["exists"], topic["partitions"], topic["replication_factor"]) == (True, partitions, 1)
        assert topic["configs"] and all(c["same"] for c in topic["configs"].values()), topic
    source = by_name[topology.source]
    assert source["configs"]["retention.ms"] == {"declared": "604800000", "actual": "604800000", "same": True}
    assert source["messages"] == 40
    offsets = {p["partition"]: p for p in source["partition_offsets"]}
    assert sum(p["high"] for p in offsets.values()) == 40
    assert offsets[0]["committed"] == 3 and offsets[0]["lag"] == offsets[0]["high"] - 3
    assert source["lag"] == 40 - 3  # the other partitions are read from the start
    assert by_name[topology.dead_letter]["lag"] is None  # not consumed by the worker
    assert described["group_has_offsets"] is True
    assert by_name[f"{topology.group_id}-aggregates-changelog"]["exists"] is False
    # The text form says the same.
    assert main(["topics", "describe", str(topology.path), "--broker", BOOTSTRAP,
                 "--group-id", topology.group_id]) == 0
    text = capsys.readouterr().out
    source_line = next(line for line in text.splitlines() if line.startswith(f"{topology.source} "))
    assert source_line.split() == [topology.source, "source", "4", "1", "40", "37", "ok"]
    assert "MISSING: Faust creates it when the worker starts" in text
    assert "DIFFERS" not in text and "warning:" not in text

    # ---- drift is reported, never changed
    drifted = ConfigResource(
        ResourceType.TOPIC, topology.topic("bot_events"),
        incremental_configs=[ConfigEntry("retention.ms", "3600000",
                                         incremental_operation=AlterConfigOpType.SET)],
    )
    for future in client.incremental_alter_configs([drifted]).values():
        future.result(timeout=30)
    again = topics_cli(capsys, "create", topology)
    assert again["warnings"] == [
        (f"topic {topology.topic('bot_events')}: retention.ms is 3600000 on the broker, the topology "
        "declares 259200000; not changed (use kafka-configs.sh --alter)")
    ]
    described = topics_cli(capsys, "describe", topology, "--no-offsets")
    bots = next(t for t in described["topics"] if t["name"] == topology.topic("bot_events"))
    assert bots["configs"]["retention.ms"] == {"declared": "259200000", "actual": "3600000", "same": False}
    assert bots["partition_offsets"][0]["high"] is None  # --no-offsets


def test_an_internal_topic_the_worker_would_refuse(
    kafka_broker: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    topology = make_topology(tmp_path)
    client = AdminClient({"bootstrap.servers": BOOTSTRAP})
    partials = f"{topology.group_id}-aggregate-partials"
    for future in client.create_topics([NewTopic(partials, 2, 1)]).values():
        future.result(timeout=30)
    code = main(["topics", "create", str(topology.path), "--broker", BOOTSTRAP,
                 "--group-id", topology.group_id])
    captured = capsys.readouterr()
    assert code == 2
    message = (
        f"topic {partials} has 2 partitions but the source has 4: delete it (it only holds data "
        "in transit) or give the source its old count"
    )
    assert captured.err == f"error: {message}\n"
    assert f"created  {topology.source}" in captured.out  # the others were created
    # The worker refuses it with the very same words.
    settings = Settings.from_env(env={}, broker=BOOTSTRAP, group_id=topology.group_id)
    with pytest.raises(PipelineError, match="has 2 partitions but the source has 4"):
        admin.ensure_internal_topics(load_topology(topology.path), settings)


def test_a_changelog_with_another_partition_count_stops_the_worker_at_start(
    kafka_broker: str, tmp_path: Path
) -> None:
    """After the source was given more partitions, the tables' changelogs still have the old
    count: the worker refuses to start instead of failing every batch."""
    topology = make_topology(tmp_path)
    client = AdminClient({"bootstrap.servers": BOOTSTRAP})
    changelog = f"{topology.group_id}-dedupe-dedupe-changelog"
    for future in client.create_topics([NewTopic(changelog, 2, 1)]).values():
        future.result(timeout=30)
    settings = Settings.from_env(env={}, broker=BOOTSTRAP, group_id=topology.group_id)
    loaded = load_topology(topology.path)
    admin.ensure_topics(loaded, settings)
    with pytest.raises(PipelineError, match=f"changelog topic {changelog} has 2 partitions but the source has 4"):
        admin.ensure_internal_topics(loaded, settings)


@pytest.mark.parametrize(
    ("command", "extra"),
    [
        (["topics", "create"], ["--timeout", "2"]),
        (["topics", "describe"], ["--timeout", "2"]),
        (["dlq", "inspect"], []),
        (["produce"], ["--generate", "1"]),
    ],
)
def test_an_unreachable_broker_fails_fast_with_one_line(
    command: list[str], extra: list[str], tmp_path: Path
) -> None:
    """As an operator sees it: a separate process, stderr as it is (librdkafka's own output
    included), a bounded time."""
    topology = make_topology(tmp_path)
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", *command, str(topology.path), *extra,
         "--broker", "127.0.0.1:1"],
        capture_output=True, text=True, cwd=REPO, timeout=60, check=False,
    )
    elapsed = time.monotonic() - started
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: cannot reach Kafka at 127.0.0.1:1: "), result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert elapsed < 25
