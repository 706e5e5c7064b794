"""The ``aggregate`` stage: live windowed aggregates (counts, sums, distinct users, ...).

One aggregate per stage; the stage id is its stable name (state, metrics, records). Items pass
through unchanged, so place it anywhere between validate and route (usually just before route,
after enrichment, so enriched fields can be grouped on). Example::

    - id: events_per_minute
      type: aggregate
      window: {type: tumbling, size: 1m, grace: 30s}
      group_by: [event]
      measures:
        - {id: events, type: count}
      output: {topic: aggregates}

Each source partition keeps partial aggregates of its own events
(``pipeline.core.aggregator``); when a window closes (event time: ``end + grace``) its partials
go to a combiner (``pipeline.core.combiner``) that merges all partitions' partials and emits
one JSON record per (window, group) to ``output.topic``::

    {"aggregate": "events_per_minute", "window_start": ..., "window_end": ..., "group":
     {"event": "page_viewed"}, "overflow": false, "measures": {"events": 42}, "skipped": {},
     "partitions": [0, 1]}

Group-by values are rendered as strings; a missing field (or null) is "". ``identity`` (as a
group-by or measure field) is the canonical identity: user_id, else anonymous_id, else device_id.
Events later than the grace period are counted (``late``) and, with ``late_events``, copied to
that topic as event JSON; they still pass through to route.

In embedded mode (``pipeline run``) the stage combines its own partitions and closes every
window at the end of the input (``close_all``). In the worker (``pipeline.runtime.aggregates``)
the partials go to a partials topic instead, every ``live_interval`` for the open windows too,
and the one worker that owns the aggregate's partition of that topic combines them; the state
lives in a table. A partition that gets no event for ``idle_after`` (wall clock) closes its
windows by the wall clock, so a quiet partition does not hold the aggregate back.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Annotated, Any, Literal

import orjson
from pydantic import Field, model_validator

from pipeline.core.aggregator import (
    AggregateSpec,
    CloseMarker,
    Partial,
    PartitionAggregator,
    encode_record,
)
from pipeline.core.batch import BatchContext
from pipeline.core.combiner import WindowCombiner
from pipeline.core.measures import MeasureSpec
from pipeline.core.records import Item, Output
from pipeline.core.windows import WindowSpec
from pipeline.stages import StageType
from pipeline.stages.route import Predicate, _compile_predicate, _getter
from pipeline.topology.model import Duration, StepId, Strict, TopicName, Topology, TopologySpec

FieldPath = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*$")]


def _whole_ms(seconds: float, what: str, *, positive: bool) -> int:
    ms = seconds * 1000
    if not math.isclose(ms, round(ms), abs_tol=1e-6):
        raise ValueError(f"{what} must be a whole number of milliseconds")
    if positive and round(ms) <= 0:
        raise ValueError(f"{what} must be positive")
    return round(ms)


class TumblingWindow(Strict):
    type: Literal["tumbling"]
    size: Duration
    """Window length, e.g. ``1m``. Windows are aligned to the epoch (UTC)."""
    grace: Duration = 0.0
    """How long after its end a window still accepts out-of-order events."""

    @model_validator(mode="after")
    def _whole(self) -> TumblingWindow:
        _whole_ms(self.size, "size", positive=True)
        _whole_ms(self.grace, "grace", positive=False)
        return self

    def spec(self) -> WindowSpec:
        size = _whole_ms(self.size, "size", positive=True)
        return WindowSpec.tumbling(size, _whole_ms(self.grace, "grace", positive=False))


class HoppingWindow(Strict):
    type: Literal["hopping"]
    size: Duration
    advance: Duration
    """Distance between window starts (at most ``size``): each event is in size/advance windows."""
    grace: Duration = 0.0

    @model_validator(mode="after")
    def _whole(self) -> HoppingWindow:
        size = _whole_ms(self.size, "size", positive=True)
        advance = _whole_ms(self.advance, "advance", positive=True)
        _whole_ms(self.grace, "grace", positive=False)
        if advance > size:
            raise ValueError("advance cannot be larger than size")
        return self

    def spec(self) -> WindowSpec:
        return WindowSpec.hopping(
            _whole_ms(self.size, "size", positive=True),
            _whole_ms(self.advance, "advance", positive=True),
            _whole_ms(self.grace, "grace", positive=False),
        )


class MeasureConfig(Strict):
    id: StepId
    """The measure's name in records."""
    type: Literal["count", "sum", "min", "max", "avg", "distinct"]
    field: FieldPath | None = None
    """Dotted path of the value (``identity`` = canonical identity). Required except for
    ``count``, which without a field counts events and with one counts events that have it."""
    method: Literal["exact", "hll"] | None = None
    """``distinct`` only: ``exact`` (a set of values, default) or ``hll`` (HyperLogLog)."""
    precision: int | None = Field(default=None, ge=4, le=18)
    """``hll`` only: 2**precision registers (default 14: ~0.8% standard error, ≤16 KiB)."""

    @model_validator(mode="after")
    def _consistent(self) -> MeasureConfig:
        if self.type != "count" and self.field is None:
            raise ValueError(f"a {self.type} measure needs a field")
        if self.method is not None and self.type != "distinct":
            raise ValueError("method is only for distinct measures")
        if self.precision is not None and self.method != "hll":
            raise ValueError("precision is only for distinct measures with method: hll")
        return self

    def spec(self) -> MeasureSpec:
        return MeasureSpec(
            id=self.id,
            kind=self.type,
            field=self.field,
            method=self.method or "exact",
            precision=self.precision or 14,
        )


