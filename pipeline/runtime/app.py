"""Build the Faust app for a topology (``create_app``) and run it as a worker."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import faust
import yarl

from pipeline.core.batch import BatchContext
from pipeline.core.processor import Processor
from pipeline.core.records import SourceMessage
from pipeline.metrics import PipelineMetrics, geoip_build_epochs
from pipeline.runtime.admin import group_id_for, partials_topic_name, repartition_topic_name
from pipeline.runtime.aggregates import AggregateRuntime
from pipeline.runtime.faust_compat import BatchConsumer, BatchTransport, batch_consumer
from pipeline.runtime.gc_policy import collections_deferred
from pipeline.runtime.output import DeliveryFailed, OutputProducer
from pipeline.runtime.partitioning import OwnerPartitioner
from pipeline.runtime.rocksdb_options import RocksDBMemory, store_url
from pipeline.runtime.security import describe, faust_app_kwargs
from pipeline.runtime.state import TableDedupeStore
from pipeline.settings import Settings
from pipeline.stages.aggregate import AggregateStage
from pipeline.stages.dedupe import DedupeStage
from pipeline.topology.model import Topology

log = logging.getLogger(__name__)


@dataclass(slots=True)
class PreparedBatch:
    """A processed batch waiting to be delivered: its outputs and its state changes."""

    ctx: BatchContext
    state: list[tuple[Any, Any]]
    """(store, its staged changes): dedupe tables and the aggregates' table."""


@dataclass(slots=True)
class _Unsettled:
    """A delivered batch whose state changes are produced but not acknowledged yet (only its
    state: its outputs, thousands of serialised events, need not be held any longer)."""

    state: list[tuple[Any, Any]]
    offsets: Mapping[Any, int]


