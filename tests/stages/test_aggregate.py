"""The aggregate stage on plain data: config, pass-through, late events, closing, checks."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from pydantic import ValidationError

from pipeline.core.batch import BatchContext
from pipeline.core.deadletter import DeadLetterBuilder
from pipeline.core.identity import canonical_identity
from pipeline.core.processor import Processor
from pipeline.core.records import Item, RawMessage
from pipeline.errors import TopologyError
from pipeline.stages.aggregate import AggregateConfig, AggregateStage, _compile_where
from pipeline.stages.route import Predicate, _compile_predicate
from pipeline.topology import Topology
from pipeline.traffic import TrafficProfile, generate

MIN = 60_000
T0 = 1_795_000_020_000 // MIN * MIN
WALL = 1_795_000_100_000

CONFIG: dict[str, Any] = {
    "window": {"type": "tumbling", "size": "1m", "grace": "30s"},
    "group_by": ["event"],
    "measures": [
        {"id": "events", "type": "count"},
        {"id": "users", "type": "distinct", "field": "identity", "method": "hll"},
    ],
    "output": {"topic": "aggregates"},
    "late_events": {"topic": "late"},
}


def ctx(now_ms: int = WALL) -> BatchContext:
    builder = DeadLetterBuilder(
        topic="dlq", topology_name="t", topology_version="1", max_payload_bytes=4096
    )
    return BatchContext(now_ms=now_ms, dead_letter=builder)


def item(ts: int, name: str = "page_viewed", partition: int = 0, **extra: Any) -> Item:
    event = {"event": name, "timestamp": ts, "user_id": "u1", **extra}
    return Item(event, RawMessage(value=orjson.dumps(event), key=b"u1", partition=partition))


def stage(**overrides: Any) -> AggregateStage:
    return AggregateStage("per_minute", AggregateConfig.model_validate({**CONFIG, **overrides}))


def records(
    outputs: list[tuple[str, bytes | None, bytes]], topic: str = "aggregates"
) -> list[dict[str, Any]]:
    return [orjson.loads(v) for t, _, v in outputs if t == topic]


def test_items_pass_through_and_final_records_come_when_the_window_closes() -> None:
    s = stage()
    c = ctx()
    items = [item(T0 + 1), item(T0 + 2, "add_to_cart"), item(T0 + 3, partition=1)]
    assert s.process(items, c) is items
    assert records(c.outputs) == []
    assert c.counters[("per_minute", "aggregated")] == 3
    c = ctx()
    s.process([item(T0 + MIN + 30_000), item(T0 + MIN + 30_000, partition=1)], c)
    got = records(c.outputs)
    assert [(r["group"], r["measures"], r["partitions"]) for r in got] == [
        ({"event": "add_to_cart"}, {"events": 1, "users": 1}, [0]),
        ({"event": "page_viewed"}, {"events": 2, "users": 1}, [0, 1]),
    ]
    assert all(r["aggregate"] == "per_minute" and r["window_start"] == T0 for r in got)
    key = next(k for t, k, _ in c.outputs if t == "aggregates")
    assert orjson.loads(key) == ["per_minute", {"event": "add_to_cart"}]


def test_late_events_are_counted_copied_and_still_passed_on() -> None:
    s = stage()
    s.process([item(T0 + 1), item(T0 + 2 * MIN)], ctx())
    c = ctx()
    late = [item(T0 + 5), item(T0 + 6, consent_stripped=True)]
    assert s.process(late, c) == late
    assert c.counters[("per_minute", "late")] == 2
    copies = [(k, orjson.loads(v)) for t, k, v in c.outputs if t == "late"]
    assert copies == [(b"u1", late[0].event), (None, late[1].event)]


def test_without_late_topic_late_events_are_only_counted() -> None:
    s = stage(late_events=None)
    s.process([item(T0 + 2 * MIN)], ctx())
    c = ctx()
    s.process([item(T0)], c)
    assert c.counters[("per_minute", "late")] == 1 and c.outputs == []
    assert s.derived_topics == {"aggregates"}


def test_idle_partition_closes_by_wall_clock_on_tick() -> None:
    s = stage(idle_after="1m")
    s.process([item(T0 + 1), item(T0 + 1, partition=1)], ctx())
    assert s.tick(WALL + MIN - 1) == []
    # Idle: event time moves on with the clock from the last event (T0 + 1) and passes the
    # window's end + grace (T0 + 90 s) 90 s after it.
    assert records(s.tick(WALL + MIN)) == []
    got = records(s.tick(WALL + 90_000))
    assert [r["measures"]["events"] for r in got] == [2]


def test_close_all_emits_every_open_window() -> None:
    s = stage()
    s.process([item(T0), item(T0 + 5 * MIN, partition=3)], ctx())
    got = records(s.close_all())
    assert [(r["window_start"], r["partitions"]) for r in got] == [(T0, [0]), (T0 + 5 * MIN, [3])]
    assert s.close_all() == []


def test_snapshot_shows_open_windows() -> None:
    s = stage()
    s.process([item(T0)], ctx())
    snap = s.snapshot()
    [window] = snap["partitions"]["0"]["windows"]
    assert window["groups"][0]["measures"] == {"events": 1, "users": 1}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"window": {"type": "hopping", "size": "1m", "advance": "2m"}},
            "advance cannot be larger",
        ),
        ({"window": {"type": "sliding", "size": "1m"}}, "does not match any of the expected tags"),
        ({"window": {"type": "tumbling", "size": "0s"}}, "size must be positive"),
        ({"window": {"type": "tumbling", "size": 0.0001}}, "whole number of milliseconds"),
        ({"measures": [{"id": "s", "type": "sum"}]}, "needs a field"),
        ({"measures": [{"id": "c", "type": "count", "method": "hll"}]}, "only for distinct"),
        (
            {"measures": [{"id": "d", "type": "distinct", "field": "x", "precision": 12}]},
            "only for distinct measures with method: hll",
        ),
        (
            {"measures": [{"id": "a", "type": "count"}, {"id": "a", "type": "count"}]},
            "duplicate measure ids",
        ),
        ({"measures": []}, "at least 1 item"),
        ({"late_events": {"topic": "aggregates"}}, "cannot share a topic"),
        ({"group_by": ["a..b"]}, "should match pattern"),
        ({"where": [{"field": "event", "op": "gt", "value": "x"}]}, "needs a number"),
        ({"bogus": 1}, "Extra inputs are not permitted"),
    ],
)
def test_bad_configs(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        AggregateConfig.model_validate({**CONFIG, **change})


STAGE_YAML = """  - id: route
    type: route
