"""PartitionAggregator: windows by event time, grace, lateness, idle closing, state."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from pipeline.core.aggregator import (
    CLOSED_FOREVER,
    AggregateSpec,
    CloseMarker,
    Partial,
    PartitionAggregator,
    decode_record,
    encode_record,
)
from pipeline.core.measures import MeasureSpec, decode_measures
from pipeline.core.windows import WindowSpec

MIN = 60_000
T0 = 1_795_000_020_000 // MIN * MIN  # a window start
WALL = 1_795_000_100_000
COUNT = MeasureSpec("events", "count")


def spec(**kw: Any) -> AggregateSpec:
    base: dict[str, Any] = {
        "name": "agg",
        "window": WindowSpec.tumbling(MIN, grace_ms=30_000),
        "measures": (COUNT,),
    }
    base.update(kw)
    return AggregateSpec(**base)


def ev(ts: int, name: str = "page_viewed", **extra: Any) -> dict[str, Any]:
    return {"event": name, "timestamp": ts, "user_id": "u1", **extra}


def values(
    records: list[Partial | CloseMarker], s: AggregateSpec
) -> dict[tuple[int, Any], dict[str, Any]]:
    return {
        (r.window_start, r.group): s.results(decode_measures(s.measures, r.measures))
        for r in records
        if isinstance(r, Partial)
    }


def markers(records: list[Partial | CloseMarker]) -> list[int]:
    return [r.closed_through for r in records if isinstance(r, CloseMarker)]


def test_out_of_order_events_within_grace_are_counted() -> None:
    s = spec()
    agg = PartitionAggregator(s, 0, created_ms=WALL)
    result = agg.add([ev(T0 + 10), ev(T0 + MIN + 5), ev(T0 + 20)], WALL)
    assert result.late == [] and result.added == 3
    # stream time T0+MIN+5: window T0 closes at T0+MIN+30s, not yet (the first marker only
    # tells the combiner where this partition is)
    assert agg.close_due(WALL, None) == [CloseMarker("agg", 0, T0 + MIN + 5)]
    agg.add([ev(T0 + MIN + 29_999), ev(T0 + 59_999)], WALL)  # still within grace
    records = agg.add([ev(T0 + MIN + 30_000)], WALL) and agg.close_due(WALL, None)
    assert values(records, s) == {(T0, ()): {"events": 3}}
    assert markers(records) == [T0 + MIN + 30_000]


def test_events_later_than_grace_are_late_not_added() -> None:
    s = spec()
    agg = PartitionAggregator(s, 0, created_ms=WALL)
    agg.add([ev(T0 + 1), ev(T0 + MIN + 30_000)], WALL)
    result = agg.add([ev(T0 + 2), ev(T0 + MIN + 1)], WALL)
    assert result.late == [0] and result.added == 1
    assert agg.late_events == 1
    records = agg.close_due(WALL, None)
    assert values(records, s) == {(T0, ()): {"events": 1}}


def test_lateness_uses_the_stream_time_before_each_event_in_batch_order() -> None:
    s = spec()
    agg = PartitionAggregator(s, 0, created_ms=WALL)
    result = agg.add([ev(T0 + 1), ev(T0 + 2 * MIN), ev(T0 + 3)], WALL)
    assert result.late == [2]  # the jump made the third event late, in the same batch
    again = PartitionAggregator(s, 0, created_ms=WALL)
    one_by_one = [again.add([e], WALL).late for e in (ev(T0 + 1), ev(T0 + 2 * MIN), ev(T0 + 3))]
    assert one_by_one == [[], [], [0]]


def test_hopping_windows_and_partially_late_events() -> None:
    s = spec(window=WindowSpec.hopping(3 * MIN, MIN, grace_ms=0))
    agg = PartitionAggregator(s, 0, created_ms=WALL)
    agg.add([ev(T0 + 5)], WALL)
    assert sorted(agg.open) == [T0 - 2 * MIN, T0 - MIN, T0]
    result = agg.add([ev(T0 + 2 * MIN), ev(T0 + 10)], WALL)
    # stream time T0+2m closes the windows starting at T0-2m and T0-1m: T0+10 reaches only T0's
    assert result.partially_late == 1 and result.late == []
    records = agg.close_due(WALL, None)
    assert values(records, s) == {(T0 - 2 * MIN, ()): {"events": 1}, (T0 - MIN, ()): {"events": 1}}
    records = agg.close_all()
    assert values(records, s) == {
        (T0, ()): {"events": 3},
        (T0 + MIN, ()): {"events": 1},
        (T0 + 2 * MIN, ()): {"events": 1},
    }
    assert markers(records) == [CLOSED_FOREVER]


def test_group_by_nothing_one_and_two_fields_with_missing_as_empty() -> None:
    events = [
        ev(T0, "a", context={"locale": "de"}),
        ev(T0, "a", context={"locale": "fr"}),
        ev(T0, "b", context={"locale": "de"}),
        ev(T0, "b"),
        ev(T0, "b", context={"locale": 7}),
    ]
    expected = {
        (): {(): 5},
        ("event",): {("a",): 2, ("b",): 3},
        ("event", "context.locale"): {
            ("a", "de"): 1,
            ("a", "fr"): 1,
            ("b", "de"): 1,
            ("b", ""): 1,
            ("b", "7"): 1,
        },
    }
    for group_by, counts in expected.items():
        s = spec(group_by=group_by)
        agg = PartitionAggregator(s, 0, created_ms=WALL)
        agg.add(events, WALL)
        got = values(agg.close_all(), s)
        assert got == {(T0, g): {"events": n} for g, n in counts.items()}


def test_where_filters_and_measures_on_fields() -> None:
    s = spec(
        group_by=("properties.currency",),
        where=lambda e: e["event"] == "purchase_completed",
        measures=(
            COUNT,
            MeasureSpec("revenue", "sum", field="properties.revenue"),
            MeasureSpec("users", "distinct", field="identity", method="hll"),
            MeasureSpec("biggest", "max", field="properties.revenue"),
        ),
    )
    agg = PartitionAggregator(s, 0, created_ms=WALL)
    result = agg.add(
        [
            ev(T0, "purchase_completed", properties={"revenue": 10, "currency": "EUR"}),
            ev(
                T0,
                "purchase_completed",
                properties={"revenue": 2.5, "currency": "EUR"},
                user_id="u2",
            ),
            ev(T0, "purchase_completed", properties={"revenue": "x", "currency": "USD"}),
            ev(T0, "page_viewed", properties={"revenue": 99, "currency": "EUR"}),
            {
                "event": "purchase_completed",
                "timestamp": T0,
                "device_id": "d1",
                "properties": {"currency": "EUR"},
            },
        ],
        WALL,
    )
    assert result.filtered == 1 and result.added == 4
    got = values(agg.close_all(), s)
    assert got == {
        (T0, ("EUR",)): {"events": 3, "revenue": 12.5, "users": 3, "biggest": 10},
        (T0, ("USD",)): {"events": 1, "revenue": 0, "users": 1, "biggest": None},
    }


def test_idle_partition_closes_by_wall_clock() -> None:
    s = spec()
    agg = PartitionAggregator(s, 3, created_ms=WALL)
    agg.add([ev(T0 + 1)], WALL)
    assert agg.close_due(WALL + 59_999, idle_after_ms=60_000) == [CloseMarker("agg", 3, T0 + 1)]
    far = WALL + 10 * MIN
    records = agg.close_due(far, idle_after_ms=60_000)  # idle for long enough: the clock closes
    assert values(records, s) == {(T0, ()): {"events": 1}}
    # Event time moved on by the wall-clock time since the last event, from the stream time.
    assert markers(records) == [T0 + 1 + 10 * MIN]
    # the window is closed for good: an event for it is late now
    assert agg.add([ev(T0 + 2)], far).late == [0]


def test_a_partition_behind_the_clock_stays_behind_when_idle() -> None:
    # Old events (a backlog, a replay): a pause must not make the next ones late.
    s = spec()
    hour_ago = T0 - 60 * MIN
    agg = PartitionAggregator(s, 0, created_ms=WALL)
    agg.add([ev(hour_ago + 1_000)], WALL)
    assert markers(agg.close_due(WALL + 20_000, idle_after_ms=2_000)) in ([], [hour_ago + 21_000])
    assert agg.watermark == hour_ago + 21_000
    assert agg.add([ev(hour_ago + 15_000)], WALL + 20_000).late == []


def test_a_partition_without_events_goes_idle_too() -> None:
    agg = PartitionAggregator(spec(), 1, created_ms=WALL)
    assert agg.close_due(WALL + 1000, 60_000) == []
    assert markers(agg.close_due(WALL + 60_000, 60_000)) == [WALL + 60_000]


def test_one_marker_per_closed_window_step() -> None:
    s = spec(window=WindowSpec.tumbling(MIN, grace_ms=0))
    agg = PartitionAggregator(s, 0, created_ms=WALL)
    agg.add([ev(T0)], WALL)
    assert markers(agg.close_due(WALL, None)) == [T0]
    agg.add([ev(T0 + 10)], WALL)
    assert agg.close_due(WALL, None) == []  # no new window closed: no marker
    agg.add([ev(T0 + MIN)], WALL)
    assert markers(agg.close_due(WALL, None)) == [T0 + MIN]


def test_max_groups_overflow() -> None:
    s = spec(group_by=("user_id",), max_groups=2)
    agg = PartitionAggregator(s, 0, created_ms=WALL)
    result = agg.add([ev(T0, user_id=f"u{i}") for i in range(5)] + [ev(T0, user_id="u0")], WALL)
    assert result.overflowed == 3
    got = values(agg.close_all(), s)
    assert got == {
        (T0, ("u0",)): {"events": 2},
        (T0, ("u1",)): {"events": 1},
        (T0, None): {"events": 3},
    }
    assert s.group_dict(None) == {"user_id": "__overflow__"}


def test_recent_windows_are_queryable_until_retain() -> None:
    s = spec(retain_ms=2 * MIN)
    agg = PartitionAggregator(s, 0, created_ms=WALL)
    agg.add([ev(T0), ev(T0 + MIN + 30_000)], WALL)
    agg.close_due(WALL, None)
    snap = agg.snapshot()
    assert [(w["window_start"], w["closed"]) for w in snap["windows"]] == [
        (T0, True),
        (T0 + MIN, False),
    ]
    assert snap["windows"][0]["groups"] == [
        {"group": {}, "overflow": False, "measures": {"events": 1}}
    ]
    agg.add([ev(T0 + 3 * MIN)], WALL)  # window T0 ended T0+1m; retained until T0+3m
    agg.close_due(WALL, None)
    assert T0 not in agg.recent and T0 + MIN in agg.recent


def test_state_round_trip_and_changes() -> None:
    s = spec(group_by=("event",), measures=(COUNT, MeasureSpec("u", "distinct", field="user_id")))
    agg = PartitionAggregator(s, 2, created_ms=WALL)
    agg.add([ev(T0, "a"), ev(T0, "b"), ev(T0 + MIN + 30_000, "a")], WALL)
    agg.close_due(WALL, None)
    agg.add([ev(T0 + MIN + 1, "c")], WALL)
    state = agg.to_state()
    assert b'w:%d:["a"]' % (T0 + MIN) in state and b'r:%d:["b"]' % T0 in state

    # the accumulated changes rebuild the same state
    replay = PartitionAggregator(s, 2, created_ms=WALL)
    table: dict[bytes, bytes] = {}
    for batch in ([ev(T0, "a"), ev(T0, "b"), ev(T0 + MIN + 30_000, "a")], [ev(T0 + MIN + 1, "c")]):
        replay.add(batch, WALL)
        replay.close_due(WALL, None)
        for key, value in replay.drain_changes().items():
            if value is None:
                table.pop(key, None)
            else:
                table[key] = value
    assert table == replay.to_state()

    back = PartitionAggregator.from_state(s, 2, state.items(), now_ms=WALL)
    assert back.to_state() == state
    assert back.snapshot() == agg.snapshot()
    assert values(back.close_all(), s) == values(agg.close_all(), s)


def test_partial_and_marker_wire_format() -> None:
    p = Partial("agg", 3, T0, T0 + MIN, ("a", ""), b"\x01\x01\x02\x05\x00")
    assert decode_record(encode_record(p)) == p
    overflow = Partial("agg", 3, T0, T0 + MIN, None, b"\x01\n\x00")
    assert decode_record(encode_record(overflow)) == overflow
    m = CloseMarker("agg", 1, T0)
    assert decode_record(encode_record(m)) == m


def test_an_exception_while_reading_a_batch_changes_nothing() -> None:
    s = spec(measures=(MeasureSpec("u", "distinct", field="properties.v"),))
    agg = PartitionAggregator(s, 0, created_ms=WALL)
    agg.add([ev(T0, properties={"v": 1})], WALL)
    before = agg.to_state()

    class Unserialisable:
        pass

    try:
        agg.add(
            [ev(T0 + 5, properties={"v": 2}), ev(T0 + 2 * MIN, properties={"v": Unserialisable()})],
            WALL,
        )
    except TypeError:
        pass
    else:  # pragma: no cover
        raise AssertionError("expected a TypeError")
    assert agg.to_state() == before


def apply_changes(table: dict[bytes, bytes], changes: dict[bytes, bytes | None]) -> None:
    for key, value in changes.items():
        if value is None:
            table.pop(key, None)
        else:
            table[key] = value


def test_live_partials_only_for_changed_open_windows() -> None:
    s = spec(group_by=("event",))
    agg = PartitionAggregator(s, 1, created_ms=WALL)
    assert agg.live_partials() == []
    agg.add([ev(T0 + MIN, "a"), ev(T0, "b"), ev(T0 + 1, "a")], WALL)
    agg.drain_changes()
    live = agg.live_partials()
    # by window start, then group; the current values, with the window's end and partition
    assert [(p.window_start, p.window_end, p.group, p.partition) for p in live] == [
        (T0, T0 + MIN, ("a",), 1),
        (T0, T0 + MIN, ("b",), 1),
        (T0 + MIN, T0 + 2 * MIN, ("a",), 1),
    ]
    assert values(live, s) == {
        (T0, ("a",)): {"events": 1},
        (T0, ("b",)): {"events": 1},
        (T0 + MIN, ("a",)): {"events": 1},
    }
    assert agg.drain_changes() == {}  # live partials are not state
    assert agg.live_partials() == []  # nothing changed since the last call
    agg.add([ev(T0 + 2, "b"), ev(T0 + 3, "b")], WALL)
    assert values(agg.live_partials(), s) == {(T0, ("b",)): {"events": 3}}


def test_a_restored_aggregator_sends_live_partials_of_every_open_window() -> None:
    # The state can come from another worker whose latest changes never went out live (its
    # live interval had not come round when it lost the partition): the new owner sends them
    # all once, or the combiner would show older values until the window changes again.
    s = spec(group_by=("event",))
    agg = PartitionAggregator(s, 3, created_ms=WALL)
    agg.add([ev(T0, "a"), ev(T0 + 1, "b"), ev(T0 + MIN, "a")], WALL)
    agg.live_partials()
    agg.add([ev(T0 + MIN + 1, "a")], WALL)  # changed, not sent live yet
    state = agg.to_state()
    back = PartitionAggregator.from_state(s, 3, state.items(), now_ms=WALL)
    assert back.drain_changes() == {}  # nothing to write back: only the live values are due
    assert values(back.live_partials(), s) == {
        (T0, ("a",)): {"events": 1},
        (T0, ("b",)): {"events": 1},
        (T0 + MIN, ("a",)): {"events": 2},
    }
    assert back.live_partials() == []


def test_live_partials_of_the_overflow_group() -> None:
    s = spec(group_by=("user_id",), max_groups=1)
    agg = PartitionAggregator(s, 0, created_ms=WALL)
    agg.add([ev(T0, user_id="u1"), ev(T0, user_id="u2")], WALL)
    assert values(agg.live_partials(), s) == {
        (T0, ("u1",)): {"events": 1},
        (T0, None): {"events": 1},
    }


def test_no_live_partials_for_closed_windows() -> None:
    s = spec()
    agg = PartitionAggregator(s, 0, created_ms=WALL)
    agg.add([ev(T0), ev(T0 + MIN)], WALL)
    agg.add([ev(T0 + MIN + 30_000)], WALL)  # closes window T0 at the next close_due
    closed = agg.close_due(WALL, None)
    assert values(closed, s) == {(T0, ()): {"events": 1}}
    # T0 changed since the last call but is closed now: its closing partial was the last word
    assert (T0, ()) not in agg._live_dirty
    assert values(agg.live_partials(), s) == {(T0 + MIN, ()): {"events": 2}}
    agg.add([ev(T0 + MIN + 1)], WALL)
    agg.close_all()
    assert agg._live_dirty == set()
    assert agg.live_partials() == []


def test_source_offsets_only_move_forward_and_are_kept_in_state() -> None:
    s = spec()
    agg = PartitionAggregator(s, 0, created_ms=WALL)
    assert agg.offsets == {} and not agg.already_applied("events", 0)
    agg.add([ev(T0)], WALL)
    agg.note_offsets({"events": 11, "other": 3})
    agg.note_offsets({"events": 7, "other": 4})  # a replayed batch never lowers an offset
    assert agg.offsets == {"events": 11, "other": 4}
    assert agg.already_applied("events", 10) and not agg.already_applied("events", 11)
    assert agg.already_applied("other", 0) and not agg.already_applied("unknown", 0)
    changes = agg.drain_changes()
    assert list(changes)[-1] == b"m"  # meta last: its offsets imply the records before it
    assert orjson.loads(changes[b"m"])["offsets"] == {"events": 11, "other": 4}
    agg.note_offsets({"events": 11, "other": 2})
    assert agg.drain_changes() == {}  # nothing moved: nothing to write

    state = agg.to_state()
    back = PartitionAggregator.from_state(s, 0, state.items(), now_ms=WALL)
    assert back.offsets == {"events": 11, "other": 4} and back.to_state() == state
    assert back.already_applied("events", 10)

    # meta written before offsets were kept (same state version): no offsets, no guard
    meta = orjson.loads(state[b"m"])
    del meta["offsets"]
    old = PartitionAggregator.from_state(
        s, 0, {**state, b"m": orjson.dumps(meta)}.items(), now_ms=WALL
    )
    assert old.offsets == {} and not old.already_applied("events", 0)
    assert old.stream_time == agg.stream_time and old.open.keys() == agg.open.keys()


def test_replayed_changes_equal_the_state_after_every_step() -> None:
    s = spec(group_by=("event",), max_groups=2, retain_ms=MIN)
    agg = PartitionAggregator(s, 4, created_ms=WALL)
    table: dict[bytes, bytes] = {}
    steps = [
        lambda: None,  # a new aggregator: its meta is state too
        lambda: agg.add([ev(T0, "a"), ev(T0, "b"), ev(T0, "c"), ev(T0 + MIN, "a")], WALL),
        lambda: agg.note_offsets({"events": 4}),
        agg.live_partials,
        lambda: agg.close_due(WALL, None),
        lambda: agg.add([ev(T0 + MIN + 30_000, "b")], WALL),  # closes T0
        lambda: agg.close_due(WALL, None),
        lambda: agg.add([ev(T0 + 1, "a"), ev(T0 + MIN + 2, "c")], WALL),  # a late one
        lambda: agg.note_offsets({"events": 7}),
        lambda: agg.close_due(WALL + 10 * MIN, idle_after_ms=MIN),  # idle: drops T0's recent
        agg.close_all,
    ]
    for step in steps:
        step()
        changes = agg.drain_changes()
        if b"m" in changes:
            assert list(changes)[-1] == b"m"
        apply_changes(table, changes)
        assert table == agg.to_state()
        back = PartitionAggregator.from_state(s, 4, table.items(), now_ms=WALL)
        assert back.snapshot() == agg.snapshot() and back.offsets == agg.offsets
    assert agg.open == {} and agg.offsets == {"events": 7}


def test_state_of_another_definition_is_refused_clearly() -> None:
    from pipeline.core.combiner import WindowCombiner
    from pipeline.errors import StateMismatch

    old = spec(group_by=("event",))
    agg = PartitionAggregator(old, 0, created_ms=WALL)
    agg.add([ev(T0 + 10)], WALL)
    state = agg.to_state()
    combiner_state = WindowCombiner(old, 4).to_state()
    assert PartitionAggregator.from_state(spec(group_by=("event",)), 0, state.items(), now_ms=WALL)

    changed = [
        spec(group_by=("event",), measures=(COUNT, MeasureSpec("revenue", "sum", field="properties.revenue"))),
        spec(group_by=()),
        spec(group_by=("event",), window=WindowSpec.tumbling(2 * MIN, grace_ms=30_000)),
    ]
    for new in changed:
        assert new.state_fingerprint != old.state_fingerprint
        with pytest.raises(StateMismatch, match="'agg': its stored state was written by another definition"):
            PartitionAggregator.from_state(new, 0, state.items(), now_ms=WALL)
        with pytest.raises(StateMismatch):
            WindowCombiner.from_state(new, 4, combiner_state.items())
    # The grace period and the filter do not change what is stored.
    assert spec(group_by=("event",), window=WindowSpec.tumbling(MIN, grace_ms=0)).state_fingerprint == old.state_fingerprint
    # State written before fingerprints were kept has none: accepted.
    legacy = dict(state)
    meta = orjson.loads(legacy[b"m"])
    del meta["def"]
    legacy[b"m"] = orjson.dumps(meta)
    PartitionAggregator.from_state(changed[1], 0, legacy.items(), now_ms=WALL)
