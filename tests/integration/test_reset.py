"""``pipeline reset`` against the real broker: offsets moved to a place or a time, refused while
a worker runs, and a state reset after which a worker processes every event again."""

from __future__ import annotations

import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import orjson
import pytest
from confluent_kafka import Consumer, ConsumerGroupTopicPartitions, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from pipeline.cli import main
from pipeline.runtime.admin import changelog_topic_names, internal_topic_names
from pipeline.settings import Settings
from pipeline.topology import load_topology
from pipeline.traffic import TrafficProfile, generate
from tests.integration.kafka_helpers import (
    BOOTSTRAP,
    WorkerProcess,
    consume_all,
    make_topology,
    topic_size,
    wait_for_total,
)
from tests.integration.kafka_helpers import TestTopology as Topology
from tests.integration.test_worker import ensure_source, send

pytestmark = pytest.mark.kafka


def reset_cli(capsys: pytest.CaptureFixture[str], topology: Topology, *extra: str,
              expect: int = 0) -> dict:
    code = main(["reset", str(topology.path), "--broker", BOOTSTRAP,
                 "--group-id", topology.group_id, "--json", *extra])
    captured = capsys.readouterr()
    assert code == expect, captured.err or captured.out
    return orjson.loads(captured.out)


def group_offsets(topology: Topology) -> dict[tuple[str, int], int]:
    admin = AdminClient({"bootstrap.servers": BOOTSTRAP})
    result = admin.list_consumer_group_offsets(
        [ConsumerGroupTopicPartitions(topology.group_id)], request_timeout=10
    )[topology.group_id].result(timeout=15)
    return {(tp.topic, tp.partition): tp.offset for tp in result.topic_partitions or () if tp.offset >= 0}


def committed(topology: Topology) -> dict[int, int]:
    """The group's committed offsets on the source, by partition."""
    return {p: o for (t, p), o in group_offsets(topology).items() if t == topology.source}


def commit(topology: Topology, offsets: dict[int, int]) -> None:
    admin = AdminClient({"bootstrap.servers": BOOTSTRAP})
    request = ConsumerGroupTopicPartitions(
        topology.group_id, [TopicPartition(topology.source, p, o) for p, o in offsets.items()]
    )
    admin.alter_consumer_group_offsets([request], request_timeout=10)[topology.group_id].result(timeout=15)