class TopicRef(Strict):
    topic: TopicName


class AggregateConfig(Strict):
    window: Annotated[TumblingWindow | HoppingWindow, Field(discriminator="type")]
    retain: Duration | None = None
    """How long (event time, after its end) a closed window stays queryable; default 10 sizes."""
    group_by: list[FieldPath] = Field(default_factory=list)
    """Dotted paths; [] = one group. Values are rendered as strings, missing → ""."""
    where: list[Predicate] = Field(default_factory=list)
    """Only events for which every predicate holds are aggregated (the route predicates)."""
    measures: list[MeasureConfig] = Field(min_length=1)
    output: TopicRef
    """Where the final records go (declared under ``topics``)."""
    late_events: TopicRef | None = None
    """Where events later than the grace period are copied (as event JSON), if anywhere."""
    max_groups: int = Field(default=10_000, ge=1, le=1_000_000)
    """Groups per window and partition; events of further groups are counted in an overflow
    group (group values ``__overflow__``, ``"overflow": true``)."""
    idle_after: Duration = 60.0
    """A partition that receives no event for this long (wall clock) closes its windows by the
    wall clock, so a quiet partition does not hold the aggregate's windows open."""
    live_interval: Duration = 2.0
    """Worker: how often each partition sends the changed partials of its open windows to the
    combining worker, which serves them live (``GET /aggregates/{name}``, gauges)."""

    @model_validator(mode="after")
    def _consistent(self) -> AggregateConfig:
        ids = [m.id for m in self.measures]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            raise ValueError(f"duplicate measure ids: {', '.join(duplicates)}")
        if len(set(self.group_by)) != len(self.group_by):
            raise ValueError("group_by names a field twice")
        if self.retain is not None:
            _whole_ms(self.retain, "retain", positive=False)
        if self.late_events is not None and self.late_events.topic == self.output.topic:
            raise ValueError("late events and aggregate records cannot share a topic")
        return self


