"""WindowCombiner: partials of N partitions merged equal a direct recomputation; idempotent."""

from __future__ import annotations

import math
import random
from collections import defaultdict
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.core.aggregator import (
    AggregateSpec,
    CloseMarker,
    Partial,
    PartitionAggregator,
    render_group_value,
)
from pipeline.core.combiner import UnexpectedPartition, WindowCombiner
from pipeline.core.measures import MeasureSpec
from pipeline.core.windows import WindowSpec

MIN = 60_000
T0 = 1_795_000_020_000 // MIN * MIN
WALL = 1_795_000_100_000
GRACE = 30_000

SPEC = AggregateSpec(
    name="agg",
    window=WindowSpec.hopping(2 * MIN, MIN, grace_ms=GRACE),
    group_by=("event", "properties.currency"),
    where=lambda e: e["event"] != "ignored",
    measures=(
        MeasureSpec("n", "count"),
        MeasureSpec("revenue", "sum", field="properties.revenue"),
        MeasureSpec("low", "min", field="properties.revenue"),
        MeasureSpec("high", "max", field="properties.revenue"),
        MeasureSpec("mean", "avg", field="properties.revenue"),
        MeasureSpec("users", "distinct", field="identity"),
        MeasureSpec("users_hll", "distinct", field="identity", method="hll"),
    ),
)


def ev(ts: int, name: str = "a", user: str = "u1", **props: Any) -> dict[str, Any]:
    return {"event": name, "timestamp": ts, "user_id": user, "properties": props}


def direct(
    events: list[dict[str, Any]], spec: AggregateSpec = SPEC
) -> dict[tuple[int, Any], dict[str, Any]]:
    """The expected values, computed straight from the events (no aggregator involved)."""
    cells: dict[tuple[int, Any], list[dict[str, Any]]] = defaultdict(list)
    for e in events:
        if spec.where is not None and not spec.where(e):
            continue
        group = (
            render_group_value(e["event"]),
            render_group_value(e["properties"].get("currency")),
        )
        for start in spec.window.starts(e["timestamp"]):
            cells[(start, group)].append(e)
    expected = {}
    for key, es in cells.items():
        nums = [
            e["properties"]["revenue"]
            for e in es
            if type(e["properties"].get("revenue")) in (int, float)
        ]
        expected[key] = {
            "n": len(es),
            "revenue": math.fsum(nums) if any(type(x) is float for x in nums) else sum(nums),
            "low": min(nums) if nums else None,
            "high": max(nums) if nums else None,
            "mean": (math.fsum(nums) / len(nums)) if nums else None,
            "users": len({e["user_id"] for e in es}),
        }
    return expected


def finals_by_key(finals: list[dict[str, Any]]) -> dict[tuple[int, Any], dict[str, Any]]:
    out = {}
    for r in finals:
        key = (r["window_start"], tuple(r["group"].values()))
        assert key not in out, "one final record per window and group"
        out[key] = r["measures"]
    return out


def check(finals: list[dict[str, Any]], events: list[dict[str, Any]]) -> None:
    got = finals_by_key(finals)
    expected = direct(events)
    assert set(got) == set(expected)
    for key, want in expected.items():
        measures = dict(got[key])
        hll = measures.pop("users_hll")
        assert abs(hll - want["users"]) <= max(1, 0.02 * want["users"])
        if want["mean"] is not None:
            assert measures.pop("mean") == pytest.approx(want.pop("mean"), rel=1e-12)
        assert measures == want


event_st = st.builds(
    lambda offset, name, user, currency, revenue: ev(
        T0 + offset, name, f"u{user}", currency=currency, revenue=revenue
    ),
    st.integers(0, 6 * MIN),
    st.sampled_from(["a", "b", "ignored"]),
    st.integers(0, 20),
    st.sampled_from(["EUR", "USD", None]),
    st.one_of(
        st.integers(-100, 10_000), st.floats(-1e6, 1e6, allow_nan=False), st.none(), st.just("x")
    ),
)


