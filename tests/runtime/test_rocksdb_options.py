"""The bounded RocksDB options: one memory budget shared by every table partition's DB."""

from __future__ import annotations

import hashlib
import inspect
from pathlib import Path

import faust.stores
import pytest
from faust.stores.rocksdb import Store

from pipeline.runtime.app import create_app
from pipeline.runtime.rocksdb_options import (
    STORE_SCHEME,
    BoundedRocksDBOptions,
    BoundedRocksDBStore,
    RocksDBMemory,
    store_url,
)
from pipeline.settings import Settings
from pipeline.topology import load_topology

REPO = Path(__file__).resolve().parents[2]
MIB = 2**20

# What BoundedRocksDBStore relies on in faust.stores.rocksdb (faust-streaming 0.15.3): Store
# builds self.rocksdb_options from self.options in __init__, and opens every partition's DB with
# self.rocksdb_options.open(path) in _open_for_partition.
UPSTREAM_DIGESTS = {
    (Store, "__init__"): "c7c0fa2989e8ab4a",
    (Store, "_open_for_partition"): "1dc4e0113d67379d",
}


@pytest.mark.parametrize(("owner", "name"), list(UPSTREAM_DIGESTS), ids=[n for _, n in UPSTREAM_DIGESTS])
def test_upstream_store_unchanged(owner: type, name: str) -> None:
    digest = hashlib.sha256(inspect.getsource(getattr(owner, name)).encode()).hexdigest()[:16]
    assert digest == UPSTREAM_DIGESTS[(owner, name)], (
        f"faust changed {owner.__name__}.{name}: re-check pipeline/runtime/rocksdb_options.py"
    )


@pytest.mark.parametrize(
    ("memory_mb", "memtables_mb", "memtable_mb"),
    [(128, 32, 16), (16, 4, 4), (1024, 256, 64)],
)
def test_budget_split(memory_mb: int, memtables_mb: int, memtable_mb: int) -> None:
    memory = RocksDBMemory(memory_mb)
    assert memory.cache_bytes == memory_mb * MIB
    assert memory.write_buffers_bytes == memtables_mb * MIB
    assert memory.write_buffer_bytes == memtable_mb * MIB


def test_budget_too_small() -> None:
    with pytest.raises(ValueError, match="at least 16"):
        RocksDBMemory(8)


def read_options_file(db_path: Path) -> str:
    return "\n".join(p.read_text() for p in sorted(db_path.glob("OPTIONS-*")))


def test_every_db_shares_one_cache_and_memtables_are_charged_to_it(tmp_path: Path) -> None:
    memory = RocksDBMemory(32)
    options = BoundedRocksDBOptions(memory, use_rocksdict=True)
    dbs = [options.open(tmp_path / f"p{i}.db") for i in range(3)]
    try:
        for i in range(30_000):
            dbs[i % 3].put(b"i:%036d" % i, b"1795980605000")
        usage = memory.usage()
        assert usage["memtables"] > 0
        assert usage["cache"] >= usage["memtables"], "memtables are charged to the shared cache"
        assert usage["cache"] <= memory.cache_bytes
        assert [db.get(b"i:%036d" % 4) for db in dbs] == [None, b"1795980605000", None]
        text = read_options_file(tmp_path / "p0.db")
        assert f"write_buffer_size={memory.write_buffer_bytes}" in text
        assert "max_write_buffer_number=2" in text
        assert "cache_index_and_filter_blocks=true" in text
        assert "pin_l0_filter_and_index_blocks_in_cache=true" in text
        assert "filter_policy=bloomfilter" in text
    finally:
        for db in dbs:
            db.close()


def test_store_url_resolves_to_the_bounded_store() -> None:
    url = store_url("dedupe-x")
    assert url == f"{STORE_SCHEME}:dedupe-x"
    assert faust.stores.by_url(url) is BoundedRocksDBStore


@pytest.mark.parametrize("store", ["memory", "rocksdb"])
def test_create_app_gives_rocksdb_tables_the_bounded_store(
    store: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PIPELINE_PII_KEY", "test-key-0123456789abcdef")
    topology = load_topology(REPO / "topologies" / "ecommerce.yaml")
    settings = Settings(store=store, data_dir=tmp_path, rocksdb_memory_mb=64)  # type: ignore[arg-type]
    app = create_app(topology, settings)
    try:
        tables = dict(app.tables.items())
        assert set(tables) == {"dedupe-dedupe", "aggregates"}
        if store == "memory":
            assert not any(isinstance(t.data, Store) for t in tables.values())
            return
        assert isinstance(tables["aggregates"].data, BoundedRocksDBStore)
        data = tables["dedupe-dedupe"].data
        assert isinstance(data, BoundedRocksDBStore)
        assert isinstance(data.rocksdb_options, BoundedRocksDBOptions)
        assert data.rocksdb_options.memory.memory_mb == 64
        # Faust's own file names: state written before is reused.
        assert data.partition_path(0) == app.conf.tabledir / "dedupe-dedupe-0.db"
        db = data._db_for_partition(0)
        db.put(b"i:x", b"1")
        assert db.get(b"i:x") == b"1"
        assert f"write_buffer_size={8 * MIB}" in read_options_file(data.partition_path(0))
        db.close()
    finally:
        app.topology_agent.output.close(timeout=0)


def test_memory_setting_from_the_environment() -> None:
    from pipeline.errors import PipelineError

    assert Settings.from_env(env={}).rocksdb_memory_mb == 128
    assert Settings.from_env(env={"PIPELINE_ROCKSDB_MEMORY_MB": "64"}).rocksdb_memory_mb == 64
    with pytest.raises(PipelineError, match="rocksdb_memory_mb must be at least 16"):
        Settings.from_env(env={"PIPELINE_ROCKSDB_MEMORY_MB": "8"})
