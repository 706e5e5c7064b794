"""TableDedupeStore on stand-ins for Faust's memory and RocksDB stores (no broker)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import rocksdict

from pipeline.runtime.state import TableDedupeStore


class FakeOutput:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, bytes, int]] = []
        self.failures: list[Any] = []

    def produce_to_partition(self, topic, key, value, partition, on_delivery) -> None:  # noqa: ANN001
        self.sent.append((topic, key, value, partition))

    def record_failure(self, err: Any) -> None:
        self.failures.append(err)


class MemoryStore:
    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}


class RocksStore:
    """The parts of faust.stores.rocksdb.Store the state uses."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._dbs: dict[int, rocksdict.Rdict] = {}
        self._key_index: dict[bytes, int] = {}
        self.persisted: dict[Any, int] = {}

    def _db_for_partition(self, partition: int) -> rocksdict.Rdict:
        if partition not in self._dbs:
            self._dbs[partition] = rocksdict.Rdict(str(self._path / f"p{partition}"), options=rocksdict.Options(raw_mode=True))
        return self._dbs[partition]

    def set_persisted_offset(self, tp: Any, offset: int) -> None:
        self.persisted[tp] = offset


class FakeTable:
    changelog_topic_name = "app-dedupe-changelog"

    def __init__(self, store: Any) -> None:
        self.data = store


@pytest.fixture(params=["memory", "rocksdb"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> TableDedupeStore:
    backing = MemoryStore() if request.param == "memory" else RocksStore(tmp_path)
    state = TableDedupeStore(FakeTable(backing), FakeOutput())  # type: ignore[arg-type]
    yield state
    if isinstance(backing, RocksStore):
        for db in backing._dbs.values():
            db.close()


def test_remember_writes_the_store_and_the_changelog_partition(store: TableDedupeStore) -> None:
    store.remember(2, [(b"i:a", 1000), (b"i:b", 2000)])
    assert store.seen(2, [b"i:a", b"i:b", b"i:c"], now_ms=500) == [True, True, False]
    assert store.seen(2, [b"i:a", b"i:b"], now_ms=1500) == [False, True], "expired keys are not seen"
    assert store.output.sent == [  # type: ignore[attr-defined]
        ("app-dedupe-changelog", b"i:a", b"1000", 2),
        ("app-dedupe-changelog", b"i:b", b"2000", 2),
    ]
    assert store.size() == 2


def test_sweep_forgets_expired_keys(store: TableDedupeStore) -> None:
    store.remember(0, [(b"old", 10), (b"new", 10_000)])
    store.remember(1, [(b"older", 5)])
    assert store.sweep(100) == 2
    assert store.size() == 1
    assert store.seen(0, [b"new"], now_ms=100) == [True]


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
    store.after_delivery()
    assert store.output.failures == ["boom"]  # type: ignore[attr-defined]
    backing = store.table.data
    if isinstance(backing, RocksStore):
        [(tp, offset)] = backing.persisted.items()
        assert (tp.topic, tp.partition, offset) == ("app-dedupe-changelog", 3, 41)
