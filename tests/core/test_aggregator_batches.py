"""PartitionAggregator reads whole batches, but must give what adding one event at a time does.

``add`` reads a batch event by event (or, when it all falls in one open tumbling window, with
map/filter), groups it by (window, group) and updates each group's measures once. The
reference below is the per-event semantics written out plainly (the module docstring of
``pipeline.core.aggregator``): every event in order, lateness against the watermark before it,
groups admitted in order up to ``max_groups``, each measure updated with each value. Generated
traffic, made later than the grace period here and there, runs through both in batches of many
sizes over several partitions; results, closing partials and encoded state must be equal, byte
for byte.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pipeline.core.aggregator import (
    AddResult,
    AggregateSpec,
    Partial,
    PartitionAggregator,
    render_group_value,
)
from pipeline.core.identity import canonical_identity
from pipeline.core.measures import Measure, MeasureSpec, encode_measures
from pipeline.core.processor import Processor
from pipeline.core.records import RawMessage
from pipeline.core.windows import WindowSpec
from pipeline.topology import load_topology
from pipeline.traffic import TrafficProfile, generate

REPO = Path(__file__).resolve().parents[2]
FIXED = 1_795_000_000.0
WALL = int(FIXED * 1000)
PARTITIONS = 3
BATCH_SIZES = (1, 7, 64, 500, 3, 250)


@pytest.fixture(scope="module")
def traffic() -> list[list[dict[str, Any]]]:
    """Validated generated events, per partition, some moved far behind their neighbours."""
    topology = load_topology(
        REPO / "topologies" / "ecommerce.yaml", env={"PIPELINE_PII_KEY": "k" * 32}
    )
    processor = Processor(topology, clock=lambda: FIXED)
    profile = TrafficProfile(seed=7, start_ms=WALL - 600_000)
    messages = [RawMessage(r.value, r.key) for r in generate(8000, profile)]
    events = [i.event for i in processor.source.decode(messages, processor.new_context())]
    # Out of order: every 29th event 2.5 s of event time later (late for short windows), every
    # 31st 0.75 s later (late for some windows, within the grace of others).
    for step, distance in ((29, 500), (31, 150)):
        for i in range(len(events) - distance - 1, 0, -step):
            events.insert(i + distance, events.pop(i))
    return [events[p::PARTITIONS] for p in range(PARTITIONS)]


# --- the reference --------------------------------------------------------------------------


def field_value(event: dict[str, Any], path: str) -> Any:
    if path == "identity":
        return canonical_identity(event)
    node: Any = event
    for part in path.split("."):
        node = node.get(part) if type(node) is dict else None
    return node


class Reference:
    """One partition's aggregates, one event at a time."""

    def __init__(self, spec: AggregateSpec) -> None:
        self.spec = spec
        self.open: dict[int, dict[Any, list[Measure]]] = {}
        self.stream_time: int | None = None
        self.watermark: int | None = None

    def add(self, events: list[dict[str, Any]]) -> AddResult:
        spec, window = self.spec, self.spec.window
        result = AddResult()
        for index, event in enumerate(events):
            ts = event["timestamp"]
            if spec.where is not None and not spec.where(event):
                result.filtered += 1
            else:
                starts = window.starts(ts)
                open_starts = [
                    s
                    for s in starts
                    if self.watermark is None or window.closes_at(s) > self.watermark
                ]
                if not open_starts:
                    result.late.append(index)
                else:
                    result.added += 1
                    result.partially_late += len(open_starts) < len(starts)
                    group = tuple(render_group_value(field_value(event, p)) for p in spec.group_by)
                    for start in open_starts:
                        groups = self.open.setdefault(start, {})
                        target: Any = group
                        if target not in groups and len(groups) >= spec.max_groups:
                            target = None
                            result.overflowed += 1
                        if target not in groups:
                            groups[target] = [m.new() for m in spec.measures]
                        for spec_m, measure in zip(spec.measures, groups[target]):
                            measure.update(
                                True if spec_m.field is None else field_value(event, spec_m.field)
                            )
            if self.stream_time is None or ts > self.stream_time:
                self.stream_time = ts
                self.watermark = ts if self.watermark is None else max(self.watermark, ts)
        return result

    def close(self, watermark: int) -> dict[tuple[int, Any], bytes]:
        window = self.spec.window
        closed = {}
        for start in [s for s in self.open if window.closes_at(s) <= watermark]:
            for group, measures in self.open.pop(start).items():
                closed[(start, group)] = encode_measures(measures)
        return closed

    def encoded(self) -> dict[tuple[int, Any], bytes]:
        return {
            (s, g): encode_measures(ms)
            for s, groups in self.open.items()
            for g, ms in groups.items()
        }


