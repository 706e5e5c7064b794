"""Dedupe state in a Faust table, written a batch at a time.

Faust gives us the table: its changelog topic (created with the source's partition count),
recovery of the local store from the changelog on assignment, standby replicas (RocksDB) and
partition assignment that keeps changelog partition N with source partition N. Faust's write path
(``table[key] = value``) needs a per-event stream context and sends each changelog record through
its own producer one at a time; the batch path instead writes the table's store directly and
produces the changelog records with the batch's outputs (same partition as the source event).

A batch's keys go through three steps, so that neither the local store nor the changelog is ever
ahead of the batch's outputs:

1. ``remember`` (while the stages run) only *stages* them: they go into an in-memory overlay that
   ``seen`` consults, so later events and batches see them at once.
2. ``produce_staged`` (when the batch is delivered) enqueues their changelog records: at least
   once right after the batch's outputs are acknowledged (and they are acknowledged with the
   next batch's outputs: ``TopologyAgent.deliver``), exactly once in the batch's transaction.
3. ``apply`` (after their acknowledgement) writes them to the local store and drops them from the
   overlay; only then are the batch's offsets committable.

A crash at any point before step 3 leaves neither a local key nor a committed offset for the
batch: after a restart the events are read again and are not mistaken for duplicates. (Writing
the store first would be cheaper to reason about but wrong: with RocksDB the key survives a
``kill -9`` while the outputs it stood for may not have.) A changelog record acknowledged
before a crash whose batch was never committed only makes recovery remember keys of events that
are then processed again: the resend is dropped as a duplicate, but its first copy *was*
delivered: a changelog record is produced only after its batch's outputs are acknowledged (or,
exactly once, in the same transaction), and the batch's offsets are committed only after both.

Keys and values are raw bytes (the table uses the ``raw`` serializer both ways), exactly what
Faust's recovery writes back into the store from the changelog: the value is the key's expiry,
epoch milliseconds in decimal.

Expired keys are forgotten by ``sweep`` (a timer in ``app.py``): incrementally, in small slices
that yield to the event loop in between, deleting each expired key locally and, with RocksDB,
writing a tombstone for it to the changelog (so compaction drops the key there too, and standbys
and later recoveries forget it). See ``sweep`` for why it cannot lose a key the batch path has
just refreshed.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from itertools import islice
from typing import Any, Sequence

import rocksdict
from faust.types import TP

from pipeline.runtime.output import OutputProducer

log = logging.getLogger(__name__)

FAUST_KEY_PREFIX = b"__faust"
"""Faust's own keys in a partition DB (``__faust\\0offset__``: the persisted changelog offset)."""

SWEEP_SLICE_KEYS = 4_000
"""Keys examined per slice, between two yields to the event loop (~3-5 ms with RocksDB)."""
SWEEP_SCAN_KEYS = 500_000
"""Keys examined per sweep (per timer tick), shared between the active partitions. Each partition
is scanned from where the previous sweep stopped, so a store larger than this is covered over
several ticks (5 million keys: a full pass every 10 minutes at one sweep a minute, ~0.3-0.7 s of
CPU per sweep, instead of ~3-7 s to scan them all every minute). Expired keys are already
treated as unseen; sweeping only reclaims their space, so a pass may take a while."""
SWEEP_MAX_DELETES = 500_000
"""Most keys forgotten (and tombstones produced) per sweep."""


class ChangelogProgress:
    """How far a table's changelog is written, per partition.

    The delivery callbacks of its records (on the thread that flushes) only record the offsets;
    after each delivered batch ``persist`` saves them in the store, where RocksDB keeps them so
    that a recovery resumes there. Shared by the dedupe tables and the aggregates' table.
    """

    def __init__(self, table: Any, output: OutputProducer) -> None:
        self.table = table
        self.output = output
        self._lock = threading.Lock()
        self._offsets: dict[int, int] = {}

    def on_delivered(self, err: Any, msg: Any) -> None:
        if err is not None:
            self.output.record_failure(err)
            return
        partition, offset = msg.partition(), msg.offset()
        with self._lock:
            if offset > self._offsets.get(partition, -1):
                self._offsets[partition] = offset

    def persist(self) -> None:
        with self._lock:
            offsets, self._offsets = self._offsets, {}
        store = self.table.data
        if offsets and hasattr(store, "set_persisted_offset"):
            topic = self.table.changelog_topic_name
            for partition, offset in offsets.items():
                try:
                    store.set_persisted_offset(TP(topic, partition), offset)
                except Exception:  # noqa: BLE001 - a revoked partition's DB may be closed
                    log.debug("could not persist changelog offset for partition %d", partition)