@settings(max_examples=120, deadline=None)
@given(
    events=st.lists(event_st, max_size=60),
    partitions=st.integers(1, 4),
    seed=st.integers(0, 2**32),
    resend=st.booleans(),
)
def test_merged_partials_equal_a_direct_recomputation(
    events: list[dict[str, Any]], partitions: int, seed: int, resend: bool
) -> None:
    rng = random.Random(seed)
    # Split across partitions; within a partition, events arrive out of order but within grace:
    # sorted by timestamp plus a jitter below the grace period, so none is late.
    streams: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for e in events:
        streams[rng.randrange(partitions)].append(e)
    for stream in streams.values():
        stream.sort(key=lambda e: e["timestamp"] + rng.randrange(GRACE))
    aggs = {p: PartitionAggregator(SPEC, p, created_ms=WALL) for p in range(partitions)}
    outbox: dict[int, list[Partial | CloseMarker]] = {p: [] for p in range(partitions)}
    pending = {p: list(streams.get(p, [])) for p in range(partitions)}
    while any(pending.values()):
        p = rng.choice([q for q in pending if pending[q]])
        size = rng.randint(1, 5)
        batch, pending[p] = pending[p][:size], pending[p][size:]
        assert aggs[p].add(batch, WALL).late == []
        sent = aggs[p].close_due(WALL, None)
        if resend and sent:  # a re-send of the same partials (replay after a crash)
            sent = [r for r in sent if isinstance(r, Partial)] + sent
        outbox[p].extend(sent)
    for p in range(partitions):
        outbox[p].extend(aggs[p].close_all())
    # The combiner gets each partition's records in order, interleaved at random, in chunks.
    combiner = WindowCombiner(SPEC, partitions)
    finals: list[dict[str, Any]] = []
    queues = {p: list(r) for p, r in outbox.items()}
    while any(queues.values()):
        p = rng.choice([q for q in queues if queues[q]])
        size = rng.randint(1, 4)
        chunk, queues[p] = queues[p][:size], queues[p][size:]
        finals.extend(combiner.add(chunk))
    check(finals, events)
    assert combiner.windows == {}


def partial(p: int, start: int, group: Any, *events: dict[str, Any]) -> list[Partial | CloseMarker]:
    agg = PartitionAggregator(SPEC, p, created_ms=WALL)
    agg.add(list(events), WALL)
    return [
        r
        for r in agg.close_all()
        if isinstance(r, Partial) and r.window_start == start and r.group == group
    ]


def test_waits_for_every_partition_and_replaces_resent_partials() -> None:
    c = WindowCombiner(SPEC, 2)
    g = ("a", "EUR")
    first = partial(0, T0, g, ev(T0, currency="EUR", revenue=1))
    assert c.add(first + first) == []  # a duplicate replaces, never adds
    assert c.add([CloseMarker("agg", 0, T0 + 5 * MIN)]) == []  # partition 1 has not reported
    again = partial(
        1, T0, g, ev(T0 + 1, currency="EUR", revenue=2), ev(T0 + 2, currency="EUR", revenue=2)
    )
    assert c.add(again) == []
    assert c.add([CloseMarker("agg", 1, T0 + 2 * MIN)]) == []  # T0's window closes at T0+2m30s
    [final] = c.add([CloseMarker("agg", 1, T0 + 2 * MIN + GRACE)])
    assert final["measures"]["n"] == 3 and final["measures"]["revenue"] == 5
    assert final["partitions"] == [0, 1]
    assert final["group"] == {"event": "a", "properties.currency": "EUR"}
    assert final["window_end"] - final["window_start"] == 2 * MIN
    # after the fact: duplicate markers change nothing, late re-sends are ignored and counted
    assert c.add([CloseMarker("agg", 1, T0 + 2 * MIN + GRACE), *again]) == []
    assert c.stale_partials == len(again)
    assert c.windows == {}


def test_markers_never_move_back() -> None:
    c = WindowCombiner(SPEC, [0])
    c.add([CloseMarker("agg", 0, T0 + 10 * MIN), CloseMarker("agg", 0, T0)])
    assert c.watermarks == {0: T0 + 10 * MIN}


def test_refuses_unknown_partitions_and_other_aggregates() -> None:
    c = WindowCombiner(SPEC, 2)
    with pytest.raises(UnexpectedPartition):
        c.add([CloseMarker("agg", 2, T0)])
    with pytest.raises(ValueError):
        c.add([CloseMarker("other", 0, T0)])


def test_state_round_trip() -> None:
    c = WindowCombiner(SPEC, 2)
    c.add(partial(0, T0, ("a", ""), ev(T0, revenue=1)) + [CloseMarker("agg", 0, T0 + 9 * MIN)])
    back = WindowCombiner.from_state(SPEC, 2, c.to_state().items())
    assert back.to_state() == c.to_state()
    assert back.snapshot() == c.snapshot()
    done = CloseMarker("agg", 1, T0 + 9 * MIN)
    assert back.add([done]) == c.add([done]) != []


