"""TableDedupeStore on stand-ins for Faust's memory and RocksDB stores (no broker)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import rocksdict
from faust.types import TP

from pipeline.runtime.state import TableDedupeStore

CHANGELOG = "app-dedupe-changelog"


class FakeOutput:
    transactional = False

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, bytes | None, int]] = []
        self.failures: list[Any] = []

    def produce_to_partition(self, topic, key, value, partition, on_delivery) -> None:  # noqa: ANN001
        self.sent.append((topic, key, value, partition))

    def record_failure(self, err: Any) -> None:
        self.failures.append(err)

    def tombstones(self) -> list[tuple[bytes, int]]:
        return [(key, partition) for _, key, value, partition in self.sent if value is None]


class MemoryStore:
    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}


class FakeApp:
    """What the sweep reads of the Faust app: rebalancing, recovery done, active partitions."""

    def __init__(self, actives: set[int]) -> None:
        self.rebalancing = False
        self.tables = type("Tables", (), {"actives_ready": True})()
        self.actives = actives
        self.assignor = self

    def assigned_actives(self) -> set[TP]:
        return {TP(CHANGELOG, p) for p in self.actives}


class RocksStore:
    """The parts of faust.stores.rocksdb.Store the state uses."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._dbs: dict[int, rocksdict.Rdict] = {}
        self.persisted: dict[Any, int] = {}

    def _db_for_partition(self, partition: int) -> rocksdict.Rdict:
        if partition not in self._dbs:
            self._dbs[partition] = rocksdict.Rdict(str(self._path / f"p{partition}"), options=rocksdict.Options(raw_mode=True))
        return self._dbs[partition]

    def set_persisted_offset(self, tp: Any, offset: int) -> None:
        self.persisted[tp] = offset


class FakeTable:
    changelog_topic_name = CHANGELOG

    def __init__(self, store: Any) -> None:
        self.data = store