def _check(config: AggregateConfig, spec: TopologySpec) -> list[tuple[str, str]]:
    problems = []
    routed: set[str] = set()
    for stage in spec.stages:
        if stage.type == "route":
            settings = stage.settings
            routed.update(r.get("to") for r in settings.get("rules") or [] if isinstance(r, dict))
            routed.add(settings.get("default"))
    for path, ref in (("output.topic", config.output), ("late_events.topic", config.late_events)):
        if ref is None:
            continue
        if ref.topic not in spec.topics:
            problems.append((path, f"topic {ref.topic!r} is not declared under topics"))
        if ref.topic == spec.dead_letter.topic:
            problems.append((path, "cannot be the dead-letter topic"))
        elif ref.topic in routed:
            problems.append(
                (path, f"topic {ref.topic!r} is a route's topic: use a topic of its own")
            )
    return problems


def _compile_where(predicate: Predicate) -> Callable[[dict[str, Any]], bool]:
    """A ``where`` predicate: the route stage's, except ``eq`` / ``ne`` against a string or a
    boolean, which run for every event of most aggregates and take one or two calls here
    instead of three. For such a value route's comparison (equal, booleans not being numbers)
    is plain ``==`` for a string (only a string equals one) and identity for a boolean (only
    ``True`` is a boolean equal to ``True``); a missing field equals neither, as there.
    ``tests/stages/test_aggregate.py`` checks the two agree."""
    value = predicate.value
    if predicate.op not in ("eq", "ne") or type(value) not in (str, bool):
        return _compile_predicate(predicate)
    equal = predicate.op == "eq"
    if "." not in predicate.field:
        name = predicate.field
        if type(value) is bool:
            if equal:
                return lambda event: event.get(name) is value
            return lambda event: event.get(name) is not value
        if equal:
            return lambda event: event.get(name) == value
        return lambda event: event.get(name) != value
    get = _getter(predicate.field)
    if type(value) is bool:
        if equal:
            return lambda event: get(event) is value
        return lambda event: get(event) is not value
    if equal:
        return lambda event: get(event) == value
    return lambda event: get(event) != value


def compile_spec(stage_id: str, config: AggregateConfig) -> AggregateSpec:
    predicates = [_compile_where(p) for p in config.where]
    where: Callable[[dict[str, Any]], bool] | None = None
    if len(predicates) == 1:
        where = predicates[0]  # the usual case: no wrapper call and all() per event
    elif predicates:

        def where(event: dict[str, Any]) -> bool:
            for predicate in predicates:
                if not predicate(event):
                    return False
            return True

    return AggregateSpec(
        name=stage_id,
        window=config.window.spec(),
        measures=tuple(m.spec() for m in config.measures),
        group_by=tuple(config.group_by),
        where=where,
        max_groups=config.max_groups,
        retain_ms=None
        if config.retain is None
        else _whole_ms(config.retain, "retain", positive=False),
    )