SMALL = AggregateSpec(
    name="agg",
    window=WindowSpec.tumbling(MIN, grace_ms=GRACE),
    group_by=("event",),
    measures=(MeasureSpec("n", "count"), MeasureSpec("low", "min", field="properties.revenue")),
    max_groups=2,
    retain_ms=2 * MIN,
)


def apply_changes(table: dict[bytes, bytes], changes: dict[bytes, bytes | None]) -> None:
    for key, value in changes.items():
        if value is None:
            table.pop(key, None)
        else:
            table[key] = value


def test_live_values_of_the_latest_pending_window() -> None:
    c = WindowCombiner(SMALL, [0, 1])
    assert c.live_values("n") is None  # nothing pending
    a0 = PartitionAggregator(SMALL, 0, created_ms=WALL)
    a1 = PartitionAggregator(SMALL, 1, created_ms=WALL)
    a0.add([ev(T0, "a", revenue=5), ev(T0 + MIN, "a", revenue=2), ev(T0 + MIN, "b/c")], WALL)
    a1.add([ev(T0 + MIN, "a", revenue=1), ev(T0 + MIN, "x"), ev(T0 + MIN, "y")], WALL)
    assert c.add(a0.live_partials() + a1.live_partials()) == []
    # the latest window, merged over both partitions; "y" went to partition 1's overflow group
    assert c.live_values("n") == (
        T0 + MIN,
        {"a": 2.0, "b/c": 1.0, "x": 1.0, "__overflow__": 1.0},
    )
    assert c.live_values("low") == (T0 + MIN, {"a": 1.0})  # min of nothing (None): left out
    # a newer live partial replaces the older one of its partition: nothing is counted twice
    a1.add([ev(T0 + MIN + 1, "a", revenue=0.5)], WALL)
    c.add(a1.live_partials())
    n = c.live_values("n")
    assert n == (T0 + MIN, {"a": 3.0, "b/c": 1.0, "x": 1.0, "__overflow__": 1.0})
    assert all(type(v) is float for v in n[1].values())
    assert c.live_values("low") == (T0 + MIN, {"a": 0.5})
    with pytest.raises(KeyError):
        c.live_values("nope")
    # the closing partials replace the live ones: the finals count every event once
    finals = c.add(a0.close_all() + a1.close_all())
    assert {(r["window_start"], r["group"]["event"]): r["measures"]["n"] for r in finals} == {
        (T0, "a"): 1,
        (T0 + MIN, "a"): 3,
        (T0 + MIN, "b/c"): 1,
        (T0 + MIN, "x"): 1,
        (T0 + MIN, "__overflow__"): 1,
    }
    assert c.live_values("n") is None and c.stale_partials == 0


def test_live_value_labels_without_and_with_two_group_by_fields() -> None:
    plain = AggregateSpec(
        name="agg", window=WindowSpec.tumbling(MIN), measures=(MeasureSpec("n", "count"),)
    )
    agg = PartitionAggregator(plain, 0, created_ms=WALL)
    agg.add([ev(T0), ev(T0 + 1)], WALL)
    c = WindowCombiner(plain, [0])
    c.add(agg.live_partials())
    assert c.live_values("n") == (T0, {"": 2.0})

    c = WindowCombiner(SPEC, [0])
    c.add(partial(0, T0, ("a", "EUR"), ev(T0, currency="EUR", revenue=3)))
    assert c.live_values("revenue") == (T0, {"a/EUR": 3.0})