@dataclass(slots=True)
class Delivered:
    """What a delivery made safe: every output and state change before ``offsets`` (TP → next
    offset) is acknowledged; ``committed``: they were committed with it (exactly once)."""

    offsets: dict[Any, int]
    committed: bool


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
        self.stores: list[Any] = []
        """Tables written a batch at a time (``TableDedupeStore``, ``AggregateRuntime``)."""
        self.aggregates: AggregateRuntime | None = None
        self.events_in = 0
        self.batches = 0
        self.dead_letters = 0
        self.dropped: Counter[str] = Counter()
        """Events removed on purpose (or forwarded for repartitioning), by stage:outcome."""
        self._last_report = (time.monotonic(), 0)
        self._unsettled: _Unsettled | None = None
        # deliver() and settle() never overlap: a settle may come from a rebalance callback
        # while a batch is being delivered.
        self._delivery_lock = asyncio.Lock()

    def prepare(self, messages: Sequence[SourceMessage]) -> PreparedBatch:
        try:
            # The batch's objects are freed when its stages end: a collection in between
            # would only scan them (gc_policy.py).
            with collections_deferred():
                ctx = self._run_stages(messages)
        except Exception:
            self._forget_staged()
            raise
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

    def _run_stages(self, messages: Sequence[SourceMessage]) -> BatchContext:
        aggregates = self.aggregates
        if aggregates is None:
            return self.processor.process(messages)
        aggregates.ensure_loaded()
        events, partials = aggregates.split(messages)
        ctx = self.processor.process(events)
        if partials:
            aggregates.combine(partials, ctx)
        return ctx

    def _forget_staged(self) -> None:
        """A batch failed half-way through its stages: its records are read again, so nothing
        it staged may remain (the aggregates rebuild their memory from the table)."""
        for store in self.stores:
            store.unstage(store.take_staged())

    def prepare_idle(self) -> PreparedBatch | None:
        """No record for a while: close the aggregate windows that are due by the clock."""
        aggregates = self.aggregates
        if aggregates is None:
            return None
        aggregates.ensure_loaded()
        ctx = self.processor.new_context()
        try:
            aggregates.tick(ctx)
        except Exception:
            self._forget_staged()
            raise
        state = [(store, store.take_staged()) for store in self.stores]
        if not ctx.outputs and not any(staged for _, staged in state):
            return None
        if self.metrics is not None:
            self.metrics.record_batch(
                ctx, received=Counter(), emitted=Counter(topic for topic, _, _ in ctx.outputs),
                stage_seconds={}, event_timestamps_ms=[],
            )
        return PreparedBatch(ctx, state)

    def assigned(self, assigned: set[Any]) -> None:
        if self.aggregates is not None:
            self.aggregates.assigned(assigned)

    def discard(self, batch: PreparedBatch) -> None:
        self._unstage(batch.state)

    @staticmethod
    def _unstage(state: list[tuple[Any, Any]]) -> None:
        # Its events will be read and processed again: their staged keys must not make them
        # look like duplicates then.
        for store, staged in state:
            store.unstage(staged)

    def unsettled_offsets(self) -> Mapping[Any, int]:
        """The offsets of the delivered batch whose state changes are not acknowledged yet (at
        least once: see ``deliver``); empty when there is none."""
        unsettled = self._unsettled
        return unsettled.offsets if unsettled is not None else {}

    async def deliver(
        self,
        batch: PreparedBatch,
        offsets: Mapping[Any, int] | None = None,
        group_metadata: Callable[[], bytes] | None = None,
    ) -> Delivered:
        """Send the batch; returns the offsets that are now safe to commit.

        A batch's state changes reach the local store only once they and its outputs are
        acknowledged (state.py explains why).
        """
        async with self._delivery_lock:
            if self.output.transactional:
                await self._deliver_in_transaction(batch, offsets or {}, group_metadata)
                return Delivered(dict(offsets or {}), committed=True)
            return await self._deliver_at_least_once(batch, dict(offsets or {}))

    async def _deliver_in_transaction(
        self,
        batch: PreparedBatch,
        offsets: Mapping[Any, int],
        group_metadata: Callable[[], bytes] | None,
    ) -> None:
        # Exactly once: outputs, state and offsets in one transaction (output.py).
        output = self.output
        started = time.perf_counter()
        try:
            output.begin()
            for store, staged in batch.state:
                store.produce_staged(staged)
            await output.send_batch(
                batch.ctx.outputs,
                offsets={(tp.topic, tp.partition): o for tp, o in offsets.items()},
                metadata=group_metadata() if offsets and group_metadata else None,
            )
        except Exception as exc:
            self._record_delivery(started, exc)
            output.abort()  # also when a changelog record could not be produced
            raise
        self._record_delivery(started, None)
        self._apply(batch.state)

    async def _deliver_at_least_once(self, batch: PreparedBatch, offsets: dict[Any, int]) -> Delivered:
        """The outputs first, the state changes only once they are acknowledged.

        The other order could leave the changelog ahead of the outputs when a delivery fails or
        the worker dies: after a restart the dedupe table would then drop those events as
        duplicates, and they would be lost. This order can only repeat them.

        Waiting for the state changes before the next batch would cost every batch a second
        round trip, spent with the event loop idle. So a batch's changelog records are produced
        once its outputs are acknowledged, and acknowledged together with the *next* batch's
        outputs (or by ``settle`` when no batch follows): one wait per batch. Its offsets count
        as delivered, and are committed, only then; until then its keys stay in the stores'
        overlays, where later batches see them.
        """
        previous, self._unsettled = self._unsettled, None
        started = time.perf_counter()
        try:
            # Also acknowledges the previous batch's changelog records, produced before these.
            await self.output.send_batch(batch.ctx.outputs)
        except Exception as exc:
            self._record_delivery(started, exc)
            if previous is not None:
                # Which messages failed is not known: the previous batch's records are read
                # again too (the consumer seeks to before both), and its state is staged again.
                self._unstage(previous.state)
            raise
        self._record_delivery(started, None)
        delivered: dict[Any, int] = {}
        if previous is not None:
            self._apply(previous.state)
            delivered.update(previous.offsets)
        if any(staged for _, staged in batch.state):
            # The outputs are acknowledged: their state changes may go out now.
            for store, staged in batch.state:
                store.produce_staged(staged)
            self._unsettled = _Unsettled(batch.state, offsets)
        else:
            self._apply(batch.state)
            delivered.update(offsets)  # later than the previous batch's: they win
        return Delivered(delivered, committed=False)

    async def settle(self) -> dict[Any, int]:
        """Wait until the last delivered batch's state changes are acknowledged, and return its
        offsets (none when every delivered batch is settled). If they fail, its state is
        staged again when its records are read again, and this raises."""
        async with self._delivery_lock:
            unsettled = self._unsettled
            if unsettled is None:
                return {}
            try:
                await self.output.send_batch(())
            except Exception:
                self._unsettled = None
                self._unstage(unsettled.state)
                raise
            # Taken only now: a settle cancelled while it waits (the fetch loop is cancelled
            # on shutdown, often right here) leaves the batch unsettled for the next settle
            # (``wait_empty``'s) to acknowledge and commit. Taken before the wait, it was lost:
            # its offsets were never committed and a restarted worker processed it again
            # (seen in CI: an invalid event dead-lettered twice).
            self._unsettled = None
            self._apply(unsettled.state)
            return dict(unsettled.offsets)

    @staticmethod
    def _apply(state: list[tuple[Any, Any]]) -> None:
        for store, staged in state:
            store.apply(staged)
            store.after_delivery()

    def _record_delivery(self, started: float, exc: Exception | None) -> None:
        if self.metrics is None:
            return
        seconds = time.perf_counter() - started
        if isinstance(exc, DeliveryFailed):
            self.metrics.record_delivery(seconds, failed_messages=exc.failed)
        elif exc is None:
            self.metrics.record_delivery(seconds)

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
        max_batch_failures: int = 5,
        **kwargs: Any,
    ):
        self.topology_agent = agent
        self._batch_topics = batch_topics
        self._fetch_max_wait_ms = fetch_max_wait_ms
        self._max_batch_failures = max_batch_failures
        self.fatal_error: BaseException | None = None
        """Why the worker stopped itself (it then exits with status 1)."""
        super().__init__(*args, **kwargs)

    def fail(self, error: BaseException) -> None:
        """The agent cannot go on: stop the worker the way SIGTERM does (deliver and commit what
        was delivered, then exit), but with a non-zero exit status (``run_worker``)."""
        if self.fatal_error is None:
            self.fatal_error = error
            signal.raise_signal(signal.SIGTERM)

    def _new_transport(self) -> Any:
        return BatchTransport(self.conf.broker_consumer, self)

    def _new_consumer(self) -> Any:
        consumer = super()._new_consumer()
        assert isinstance(consumer, BatchConsumer)
        consumer.use_batches(self._batch_topics, self.topology_agent)
        consumer.fetch_max_wait_ms = self._fetch_max_wait_ms
        consumer.read_committed = self.topology_agent.output.transactional
        consumer.max_batch_failures = self._max_batch_failures
        consumer.on_fatal = self.fail
        metrics = self.topology_agent.metrics
        if metrics is not None:
            consumer.on_batch_failure = metrics.record_batch_failure
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


