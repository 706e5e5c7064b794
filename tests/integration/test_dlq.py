"""``pipeline dlq`` against a live worker on the real broker: inspect, then replay exactly once."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import orjson
import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient

from pipeline.dlq import REPLAY_HEADER
from pipeline.produce import identity_key
from tests.integration.kafka_helpers import (
    BOOTSTRAP,
    REPO,
    WorkerProcess,
    consume_all,
    make_topology,
    topic_size,
    wait_for_total,
)
from tests.integration.test_worker import ensure_source, send

pytestmark = pytest.mark.kafka

DLQ_PARTITIONS = 3


def event(**fields: object) -> bytes:
    return orjson.dumps({"event": "page_viewed", "timestamp": int(time.time() * 1000), **fields})


def traffic() -> tuple[list[tuple[bytes | None, bytes]], Counter[str]]:
    """Valid events and invalid ones with a few distinct reasons; the reasons expected."""
    records: list[bytes] = [event(event_id=f"ok-{i}", user_id=f"u{i}") for i in range(40)]
    expected: Counter[str] = Counter()
    for i in range(9):
        records.append(event(event_id=f"bt-{i}", user_id=f"bt{i}", timestamp="yesterday"))
        expected["bad_timestamp"] += 1
    # Too large for the dead letter to keep (dead_letter.max_payload_bytes, 256 KiB): never
    # replayable, whatever the reason.
    records.append(event(event_id="bt-big", user_id="big", timestamp="yesterday", pad="x" * 300_000))
    expected["bad_timestamp"] += 1
    for i in range(4):
        records.append(b"not json %d" % i)
        expected["malformed_json"] += 1
    for i in range(3):
        records.append(event(event_id=f"mi-{i}"))
        expected["missing_identity"] += 1
    keyed = [(identity_key(value) or b"k-%d" % n, value) for n, value in enumerate(records)]
    return keyed, expected


def pipeline_cli(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", *argv], capture_output=True, text=True, cwd=REPO,
        timeout=180, check=False,
    )
    if check:
        assert result.returncode == 0, result.stderr
    return result


def replay(topology, *extra: str) -> dict:
    result = pipeline_cli(
        "dlq", "replay", str(topology.path), "--broker", BOOTSTRAP,
        "--group-id", topology.group_id, "--reason", "bad_timestamp", "--json", *extra,
    )
    return orjson.loads(result.stdout)


def read_topic(topic: str) -> list[tuple[dict[str, bytes], bytes | None, bytes]]:
    """(headers, key, value) of every committed message of a topic, to its current end.

    Not ``consume_all``/``topic_size``: a replay writes transactionally, and each transaction
    leaves a marker that takes an offset but is no message.
    """
    consumer = Consumer({
        "bootstrap.servers": BOOTSTRAP, "group.id": f"reader-{uuid.uuid4().hex}",
        "enable.auto.commit": False, "isolation.level": "read_committed",
    })
    try:
        partitions = AdminClient({"bootstrap.servers": BOOTSTRAP}).list_topics(
            topic, timeout=10).topics[topic].partitions
        ends, assignment = {}, []
        for p in partitions:
            lo, hi = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            if hi > lo:
                ends[p] = hi
                assignment.append(TopicPartition(topic, p, lo))
        consumer.assign(assignment)
        found = []
        deadline = time.monotonic() + 30
        while ends and time.monotonic() < deadline:
            for msg in consumer.consume(num_messages=1000, timeout=0.5):
                if msg.error() or msg.offset() >= ends.get(msg.partition(), -1):
                    continue
                found.append((dict(msg.headers() or ()), msg.key(), msg.value()))
                if msg.offset() + 1 >= ends[msg.partition()]:
                    del ends[msg.partition()]
            if ends:  # past the end without a message there (a transaction marker)
                for tp in consumer.position([TopicPartition(topic, p) for p in list(ends)]):
                    if tp.offset >= ends.get(tp.partition, 1 << 62):
                        ends.pop(tp.partition, None)
        assert not ends, f"could not read {topic} to its end"
        return found
    finally:
        consumer.close()


def replays_in(topic: str) -> list[tuple[str, bytes | None, bytes]]:
    """(replay header, key, value) of every message of a topic that carries the replay header."""
    return [
        (headers[REPLAY_HEADER].decode(), key, value)
        for headers, key, value in read_topic(topic)
        if REPLAY_HEADER in headers
    ]


def test_inspect_then_replay_exactly_once(kafka_broker: str, tmp_path: Path) -> None:
    topology = make_topology(tmp_path)
    # A dead-letter topic of several partitions (dead letters are keyed by the original key).
    text = topology.path.read_text()
    old = f"{topology.dead_letter}:\n    partitions: 1"
    assert old in text
    topology.path.write_text(text.replace(old, f"{topology.dead_letter}:\n    partitions: {DLQ_PARTITIONS}"))
    ensure_source(topology)

    records, expected = traffic()
    sent = send(topology, records)
    invalid = sum(expected.values())
    worker = WorkerProcess(topology).start(tmp_path)
    try:
        assert wait_for_total(topology.outputs, sent, timeout=120) == sent, worker.log()[-3000:]

        # ---- inspect: counts per reason equal what was sent
        result = pipeline_cli("dlq", "inspect", str(topology.path), "--broker", BOOTSTRAP,
                              "--json", "--samples", "2")
        summary = orjson.loads(result.stdout)
        assert summary["by_reason"] == dict(expected)
        assert summary["read"] == summary["matched"] == invalid and summary["unreadable"] == 0
        assert summary["first_failed_at"] <= summary["last_failed_at"]
        bad = {(c["reason"], c["stage"]): c for c in summary["counts"]}
        assert bad[("bad_timestamp", "validate")]["not_replayable"] == 1
        samples = summary["samples"]["bad_timestamp"]
        assert len(samples) == 2 and all(s["source"].startswith(topology.source) for s in samples)
        text = pipeline_cli("dlq", "inspect", str(topology.path), "--broker", BOOTSTRAP,
                            "--reason", "malformed_json").stdout
        assert text.startswith(f"{topology.dead_letter}: 4 dead letter(s) matching reason malformed_json")
        assert "not json" in text
        # Inspecting commits nothing and joins no group: the worker's group is the only one.
        groups = AdminClient({"bootstrap.servers": BOOTSTRAP}).list_consumer_groups().result()
        assert not [g for g in groups.valid if g.group_id.startswith("pipeline-dlq-inspect-")]

        source_before = len(read_topic(topology.source))
        assert source_before == sent
        originals = {
            (r.partition, r.offset): r for r in consume_all([topology.dead_letter])
            if orjson.loads(r.value)["reason"] == "bad_timestamp"
            and not orjson.loads(r.value)["payload_truncated"]
        }
        assert len(originals) == expected["bad_timestamp"] - 1

        # ---- a dry run sends and commits nothing
        dry = replay(topology, "--dry-run")
        assert dry["replayed"] == len(originals) and dry["dry_run"] is True
        assert dry["not_replayable"] == {"payload_truncated": 1}
        assert len(read_topic(topology.source)) == source_before

        # ---- an interrupted replay (stopped after 3) resumes where it stopped
        first = replay(topology, "--max-records", "3")
        assert first["replayed"] == 3 and first["stopped"] == "max_records"
        assert first["group"] == f"{topology.group_id}-dlq-replay-bad_timestamp"
        rest = replay(topology)
        assert rest["replayed"] == len(originals) - 3 and rest["stopped"] is None
        assert first["not_replayable"].get("payload_truncated", 0) + rest["not_replayable"].get(
            "payload_truncated", 0) == 1

        # ---- the source received exactly one replay per replayable dead letter
        replayed = replays_in(topology.source)
        assert Counter(h for h, _k, _v in replayed) == Counter(
            f"{topology.dead_letter}/{p}/{o}" for p, o in originals
        )
        for header, key, value in replayed:
            _topic, p, o = header.rsplit("/", 2)
            original = originals[(int(p), int(o))]
            record = orjson.loads(original.value)
            assert value == record["payload"].encode() and key == original.key
        assert len(read_topic(topology.source)) == source_before + len(originals)

        # ---- they come back through the worker and fail again (the fix was not applied)
        total = sent + len(originals)
        assert wait_for_total(topology.outputs, total, timeout=120) == total, worker.log()[-3000:]
        again = pipeline_cli("dlq", "inspect", str(topology.path), "--broker", BOOTSTRAP, "--json",
                             "--reason", "bad_timestamp")
        assert orjson.loads(again.stdout)["matched"] == expected["bad_timestamp"] + len(originals)

        # ---- the same replay again sends nothing: its own re-failures are not replayed either
        second = replay(topology)
        assert second["replayed"] == 0
        runs = (first, rest, second)
        # Re-failures of the first runs' replays may already have been read by the later runs.
        assert sum(r["refailures_skipped"] for r in runs) == len(originals)
        # Each run resumed after what the previous ones had read: every dead letter read once.
        assert sum(r["read"] for r in runs) == invalid + len(originals)
        third = replay(topology)
        assert third["replayed"] == 0 and third["read"] == 0
        assert replay(topology, "--dry-run")["replayed"] == 0
        time.sleep(2)
        assert len(read_topic(topology.source)) == source_before + len(originals)
        assert len(replays_in(topology.source)) == len(originals)
        assert sum(topic_size(t) for t in topology.outputs) == total

        # ---- the replay's progress is the dead-letter topic's end, in its own group
        consumer = Consumer({"bootstrap.servers": BOOTSTRAP, "group.id": first["group"]})
        try:
            committed = consumer.committed(
                [TopicPartition(topology.dead_letter, p) for p in range(DLQ_PARTITIONS)], timeout=10
            )
        finally:
            consumer.close()
        assert sum(tp.offset for tp in committed if tp.offset > 0) == topic_size(topology.dead_letter)
        assert worker.terminate() == 0, worker.log()[-3000:]
    finally:
        worker.kill()


def test_replay_of_a_missing_dead_letter_topic_is_a_one_line_error(
    kafka_broker: str, tmp_path: Path
) -> None:
    topology = make_topology(tmp_path)  # nothing created on the broker
    result = pipeline_cli("dlq", "replay", str(topology.path), "--broker", BOOTSTRAP,
                          "--reason", "bad_timestamp", check=False)
    assert result.returncode == 2
    assert result.stderr == f"error: topic {topology.dead_letter} does not exist on {BOOTSTRAP}\n"
    result = pipeline_cli("dlq", "inspect", str(topology.path), "--broker", BOOTSTRAP, check=False)
    assert result.returncode == 2 and result.stderr.count("\n") == 1


def test_a_replay_that_fails_mid_chunk_sends_nothing_of_it_and_resumes(
    kafka_broker: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The chunk in hand is one transaction: a failure aborts its sends and its progress."""
    from confluent_kafka import Producer

    from pipeline import dlq
    from pipeline.core.deadletter import DeadLetterBuilder
    from pipeline.core.records import RawMessage as SourceRecord
    from pipeline.settings import Settings
    from pipeline.topology import load_topology

    topology = make_topology(tmp_path)
    ensure_source(topology)
    loaded = load_topology(topology.path)
    builder = DeadLetterBuilder(topic=topology.dead_letter, topology_name="ecommerce",
                                topology_version="1", max_payload_bytes=262144)
    producer = Producer({"bootstrap.servers": BOOTSTRAP})
    for i in range(20):
        source = SourceRecord(value=b'{"n": %d}' % i, key=b"k%d" % i, topic=topology.source,
                              partition=0, offset=10_000 + i)
        record = builder.build(source, reason="bad_timestamp", stage="validate", detail="d",
                               path="timestamp", failed_at_ms=int(time.time() * 1000))
        producer.produce(topology.dead_letter, record, source.key)
    assert producer.flush(30) == 0

    settings = Settings.from_env(env={}, broker=BOOTSTRAP)
    flt = dlq.Filter.from_args(["bad_timestamp"])
    real_produce = dlq._produce
    calls = 0

    def failing_produce(*args: object) -> None:
        nonlocal calls
        calls += 1
        if calls == 8:  # the third record of the second chunk
            raise RuntimeError("simulated crash")
        real_produce(*args)

    monkeypatch.setattr(dlq, "_produce", failing_produce)
    with pytest.raises(RuntimeError, match="simulated crash"):
        dlq.replay(settings, loaded, flt=flt, base_group=topology.group_id, chunk=5)
    assert len(replays_in(topology.source)) == 5, "only the first chunk was committed"

    monkeypatch.setattr(dlq, "_produce", real_produce)
    result = dlq.replay(settings, loaded, flt=flt, base_group=topology.group_id, chunk=5)
    assert result.stats.replayed_total == 15 and result.stopped is None
    replayed = replays_in(topology.source)
    assert sorted(int(h.rsplit("/", 1)[1]) for h, _k, _v in replayed) == list(range(20))
    assert {v for _h, _k, v in replayed} == {b'{"n": %d}' % i for i in range(20)}
    assert dlq.replay(settings, loaded, flt=flt, base_group=topology.group_id).stats.read == 0
