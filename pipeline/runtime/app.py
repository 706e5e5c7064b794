"""Build the Faust app for a topology (``create_app``) and run it as a worker."""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, Sequence

import faust

from pipeline.core.batch import BatchContext
from pipeline.core.processor import Processor
from pipeline.core.records import SourceMessage
from pipeline.runtime.faust_compat import BatchConsumer, BatchTransport
from pipeline.runtime.output import OutputProducer
from pipeline.runtime.partitioning import OwnerPartitioner
from pipeline.runtime.rocksdb_options import RocksDBMemory, store_url
from pipeline.runtime.state import StagedWrites, TableDedupeStore
from pipeline.settings import Settings
from pipeline.stages.dedupe import DedupeStage
from pipeline.topology.model import Topology

log = logging.getLogger(__name__)


@dataclass(slots=True)
class PreparedBatch:
    """A processed batch waiting to be delivered: its outputs and its dedupe writes."""

    ctx: BatchContext
    state: list[tuple[TableDedupeStore, StagedWrites]]


class TopologyAgent:
    """Runs the topology's stages on each fetched batch and delivers the outputs.

    It is the topology's agent: Faust hands it every batch of the source topic (see
    ``faust_compat``) in two steps: ``prepare`` runs the stages, ``deliver`` returns once every
    output is acknowledged, which is what makes the batch's offsets committable.
    """

    def __init__(self, processor: Processor, output: OutputProducer) -> None:
        self.processor = processor
        self.output = output
        self.stores: list[TableDedupeStore] = []
        self.events_in = 0
        self.batches = 0
        self.dead_letters = 0
        self.dropped: Counter[str] = Counter()
        """Events removed on purpose (or forwarded for repartitioning), by stage:outcome."""
        self._last_report = (time.monotonic(), 0)

    def prepare(self, messages: Sequence[SourceMessage]) -> PreparedBatch:
        ctx = self.processor.process(messages)
        self.events_in += len(messages)
        self.batches += 1
        self.dead_letters += sum(ctx.dead_letters.values())
        for (stage_id, outcome), n in ctx.counters.items():
            if outcome in ("duplicate", "drop", "repartitioned"):
                self.dropped[f"{stage_id}:{outcome}"] += n
        return PreparedBatch(ctx, [(store, store.take_staged()) for store in self.stores])

    async def deliver(self, batch: PreparedBatch) -> None:
        # State changes travel with the outputs and reach the local store only once both are
        # acknowledged (state.py explains why).
        for store, staged in batch.state:
            store.produce_staged(staged)
        await self.output.send_batch(batch.ctx.outputs)
        for store, staged in batch.state:
            store.apply(staged)
            store.after_delivery()

    def report(self) -> str:
        now = time.monotonic()
        then, seen = self._last_report
        rate = (self.events_in - seen) / max(now - then, 1e-9)
        self._last_report = (now, self.events_in)
        sent = ", ".join(f"{t}={n}" for t, n in sorted(self.output.sent.items()))
        dropped = ", ".join(f"{k}={n}" for k, n in sorted(self.dropped.items()))
        return (
            f"events in={self.events_in} ({rate:,.0f}/s over the last {now - then:.0f}s), "
            f"batches={self.batches}, out: {sent or 'nothing yet'}"
            + (f"; dropped: {dropped}" if dropped else "")
        )


class PipelineApp(faust.App):
    """A Faust app whose consumer hands the source topic over in batches."""

    def __init__(
        self,
        *args: Any,
        agent: TopologyAgent,
        batch_topics: list[str],
        fetch_max_wait_ms: int = 100,
        **kwargs: Any,
    ):
        self.topology_agent = agent
        self._batch_topics = batch_topics
        self._fetch_max_wait_ms = fetch_max_wait_ms
        super().__init__(*args, **kwargs)

    def _new_transport(self) -> Any:
        return BatchTransport(self.conf.broker_consumer, self)

    def _new_consumer(self) -> Any:
        consumer = super()._new_consumer()
        assert isinstance(consumer, BatchConsumer)
        consumer.use_batches(self._batch_topics, self.topology_agent)
        consumer.fetch_max_wait_ms = self._fetch_max_wait_ms
        return consumer


def _sweeper(store: TableDedupeStore, rocksdb_memory: RocksDBMemory | None = None) -> Any:
    # Faust passes the app to timers that take an argument: close over the store instead.
    # The sweep runs on the loop in small slices that yield (see TableDedupeStore.sweep).
    async def sweep_expired() -> None:
        started = time.monotonic()
        removed = await store.sweep(int(time.time() * 1000))
        memory = ""
        if rocksdb_memory is not None:
            usage = rocksdb_memory.usage()
            memory = "; RocksDB cache %.0f MB (memtables %.0f MB) of %d MB" % (
                usage["cache"] / 2**20, usage["memtables"] / 2**20, rocksdb_memory.memory_mb,
            )
        log.info(
            "dedupe %s: forgot %d expired keys in %.1fs; ~%d keys held%s",
            store.changelog_topic, removed, time.monotonic() - started,
            store.estimated_size(), memory,
        )

    return sweep_expired