def update_aggregate_gauges(metrics: PipelineMetrics, runtime: AggregateRuntime) -> None:
    """``pipeline_aggregate_value``: the current window of each aggregate combined on this
    worker (so each series comes from exactly one worker)."""
    for aggregate, measures in runtime.live_values().items():
        for measure, (_, by_group) in measures.items():
            metrics.set_aggregate_values(aggregate, measure, by_group)


def add_aggregate_views(app: PipelineApp, runtime: AggregateRuntime, *, changelog_table: str) -> None:
    """``GET /aggregates`` (what there is) and ``GET /aggregates/{name}`` (current and recent
    windows, combined over every partition: served by the worker combining the aggregate, and
    forwarded there from any other worker)."""

    @app.page("/aggregates")
    async def list_view(web: Any, request: Any) -> Any:
        return web.json({"aggregates": runtime.describe()})

    @app.page("/aggregates/{name}")
    async def aggregate_view(web: Any, request: Any, name: str) -> Any:
        if name not in runtime.stages:
            return web.json(
                {"error": f"no aggregate {name!r}", "aggregates": sorted(runtime.stages)},
                status=404,
            )
        snapshot = runtime.snapshot(name)
        if snapshot is not None:
            return web.json(snapshot)
        if request.query.get("forwarded"):
            return web.json({"error": "not combined here (a rebalance is under way?)"}, status=503)
        url = combining_worker_url(app, changelog_table, runtime.combiner_partition[name])
        if url is None:
            return web.json({"error": "no worker combines it right now (rebalance?)"}, status=503)
        try:
            target = url.with_path(f"/aggregates/{name}").with_query({"forwarded": "1"})
            async with app.http_client.get(target, timeout=aiohttp.ClientTimeout(total=5)) as response:
                return web.bytes(
                    await response.read(), content_type="application/json", status=response.status
                )
        except (TimeoutError, aiohttp.ClientError) as exc:
            return web.json({"error": f"the combining worker {url} did not answer: {exc!r}"}, status=502)


