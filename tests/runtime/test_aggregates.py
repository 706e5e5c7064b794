"""The worker's aggregate runtime on plain data: staged state, reload, combine, replays.

The table and the producer are small fakes with the shape the runtime uses (Faust's memory store
is a dict of raw bytes; the producer enqueues changelog records to an explicit partition).
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import orjson
from faust.types import TP

from pipeline.core.batch import BatchContext
from pipeline.core.deadletter import DeadLetterBuilder
from pipeline.core.records import Item, RawMessage
from pipeline.runtime.aggregates import AggregateRuntime, parse_state_key, state_key
from pipeline.runtime.partitioning import kafka_partition
from pipeline.stages.aggregate import AggregateConfig, AggregateStage

MIN = 60_000
T0 = 1_795_000_020_000 // MIN * MIN
PARTIALS = "grp-aggregate-partials"
CONFIG: dict[str, Any] = {
    "window": {"type": "tumbling", "size": "1m", "grace": "10s"},
    "group_by": ["event"],
    "measures": [{"id": "events", "type": "count"}],
    "output": {"topic": "aggregates"},
    "idle_after": "1h",
    "live_interval": "1s",
}


class FakeProducer:
    def __init__(self) -> None:
        self.changelog: list[tuple[str, bytes, bytes | None, int]] = []

    def produce_to_partition(self, topic: str, key: bytes, value: bytes | None, partition: int, on_delivery: Any) -> None:
        self.changelog.append((topic, key, value, partition))

    def record_failure(self, err: Any) -> None:  # pragma: no cover - not called here
        raise AssertionError(err)


def fake_table() -> Any:
    return SimpleNamespace(data=SimpleNamespace(data={}), changelog_topic_name="grp-aggregates-changelog")


def make_runtime(table: Any, *, owned: set[int], partitions: int = 4, now: float = T0 / 1000) -> tuple[AggregateRuntime, AggregateStage]:
    stage = AggregateStage("per_minute", AggregateConfig.model_validate(CONFIG))
    runtime = AggregateRuntime(
        [stage], table, FakeProducer(), partitions=partitions, source_topics=["raw"],
        partials_topic=PARTIALS, clock=lambda: now,
    )
    runtime.assigned({TP("raw", p) for p in owned})
    runtime.ensure_loaded()
    return runtime, stage


def ctx(now_ms: int) -> BatchContext:
    builder = DeadLetterBuilder(topic="dlq", topology_name="t", topology_version="1", max_payload_bytes=4096)
    return BatchContext(now_ms=now_ms, dead_letter=builder)


def items(partition: int, offsets: range, ts: int, name: str = "page_viewed") -> list[Item]:
    out = []
    for offset in offsets:
        event = {"event": name, "timestamp": ts + offset, "user_id": "u"}
        out.append(Item(event, RawMessage(value=b"", topic="raw", partition=partition, offset=offset)))
    return out


def comparable(state: dict[bytes, bytes]) -> dict[bytes, Any]:
    """State without the idle clock, which a reload restarts on purpose."""
    meta = orjson.loads(state[b"m"])
    meta.pop("last_event_wall_ms")
    return {**state, b"m": meta}


def deliver(runtime: AggregateRuntime) -> list[Any]:
    staged = runtime.take_staged()
    runtime.produce_staged(staged)
    runtime.apply(staged)
    return staged


def test_state_survives_a_reload_from_the_store() -> None:
    table = fake_table()
    runtime, stage = make_runtime(table, owned={0, 1})
    c = ctx(T0 + 5_000)
    stage.process(items(0, range(3), T0) + items(1, range(2), T0), c)
    staged = deliver(runtime)
    assert staged and all(p in (0, 1) for p, _ in staged)
    keys = [parse_state_key(k) for _, changes in staged for k, _ in changes]
    assert {(p, agg, kind) for p, agg, kind, _ in keys} == {(0, "per_minute", b"a"), (1, "per_minute", b"a")}
    # The changelog got the same records, to the same partitions.
    changelog = runtime.output.changelog  # type: ignore[attr-defined]
    assert [(k, v, p) for _, k, v, p in changelog] == [(k, v, p) for p, ch in staged for k, v in ch]

    before = {p: comparable(a.to_state()) for p, a in stage.aggregators.items()}
    reloaded, stage2 = make_runtime(table, owned={0, 1})
    assert {p: comparable(a.to_state()) for p, a in stage2.aggregators.items()} == before


def test_a_discarded_batch_is_forgotten_by_reloading_the_store() -> None:
    table = fake_table()
    runtime, stage = make_runtime(table, owned={0})
    stage.process(items(0, range(3), T0), ctx(T0 + 5_000))
    deliver(runtime)
    delivered = comparable(stage.aggregators[0].to_state())

    stage.process(items(0, range(3, 6), T0), ctx(T0 + 6_000))
    staged = runtime.take_staged()
    runtime.unstage(staged)  # the batch went stale: not sent, its events come again
    runtime.ensure_loaded()
    assert comparable(stage.aggregators[0].to_state()) == delivered


def test_events_already_in_the_state_are_not_added_again() -> None:
    table = fake_table()
    runtime, stage = make_runtime(table, owned={0})
    stage.process(items(0, range(4), T0), ctx(T0 + 5_000))
    deliver(runtime)
    # A crash lost the offset commit but not the changelog: offsets 2..5 come again.
    _, stage2 = make_runtime(table, owned={0})
    c = ctx(T0 + 6_000)
    passed = stage2.process(items(0, range(2, 6), T0), c)
    assert len(passed) == 4, "events still flow on"
    assert c.counters[("per_minute", "replayed")] == 2
    window = stage2.aggregators[0].snapshot()["windows"][0]
    assert window["groups"][0]["measures"]["events"] == 6


def test_partials_go_to_the_combining_worker_and_finals_come_out_once() -> None:
    table = fake_table()
    home = kafka_partition(b"per_minute", 4)
    runtime, stage = make_runtime(table, owned={0, 1, 2, 3})
    assert stage.combiner is not None and runtime.combiner_partition["per_minute"] == home
    c = ctx(T0 + 5_000)
    for p in range(4):
        stage.process(items(p, range(2), T0, name="a" if p % 2 else "b"), c)
    partials = [o for o in c.outputs if o[0] == PARTIALS]
    assert partials and all(key == b"per_minute" for _, key, _ in partials)
    assert not [o for o in c.outputs if o[0] == "aggregates"], "nothing is final yet"

    # Every partition's stream time passes the window's end + grace.
    later = ctx(T0 + 200_000)
    for p in range(4):
        stage.process(items(p, range(2, 3), T0 + 2 * MIN), later)
    messages = [
        RawMessage(value=value, key=key, topic=PARTIALS, partition=home, offset=i)
        for i, (_, key, value) in enumerate(o for o in c.outputs + later.outputs if o[0] == PARTIALS)
    ]
    combined = ctx(T0 + 200_000)
    runtime.combine(messages, combined)
    finals = [orjson.loads(v) for t, _, v in combined.outputs if t == "aggregates"]
    by_group = {f["group"]["event"]: f["measures"]["events"] for f in finals if f["window_start"] == T0}
    assert by_group == {"a": 4, "b": 4}
    # The combiner's changes are staged to its own partition of the table.
    staged = dict(runtime.take_staged())
    assert any(parse_state_key(k)[2] == b"c" for k, _ in staged[home])
    # The same partials again (a replay after a crash): no second final record.
    again = ctx(T0 + 200_000)
    runtime.combine(messages, again)
    assert not [o for o in again.outputs if o[0] == "aggregates"]


def test_a_worker_without_the_combining_partition_has_no_combiner() -> None:
    home = kafka_partition(b"per_minute", 4)
    runtime, stage = make_runtime(fake_table(), owned={(home + 1) % 4})
    assert stage.combiner is None
    assert runtime.snapshot("per_minute") is None
    assert runtime.describe()[0]["combined_here"] is False


def test_state_keys_name_partition_aggregate_and_kind() -> None:
    key = state_key(3, "per_minute", b"a", b"w:123:[\"x\"]")
    assert parse_state_key(key) == (3, "per_minute", b"a", b"w:123:[\"x\"]")
