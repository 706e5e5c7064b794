"""Bounded memory for the RocksDB table store (``PIPELINE_STORE=rocksdb``).

Faust opens one RocksDB database per table partition, each with its own options: a 2 GiB block
cache, up to three 64 MiB memtables, index and filter blocks outside any cache. Memory therefore
grows with the partition count and the data; measured on the dedupe table (4 partitions), the
worker reached 411 MB RSS at 5 million keys (flat from ~3.6 million on: about four full 64 MiB
memtables above a ~150 MB baseline).

Here every DB of the worker shares one budget (``PIPELINE_ROCKSDB_MEMORY_MB``, default 128):

- one LRU block cache of that size for data, index and filter blocks of every partition
  (``cache_index_and_filter_blocks``; level-0 index/filter blocks pinned, so the blocks every
  lookup needs stay in);
- a write buffer manager charging memtables to that cache and flushing once they reach a quarter
  of the budget together, however many partitions and tables there are; each memtable is at
  most an eighth of the budget (4-64 MiB), at most two per DB (one filling, one flushing);
- a 10 bits/key full bloom filter (Faust's default, 3 bits/key, lets ~25% of the lookups of
  *new* keys — almost all of dedupe's — through to a data block read instead of ~1%).

The store class is Faust's own (``faust.stores.rocksdb.Store``) with these options; tables use it
through the store URL ``pipeline-rocksdb:<table name>`` (``store_url`` below).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faust.stores
import rocksdict
from faust.stores.rocksdb import RocksDBOptions, Store

log = logging.getLogger(__name__)

MIB = 1024 * 1024
STORE_SCHEME = "pipeline-rocksdb"
MIN_MEMORY_MB = 16


@dataclass
class RocksDBMemory:
    """The memory budget every RocksDB database of a worker shares (one per app)."""

    memory_mb: int = 128
    bloom_bits_per_key: float = 10.0
    cache: Any = field(init=False, repr=False)
    write_buffer_manager: Any = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.memory_mb < MIN_MEMORY_MB:
            raise ValueError(
                f"RocksDB memory must be at least {MIN_MEMORY_MB} MB, not {self.memory_mb}"
            )
        self.cache = rocksdict.Cache(self.cache_bytes)
        manager = rocksdict.WriteBufferManager
        self.write_buffer_manager = manager.new_write_buffer_manager_with_cache(
            self.write_buffers_bytes, False, self.cache  # allow_stall=False: flush, never stall
        )

    @property
    def cache_bytes(self) -> int:
        return self.memory_mb * MIB

    @property
    def write_buffers_bytes(self) -> int:
        """All memtables of all DBs together (charged to the cache)."""
        return self.cache_bytes // 4

    @property
    def write_buffer_bytes(self) -> int:
        """One memtable."""
        return min(64 * MIB, max(4 * MIB, self.cache_bytes // 8))

    def usage(self) -> dict[str, int]:
        """Bytes in the shared cache (memtables included) and in memtables."""
        return {
            "cache": self.cache.get_usage(),
            "cache_pinned": self.cache.get_pinned_usage(),
            "memtables": self.write_buffer_manager.get_usage(),
        }


class BoundedRocksDBOptions(RocksDBOptions):
    """Faust's RocksDB options (rocksdict driver) with the shared, bounded memory above."""

    def __init__(self, memory: RocksDBMemory, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.memory = memory
        self.write_buffer_size = memory.write_buffer_bytes
        self.max_write_buffer_number = 2
        self.block_cache_size = memory.cache_bytes  # informational: the cache is shared

    def open(self, path: Path, *, read_only: bool = False) -> Any:
        if not self.use_rocksdict:  # pragma: no cover - python-rocksdb is not a dependency
            return super().open(path, read_only=read_only)
        options = self.as_options()
        options.set_db_paths([rocksdict.DBPath(str(path), self.target_file_size_base)])
        access = (
            rocksdict.AccessType.read_write()
            if self.ttl is None
            else rocksdict.AccessType.with_ttl(self.ttl)
        )
        db = rocksdict.Rdict(str(path), options=options, access_type=access)
        db.set_read_options(rocksdict.ReadOptions())
        return db

    def as_options(self) -> Any:
        if not self.use_rocksdict:  # pragma: no cover
            return super().as_options()
        memory = self.memory
        options = rocksdict.Options(raw_mode=True)
        options.create_if_missing(True)
        if self.max_open_files is not None:
            options.set_max_open_files(self.max_open_files)
        options.set_write_buffer_size(self.write_buffer_size)
        options.set_max_write_buffer_number(self.max_write_buffer_number)
        options.set_target_file_size_base(self.target_file_size_base)
        options.set_write_buffer_manager(memory.write_buffer_manager)
        table = rocksdict.BlockBasedOptions()
        table.set_block_cache(memory.cache)
        table.set_bloom_filter(memory.bloom_bits_per_key, False)  # full (not block-based) filter
        table.set_cache_index_and_filter_blocks(True)
        table.set_pin_l0_filter_and_index_blocks_in_cache(True)
        table.set_index_type(rocksdict.BlockBasedIndexType.binary_search())
        options.set_block_based_table_factory(table)
        return options


class BoundedRocksDBStore(Store):
    """Faust's RocksDB store, opening its databases with ``BoundedRocksDBOptions``.

    The table passes the shared ``RocksDBMemory`` as ``options={"memory": ...}``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        memory = self.options.get("memory")
        if not isinstance(memory, RocksDBMemory):
            raise TypeError(f"{STORE_SCHEME}: tables need options={{'memory': RocksDBMemory(...)}}")
        rest = {k: v for k, v in self.options.items() if k != "memory"}
        self.rocksdb_options = BoundedRocksDBOptions(
            memory, use_rocksdict=self.use_rocksdict, **rest
        )


def store_url(table_name: str) -> str:
    """The store URL of a table using ``BoundedRocksDBStore`` (the scheme is registered here).

    The URL names the table: Faust falls back to the app's store for a table whose store URL
    has neither host nor path (a yarl URL is false then). The DBs keep Faust's file names
    (``<table>-<partition>.db``), so existing state is reused.
    """
    faust.stores.STORES.aliases.setdefault(
        STORE_SCHEME, f"{__name__}:{BoundedRocksDBStore.__name__}"
    )
    return f"{STORE_SCHEME}:{table_name}"