def combining_worker_url(app: Any, table_name: str, partition: int) -> Any:
    """The web URL of the worker that owns ``partition`` of the table (from the assignor)."""
    try:
        hosts = app.router.table_metadata(table_name)
    except Exception:  # noqa: BLE001 - no assignment yet
        return None
    for url, topics in hosts.items():
        for partitions in topics.values():
            if partition in partitions:
                return yarl.URL(url)
    return None


def health_problems(app: PipelineApp) -> list[str]:
    """Why the worker is not healthy: its fetch loop (the topology's agent) stopped or failed.
    Empty while it starts (``/ready`` covers that)."""
    problems = []
    if app.fatal_error is not None:
        problems.append(f"the worker gave up: {app.fatal_error}")
    elif app.should_stop:
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
    consumer = app.consumer
    if isinstance(consumer, BatchConsumer) and consumer.batch_failures:
        waiting.append(
            f"a failed batch to be read again ({consumer.batch_failures} failed in a row, "
            f"the worker gives up at {consumer.max_batch_failures})"
        )
    if app.rebalancing:
        waiting.append("rebalance")
    if not app.consumer.assignment():
        # Assigned nothing in a completed rebalance (more workers than partitions): idle, but
        # ready; otherwise a StatefulSet's rolling update would wait for it forever.
        if not app.consumer_generation_id:
            waiting.append("partition assignment")
    elif not app.tables.actives_ready:
        waiting.append("table recovery")
    return waiting


