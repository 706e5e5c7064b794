"""Aggregate stages in the worker: state in a Faust table, partials combined by one owner.

Every worker aggregates the events of the source partitions it owns (``PartitionAggregator``,
one per aggregate and partition). A window's final value needs every partition, so each
partition sends its partials (and close markers, i.e. watermarks) to a *partials topic* keyed
by the aggregate's name: all of an aggregate's partials land in one partition of it, and the
worker that owns that partition runs the aggregate's ``WindowCombiner``, which emits the final
records when every partition's watermark has passed a window. The partials topic has the
source's partition count, so Faust assigns its partition N together with source partition N and
with partition N of the state table; the combiner's state lives in that table partition too.

State: one Faust table (``aggregates``), written a batch at a time the way the dedupe table is
(``state.py``): the changes a batch makes (``drain_changes()`` of aggregators and combiners) are
produced to the changelog with the batch's outputs and written to the local store only after
both are acknowledged. Keys carry their partition, the aggregate and the owner kind
(``<partition>|<aggregate>|a|<key>`` for an aggregator, ``...|c|<key>`` for a combiner), so
the memory store (one dict for all partitions) can be split again on recovery.

In memory, aggregators and combiners are the store plus the changes of batches not yet written
(at most the batch in flight and the one being prepared). When a prepared batch is discarded
(a rebalance or seek came between fetch and send) its events are processed again later, so the
in-memory state is dropped and rebuilt from the store, which holds exactly the delivered batches.
The same happens after every assignment (a partition's state may have been moved and changed by
another worker meanwhile).

Replays: an aggregator also records, per input topic, the next source offset it has not
aggregated, in the same changelog (its meta record after its window records). After a crash
that lost the offset commit but not the changelog, events below that offset are not added
again (they still flow on to the other stages: dedupe, if present, drops them too).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from typing import Any

import rocksdict
from faust.types import TP

from pipeline.core.aggregator import PartitionAggregator, decode_record
from pipeline.core.batch import BatchContext
from pipeline.core.combiner import WindowCombiner
from pipeline.core.records import SourceMessage
from pipeline.runtime.output import OutputProducer
from pipeline.runtime.partitioning import kafka_partition
from pipeline.runtime.state import FAUST_KEY_PREFIX, ChangelogProgress
from pipeline.stages.aggregate import AggregateStage

log = logging.getLogger(__name__)

AGGREGATOR = b"a"
COMBINER = b"c"

StagedChanges = list[tuple[int, list[tuple[bytes, bytes | None]]]]
"""A batch's state changes: (table partition, [(store key, value or None = delete), ...])."""


def state_key(partition: int, aggregate: str, kind: bytes, key: bytes) -> bytes:
    return b"%d|%s|%s|%s" % (partition, aggregate.encode(), kind, key)


def parse_state_key(key: bytes) -> tuple[int, str, bytes, bytes]:
    partition, aggregate, kind, rest = key.split(b"|", 3)
    return int(partition), aggregate.decode(), kind, rest