def make_state(backing: Any, **kwargs: Any) -> TableDedupeStore:
    return TableDedupeStore(FakeTable(backing), FakeOutput(), **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def rocks(tmp_path: Path) -> RocksStore:
    backing = RocksStore(tmp_path)
    yield backing
    for db in backing._dbs.values():
        db.close()


@pytest.fixture(params=["memory", "rocksdb"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> TableDedupeStore:
    backing = MemoryStore() if request.param == "memory" else RocksStore(tmp_path)
    state = make_state(backing)
    yield state
    if isinstance(backing, RocksStore):
        for db in backing._dbs.values():
            db.close()


def deliver(state: TableDedupeStore, partition: int, entries: list[tuple[bytes, int]]) -> None:
    """What the worker does with one batch's keys: stage, produce the changelog, then apply."""
    state.remember(partition, entries)
    staged = state.take_staged()
    state.produce_staged(staged)
    state.apply(staged)


def sweep(state: TableDedupeStore, now_ms: int) -> int:
    return asyncio.run(state.sweep(now_ms))


def test_staged_keys_are_seen_at_once_but_reach_store_and_changelog_only_on_delivery(
    store: TableDedupeStore,
) -> None:
    store.remember(2, [(b"i:a", 1000)])
    assert store.seen(2, [b"i:a", b"i:b"], now_ms=500) == [True, False], "seen while staged"
    assert store.size() == 0, "the local store is not written before delivery"
    assert store.output.sent == []  # type: ignore[attr-defined]
    staged = store.take_staged()
    assert store.take_staged() == [], "a batch's writes are handed over once"
    store.produce_staged(staged)
    assert store.output.sent == [(CHANGELOG, b"i:a", b"1000", 2)]  # type: ignore[attr-defined]
    assert store.size() == 0, "still not written: the broker has not acknowledged yet"
    store.apply(staged)
    assert store.size() == 1
    assert store._pending == {}, "applied keys leave the overlay"
    assert store.seen(2, [b"i:a"], now_ms=500) == [True]


def test_a_batch_never_delivered_leaves_no_key_behind(store: TableDedupeStore) -> None:
    """A crash before the acknowledgement: the restarted worker must not see the events as
    duplicates (the local store outlives a kill -9 with RocksDB)."""
    store.remember(0, [(b"i:lost", 10_000)])
    store.take_staged()  # delivery started, then the process died
    assert store.size() == 0


def test_a_key_staged_again_by_a_later_batch_stays_in_the_overlay(store: TableDedupeStore) -> None:
    store.remember(0, [(b"k", 10)])
    first = store.take_staged()
    store.remember(0, [(b"k", 20_000)])  # expired at 100, so staged again by the next batch
    second = store.take_staged()
    store.produce_staged(first)
    store.apply(first)
    assert store.seen(0, [b"k"], now_ms=100) == [True], "the newer staged expiry wins"
    store.produce_staged(second)
    store.apply(second)
    assert store._pending == {}
    assert store.seen(0, [b"k"], now_ms=100) == [True]


def test_rocksdb_sweep_never_deletes_a_key_staged_for_delivery(rocks: RocksStore) -> None:
    state = make_state(rocks)
    deliver(state, 0, [(b"k", 10)])
    state.remember(0, [(b"k", 50_000)])  # resent after expiry; its batch is being delivered
    staged = state.take_staged()
    state.produce_staged(staged)
    assert sweep(state, 100) == 0, "its new changelog record is enqueued: no tombstone after it"
    assert state.output.tombstones() == []  # type: ignore[attr-defined]
    state.apply(staged)
    assert state.seen(0, [b"k"], now_ms=100) == [True]


def test_remember_writes_the_store_and_the_changelog_partition(store: TableDedupeStore) -> None:
    deliver(store, 2, [(b"i:a", 1000), (b"i:b", 2000)])
    assert store.seen(2, [b"i:a", b"i:b", b"i:c"], now_ms=500) == [True, True, False]
    assert store.seen(2, [b"i:a", b"i:b"], now_ms=1500) == [False, True], "expired keys are not seen"
    assert store.seen(2, [], now_ms=0) == []
    assert store.output.sent == [  # type: ignore[attr-defined]
        (CHANGELOG, b"i:a", b"1000", 2),
        (CHANGELOG, b"i:b", b"2000", 2),
    ]
    assert store.size() == 2


def test_sweep_forgets_expired_keys(store: TableDedupeStore) -> None:
    deliver(store, 0, [(b"old", 10), (b"new", 10_000)])
    deliver(store, 1, [(b"older", 5)])
    assert sweep(store, 100) == 2
    assert store.size() == 1
    assert store.seen(0, [b"new"], now_ms=100) == [True]
    assert sweep(store, 100) == 0


def test_rocksdb_sweep_writes_tombstones_to_the_keys_changelog_partition(rocks: RocksStore) -> None:
    state = make_state(rocks)
    deliver(state, 0, [(b"old", 10), (b"new", 10_000)])
    deliver(state, 3, [(b"older", 5)])
    assert sweep(state, 100) == 2
    assert sorted(state.output.tombstones()) == [(b"old", 0), (b"older", 3)]  # type: ignore[attr-defined]


def test_rocksdb_sweep_skips_faust_offset_key_and_size_excludes_it(rocks: RocksStore) -> None:
    state = make_state(rocks)
    deliver(state, 0, [(b"i:a", 10)])
    rocks._db_for_partition(0).put(b"__faust\0offset__", b"7")  # what Faust's set_persisted_offset writes
    assert state.size() == 1
    assert sweep(state, 100) == 1
    assert rocks._db_for_partition(0).get(b"__faust\0offset__") == b"7"
    assert state.size() == 0


def test_sweep_works_in_slices_that_yield_to_the_loop(store: TableDedupeStore) -> None:
    store.sweep_slice_keys = 10
    deliver(store, 0, [(b"k%03d" % i, 10) for i in range(95)])
    deliver(store, 0, [(b"live%d" % i, 10_000) for i in range(5)])
    ticks = 0

    async def scenario() -> int:
        nonlocal ticks
        running = True

        async def ticker() -> None:
            nonlocal ticks
            while running:
                ticks += 1
                await asyncio.sleep(0)

        task = asyncio.ensure_future(ticker())
        await asyncio.sleep(0)
        removed = await store.sweep(100)
        running = False
        await task
        return removed

    assert asyncio.run(scenario()) == 95
    assert ticks >= 9, "the loop ran between the slices"
    assert store.size() == 5


def test_rocksdb_sweep_resumes_where_the_previous_one_stopped(rocks: RocksStore) -> None:
    state = make_state(rocks, sweep_slice_keys=10, sweep_scan_keys=30)
    deliver(state, 0, [(b"k%03d" % i, 10) for i in range(100)])
    removed = [sweep(state, 100) for _ in range(4)]
    assert removed == [30, 30, 30, 10], "each sweep examines its budget, then the next goes on"
    assert state.size() == 0
    # A pass that reached the end starts over.
    deliver(state, 0, [(b"a", 10)])
    assert sweep(state, 100) == 1


def test_sweep_deletes_at_most_max_deletes(store: TableDedupeStore) -> None:
    store.sweep_max_deletes = 7
    store.sweep_slice_keys = 5
    deliver(store, 0, [(b"k%03d" % i, 10) for i in range(20)])
    assert sweep(store, 100) == 7
    assert store.size() == 13


def test_sweep_never_deletes_a_key_refreshed_before_its_slice(rocks: RocksStore) -> None:
    """The batch path refreshes a key between two slices: the slice reads the new expiry."""
    state = make_state(rocks, sweep_slice_keys=2)
    deliver(state, 0, [(b"a", 10), (b"b", 10), (b"c", 10), (b"d", 10)])
    real_slice = state._sweep_slice
    calls = 0

    def slice_then_batch(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        result = real_slice(*args, **kwargs)
        calls += 1
        if calls == 1:
            # An event with key d is processed after the first slice (a, b) and before the
            # second (c, d): d is expired, so not seen, and remembered with a new expiry.
            assert state.seen(0, [b"d"], now_ms=100) == [False]
            deliver(state, 0, [(b"d", 50_000)])
        return result

    state._sweep_slice = slice_then_batch  # type: ignore[method-assign]
    assert sweep(state, 100) == 3
    assert state.seen(0, [b"d"], now_ms=100) == [True]
    sent = [(key, value) for _, key, value, _ in state.output.sent]  # type: ignore[attr-defined]
    assert (b"d", None) not in sent
    # The changelog replays to the same state: every tombstone precedes the key's newer value.
    replayed: dict[bytes, bytes] = {}
    for key, value in sent:
        if value is None:
            replayed.pop(key, None)
        else:
            replayed[key] = value
    assert replayed == {b"d": b"50000"}


def test_a_key_refreshed_after_its_tombstone_comes_back_in_the_changelog(rocks: RocksStore) -> None:
    state = make_state(rocks)
    deliver(state, 0, [(b"a", 10)])
    assert sweep(state, 100) == 1
    deliver(state, 0, [(b"a", 50_000)])  # resent after expiry: a new key again
    assert [(k, v) for _, k, v, _ in state.output.sent] == [  # type: ignore[attr-defined]
        (b"a", b"10"), (b"a", None), (b"a", b"50000"),
    ]
    assert state.seen(0, [b"a"], now_ms=100) == [True]


def test_rocksdb_sweep_leaves_partitions_this_worker_does_not_own(rocks: RocksStore) -> None:
    state = make_state(rocks)
    deliver(state, 0, [(b"mine", 10)])
    deliver(state, 1, [(b"standby", 10)])
    rocks.app = FakeApp(actives={0})  # type: ignore[attr-defined]
    assert sweep(state, 100) == 1
    assert state.output.tombstones() == [(b"mine", 0)]  # type: ignore[attr-defined]
    assert state.seen(1, [b"standby"], now_ms=5) == [True]


def test_rocksdb_sweep_waits_for_rebalances_and_recovery(rocks: RocksStore) -> None:
    state = make_state(rocks)
    deliver(state, 0, [(b"a", 10)])
    app = rocks.app = FakeApp(actives={0})  # type: ignore[attr-defined]
    app.rebalancing = True
    assert sweep(state, 100) == 0
    app.rebalancing = False
    app.tables.actives_ready = False
    assert sweep(state, 100) == 0
    app.tables.actives_ready = True
    assert sweep(state, 100) == 1


def test_rocksdb_sweep_stops_on_a_partition_revoked_between_slices(rocks: RocksStore) -> None:
    state = make_state(rocks, sweep_slice_keys=2)
    deliver(state, 0, [(b"k%d" % i, 10) for i in range(6)])
    app = rocks.app = FakeApp(actives={0})  # type: ignore[attr-defined]
    real_slice = state._sweep_slice

    def slice_then_revoke(*args: Any, **kwargs: Any) -> Any:
        result = real_slice(*args, **kwargs)
        app.actives = set()  # a rebalance moved partition 0 elsewhere during the await
        return result

    state._sweep_slice = slice_then_revoke  # type: ignore[method-assign]
    assert sweep(state, 100) == 2
    assert state._cursors == {}


def test_tombstone_failures_do_not_fail_the_batch(rocks: RocksStore) -> None:
    state = make_state(rocks)
    state._on_tombstone_delivered("boom", None)
    assert state.output.failures == []  # type: ignore[attr-defined]
    assert sweep(state, 100) == 0  # logs the failure and resets the count
    assert state._tombstone_failures == 0


def test_delivery_offsets_are_persisted_and_failures_reported(store: TableDedupeStore) -> None:
    class Msg:
        def __init__(self, partition: int, offset: int) -> None:
            self._p, self._o = partition, offset

        def partition(self) -> int:
            return self._p

        def offset(self) -> int:
            return self._o

    store._on_changelog_delivered(None, Msg(3, 41))
    store._on_changelog_delivered(None, Msg(3, 40))
    store._on_changelog_delivered("boom", Msg(3, 42))
    store._on_tombstone_delivered(None, Msg(3, 43))
    store.after_delivery()
    assert store.output.failures == ["boom"]  # type: ignore[attr-defined]
    backing = store.table.data
    if isinstance(backing, RocksStore):
        [(tp, offset)] = backing.persisted.items()
        assert (tp.topic, tp.partition, offset) == (CHANGELOG, 3, 43)


def test_estimated_size(store: TableDedupeStore) -> None:
    deliver(store, 0, [(b"a", 10), (b"b", 10)])
    assert store.estimated_size() == 2


def test_an_unstaged_batch_leaves_nothing_behind(store: TableDedupeStore) -> None:
    store.remember(0, [(b"k", 10_000)])
    store.unstage(store.take_staged())
    assert store.seen(0, [b"k"], now_ms=100) == [False], "read again later, it is not a duplicate"
    assert store._pending == {}
