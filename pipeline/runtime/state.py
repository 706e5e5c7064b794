"""Dedupe state in a Faust table, written a batch at a time.

Faust gives us the table: its changelog topic (created with the source's partition count),
recovery of the local store from the changelog on assignment, standby replicas (RocksDB) and
partition assignment that keeps changelog partition N with source partition N. Faust's write path
(``table[key] = value``) needs a per-event stream context and sends each changelog record through
its own producer one at a time; the batch path instead writes the table's store directly and
produces the changelog records with the batch's outputs (same partition as the source event).
Offsets are committed only after the whole batch — outputs and changelog records — is
acknowledged, so the changelog is never behind the committed offsets.

Keys and values are raw bytes (the table uses the ``raw`` serializer both ways), exactly what
Faust's recovery writes back into the store from the changelog.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Sequence

from faust.types import TP

from pipeline.runtime.output import OutputProducer

log = logging.getLogger(__name__)


class TableDedupeStore:
    def __init__(self, table: Any, output: OutputProducer) -> None:
        self.table = table
        self.output = output
        self._lock = threading.Lock()
        self._changelog_offsets: dict[int, int] = {}

    @property
    def changelog_topic(self) -> str:
        return self.table.changelog_topic_name

    def _store(self) -> Any:
        return self.table.data

    def _is_rocksdb(self) -> bool:
        return hasattr(self._store(), "_db_for_partition")

    def seen(self, partition: int, keys: Sequence[bytes], now_ms: int) -> list[bool]:
        store = self._store()
        if self._is_rocksdb():
            get = store._db_for_partition(partition).get
        else:
            get = store.data.get
        result = []
        for key in keys:
            value = get(key)
            result.append(value is not None and int(value) > now_ms)
        return result

    def remember(self, partition: int, entries: Sequence[tuple[bytes, int]]) -> None:
        store = self._store()
        topic = self.changelog_topic
        produce = self.output.produce_to_partition
        if self._is_rocksdb():
            db = store._db_for_partition(partition)
            key_index = store._key_index
            for key, expires_at in entries:
                value = str(expires_at).encode()
                db.put(key, value)
                key_index[key] = partition
                produce(topic, key, value, partition, self._on_changelog_delivered)
        else:
            data = store.data
            for key, expires_at in entries:
                value = str(expires_at).encode()
                data[key] = value
                produce(topic, key, value, partition, self._on_changelog_delivered)

    def _on_changelog_delivered(self, err: Any, msg: Any) -> None:
        # librdkafka calls this from the thread that flushes; only record the offset here.
        if err is not None:
            self.output.record_failure(err)
        else:
            partition, offset = msg.partition(), msg.offset()
            with self._lock:
                if offset > self._changelog_offsets.get(partition, -1):
                    self._changelog_offsets[partition] = offset

    def after_delivery(self) -> None:
        """Record how far the changelog is written (RocksDB keeps it: recovery resumes there)."""
        with self._lock:
            offsets, self._changelog_offsets = self._changelog_offsets, {}
        store = self._store()
        if offsets and hasattr(store, "set_persisted_offset"):
            for partition, offset in offsets.items():
                try:
                    store.set_persisted_offset(TP(self.changelog_topic, partition), offset)
                except Exception:  # noqa: BLE001 - a revoked partition's DB may be closed
                    log.debug("could not persist changelog offset for partition %d", partition)

    def sweep(self, now_ms: int, *, max_keys: int = 200_000) -> int:
        """Forget up to ``max_keys`` expired keys locally (the changelog expires by retention)."""
        store = self._store()
        removed = 0
        if self._is_rocksdb():
            for db in list(store._dbs.values()):
                expired = []
                for key, value in db.items():
                    if key.startswith(b"__faust"):
                        continue
                    try:
                        if int(value) <= now_ms:
                            expired.append(key)
                    except ValueError:
                        continue
                    if len(expired) >= max_keys:
                        break
                for key in expired:
                    db.delete(key)
                removed += len(expired)
        else:
            data = store.data
            expired = [k for k, v in list(data.items()) if v is not None and int(v) <= now_ms][:max_keys]
            for key in expired:
                data.pop(key, None)
            removed = len(expired)
        return removed

    def size(self) -> int:
        store = self._store()
        if self._is_rocksdb():
            return sum(1 for db in store._dbs.values() for _ in db.keys())
        return len(store.data)