def repartition_topic_name(group_id: str, stage_id: str) -> str:
    return f"{group_id}-{stage_id}-repartition"


def group_id_for(topology: Topology, settings: Settings) -> str:
    return settings.group_id or f"pipeline-{topology.name}"


def create_app(
    topology: Topology, settings: Settings, *, source_partitions: int | None = None
) -> PipelineApp:
    """The Faust app of a topology. Creating it opens no connection.

    ``source_partitions`` is the source topic's real partition count (it may differ from the
    declared one when the topic existed before); tables and repartition topics must match it.
    """
    processor = Processor(topology)
    for stage_id, status in processor.statuses().items():
        log.info("stage %s: %s", stage_id, status)
    output = OutputProducer(
        bootstrap_servers=settings.bootstrap_servers,
        linger_ms=settings.producer_linger_ms,
        extra=settings.extra_kafka,
    )
    agent = TopologyAgent(processor, output)
    source = topology.spec.source
    partitions = source_partitions or source.partitions
    group_id = group_id_for(topology, settings)
    dedupe_stages = [s for s in processor.middle if isinstance(s, DedupeStage)]
    repartition_topics = [repartition_topic_name(group_id, s.id) for s in dedupe_stages]
    app = PipelineApp(
        group_id,
        agent=agent,
        batch_topics=[source.topic, *repartition_topics],
        fetch_max_wait_ms=settings.fetch_max_wait_ms,
        broker=[f"kafka://{s}" for s in settings.bootstrap_servers.split(",")],
        store="rocksdb://" if settings.store == "rocksdb" else "memory://",
        datadir=str(settings.data_dir / topology.name),
        web_host=settings.web_host,
        web_port=settings.web_port,
        web_enabled=True,
        autodiscover=False,
        broker_commit_interval=settings.commit_interval_s,
        broker_max_poll_records=settings.batch_max_events,
        consumer_max_fetch_size=settings.fetch_max_bytes_per_partition,
        table_standby_replicas=settings.standby_replicas,
        consumer_auto_offset_reset="earliest",
        processing_guarantee=settings.processing_guarantee,
        topic_partitions=source.partitions,
        stream_wait_empty=True,
        # Tables and topics hold raw bytes: the batch path encodes keys and values itself.
        key_serializer="raw",
        value_serializer="raw",
    )
    # Subscribe without Faust streams: the batch consumer delivers these to the agent.
    for name in [source.topic, *repartition_topics]:
        app.topics.add(app.topic(name, key_serializer="raw", value_serializer="raw", partitions=partitions))

    # RocksDB: every table partition's DB shares one bounded memory budget (rocksdb_options.py).
    rocksdb_memory = None
    if settings.store == "rocksdb":
        rocksdb_memory = RocksDBMemory(settings.rocksdb_memory_mb)
        log.info(
            "RocksDB tables: %d MB in all (block cache, memtables up to %d MB)",
            settings.rocksdb_memory_mb, rocksdb_memory.write_buffers_bytes // 2**20,
        )
    for stage, repartition in zip(dedupe_stages, repartition_topics, strict=True):
        window_ms = int(stage.config.window * 1000)
        table_name = f"dedupe-{stage.id}"  # stable: named by the stage id, never by code location
        table_store: dict[str, Any] = {}
        if rocksdb_memory is not None:
            table_store = {"store": store_url(table_name), "options": {"memory": rocksdb_memory}}
        table = app.Table(
            table_name,
            key_type=bytes,
            value_type=bytes,
            partitions=partitions,
            # The broker forgets changelog records a while after they expire.
            extra_topic_configs={
                "cleanup.policy": "compact,delete",
                "retention.ms": str(window_ms + 3_600_000),
            },
            **table_store,
        )
        store = TableDedupeStore(table, output)
        stage.store = store
        stage.partitioner = OwnerPartitioner(partitions=partitions, repartition_topic=repartition)
        stage.repartition_topic = repartition
        agent.stores.append(store)

        app.timer(interval=60.0, on_leader=False, name=f"sweep-{stage.id}")(
            _sweeper(store, rocksdb_memory)
        )

    @app.timer(interval=10.0, on_leader=False)
    async def report_progress() -> None:
        log.info("%s", agent.report())

    @app.on_before_shutdown.connect
    async def close_output(_app: Any, **_: Any) -> None:
        output.close()
        processor.close()
        log.info("Stopped. %s", agent.report())

    return app