class AggregateRuntime:
    """The worker's aggregate stages, their table and the partials they exchange.

    Follows the store protocol of ``TopologyAgent`` (``take_staged``, ``produce_staged``,
    ``apply``, ``unstage``, ``after_delivery``) for the state, and takes the partials topic's
    messages (``combine``).
    """

    def __init__(
        self,
        stages: Sequence[AggregateStage],
        table: Any,
        output: OutputProducer,
        *,
        partitions: int,
        source_topics: Iterable[str],
        partials_topic: str,
        clock: Any = time.time,
    ) -> None:
        self.stages = {stage.id: stage for stage in stages}
        self.table = table
        self.output = output
        self.partitions = partitions
        self.source_topics = frozenset(source_topics)
        self.partials_topic = partials_topic
        self._clock = clock
        for stage in stages:
            stage.use_partials(partials_topic)
        self.combiner_partition = {
            stage.id: kafka_partition(stage.id.encode(), partitions) for stage in stages
        }
        """Where each aggregate's partials go (the murmur2 partition of its name, the way the
        output producer places them) and so which worker combines it."""
        self.owned: frozenset[int] = frozenset()
        """Partition numbers of the source topic this worker owns."""
        self._loaded = False
        self._progress = ChangelogProgress(table, output)
        self.malformed_partials = 0

    # -- assignment and loading ----------------------------------------------------------------

    def assigned(self, assigned: Iterable[TP]) -> None:
        """The new assignment (Faust's, all topics): state is reloaded before the next batch."""
        self.owned = frozenset(tp.partition for tp in assigned if tp.topic in self.source_topics)
        self._loaded = False

    def invalidate(self) -> None:
        self._loaded = False

    def ensure_loaded(self) -> None:
        """Rebuild the owned partitions' aggregators and combiners from the store if needed."""
        if self._loaded:
            return
        now_ms = int(self._clock() * 1000)
        by_partition = {p: self._load_partition(p) for p in sorted(self.owned)}
        for stage in self.stages.values():
            aggregators = {}
            for partition in sorted(self.owned):
                items = by_partition[partition].get((stage.id, AGGREGATOR), [])
                aggregators[partition] = PartitionAggregator.from_state(
                    stage.spec, partition, items, now_ms=now_ms
                )
            combiner = None
            home = self.combiner_partition[stage.id]
            if home in self.owned:
                items = by_partition[home].get((stage.id, COMBINER), [])
                combiner = WindowCombiner.from_state(stage.spec, self.partitions, items)
            stage.load(aggregators, combiner)
        self._loaded = True
        log.info(
            "aggregates: loaded state of partitions %s; combining %s here",
            sorted(self.owned),
            sorted(s for s, p in self.combiner_partition.items() if p in self.owned) or "none",
        )

    def _load_partition(self, partition: int) -> dict[tuple[str, bytes], list[tuple[bytes, bytes]]]:
        grouped: dict[tuple[str, bytes], list[tuple[bytes, bytes]]] = {}
        prefix = b"%d|" % partition
        for key, value in self._store_items(partition, prefix):
            if not key.startswith(prefix) or value is None:
                continue
            _, aggregate, kind, rest = parse_state_key(key)
            if aggregate in self.stages:  # state of an aggregate since removed is ignored
                grouped.setdefault((aggregate, kind), []).append((rest, value))
        return grouped

    def _store_items(self, partition: int, prefix: bytes) -> Iterable[tuple[bytes, bytes]]:
        store = self.table.data
        if hasattr(store, "_db_for_partition"):
            db = store._db_for_partition(partition)
            for key, value in db.items(from_key=prefix):
                if not key.startswith(prefix):
                    if key.startswith(FAUST_KEY_PREFIX):
                        continue
                    break
                yield key, value
        else:
            yield from list(store.data.items())

    # -- the batch path ------------------------------------------------------------------------

    def split(self, messages: Sequence[SourceMessage]) -> tuple[list[SourceMessage], list[SourceMessage]]:
        """(events for the stages, partials for the combiners)."""
        topic = self.partials_topic
        if not any(m.topic == topic for m in messages):
            return list(messages), []
        events = [m for m in messages if m.topic != topic]
        return events, [m for m in messages if m.topic == topic]

    def combine(self, partials: Sequence[SourceMessage], ctx: BatchContext) -> None:
        """Feed partials to their aggregates' combiners; final records go to ``ctx``."""
        by_aggregate: dict[str, list[Any]] = {}
        for message in partials:
            try:
                record = decode_record(message.value or b"")
            except Exception as exc:  # noqa: BLE001 - our own topic: a bug, never an event
                self.malformed_partials += 1
                log.error(
                    "partials %d/%d: cannot decode (%s); skipped",
                    message.partition, message.offset, exc,
                )
                continue
            by_aggregate.setdefault(record.aggregate, []).append(record)
        for aggregate, records in by_aggregate.items():
            stage = self.stages.get(aggregate)
            if stage is None:
                log.warning("partials of unknown aggregate %r skipped", aggregate)
                continue
            for topic, key, value in stage.combine(records):
                ctx.emit(topic, key, value)

    def tick(self, ctx: BatchContext) -> None:
        """Close what is due when no batch comes (a quiet source still closes its windows)."""
        for stage in self.stages.values():
            for topic, key, value in stage.tick(ctx.now_ms):
                ctx.emit(topic, key, value)

    # -- state: the store protocol of TopologyAgent ----------------------------------------------

    def take_staged(self) -> StagedChanges:
        """The state changes of the batch just prepared (aggregators' meta records last)."""
        staged: dict[int, list[tuple[bytes, bytes | None]]] = {}
        for stage in self.stages.values():
            for partition, aggregator in stage.aggregators.items():
                changes = aggregator.drain_changes()
                if changes:
                    staged.setdefault(partition, []).extend(
                        (state_key(partition, stage.id, AGGREGATOR, k), v)
                        for k, v in changes.items()
                    )
            if stage.combiner is not None:
                changes = stage.combiner.drain_changes()
                if changes:
                    home = self.combiner_partition[stage.id]
                    staged.setdefault(home, []).extend(
                        (state_key(home, stage.id, COMBINER, k), v) for k, v in changes.items()
                    )
        return sorted(staged.items())

    def produce_staged(self, staged: StagedChanges) -> None:
        topic = self.table.changelog_topic_name
        produce = self.output.produce_to_partition
        for partition, changes in staged:
            for key, value in changes:
                produce(topic, key, value, partition, self._progress.on_delivered)  # type: ignore[arg-type]

    def unstage(self, staged: StagedChanges) -> None:
        # The batch is not sent; its events come again. The in-memory state has them added:
        # rebuild it from the store (which has every delivered batch, and only those).
        self.invalidate()

    def apply(self, staged: StagedChanges) -> None:
        store = self.table.data
        rocksdb = hasattr(store, "_db_for_partition")
        for partition, changes in staged:
            if rocksdb:
                batch = rocksdict.WriteBatch(raw_mode=True)
                for key, value in changes:
                    if value is None:
                        batch.delete(key)
                    else:
                        batch.put(key, value)
                store._db_for_partition(partition).write(batch)
            else:
                data = store.data
                for key, value in changes:
                    if value is None:
                        data.pop(key, None)
                    else:
                        data[key] = value

    def after_delivery(self) -> None:
        self._progress.persist()

    # -- queries ---------------------------------------------------------------------------------

    def describe(self) -> list[dict[str, Any]]:
        """``GET /aggregates``: every aggregate and where it is combined."""
        described = []
        for stage in self.stages.values():
            config = stage.config
            window = stage.spec.window
            described.append(
                {
                    "aggregate": stage.id,
                    "window": {
                        "type": config.window.type,
                        "size_ms": window.size_ms,
                        "advance_ms": window.advance_ms,
                        "grace_ms": window.grace_ms,
                    },
                    "group_by": list(config.group_by),
                    "measures": [
                        m.model_dump(exclude_none=True) for m in config.measures
                    ],
                    "output_topic": stage.output_topic,
                    "late_events_topic": stage.late_topic,
                    "combined_in_partition": self.combiner_partition[stage.id],
                    "combined_here": stage.combiner is not None and self._loaded,
                }
            )
        return described

    def snapshot(self, aggregate: str) -> dict[str, Any] | None:
        """``GET /aggregates/{name}`` on the combining worker: pending (live, merged over the
        partials received so far) and recent final windows. None if not combined here."""
        stage = self.stages[aggregate]
        if stage.combiner is None or not self._loaded:
            return None
        snapshot = stage.combiner.snapshot()
        snapshot["late_events_here"] = sum(a.late_events for a in stage.aggregators.values())
        return snapshot

    def live_values(self) -> dict[str, dict[str, tuple[int, dict[str, float]]]]:
        """For the aggregate gauges: per aggregate combined here, per measure, the latest
        pending window's values by group."""
        values: dict[str, dict[str, tuple[int, dict[str, float]]]] = {}
        if not self._loaded:
            return values
        for stage in self.stages.values():
            combiner = stage.combiner
            if combiner is None:
                continue
            per_measure = {}
            for measure in stage.spec.measures:
                live = combiner.live_values(measure.id)
                if live is not None:
                    per_measure[measure.id] = live
            values[stage.id] = per_measure
        return values
