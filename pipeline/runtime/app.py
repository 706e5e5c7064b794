"""Build the Faust app for a topology (``create_app``) and run it as a worker."""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import faust

from pipeline.core.batch import BatchContext
from pipeline.core.processor import Processor
from pipeline.core.records import SourceMessage
from pipeline.metrics import PipelineMetrics, geoip_build_epochs
from pipeline.runtime.faust_compat import BatchConsumer, BatchTransport, batch_consumer
from pipeline.runtime.output import DeliveryFailed, OutputProducer
from pipeline.runtime.partitioning import OwnerPartitioner
from pipeline.runtime.rocksdb_options import RocksDBMemory, store_url
from pipeline.runtime.state import StagedWrites, TableDedupeStore
from pipeline.settings import Settings
from pipeline.stages.aggregate import AggregateStage
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

    def __init__(
        self, processor: Processor, output: OutputProducer, metrics: PipelineMetrics | None = None
    ) -> None:
        self.processor = processor
        self.output = output
        self.metrics = metrics
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
        if self.metrics is not None:
            self.metrics.record_batch(
                ctx,
                received=Counter(message.topic for message in messages),
                emitted=Counter(topic for topic, _, _ in ctx.outputs),
                stage_seconds=ctx.stage_seconds,
                event_timestamps_ms=ctx.event_times_ms,
            )
        return PreparedBatch(ctx, [(store, store.take_staged()) for store in self.stores])

    def discard(self, batch: PreparedBatch) -> None:
        # Its events will be read and processed again: their staged keys must not make them
        # look like duplicates then.
        for store, staged in batch.state:
            store.unstage(staged)

    async def deliver(self, batch: PreparedBatch) -> None:
        # State changes travel with the outputs and reach the local store only once both are
        # acknowledged (state.py explains why).
        started = time.perf_counter()
        for store, staged in batch.state:
            store.produce_staged(staged)
        try:
            await self.output.send_batch(batch.ctx.outputs)
        except DeliveryFailed as exc:
            if self.metrics is not None:
                self.metrics.record_delivery(time.perf_counter() - started, failed_messages=exc.failed)
            raise
        if self.metrics is not None:
            self.metrics.record_delivery(time.perf_counter() - started)
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


def update_consumer_gauges(metrics: PipelineMetrics, consumer: Any, topics: Sequence[str]) -> None:
    """Assigned partitions and lag (high watermark − next offset to process) of the batch topics,
    from what the consumer already knows (no broker round trip)."""
    wanted = set(topics)
    assigned: dict[str, list[int]] = {topic: [] for topic in topics}
    lags: dict[tuple[str, int], int] = {}
    for tp in consumer.assignment():
        if tp.topic not in wanted:
            continue
        assigned[tp.topic].append(tp.partition)
        highwater = consumer.highwater(tp)
        position = consumer._read_offset.get(tp)
        if highwater is not None and highwater >= 0 and position is not None:
            lags[(tp.topic, tp.partition)] = max(0, highwater - position)
    metrics.set_assignment(assigned)
    metrics.set_consumer_lag(lags)


def add_web_views(
    app: PipelineApp, metrics: PipelineMetrics, refresh_gauges: Callable[[], None]
) -> None:
    """``/metrics`` (Prometheus), ``/health`` (liveness) and ``/ready`` (readiness)."""

    # aiohttp refuses a charset inside content_type; the exposition format is UTF-8 anyway.
    content_type = metrics.content_type.split("; charset")[0]

    @app.page("/metrics")
    async def metrics_view(web: Any, request: Any) -> Any:
        try:
            refresh_gauges()
        except Exception:
            log.exception("could not refresh gauges")
        return web.bytes(metrics.render(), content_type=content_type)

    @app.page("/health")
    async def health_view(web: Any, request: Any) -> Any:
        problems = health_problems(app)
        status = 503 if problems else 200
        return web.json({"status": "failing" if problems else "ok", "problems": problems}, status=status)

    @app.page("/ready")
    async def ready_view(web: Any, request: Any) -> Any:
        waiting = readiness_problems(app)
        status = 503 if waiting else 200
        return web.json({"ready": not waiting, "waiting_for": waiting}, status=status)


def health_problems(app: PipelineApp) -> list[str]:
    """Why the worker is not healthy: its fetch loop (the topology's agent) stopped or failed.
    Empty while it starts (``/ready`` covers that)."""
    problems = []
    if app.should_stop:
        problems.append("the worker is stopping")
    consumer = app.consumer
    if isinstance(consumer, BatchConsumer):
        if consumer.drain_failure is not None:
            problems.append(f"the agent failed: {consumer.drain_failure!r}")
        elif consumer.drain_started and not consumer.draining and not app.rebalancing:
            problems.append("the agent is not running")
    return problems


def readiness_problems(app: PipelineApp) -> list[str]:
    """What the worker still waits for before it processes events."""
    waiting = []
    if app.rebalancing:
        waiting.append("rebalance")
    if not app.consumer.assignment():
        waiting.append("partition assignment")
    elif not app.tables.actives_ready:
        waiting.append("table recovery")
    return waiting


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
    # Aggregate stages keep their windows in memory and combine only this worker's partitions:
    # right for `pipeline run`, wrong for a worker group and across restarts until their state
    # lives in tables (issue 5). Rather than emit partial totals as if final, skip them here.
    aggregates = [s for s in processor.middle if isinstance(s, AggregateStage)]
    for stage in aggregates:
        log.warning(
            "stage %s: aggregate stages are not run by the worker yet (their state is not kept "
            "in tables); they run in embedded mode (`pipeline run`)", stage.id,
        )
    processor.middle = [s for s in processor.middle if not isinstance(s, AggregateStage)]
    for stage_id, status in processor.statuses().items():
        log.info("stage %s: %s", stage_id, status)
    output = OutputProducer(
        bootstrap_servers=settings.bootstrap_servers,
        linger_ms=settings.producer_linger_ms,
        extra=settings.extra_kafka,
    )
    source = topology.spec.source
    partitions = source_partitions or source.partitions
    group_id = group_id_for(topology, settings)
    dedupe_stages = [s for s in processor.middle if isinstance(s, DedupeStage)]
    repartition_topics = [repartition_topic_name(group_id, s.id) for s in dedupe_stages]
    metrics = PipelineMetrics.for_topology(topology, repartition_topics=repartition_topics)
    metrics.set_stage_statuses(processor.statuses())
    agent = TopologyAgent(processor, output, metrics)
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

    geoip_stages = [
        s for s in processor.middle if getattr(s, "enricher_name", None) == "geoip"
    ]

    def refresh_gauges() -> None:
        """Gauges read from state rather than counted per batch; before every scrape."""
        update_consumer_gauges(metrics, batch_consumer(app), [source.topic, *repartition_topics])
        for stage, store in zip(dedupe_stages, agent.stores, strict=True):
            metrics.set_dedupe_keys(stage.id, store.estimated_size())
        for stage in geoip_stages:
            metrics.set_geoip_databases(stage.id, geoip_build_epochs(stage.enricher))

    add_web_views(app, metrics, refresh_gauges)

    @app.on_before_shutdown.connect
    async def close_output(_app: Any, **_: Any) -> None:
        output.close()
        processor.close()
        log.info("Stopped. %s", agent.report())

    return app