def test_recent_final_windows_are_kept_until_retain_and_survive_state() -> None:
    c = WindowCombiner(SMALL, [0])
    agg = PartitionAggregator(SMALL, 0, created_ms=WALL)
    agg.add([ev(T0, "a", revenue=3), ev(T0 + MIN, "a", revenue=4)], WALL)
    agg.add([ev(T0 + MIN + GRACE, "b")], WALL)  # closes window T0
    finals = c.add(agg.close_due(WALL, None))
    assert [(r["window_start"], r["measures"]) for r in finals] == [(T0, {"n": 1, "low": 3})]
    assert c.recent == {T0: finals}
    c.add(agg.live_partials())  # window T0+1m: pending, live

    snap = c.snapshot()
    assert [(w["window_start"], w["closed"], w["final"]) for w in snap["windows"]] == [
        (T0, True, True),
        (T0 + MIN, False, False),
    ]
    assert snap["windows"][0]["groups"] == finals
    assert snap["windows"][0]["window_end"] == T0 + MIN
    assert [g["group"] for g in snap["windows"][1]["groups"]] == [{"event": "a"}, {"event": "b"}]

    state = c.to_state()
    assert state[b"f:%d" % T0] == orjson.dumps(finals)
    back = WindowCombiner.from_state(SMALL, [0], state.items())
    assert back.recent == c.recent and back.snapshot() == snap and back.to_state() == state

    # retain 2m: window T0 (end T0+1m) stays until T0+3m is complete, in both copies
    for combiner in (c, back):
        combiner.add([CloseMarker("agg", 0, T0 + 3 * MIN - 1)])  # finalizes T0+1m as well
        assert sorted(combiner.recent) == [T0, T0 + MIN]
        combiner.add([CloseMarker("agg", 0, T0 + 3 * MIN)])
        assert sorted(combiner.recent) == [T0 + MIN]
        assert [w["window_start"] for w in combiner.snapshot()["windows"]] == [T0 + MIN]
        assert b"f:%d" % T0 not in combiner.to_state()
    assert back.to_state() == c.to_state()


def test_state_refuses_unknown_keys() -> None:
    with pytest.raises(ValueError, match="unknown combiner state key"):
        WindowCombiner.from_state(SMALL, [0], [(b"x:1", b"[]")])


def test_replayed_changes_equal_the_state_after_every_step() -> None:
    c = WindowCombiner(SMALL, [0, 1])
    a0 = PartitionAggregator(SMALL, 0, created_ms=WALL)
    a1 = PartitionAggregator(SMALL, 1, created_ms=WALL)
    table: dict[bytes, bytes] = {}
    resend: list[Partial | CloseMarker] = []

    def close_t0() -> list[dict[str, Any]]:
        a0.add([ev(T0 + 2 * MIN + GRACE, "a")], WALL)  # closes T0 and T0+1m in partition 0
        sent = a0.close_due(WALL, None)
        resend.extend(r for r in sent if isinstance(r, Partial) and r.window_start == T0)
        return c.add(sent)

    steps = [
        # (the combiner is new here: its first changes are its meta)
        lambda: a0.add([ev(T0, "a"), ev(T0, "b"), ev(T0 + MIN, "a", revenue=1)], WALL),
        lambda: c.add(a0.live_partials()),
        lambda: a0.add([ev(T0 + 1, "a", revenue=2)], WALL),
        lambda: c.add(a0.live_partials()),  # replaces partition 0's partial of (T0, a)
        lambda: a1.add([ev(T0 + MIN + GRACE, "c")], WALL),
        lambda: c.add(a1.close_due(WALL, None)),  # partition 1's marker: nothing final yet
        close_t0,  # T0 final (partition 1 is at T0+1m30s)
        lambda: c.add(resend),  # a re-send after the fact: stale, counted in the meta
        lambda: c.set_partitions([0, 1, 2]),  # partition 2 has not reported: nothing final
        lambda: a1.add([ev(T0 + 5 * MIN, "c")], WALL),
        lambda: c.add(a1.close_due(WALL, None)),  # partition 1 closes T0+1m: still waits for 2
        lambda: c.set_partitions([0, 1]),  # T0+1m final now; T0 (retained to T0+3m) kept
        lambda: c.add(a0.close_all() + a1.close_all()),  # the rest final; old ones dropped
    ]
    outcomes = []
    recents = []
    for step in steps:
        outcomes.append(step())
        recents.append(sorted(c.recent))
        changes = c.drain_changes()
        if b"m" in changes:
            assert list(changes)[-1] == b"m"
        apply_changes(table, changes)
        assert table == c.to_state()
        back = WindowCombiner.from_state(SMALL, c.partitions, table.items())
        assert back.snapshot() == c.snapshot()
    assert [r["window_start"] for r in outcomes[6]] == [T0, T0]  # groups a and b
    assert outcomes[7] == [] and outcomes[8] == [] and outcomes[10] == []
    assert [(r["window_start"], r["group"]["event"]) for r in outcomes[11]] == [
        (T0 + MIN, "a"),
        (T0 + MIN, "c"),
    ]
    assert [r["window_start"] for r in outcomes[12]] == [T0 + 2 * MIN, T0 + 5 * MIN]
    assert c.stale_partials == 2  # the re-sent ones
    assert recents[11] == [T0, T0 + MIN]  # T0 retained until T0+3m is complete
    assert c.windows == {} and recents[12] == []  # all complete: everything past retain
    assert c.drain_changes() == {}
