"""The dedupe stage on plain data, with an injected clock and store."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from pipeline.core.batch import BatchContext
from pipeline.core.deadletter import DeadLetterBuilder
from pipeline.core.dedupe_store import MemoryDedupeStore
from pipeline.core.processor import Processor
from pipeline.core.records import Item, RawMessage
from pipeline.errors import TopologyError
from pipeline.stages.dedupe import DedupeConfig, DedupeStage, canonical_identity_key
from pipeline.topology import load_topology
from tests.conftest import TEST_ENV

REPO = Path(__file__).resolve().parents[2]
NOW_MS = 1_795_000_000_000


def ctx(now_ms: int = NOW_MS) -> BatchContext:
    builder = DeadLetterBuilder(topic="dlq", topology_name="t", topology_version="1", max_payload_bytes=4096)
    return BatchContext(now_ms=now_ms, dead_letter=builder)


def item(event: dict[str, Any], partition: int = 0, key: bytes | None = b"u1", topic: str = "raw") -> Item:
    return Item(dict(event), RawMessage(value=orjson.dumps(event), key=key, topic=topic, partition=partition))


def ev(n: int, **extra: Any) -> dict[str, Any]:
    return {"event_id": f"e{n}", "event": "page_viewed", "timestamp": NOW_MS, "user_id": "u1",
            "properties": {"n": n}, **extra}


def test_same_event_id_is_kept_once_within_and_across_batches() -> None:
    stage = DedupeStage("dedupe", DedupeConfig())
    c = ctx()
    kept = stage.process([item(ev(1)), item(ev(2)), item(ev(1))], c)
    assert [i.event["event_id"] for i in kept] == ["e1", "e2"]
    assert c.counters[("dedupe", "duplicate")] == 1
    c2 = ctx(NOW_MS + 1000)
    assert stage.process([item(ev(2)), item(ev(3))], c2)[0].event["event_id"] == "e3"
    assert c2.counters[("dedupe", "duplicate")] == 1


def test_keys_expire_after_the_window() -> None:
    stage = DedupeStage("dedupe", DedupeConfig(window="1h"))
    stage.process([item(ev(1))], ctx())
    assert stage.process([item(ev(1))], ctx(NOW_MS + 3_599_000)) == []
    assert len(stage.process([item(ev(1))], ctx(NOW_MS + 3_600_001))) == 1


def test_fingerprint_without_event_id() -> None:
    stage = DedupeStage("dedupe", DedupeConfig())
    a = {"event": "page_viewed", "timestamp": NOW_MS, "user_id": "u1", "properties": {"p": 1}}
    b = dict(a, properties={"p": 2})
    kept = stage.process([item(a), item(dict(a)), item(b)], ctx())
    assert len(kept) == 2
    # Key order inside properties does not change the fingerprint.
    c = {"event": "x", "timestamp": 1, "user_id": "u", "properties": {"a": 1, "b": 2}}
    d = {"event": "x", "timestamp": 1, "user_id": "u", "properties": {"b": 2, "a": 1}}
    assert stage.key_for(c) == stage.key_for(d)


def test_custom_fingerprint_fields() -> None:
    stage = DedupeStage("dedupe", DedupeConfig(fingerprint=["event", "properties.order_id"]))
    a = {"event": "purchase_completed", "timestamp": 1, "user_id": "u", "properties": {"order_id": "o1"}}
    b = {"event": "purchase_completed", "timestamp": 2, "user_id": "v", "properties": {"order_id": "o1"}}
    assert stage.key_for(a) == stage.key_for(b)


def test_partitions_are_separate_state() -> None:
    store = MemoryDedupeStore()
    stage = DedupeStage("dedupe", DedupeConfig(), store=store)
    stage.process([item(ev(1), partition=0)], ctx())
    assert len(stage.process([item(ev(1), partition=1)], ctx())) == 1
    assert store.size() == 2


def test_duplicates_to_a_topic() -> None:
    stage = DedupeStage("dedupe", DedupeConfig(on_duplicate="topic", topic="duplicate_events"))
    c = ctx()
    stage.process([item(ev(1)), item(ev(1))], c)
    assert [(t, k) for t, k, _ in c.outputs] == [("duplicate_events", b"u1")]
    assert orjson.loads(c.outputs[0][2])["event_id"] == "e1"


def test_mispartitioned_events_are_forwarded_by_canonical_identity() -> None:
    def owner(key: bytes, message: Any) -> int | None:
        wanted = 3 if key == b"u1" else 0
        return None if message.partition == wanted or message.topic == "repartition" else wanted

    stage = DedupeStage("dedupe", DedupeConfig(), partitioner=owner, repartition_topic="repartition")
    c = ctx()
    kept = stage.process([item(ev(1), partition=3), item(ev(2), partition=1, key=b"other")], c)
    assert [i.event["event_id"] for i in kept] == ["e1"]
    assert [(t, k) for t, k, _ in c.outputs] == [("repartition", b"u1")]
    assert c.counters[("dedupe", "repartitioned")] == 1
    # Forwarded as it came: the original bytes.
    assert orjson.loads(c.outputs[0][2])["event_id"] == "e2"


def test_canonical_identity_order() -> None:
    assert canonical_identity_key({"user_id": "u", "anonymous_id": "a"}) == b"u"
    assert canonical_identity_key({"anonymous_id": "a", "device_id": "d"}) == b"a"
    assert canonical_identity_key({"device_id": "d"}) == b"d"


def test_memory_store_sweeps_expired_keys() -> None:
    store = MemoryDedupeStore()
    store.remember(0, [(b"a", 10), (b"b", 20)])
    assert store.sweep(now_ms=15) == 1
    assert store.seen(0, [b"a", b"b"], now_ms=15) == [False, True]


@pytest.mark.parametrize(
    ("settings", "path", "words"),
    [
        ({"on_duplicate": "topic"}, "stages[1]", "needs a topic"),
        ({"on_duplicate": "topic", "topic": "nowhere"}, "stages[1].topic", "not declared"),
        ({"window": "forever"}, "stages[1].window", "duration"),
        ({"fingerprint": []}, "stages[1].fingerprint", "at least 1"),
        ({"windw": "1h"}, "stages[1].windw", "unknown key"),
    ],
)
def test_bad_config_is_reported_with_its_path(tmp_path: Path, settings: dict, path: str, words: str) -> None:
    data = yaml.safe_load((REPO / "topologies" / "ecommerce.yaml").read_text().replace("../avro/", f"{REPO}/avro/"))
    data["stages"] = [s for s in data["stages"] if s["type"] in ("validate", "route")]
    data["stages"].insert(1, {"id": "dedupe", "type": "dedupe", **settings})
    topology_path = tmp_path / "t.yaml"
    topology_path.write_text(yaml.safe_dump(data))
    with pytest.raises(TopologyError) as raised:
        load_topology(topology_path, env={})
    assert any(p.path == path and words in p.message for p in raised.value.problems), raised.value.problems


def test_embedded_processor_drops_resent_events(tmp_path: Path) -> None:
    topology = load_topology(REPO / "topologies" / "ecommerce.yaml", env=TEST_ENV)
    processor = Processor(topology, clock=lambda: NOW_MS / 1000)
    messages = [RawMessage(orjson.dumps(ev(n))) for n in (1, 2, 1, 3, 2)]
    ctx_ = processor.process(messages)
    ids = [orjson.loads(v)["event_id"] for t, _, v in ctx_.outputs]
    assert sorted(ids) == ["e1", "e2", "e3"]


def ids(items: list[Item]) -> list[str]:
    return [i.event["event_id"] for i in items]


def test_mixed_batch_keeps_partition_order_and_first_sightings() -> None:
    # Partition 2 has no duplicate (decided in one step), partitions 0 and 1 have (event by
    # event): both give events grouped by partition, in the order each partition first appears.
    store = MemoryDedupeStore()
    store.remember(1, [(b"i:e9", NOW_MS + 1000), (b"i:e8", NOW_MS - 1)])  # e9 held, e8 expired
    stage = DedupeStage("dedupe", DedupeConfig(on_duplicate="topic", topic="dups"), store=store)
    c = ctx()
    batch = [
        item(ev(1), partition=1),
        item(ev(2), partition=0),
        item(ev(9), partition=1),
        item(ev(5), partition=2),
        item(ev(3), partition=0),
        item(ev(8), partition=1),
        item(ev(2), partition=0),
        item(ev(4), partition=2),
    ]
    kept = stage.process(batch, c)
    assert ids(kept) == ["e1", "e8", "e2", "e3", "e5", "e4"]
    assert [orjson.loads(v)["event_id"] for _, _, v in c.outputs] == ["e9", "e2"]
    assert c.counters[("dedupe", "duplicate")] == 2
    assert c.counters[("dedupe", "unique")] == 6
    expires = NOW_MS + 86_400_000
    assert store.seen(1, [b"i:e1", b"i:e8", b"i:e9"], NOW_MS) == [True, True, True]
    assert store._partitions[1][b"i:e8"] == expires
    assert list(store._partitions[0].items()) == [(b"i:e2", expires), (b"i:e3", expires)]
    assert list(store._partitions[2].items()) == [(b"i:e5", expires), (b"i:e4", expires)]


def test_memory_store_seen_tells_held_expired_and_new_keys_apart() -> None:
    store = MemoryDedupeStore()
    assert store.seen(0, [b"a", b"b"], now_ms=15) == [False, False]
    store.remember(0, [(b"old", 10), (b"live", 20)])
    assert store.seen(0, [b"new", b"other"], now_ms=15) == [False, False]
    assert store.seen(0, [b"new", b"old", b"live"], now_ms=15) == [False, False, True]
    assert store.seen(1, [b"live"], now_ms=15) == [False]