class AggregateStage:
    """One aggregate: a partition aggregator per source partition, and a combiner.

    ``partitions``: the source partitions the combiner waits for. None (embedded mode, and the
    worker until its runtime wires tables): the partitions this stage has seen events from.
    """

    def __init__(
        self,
        stage_id: str,
        config: AggregateConfig,
        *,
        partitions: Iterable[int] | None = None,
    ) -> None:
        self.id = stage_id
        self.config = config
        self.spec = compile_spec(stage_id, config)
        self.output_topic = config.output.topic
        self.late_topic = config.late_events.topic if config.late_events else None
        self.idle_after_ms = _whole_ms(config.idle_after, "idle_after", positive=False)
        self.live_interval_ms = max(1, round(config.live_interval * 1000))
        self.aggregators: dict[int, PartitionAggregator] = {}
        self._track_partitions = partitions is None
        self.combiner: WindowCombiner | None = WindowCombiner(
            self.spec, () if partitions is None else partitions
        )
        self.partials_topic: str | None = None
        """Worker mode: partials go to this topic (keyed by the aggregate's name) instead of the
        local combiner, which only the combining worker has."""
        self._partials_key = stage_id.encode()
        self._live_sent_ms = 0

    # --- worker mode (pipeline.runtime.aggregates) -------------------------------------------

    def use_partials(self, topic: str) -> None:
        self.partials_topic = topic
        self.combiner = None
        self._track_partitions = False

    def load(
        self, aggregators: dict[int, PartitionAggregator], combiner: WindowCombiner | None
    ) -> None:
        """Replace the in-memory state (rebuilt from the store after an assignment or a
        discarded batch)."""
        self.aggregators = aggregators
        self.combiner = combiner

    def combine(self, records: list[Partial | CloseMarker]) -> list[Output]:
        """Partials and markers from the partials topic → the final records now due."""
        if self.combiner is None:
            raise RuntimeError(f"aggregate {self.id!r} is not combined by this worker")
        return self._outputs(self.combiner.add(records))

    @property
    def derived_topics(self) -> frozenset[str]:
        """Topics this stage writes records to that are not the routed input events."""
        return frozenset(t for t in (self.output_topic, self.late_topic) if t)

    def aggregator(self, partition: int, now_ms: int) -> PartitionAggregator:
        agg = self.aggregators.get(partition)
        if agg is None:
            agg = self.aggregators[partition] = PartitionAggregator(
                self.spec,
                partition,
                created_ms=now_ms,
                track_changes=self.partials_topic is not None,
            )
            if self._track_partitions:
                self._local_combiner().set_partitions(self.aggregators)  # completes nothing new
        return agg

    def process(self, items: list[Item], ctx: BatchContext) -> list[Item]:
        counters = ctx.counters
        worker = self.partials_topic is not None
        for partition, share in _partition_shares(items, ctx).items():
            aggregator = self.aggregator(partition, ctx.now_ms)
            batch, events = share.items, share.events
            if worker:
                batch, events, next_offsets = self._not_yet_applied(aggregator, share, counters)
            result = aggregator.add(events, ctx.now_ms)
            if worker:
                # Only now: add() changes nothing when it raises, and the events the processor
                # then replays one by one must not look applied already.
                aggregator.note_offsets(next_offsets)
            counters[(self.id, "aggregated")] += result.added
            if result.filtered:
                counters[(self.id, "filtered")] += result.filtered
            if result.partially_late:
                counters[(self.id, "partially_late")] += result.partially_late
            if result.overflowed:
                counters[(self.id, "overflowed")] += result.overflowed
            if result.late:
                counters[(self.id, "late")] += len(result.late)
                if self.late_topic is not None:
                    for index in result.late:
                        item = batch[index]
                        key = None if item.event.get("consent_stripped") else item.message.key
                        ctx.emit(self.late_topic, key, orjson.dumps(item.event))
        for topic, key, value in self.tick(ctx.now_ms):
            ctx.emit(topic, key, value)
        return items

    def _not_yet_applied(
        self,
        aggregator: PartitionAggregator,
        share: _PartitionShare,
        counters: Counter[tuple[str, str]],
    ) -> tuple[list[Item], list[dict[str, Any]], dict[str, int]]:
        """The items (and their events) of one partition's batch that the aggregator's state
        does not hold yet (a crash can lose the offset commit but not the changelog: never add
        an event twice), and, per topic, the batch's next offset for ``note_offsets``."""
        next_offsets = {topic: after for topic, (_, after) in share.offsets.items()}
        # Normally the batch starts at or after the stored next offset: nothing to filter then.
        if not any(
            aggregator.already_applied(topic, first) for topic, (first, _) in share.offsets.items()
        ):
            return share.items, share.events, next_offsets
        applied = aggregator.already_applied
        fresh = [i for i in share.items if not applied(i.message.topic, i.message.offset)]
        counters[(self.id, "replayed")] += len(share.items) - len(fresh)
        return fresh, [i.event for i in fresh], next_offsets

    def tick(self, now_ms: int) -> list[Output]:
        """Close what is due in every partition (a timer calls this when no batch comes)."""
        records: list[Partial | CloseMarker] = []
        for agg in self.aggregators.values():
            records.extend(agg.close_due(now_ms, self.idle_after_ms))
        if self.partials_topic is not None:
            if now_ms - self._live_sent_ms >= self.live_interval_ms:
                self._live_sent_ms = now_ms
                for agg in self.aggregators.values():
                    records.extend(agg.live_partials())
            return self._partials(records)
        return self._outputs(self._local_combiner().add(records)) if records else []

    def _local_combiner(self) -> WindowCombiner:
        if self.combiner is None:
            raise RuntimeError(f"aggregate {self.id!r} has no local combiner")
        return self.combiner

    def _partials(self, records: list[Partial | CloseMarker]) -> list[Output]:
        topic, key = self.partials_topic, self._partials_key
        return [(topic, key, encode_record(r)) for r in records]  # type: ignore[misc]

    def close_all(self) -> list[Output]:
        """End of input (embedded mode): close every window and return the final records."""
        records: list[Partial | CloseMarker] = []
        for agg in self.aggregators.values():
            records.extend(agg.close_all())
        return self._outputs(self._local_combiner().add(records)) if records else []

    def snapshot(self) -> dict[str, Any]:
        return {
            "aggregate": self.id,
            "partitions": {str(p): a.snapshot() for p, a in sorted(self.aggregators.items())},
            "pending": self.combiner.snapshot() if self.combiner is not None else None,
        }

    def _outputs(self, finals: list[dict[str, Any]]) -> list[Output]:
        topic = self.output_topic
        return [
            (topic, orjson.dumps([r["aggregate"], r["group"]]), orjson.dumps(r)) for r in finals
        ]