def create_app(
    topology: Topology, settings: Settings, *, source_partitions: int | None = None
) -> PipelineApp:
    """The Faust app of a topology. Creating it opens no connection.

    ``source_partitions`` is the source topic's real partition count (it may differ from the
    declared one when the topic existed before); tables and repartition topics must match it.
    """
    processor = Processor(topology)
    aggregate_stages = [s for s in processor.middle if isinstance(s, AggregateStage)]
    for stage_id, status in processor.statuses().items():
        log.info("stage %s: %s", stage_id, status)
    log.info("%s", describe(settings))
    source = topology.spec.source
    partitions = source_partitions or source.partitions
    group_id = group_id_for(topology, settings)
    exactly_once = settings.processing_guarantee == "exactly_once"
    output = OutputProducer(
        bootstrap_servers=settings.bootstrap_servers,
        linger_ms=settings.producer_linger_ms,
        extra=settings.extra_kafka,
        # Stable across restarts of the same worker (host and web port): a restarted worker
        # aborts its predecessor's open transaction at once.
        transactional_id=(
            f"{group_id}-{socket.gethostname()}-{settings.web_port}" if exactly_once else None
        ),
    )
    dedupe_stages = [s for s in processor.middle if isinstance(s, DedupeStage)]
    repartition_topics = [repartition_topic_name(group_id, s.id) for s in dedupe_stages]
    partials_topic = partials_topic_name(group_id) if aggregate_stages else None
    internal_topics = [*repartition_topics, *([partials_topic] if partials_topic else [])]
    metrics = PipelineMetrics.for_topology(
        topology, repartition_topics=repartition_topics, partials_topic=partials_topic
    )
    metrics.set_stage_statuses(processor.statuses())
    agent = TopologyAgent(processor, output, metrics)
    app = PipelineApp(
        group_id,
        agent=agent,
        batch_topics=[source.topic, *internal_topics],
        fetch_max_wait_ms=settings.fetch_max_wait_ms,
        max_batch_failures=settings.max_batch_failures,
        broker=[f"kafka://{s}" for s in settings.bootstrap_servers.split(",")],
        store="rocksdb://" if settings.store == "rocksdb" else "memory://",
        # Per consumer group, which also names the changelogs: a worker of another group (a
        # renamed topology, PIPELINE_GROUP_ID) must not find this group's local tables.
        datadir=str(settings.data_dir / group_id),
        # Changelogs (Faust creates them) as durable as the source (Faust's default is 1).
        topic_replication_factor=source.replication_factor,
        # web_host, web_bind (Faust binds 0.0.0.0 without it) and the SSL/SASL credentials.
        **faust_app_kwargs(settings),
        web_port=settings.web_port,
        web_enabled=True,
        autodiscover=False,
        broker_commit_interval=settings.commit_interval_s,
        broker_session_timeout=settings.session_timeout_s,
        # Heartbeats well inside the session (Kafka's rule: at most a third of it).
        broker_heartbeat_interval=min(3.0, settings.session_timeout_s / 3),
        broker_max_poll_records=settings.batch_max_events,
        consumer_max_fetch_size=settings.fetch_max_bytes_per_partition,
        table_standby_replicas=settings.standby_replicas,
        consumer_auto_offset_reset="earliest",
        # Faust's own exactly-once machinery is not used (output.py explains why); ours is the
        # transactional output producer.
        processing_guarantee="at_least_once",
        topic_partitions=source.partitions,
        stream_wait_empty=True,
        # Tables and topics hold raw bytes: the batch path encodes keys and values itself.
        key_serializer="raw",
        value_serializer="raw",
    )
    # Subscribe without Faust streams: the batch consumer delivers these to the agent.
    for name in [source.topic, *internal_topics]:
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

    if aggregate_stages:
        assert partials_topic is not None
        table_store = {}
        if rocksdb_memory is not None:
            table_store = {"store": store_url("aggregates"), "options": {"memory": rocksdb_memory}}
        table = app.Table(
            "aggregates",
            key_type=bytes,
            value_type=bytes,
            partitions=partitions,
            extra_topic_configs={"cleanup.policy": "compact"},
            **table_store,
        )
        runtime = AggregateRuntime(
            aggregate_stages,
            table,
            output,
            partitions=partitions,
            source_topics=[source.topic, *repartition_topics],
            partials_topic=partials_topic,
        )
        agent.stores.append(runtime)
        agent.aggregates = runtime
        add_aggregate_views(app, runtime, changelog_table="aggregates")

    @app.timer(interval=10.0, on_leader=False)
    async def report_progress() -> None:
        log.info("%s", agent.report())

    geoip_stages = [
        s for s in processor.middle if getattr(s, "enricher_name", None) == "geoip"
    ]

    def refresh_gauges() -> None:
        """Gauges read from state rather than counted per batch; before every scrape."""
        # An optional enricher that was disabled may have started since (enrich.py). First, so
        # that a failure further down cannot leave it stale.
        metrics.set_stage_statuses(processor.statuses())
        update_consumer_gauges(metrics, batch_consumer(app), [source.topic, *internal_topics])
        dedupe_stores = [s for s in agent.stores if isinstance(s, TableDedupeStore)]
        for stage, store in zip(dedupe_stages, dedupe_stores, strict=True):
            metrics.set_dedupe_keys(stage.id, store.estimated_size())
        if agent.aggregates is not None:
            update_aggregate_gauges(metrics, agent.aggregates)
        for stage in geoip_stages:
            metrics.set_geoip_databases(stage.id, geoip_build_epochs(stage.enricher))

    add_web_views(app, metrics, refresh_gauges)

    @app.on_before_shutdown.connect
    async def close_output(_app: Any, **_: Any) -> None:
        output.close()
        processor.close()
        log.info("Stopped. %s", agent.report())

    return app