def test_offsets_move_to_the_earliest_the_latest_or_a_time(
    kafka_broker: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    topology = make_topology(tmp_path)
    ensure_source(topology)
    # Per partition: five records an hour ago, then five from a minute ago.
    now_ms = int(time.time() * 1000)
    earlier, later = now_ms - 3_600_000, now_ms - 60_000
    producer = Producer({"bootstrap.servers": BOOTSTRAP})
    for partition in range(4):
        for i in range(10):
            producer.produce(topology.source, b"{}", partition=partition,
                             timestamp=earlier + i if i < 5 else later + i)
    assert producer.flush(30) == 0
    commit(topology, {p: 7 for p in range(4)})

    dry = reset_cli(capsys, topology, "--to", "earliest")
    assert not dry["executed"] and dry["problems"] == []
    assert dry["partitions"] == [{"partition": p, "committed": 7, "new": 0} for p in range(4)]
    assert committed(topology) == {p: 7 for p in range(4)}, "a dry run changes nothing"

    between = datetime.fromtimestamp((earlier + later) / 2000, tz=timezone.utc).isoformat()
    moved = reset_cli(capsys, topology, "--to", between, "--execute")
    assert moved["executed"]
    assert committed(topology) == {p: 5 for p in range(4)}, "the first record at or after the time"

    reset_cli(capsys, topology, "--to", "latest", "--execute")
    assert committed(topology) == {p: 10 for p in range(4)}
    future = datetime.fromtimestamp(now_ms / 1000 + 3600, tz=timezone.utc).isoformat()
    reset_cli(capsys, topology, "--to", future, "--execute")
    assert committed(topology) == {p: 10 for p in range(4)}, "no record that late: the end"
    reset_cli(capsys, topology, "--to", "earliest", "--execute")
    assert committed(topology) == {p: 0 for p in range(4)}


def test_a_state_reset_alone_keeps_where_the_group_resumes(
    kafka_broker: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    topology = make_topology(tmp_path)
    ensure_source(topology)
    producer = Producer({"bootstrap.servers": BOOTSTRAP})
    for partition in range(4):
        for _ in range(5):
            producer.produce(topology.source, b"{}", partition=partition)
    assert producer.flush(30) == 0
    commit(topology, {p: 3 for p in range(4)})
    local = tmp_path / "state" / topology.group_id / "v1" / "tables"
    local.mkdir(parents=True)

    done = reset_cli(capsys, topology, "--state", "--execute", "--data-dir", str(tmp_path / "state"))
    assert done["executed"] and done["to"] == "unchanged"
    assert not (tmp_path / "state" / topology.group_id).exists()
    assert committed(topology) == {p: 3 for p in range(4)}, "written back after the group's deletion"


def test_a_reset_is_refused_while_a_member_of_the_group_runs(
    kafka_broker: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    topology = make_topology(tmp_path)
    ensure_source(topology)
    commit(topology, {p: 0 for p in range(4)})
    member = Consumer({"bootstrap.servers": BOOTSTRAP, "group.id": topology.group_id,
                       "client.id": "still-running", "enable.auto.commit": False})
    try:
        member.subscribe([topology.source])
        deadline = time.monotonic() + 60
        while not member.assignment() and time.monotonic() < deadline:
            member.poll(0.2)
        assert member.assignment(), "the member joined the group"
        refused = reset_cli(capsys, topology, "--to", "latest", "--state", "--execute", expect=1)
        assert not refused["executed"]
        (problem,) = refused["problems"]
        assert "1 running member(s) (still-running@" in problem and "stop every worker" in problem
    finally:
        member.close()
    assert committed(topology) == {p: 0 for p in range(4)}, "nothing moved"


def test_a_state_reset_makes_the_next_worker_process_every_event_again(
    kafka_broker: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    topology = make_topology(tmp_path)
    ensure_source(topology)
    generated = list(generate(2000, TrafficProfile(seed=23)))
    sent = send(topology, ((r.key, r.value) for r in generated))
    expected = sent - sum(1 for r in generated if r.kind == "duplicate")
    state_dir = tmp_path / "state"

    worker = WorkerProcess(topology).start(tmp_path, "--store", "rocksdb")
    try:
        assert wait_for_total(topology.outputs, expected, timeout=120) == expected, worker.log()[-3000:]
        assert worker.terminate() == 0
    finally:
        worker.kill()
    settings = Settings.from_env(env={}, broker=BOOTSTRAP, group_id=topology.group_id)
    loaded = load_topology(topology.path)
    owned = internal_topic_names(loaded, settings) + changelog_topic_names(loaded, settings)
    listed = AdminClient({"bootstrap.servers": BOOTSTRAP}).list_topics(timeout=10).topics
    assert all(name in listed for name in owned), "the worker created them"

    # Rewinding alone: the dedupe state would drop the replay, and the plan says so.
    kept = reset_cli(capsys, topology, "--to", "earliest")
    assert any("dropped as duplicates" in w for w in kept["warnings"])

    plan = reset_cli(capsys, topology, "--to", "earliest", "--state", "--data-dir", str(state_dir))
    assert sorted(plan["topics_to_delete"]) == sorted(owned)
    assert plan["local_state"] == str(state_dir / topology.group_id)
    done = reset_cli(capsys, topology, "--to", "earliest", "--state", "--execute",
                     "--data-dir", str(state_dir))
    assert done["executed"]
    assert not (state_dir / topology.group_id).exists()
    listed = AdminClient({"bootstrap.servers": BOOTSTRAP}).list_topics(timeout=10).topics
    assert not [name for name in owned if name in listed], "internal and changelog topics deleted"
    assert group_offsets(topology) == {(topology.source, p): 0 for p in range(4)}, (
        "none left on the deleted internal topics"
    )

    again = WorkerProcess(topology).start(tmp_path, "--store", "rocksdb")
    try:
        total = wait_for_total(topology.outputs, 2 * expected, timeout=120)
        assert total == 2 * expected, again.log()[-3000:]
        assert again.terminate() == 0
    finally:
        again.kill()
    # Every valid event twice (once per run), none dropped as a duplicate of the first run.
    routed = Counter(
        orjson.loads(r.value)["event_id"]
        for r in consume_all([t for t in topology.outputs if t != topology.dead_letter])
    )
    assert set(routed.values()) == {2}
    assert sum(topic_size(t) for t in topology.outputs) == 2 * expected