class _PartitionShare:
    """One source partition's items of a batch, as every aggregate stage reads them."""

    __slots__ = ("events", "items", "offsets")

    def __init__(self, items: list[Item]) -> None:
        self.items = items
        self.events = [i.event for i in items]
        self.offsets: dict[str, tuple[int, int]] = {}
        """Per input topic: the items' lowest offset and the one after their highest."""
        messages = [i.message for i in items]
        topics = {m.topic for m in messages}
        if len(topics) == 1:  # the usual case: the source topic
            offsets = [m.offset for m in messages]
            self.offsets[topics.pop()] = (min(offsets), max(offsets) + 1)
        else:
            by_topic: dict[str, list[int]] = {}
            for m in messages:
                by_topic.setdefault(m.topic, []).append(m.offset)
            for topic, offsets in by_topic.items():
                self.offsets[topic] = (min(offsets), max(offsets) + 1)


_SHARES_KEY = "aggregate.partition_shares"


def _partition_shares(items: list[Item], ctx: BatchContext) -> dict[int, _PartitionShare]:
    """The items of each source partition (in order; partitions in order of appearance).

    A topology runs several aggregates one after the other on the same items (each passes them
    on unchanged), so the first splits them and the others reuse its split: each pass over a
    batch's items costs ~0.2-0.4 µs per event, as their objects are spread over memory. Stages
    never change a list of items they were given (they return a new one), so the same list
    object with the same length is the same items."""
    cached = ctx.shared.get(_SHARES_KEY)
    if cached is not None and cached[0] is items and cached[1] == len(items):
        return cached[2]
    by_partition: dict[int, list[Item]] = {}
    for item in items:
        partition = item.message.partition
        batch = by_partition.get(partition)
        if batch is None:
            by_partition[partition] = [item]
        else:
            batch.append(item)
    shares = {partition: _PartitionShare(batch) for partition, batch in by_partition.items()}
    ctx.shared[_SHARES_KEY] = (items, len(items), shares)
    return shares


def _build(stage_id: str, config: AggregateConfig, topology: Topology) -> AggregateStage:
    return AggregateStage(stage_id, config)


STAGE_TYPE = StageType(
    name="aggregate", role="middle", config_model=AggregateConfig, build=_build, check=_check
)