"""


def with_aggregate(yaml_stage: str) -> dict[str, str]:
    return {STAGE_YAML: yaml_stage + STAGE_YAML}


def test_topology_checks_report_paths(make_topology: Callable[..., Topology]) -> None:
    bad = """  - id: sums
    type: aggregate
    window: {type: tumbling, size: 1m}
    measures: [{id: s, type: sum}]
    output: {topic: nowhere}
    late_events: {topic: revenue_events}
"""
    with pytest.raises(TopologyError) as err:
        make_topology(replace=with_aggregate(bad))
    index = next(p.path for p in err.value.problems if "needs a field" in p.message)
    assert index.endswith(".measures[0]")
    bad_topics = bad.replace("[{id: s, type: sum}]", "[{id: s, type: count}]")
    with pytest.raises(TopologyError) as err:
        make_topology(replace=with_aggregate(bad_topics))
    messages = {p.message for p in err.value.problems}
    assert "topic 'nowhere' is not declared under topics" in messages
    assert any("route's topic" in m for m in messages)


def test_shipped_topology_aggregates(example_topology: Topology) -> None:
    ids = [s.id for s in example_topology.spec.stages]
    aggregates = [s.id for s in example_topology.spec.stages if s.type == "aggregate"]
    assert aggregates == [
        "events_per_minute",
        "revenue_per_minute",
        "errors_per_minute",
        "active_users_per_minute",
        "active_users_per_day",
    ]
    assert ids.index("active_users_per_day") == ids.index("route") - 1


def test_embedded_mode_keeps_no_change_log() -> None:
    # Nothing drains it there: tracking would grow with every window of the input.
    s = stage()
    s.process([item(T0 + i * MIN) for i in range(5)], ctx())
    agg = s.aggregators[0]
    assert not agg._dirty and not agg._live_dirty
    assert agg.live_partials() == []


# --- where, replays and whole batches --------------------------------------------------------


def shaped(field: str, value: Any) -> list[dict[str, Any]]:
    """Events with ``value`` at ``field``, the field missing, or a non-object on its path."""
    parts = field.split(".")
    events: list[dict[str, Any]] = [{}]
    node: dict[str, Any] = {}
    events.append(node)
    for part in parts[:-1]:
        node[part] = {}
        node = node[part]
    node[parts[-1]] = value
    if len(parts) > 1:
        events.append({parts[0]: value})
        events.append({parts[0]: {}})
    return events


@pytest.mark.parametrize("field", ["event", "context.locale", "context.bot.is_bot"])
def test_where_predicates_decide_as_the_route_stage_does(field: str) -> None:
    values: list[Any] = [True, False, 1, 0, 1.0, 0.0, "x", "", "true", None, [], {}, {"a": 1}]
    events = [e for v in values for e in shaped(field, v)]
    for op in ("eq", "ne", "in", "not_in", "exists", "missing", "prefix", "gt"):
        for value in (True, False, "x", "", 1, 0.0):
            if op in ("exists", "missing"):
                config: dict[str, Any] = {"field": field, "op": op}
            elif op in ("in", "not_in"):
                config = {"field": field, "op": op, "value": [value]}
            elif op == "prefix":
                if type(value) is not str:
                    continue
                config = {"field": field, "op": op, "value": value}
            elif op == "gt":
                if type(value) not in (int, float):
                    continue
                config = {"field": field, "op": op, "value": value}
            else:
                config = {"field": field, "op": op, "value": value}
            predicate = Predicate.model_validate(config)
            route, where = _compile_predicate(predicate), _compile_where(predicate)
            assert [where(e) for e in events] == [route(e) for e in events], config


def test_several_where_predicates_must_all_hold() -> None:
    s = stage(
        where=[
            {"field": "event", "op": "eq", "value": "purchase_completed"},
            {"field": "properties.revenue", "op": "gt", "value": 10},
        ]
    )
    items = [
        item(T0, "purchase_completed", properties={"revenue": 11}),
        item(T0, "purchase_completed", properties={"revenue": 10}),
        item(T0, "page_viewed", properties={"revenue": 11}),
    ]
    c = ctx()
    s.process(items, c)
    assert c.counters[("per_minute", "aggregated")] == 1
    assert c.counters[("per_minute", "filtered")] == 2


def worker_item(ts: int, offset: int, partition: int = 0, **extra: Any) -> Item:
    event = {"event": "page_viewed", "timestamp": ts, "user_id": f"u{offset}", **extra}
    return Item(event, RawMessage(None, b"k", topic="events", partition=partition, offset=offset))


def test_worker_counts_each_source_offset_once() -> None:
    s = stage()
    s.use_partials("partials")
    first = [worker_item(T0 + i, i, partition=i % 2) for i in range(10)]
    c = ctx()
    s.process(first, c)
    assert c.counters[("per_minute", "aggregated")] == 10
    state = {p: a.to_state() for p, a in s.aggregators.items()}
    # The same batch again (the offset commit was lost, the state was not): nothing added.
    c = ctx()
    s.process(first, c)
    assert c.counters[("per_minute", "replayed")] == 10
    assert c.counters[("per_minute", "aggregated")] == 0
    assert {p: a.to_state() for p, a in s.aggregators.items()} == state
    # Half old, half new: only the new half.
    c = ctx()
    s.process([worker_item(T0 + i, i, partition=i % 2) for i in range(5, 15)], c)
    assert c.counters[("per_minute", "replayed")] == 5
    assert c.counters[("per_minute", "aggregated")] == 5
    assert {p: a.offsets for p, a in s.aggregators.items()} == {
        0: {"events": 15},
        1: {"events": 14},
    }


def test_a_failing_batch_replayed_event_by_event_keeps_the_other_events() -> None:
    # The processor replays a batch that raised one event at a time. The source offsets must
    # not be noted before the batch is added: the replayed events would look applied already
    # and be dropped as replays.
    class Unserialisable:
        pass

    s = stage(measures=[{"id": "values", "type": "distinct", "field": "properties.v"}])
    s.use_partials("partials")
    items = [
        worker_item(T0 + i, i, properties={"v": Unserialisable() if i == 2 else i})
        for i in range(5)
    ]
    c = ctx()
    with pytest.raises(TypeError):
        s.process(items, c)
    failed = []
    for one in items:
        try:
            s.process([one], c)
        except TypeError:
            failed.append(one.message.offset)
    assert failed == [2]
    assert c.counters[("per_minute", "aggregated")] == 4
    assert ("per_minute", "replayed") not in c.counters
    [window] = s.aggregators[0].snapshot()["windows"]
    assert window["groups"][0]["measures"] == {"values": 4}


def test_aggregates_of_one_batch_split_its_items_by_partition_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import pipeline.stages.aggregate as aggregate_module

    splits: list[int] = []
    original = aggregate_module._PartitionShare.__init__

    def counting(self: Any, items: list[Item]) -> None:
        splits.append(len(items))
        original(self, items)

    monkeypatch.setattr(aggregate_module._PartitionShare, "__init__", counting)
    by_minute, by_event = stage(), stage(group_by=[])
    by_minute.use_partials("partials")
    by_event.use_partials("partials")
    items = [worker_item(T0 + i, i, partition=i % 2) for i in range(10)]
    c = ctx()
    by_minute.process(items, c)
    by_event.process(items, c)
    assert splits == [5, 5], "one split per partition, shared by both aggregates"
    for s in (by_minute, by_event):
        assert {p: a.offsets for p, a in s.aggregators.items()} == {
            0: {"events": 9},
            1: {"events": 10},
        }
    assert c.counters[("per_minute", "aggregated")] == 20
    # Other items (a batch replayed one event at a time) are split again.
    by_minute.process(items[:1], c)
    assert splits == [5, 5, 1]
    assert c.counters[("per_minute", "replayed")] == 1


def test_the_shared_split_does_not_outlive_the_batch(example_topology: Topology) -> None:
    # It holds the events: kept in the context, they would stay alive until the batch is
    # delivered.
    processor = Processor(example_topology, clock=lambda: WALL / 1000)
    events = [
        {"event": "page_viewed", "event_id": f"e{i}", "timestamp": T0 + i, "user_id": "u1"}
        for i in range(3)
    ]
    messages = [RawMessage(orjson.dumps(e), b"u1", offset=i) for i, e in enumerate(events)]
    ctx = processor.process(messages)
    assert ctx.counters[("events_per_minute", "aggregated")] == 3
    assert ctx.shared == {}


def test_shipped_aggregates_over_generated_traffic_equal_a_direct_count(
    example_topology: Topology,
) -> None:
    """The shipped aggregates over generated traffic in 4 partitions and batches of 500:
    the final records equal what the events say, computed straight from them."""
    fixed = 1_795_000_000.0
    processor = Processor(example_topology, clock=lambda: fixed)
    stages = [s for s in processor.middle if isinstance(s, AggregateStage)]
    processor.middle = stages  # validate → the five aggregates → route
    profile = TrafficProfile(seed=11, start_ms=int(fixed * 1000) - 900_000)
    messages = [
        RawMessage(r.value, r.key, topic="raw", partition=i % 4, offset=i)
        for i, r in enumerate(generate(12_000, profile))
    ]
    events: list[dict[str, Any]] = []  # as routed (the valid ones)
    routed = {"bot_events", "revenue_events", "error_events", "processed_events"}
    outputs = []
    for start in range(0, len(messages), 500):
        c = processor.process(messages[start : start + 500])
        events += [orjson.loads(v) for t, _, v in c.outputs if t in routed]
        outputs += c.outputs
    for s in stages:
        outputs += s.close_all()
    finals: dict[tuple[str, int, tuple[str, ...]], dict[str, Any]] = {}
    for r in records(outputs):
        key = (r["aggregate"], r["window_start"], tuple(r["group"].values()))
        assert key not in finals
        finals[key] = r["measures"]

    expected: dict[tuple[str, int, tuple[str, ...]], Any] = defaultdict(lambda: defaultdict(list))
    for e in events:
        minute = e["timestamp"] // MIN * MIN
        expected[("events_per_minute", minute, (e["event"],))]["events"].append(1)
        if e["event"] == "purchase_completed":
            cell = expected[("revenue_per_minute", minute, (e["properties"]["currency"],))]
            cell["orders"].append(1)
            cell["revenue"].append(e["properties"]["revenue"])
        if e["event"] == "error_occurred":
            key = ("errors_per_minute", minute, (e["properties"]["error_type"],))
            expected[key]["errors"].append(1)
        if e.get("context", {}).get("bot", {}).get("is_bot") is not True:
            day = e["timestamp"] // 86_400_000 * 86_400_000
            for name, start in (("active_users_per_minute", minute), ("active_users_per_day", day)):
                expected[(name, start, ())]["users"].append(canonical_identity(e))
    assert set(finals) == set(expected)
    for key, cell in expected.items():
        got = finals[key]
        for measure, values in cell.items():
            if measure == "revenue":
                assert got[measure] == math.fsum(values)
            elif measure == "users":
                distinct = len(set(values) - {None})
                assert abs(got[measure] - distinct) <= max(1, 0.03 * distinct), key
            else:
                assert got[measure] == len(values), (key, measure)
    assert len({k[0] for k in finals}) == 5 and len(events) > 10_000