def encoded_open(agg: PartitionAggregator) -> dict[tuple[int, Any], bytes]:
    return {
        (s, g): encode_measures(ms) for s, groups in agg.open.items() for g, ms in groups.items()
    }


def partials(records: list[Any]) -> dict[tuple[int, Any], bytes]:
    return {(r.window_start, r.group): r.measures for r in records if isinstance(r, Partial)}


# --- the aggregates -------------------------------------------------------------------------

PRICE = "properties.price"
SPECS: dict[str, AggregateSpec] = {
    # Short windows and no grace: many late events; many measures, floats in order.
    "tumbling, all measures": AggregateSpec(
        name="a",
        window=WindowSpec.tumbling(2_000),
        group_by=("event",),
        where=lambda e: e["event"] != "page_viewed",
        measures=(
            MeasureSpec("n", "count"),
            MeasureSpec("priced", "count", field=PRICE),
            MeasureSpec("total", "sum", field=PRICE),
            MeasureSpec("low", "min", field=PRICE),
            MeasureSpec("high", "max", field=PRICE),
            MeasureSpec("mean", "avg", field="properties.quantity"),
            MeasureSpec("products", "distinct", field="properties.product_id"),
            MeasureSpec("users", "distinct", field="identity", method="hll", precision=10),
        ),
    ),
    # Grace longer than the window: batches span several windows that are all still open (read
    # event by event).
    "tumbling, grace longer than the window": AggregateSpec(
        name="g",
        window=WindowSpec.tumbling(1_000, grace_ms=4_000),
        group_by=("event",),
        where=lambda e: e["event"] != "page_viewed",
        measures=(
            MeasureSpec("n", "count"),
            MeasureSpec("total", "sum", field=PRICE),
            MeasureSpec("products", "distinct", field="properties.product_id"),
            MeasureSpec("users", "distinct", field="identity", method="hll", precision=10),
        ),
    ),
    # Hopping: an event in three windows, some of them closed (partially late).
    "hopping, two group fields": AggregateSpec(
        name="b",
        window=WindowSpec.hopping(6_000, 2_000, grace_ms=500),
        group_by=("properties.currency", "context.locale"),
        measures=(
            MeasureSpec("n", "count"),
            MeasureSpec("total", "sum", field=PRICE),
            MeasureSpec("users", "distinct", field="identity"),
        ),
    ),
    # Few groups allowed: the groups of many users overflow, their floats interleaved.
    "max_groups overflow": AggregateSpec(
        name="c",
        window=WindowSpec.tumbling(10_000, grace_ms=1_000),
        group_by=("identity",),
        max_groups=3,
        measures=(
            MeasureSpec("n", "count"),
            MeasureSpec("total", "sum", field=PRICE),
            MeasureSpec("low", "min", field=PRICE),
            MeasureSpec("products", "distinct", field="properties.product_id", method="hll"),
        ),
    ),
    # A long window: every batch falls in one window (the map/filter reading).
    "one long window, where, no group": AggregateSpec(
        name="d",
        window=WindowSpec.tumbling(86_400_000, grace_ms=30_000),
        where=lambda e: e["event"] in ("product_viewed", "add_to_cart", "purchase_completed"),
        measures=(MeasureSpec("users", "distinct", field="identity", method="hll"),),
    ),
    # Group-by and distinct values that are not strings (lists, numbers, missing).
    "values that are not strings": AggregateSpec(
        name="e",
        window=WindowSpec.tumbling(60_000),
        group_by=("properties.products",),
        measures=(
            MeasureSpec("n", "count"),
            MeasureSpec("quantities", "distinct", field="properties.quantity"),
            MeasureSpec("orders", "count", field="properties.order_id"),
        ),
        max_groups=50,
    ),
    "counts only, by event": AggregateSpec(
        name="f",
        window=WindowSpec.tumbling(3_000),
        group_by=("event",),
        max_groups=4,
        measures=(MeasureSpec("n", "count"),),
    ),
}