StagedWrites = list[tuple[int, list[tuple[bytes, bytes]]]]
"""A batch's dedupe writes: (partition, [(key, expiry in decimal epoch ms), ...])."""


def _expired(value: bytes, now_ms: int) -> bool:
    try:
        return int(value) <= now_ms
    except ValueError:
        return False


class TableDedupeStore:
    def __init__(
        self,
        table: Any,
        output: OutputProducer,
        *,
        sweep_slice_keys: int = SWEEP_SLICE_KEYS,
        sweep_scan_keys: int = SWEEP_SCAN_KEYS,
        sweep_max_deletes: int = SWEEP_MAX_DELETES,
    ) -> None:
        self.table = table
        self.output = output
        self.sweep_slice_keys = sweep_slice_keys
        self.sweep_scan_keys = sweep_scan_keys
        self.sweep_max_deletes = sweep_max_deletes
        self._lock = threading.Lock()
        self._progress = ChangelogProgress(table, output)
        # Held while the store is written and the matching changelog records are enqueued, by
        # the batch path and by each sweep slice: their writes (and so their changelog records)
        # never interleave, whichever threads they run on.
        self._write_lock = threading.Lock()
        self._pending: dict[int, dict[bytes, bytes]] = {}
        """Per partition: keys staged by ``remember`` and not yet applied (see the module doc)."""
        self._staged: StagedWrites = []
        self._cursors: dict[int, bytes] = {}
        """Per partition: the key the next sweep of that partition starts at."""
        self._tombstone_failures = 0
        self._scan_options = rocksdict.ReadOptions()
        self._scan_options.fill_cache(False)  # a sweep must not evict the lookups' blocks

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
            # One multi-get for the batch: ~2x faster than a get per key.
            values = store._db_for_partition(partition).get(list(keys))
        else:
            get = store.data.get
            values = [get(key) for key in keys]
        pending = self._pending.get(partition)
        if pending:  # staged by batches not yet applied: newer than the store
            values = [pending.get(key, value) for key, value in zip(keys, values)]
        return [value is not None and int(value) > now_ms for value in values]

    def remember(self, partition: int, entries: Sequence[tuple[bytes, int]]) -> None:
        """Stage keys with their expiry (epoch ms): seen at once, written by ``apply``."""
        encoded = [(key, b"%d" % expires_at) for key, expires_at in entries]
        self._pending.setdefault(partition, {}).update(encoded)
        self._staged.append((partition, encoded))

    def take_staged(self) -> StagedWrites:
        """The writes staged since the last call: one batch's, to deliver and then ``apply``."""
        staged, self._staged = self._staged, []
        return staged

    def produce_staged(self, staged: StagedWrites) -> None:
        """Enqueue the changelog records of a batch's staged writes (delivered with its outputs)."""
        topic = self.changelog_topic
        produce = self.output.produce_to_partition
        on_delivery = self._on_changelog_delivered
        with self._write_lock:
            for partition, encoded in staged:
                for key, value in encoded:
                    produce(topic, key, value, partition, on_delivery)

    def unstage(self, staged: StagedWrites) -> None:
        """Take a batch's staged keys off the overlay without writing them (the batch will not
        be delivered; its events are processed again later)."""
        for partition, encoded in staged:
            pending = self._pending.get(partition)
            if pending is None:
                continue
            for key, value in encoded:
                if pending.get(key) == value:
                    del pending[key]
            if not pending:
                del self._pending[partition]

    def apply(self, staged: StagedWrites) -> None:
        """Write a delivered batch's staged keys to the local store and take them off the
        overlay. Call only once their changelog records and the batch's outputs are acknowledged."""
        store = self._store()
        rocksdb = self._is_rocksdb()
        with self._write_lock:
            for partition, encoded in staged:
                if rocksdb:
                    # One write batch (one WAL write) instead of a put per key: ~4x cheaper.
                    batch = rocksdict.WriteBatch(raw_mode=True)
                    for key, value in encoded:
                        batch.put(key, value)
                    store._db_for_partition(partition).write(batch)
                else:
                    store.data.update(encoded)
                pending = self._pending.get(partition)
                if pending is not None:
                    for key, value in encoded:
                        # A later batch may have staged the key again (after it expired): keep it.
                        if pending.get(key) == value:
                            del pending[key]
                    if not pending:
                        del self._pending[partition]

    def _on_changelog_delivered(self, err: Any, msg: Any) -> None:
        self._progress.on_delivered(err, msg)

    def _on_tombstone_delivered(self, err: Any, msg: Any) -> None:
        # A lost tombstone only leaves an expired key in the changelog: a recovery brings it
        # back expired (seen() ignores it) and a sweep forgets it again. So it is counted and
        # logged, and does not fail the batch being delivered.
        if err is not None:
            with self._lock:
                self._tombstone_failures += 1
        else:
            self._progress.on_delivered(None, msg)

    def after_delivery(self) -> None:
        """Record how far the changelog is written (RocksDB keeps it: recovery resumes there)."""
        self._progress.persist()

    # -- expiry ------------------------------------------------------------------------------

    async def sweep(self, now_ms: int) -> int:
        """Forget keys expired at ``now_ms``; returns how many. Runs on the event loop.

        The work is cut into slices of ``sweep_slice_keys`` keys with an ``await`` between
        slices, so the loop (the batch path, heartbeats, commits, the web server) never waits
        more than one slice (a few ms) for it. A sweep examines at most ``sweep_scan_keys`` keys:
        with RocksDB each partition's scan resumes where the previous sweep stopped.

        Why it cannot forget a key that was just refreshed, nor leave a wrong changelog:

        - One slice reads the values, decides and deletes (locally, then the changelog
          tombstones) in one synchronous block under ``_write_lock``; ``produce_staged`` and
          ``apply`` run under the same lock. (All of them also run on the event loop thread
          today, so no await can separate the read from the delete either.) The slice's
          RocksDB iterator is created inside the block, so the values it reads are current.
        - A key staged by a batch not yet applied (in the overlay) is never deleted, even if
          the store still holds an expired value for it: its new changelog record may already
          be enqueued, and a tombstone after it would make the changelog forget a key the
          store is about to hold. A key staged after the slice gets its changelog record
          after the slice's tombstone.
        - Each slice's tombstones and every batch's changelog records go through the same
          idempotent producer to the same partition, in the order the lock gave them, so the
          changelog has a refreshed key's new value *after* any tombstone for it: recovery
          (and standbys) end with the key present, as the local store does.
        - Nothing is kept across an await except the partition number and the next key to
          scan: the DB is looked up again for every slice, and a partition this worker is not
          the active owner of (revoked in a rebalance, or a standby) is not swept, so no
          tombstone races the owner's writes; nor is anything swept during a rebalance or
          while a partition is recovered (its DB is behind its changelog then).
        """
        store = self._store()
        if self._is_rocksdb():
            removed = await self._sweep_rocksdb(store, now_ms)
        else:
            removed = await self._sweep_memory(store, now_ms)
        with self._lock:
            failures, self._tombstone_failures = self._tombstone_failures, 0
        if failures:
            log.warning("dedupe: %d changelog tombstones were not delivered", failures)
        return removed

    def _active_partitions(self, store: Any) -> list[int]:
        """Partitions whose DB is open and that this worker owns (not as a standby), once
        their recovery is complete: none during a rebalance or a recovery."""
        partitions = sorted(store._dbs)
        app = getattr(store, "app", None)
        if app is None:  # a store without an app (tests): every open partition
            return partitions
        # While a partition is recovered, its DB is behind its changelog: a tombstone for a
        # key expired *there* could follow a fresh value of it still to be applied.
        if app.rebalancing or not app.tables.actives_ready:
            return []
        actives = app.assignor.assigned_actives()
        topic = self.changelog_topic
        return [p for p in partitions if TP(topic, p) in actives]

    async def _sweep_rocksdb(self, store: Any, now_ms: int) -> int:
        partitions = self._active_partitions(store)
        self._cursors = {p: c for p, c in self._cursors.items() if p in partitions}
        if not partitions:
            return 0
        budget_per_partition = max(self.sweep_slice_keys, self.sweep_scan_keys // len(partitions))
        removed = 0
        for partition in partitions:
            budget = budget_per_partition
            while budget > 0 and removed < self.sweep_max_deletes:
                db = store._dbs.get(partition)
                if db is None or partition not in self._active_partitions(store):
                    self._cursors.pop(partition, None)
                    break
                scanned, deleted, cursor = self._sweep_slice(
                    db, partition, self._cursors.get(partition), now_ms,
                    scan=min(self.sweep_slice_keys, budget),
                    delete=self.sweep_max_deletes - removed,
                )
                del db  # hold no reference to a DB across the await (Faust may drop it)
                budget -= scanned
                removed += deleted
                if cursor is None:  # the end of this partition: the next sweep starts over
                    self._cursors.pop(partition, None)
                    break
                self._cursors[partition] = cursor
                await asyncio.sleep(0)
            await asyncio.sleep(0)
        return removed

    def _sweep_slice(
        self, db: Any, partition: int, start: bytes | None, now_ms: int, *, scan: int, delete: int
    ) -> tuple[int, int, bytes | None]:
        """Scan up to ``scan`` keys from ``start``; delete the expired ones (at most ``delete``)
        and produce their tombstones. Returns (keys scanned, keys deleted, next key or None)."""
        # Values are epoch ms in decimal: of the same length, bytes compare like the numbers
        # (~0.4 µs a key in all, ~3x less than an int() per key).
        now = b"%d" % now_ms
        width = len(now)
        with self._write_lock:
            expired: list[bytes] = []
            scanned = 0
            cursor = None
            staged = self._pending.get(partition, {})
            # The iterator (and the snapshot it reads) lives only inside this block.
            items = db.items(from_key=start, read_opt=self._scan_options)
            for key, value in islice(items, scan + 1):
                if scanned == scan or len(expired) >= delete:
                    cursor = key  # where the next slice starts
                    break
                scanned += 1
                if (
                    (value <= now if len(value) == width else _expired(value, now_ms))
                    and not key.startswith(FAUST_KEY_PREFIX)
                    and key not in staged
                ):
                    expired.append(key)
            del items
            if expired:
                batch = rocksdict.WriteBatch(raw_mode=True)
                for key in expired:
                    batch.delete(key)
                db.write(batch)
                if self.output.transactional:
                    # Exactly once: every record goes through a batch's transaction. The
                    # changelog forgets expired keys by retention (compact,delete); a recovery
                    # that brings one back brings it back expired (seen() ignores it).
                    return scanned, len(expired), cursor
                topic = self.changelog_topic
                produce = self.output.produce_to_partition
                on_delivery = self._on_tombstone_delivered
                for key in expired:
                    produce(topic, key, None, partition, on_delivery)
        return scanned, len(expired), cursor

    async def _sweep_memory(self, store: Any, now_ms: int) -> int:
        # Faust's memory store is one dict for all partitions: a key's partition is not known,
        # so there is no changelog partition to send a tombstone to. Keys are forgotten locally
        # (the memory store is rebuilt from the changelog on every start; the broker expires
        # the changelog by retention). The memory store is for tests and demos.
        data = store.data
        keys = list(data)  # a snapshot to walk in slices (the dict changes in between)
        removed = 0
        for start in range(0, len(keys), self.sweep_slice_keys):
            with self._write_lock:
                for key in keys[start:start + self.sweep_slice_keys]:
                    value = data.get(key)  # the current value, not the snapshot's
                    if value is not None and _expired(value, now_ms):
                        del data[key]
                        removed += 1
                        if removed >= self.sweep_max_deletes:
                            return removed
            await asyncio.sleep(0)
        return removed

    # -- size --------------------------------------------------------------------------------

    def size(self) -> int:
        """Keys held (exact: walks every key; see ``estimated_size`` for a cheap figure)."""
        store = self._store()
        if self._is_rocksdb():
            return sum(
                1
                for db in list(store._dbs.values())
                for key in db.keys()
                if not key.startswith(FAUST_KEY_PREFIX)
            )
        return len(store.data)

    def estimated_size(self) -> int:
        """Keys held, from RocksDB's own estimate (cheap; deletes may not be counted yet)."""
        store = self._store()
        if self._is_rocksdb():
            return sum(
                db.property_int_value("rocksdb.estimate-num-keys") or 0
                for db in list(store._dbs.values())
            )
        return len(store.data)