def batches(events: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    out, i, k = [], 0, 0
    while i < len(events):
        size = BATCH_SIZES[k % len(BATCH_SIZES)]
        out.append(events[i : i + size])
        i, k = i + size, k + 1
    return out


def spy_on_readers(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Count which reading of a batch ran, so the test knows it exercised each."""
    used = {"one window": 0, "several windows": 0, "tumbling": 0, "hopping": 0}

    def spied(name: str, key: str) -> None:
        original: Callable[..., Any] = getattr(PartitionAggregator, name)

        def run(self: PartitionAggregator, *args: Any) -> Any:
            found = original(self, *args)
            used[key] += found is not None
            if found is not None and len(found[0]) > 1:
                used["several windows"] += 1
            return found

        monkeypatch.setattr(PartitionAggregator, name, run)

    spied("_read_one_window", "one window")
    spied("_read_tumbling", "tumbling")
    spied("_read_hopping", "hopping")
    return used


@pytest.mark.parametrize("name", list(SPECS))
def test_batches_give_exactly_what_one_event_at_a_time_gives(
    name: str, traffic: list[list[dict[str, Any]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = SPECS[name]
    used = spy_on_readers(monkeypatch)
    totals = AddResult()
    for partition, events in enumerate(traffic):
        agg = PartitionAggregator(spec, partition, created_ms=WALL)
        ref = Reference(spec)
        late = overflowed = 0
        for batch in batches(events):
            got, want = agg.add(batch, WALL), ref.add(batch)
            assert got == want
            assert (agg.stream_time, agg.watermark) == (ref.stream_time, ref.watermark)
            assert encoded_open(agg) == ref.encoded()
            assert ref.watermark is not None
            assert partials(agg.close_due(WALL, None)) == ref.close(ref.watermark)
            late += len(got.late)
            overflowed += got.overflowed
            totals.late += got.late
            for outcome in ("filtered", "partially_late", "overflowed", "added"):
                setattr(totals, outcome, getattr(totals, outcome) + getattr(got, outcome))
        assert partials(agg.close_all()) == ref.close(2**62)
        assert (agg.late_events, agg.overflowed) == (late, overflowed)
    # The traffic exercised what the spec is about.
    assert totals.added > 1000
    if spec.window.advance_ms == spec.window.size_ms and spec.window.size_ms <= 10_000:
        assert totals.late, "no late events"
        assert used["tumbling"], "the event-by-event reading never ran"
    if spec.window.advance_ms < spec.window.size_ms:
        assert totals.late and totals.partially_late and used["hopping"]
    if spec.max_groups < 10:
        assert totals.overflowed > 100
    if spec.where is not None:
        assert totals.filtered > 100
    if spec.window.advance_ms == spec.window.size_ms:
        assert used["one window"], "the one-window reading never ran"
    if spec.window.advance_ms == spec.window.size_ms and spec.window.grace_ms > spec.window.size_ms:
        assert used["several windows"], "no batch spanned several windows"


def test_state_and_changes_after_batches_equal_those_after_single_events(
    traffic: list[list[dict[str, Any]]],
) -> None:
    """The stored state (windows, meta, counters) and the drained changes, byte for byte."""
    spec = SPECS["max_groups overflow"]
    events = traffic[0][:3000]
    batched = PartitionAggregator(spec, 0, created_ms=WALL)
    single = PartitionAggregator(spec, 0, created_ms=WALL)
    table: dict[bytes, bytes] = {}
    for batch in batches(events):
        batched.add(batch, WALL)
        batched.close_due(WALL, None)
        for key, value in batched.drain_changes().items():
            if value is None:
                table.pop(key, None)
            else:
                table[key] = value
        for event in batch:
            single.add([event], WALL)
        single.close_due(WALL, None)
        assert batched.to_state() == single.to_state()
    assert table == batched.to_state()
    assert batched.late_events > 0 and batched.overflowed > 0
    assert batched.live_partials() == single.live_partials()


class Unserialisable:
    """A value JSON cannot write: making its distinct key raises."""


@pytest.mark.parametrize(
    "window",
    [WindowSpec.tumbling(60_000), WindowSpec.tumbling(1_000), WindowSpec.hopping(3_000, 1_000)],
    ids=["one window", "several windows", "hopping"],
)
@pytest.mark.parametrize("fails_in", ["value", "where"])
def test_an_exception_anywhere_in_a_batch_changes_nothing(
    window: WindowSpec, fails_in: str
) -> None:
    def where(event: dict[str, Any]) -> bool:
        if event.get("boom") and fails_in == "where":
            raise RuntimeError("a bug")
        return True

    spec = AggregateSpec(
        name="x",
        window=window,
        group_by=("event",),
        where=where,
        measures=(MeasureSpec("n", "count"), MeasureSpec("v", "distinct", field="v")),
    )
    agg = PartitionAggregator(spec, 0, created_ms=WALL, track_changes=True)
    t0 = WALL // 60_000 * 60_000
    agg.add([{"event": "a", "timestamp": t0, "v": 1}], WALL)
    agg.drain_changes()
    agg.live_partials()
    before = (agg.to_state(), agg.snapshot())
    bad = {"event": "b", "timestamp": t0 + 2_500, "boom": True, "v": Unserialisable()}
    batch = [{"event": "a", "timestamp": t0 + i * 500, "v": i} for i in range(5)] + [bad]
    with pytest.raises((TypeError, RuntimeError)):
        agg.add(batch, WALL + 1)
    assert (agg.to_state(), agg.snapshot()) == before
    assert agg.drain_changes() == {} and agg.live_partials() == []
