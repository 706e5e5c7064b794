"""Windowed aggregates of one source partition: partial results, closed by event time.

In the worker every source partition is processed by exactly one worker, so each partition keeps
*partial* aggregates of its own events (``PartitionAggregator``) and a ``WindowCombiner`` merges
the partials of all partitions into final records. This module is plain data: the runtime
persists ``to_state()`` / ``drain_changes()`` in a table and sends the partials and close markers
it returns to the combiner.

Time. The partition's *stream time* is the largest event timestamp it has seen. Its *watermark*
is the time up to which its windows are final: the stream time, or — when the partition has
received no event for ``idle_after_ms`` of wall-clock time — its stream time moved on by the
wall-clock time since its last event, so a quiet partition does not hold windows open forever
(and the combiner, which waits for every partition, does not wait forever). Moving on from the
stream time rather than jumping to the wall clock keeps a partition that is behind (a backlog,
a replay of old events) from declaring its next events late after a pause; a partition that
never had an event uses the wall clock. The watermark never goes back: a window, once closed,
is never reopened.

Lateness. Events are taken in batch order, each judged against the watermark as it was *before*
that event (so within a batch an event that advances stream time can make a later one late,
exactly as if the events had come one batch each). An event is added to each of its windows that
is still open (``end + grace > watermark``); it is *late* when none is, and is then counted and
returned to the caller (for a late-events topic), never added. With hopping windows an event can
miss some of its windows and reach others: it is added to the open ones and counted as
``partially_late``.

Live values. Besides the closing partials, ``live_partials()`` gives the current partials of the
open windows that changed since it was last called; the worker sends them now and then, and the
combiner, which keeps the latest partial per (window, group, partition), can then show the open
windows' values before they are final.

Replays. The state also records, per input topic, the next source offset not yet aggregated
(``note_offsets`` / ``already_applied``), so events replayed after a crash that lost the
consumer's offset commit but not this state are not counted twice.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from operator import itemgetter
from typing import Any

import orjson

from pipeline.core.identity import canonical_identity
from pipeline.core.measures import (
    Measure,
    MeasureSpec,
    decode_measures,
    distinct_key,
    distinct_keys,
    encode_measures,
)
from pipeline.core.windows import WindowSpec
from pipeline.errors import StateMismatch

CLOSED_FOREVER = 2**62
"""The watermark after ``close_all``: every window, present or future, is closed."""

OVERFLOW_GROUP_VALUE = "__overflow__"
STATE_VERSION = 1

Group = tuple[str, ...] | None
"""A group: the rendered group-by values, in ``group_by`` order. ``None`` is the overflow group."""

_MISSING = object()


def field_getter(path: str) -> Callable[[dict[str, Any]], Any]:
    """A dotted-path getter; ``identity`` is the canonical identity (user_id, else anonymous_id,
    else device_id). Missing values (and paths through non-objects) give None."""
    if path == "identity":
        return canonical_identity
    parts = tuple(path.split("."))
    if len(parts) == 1:
        name = parts[0]
        return lambda event: event.get(name)
    if len(parts) == 2:
        # The common depth (``properties.revenue``), unrolled: it runs for every event.
        outer, inner = parts

        def get2(event: dict[str, Any]) -> Any:
            node = event.get(outer)
            return node.get(inner) if type(node) is dict else None

        return get2

    def get(event: dict[str, Any]) -> Any:
        node: Any = event
        for part in parts:
            if type(node) is not dict:
                return None
            node = node.get(part)
        return node

    return get


def render_group_value(value: Any) -> str:
    """Group-by values as strings: strings as they are, missing or null as "", others as JSON."""
    if value is None:
        return ""
    if type(value) is str:
        return value
    if type(value) is int:
        return str(value)
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()


def group_key_function(paths: Sequence[str]) -> Callable[[dict[str, Any]], Any] | None:
    """How an event's group is told apart within a batch, cheaply: None when there is no
    group-by (one group); with one field, the rendered value itself (no tuple per event); with
    several, the ``Group`` (the tuple of rendered values)."""
    if not paths:
        return None
    if len(paths) == 1 and "." not in paths[0] and paths[0] != "identity":
        name = paths[0]  # a top-level field (``event``): read here, saving a call per event

        def top_level(event: dict[str, Any]) -> str:
            value = event.get(name)
            return value if type(value) is str else render_group_value(value)

        return top_level
    getters = tuple(field_getter(p) for p in paths)
    if len(getters) == 1:
        get = getters[0]

        def one(event: dict[str, Any]) -> str:
            value = get(event)
            return value if type(value) is str else render_group_value(value)

        return one
    return lambda event: tuple(render_group_value(get(event)) for get in getters)


def value_reader(
    get: Callable[[dict[str, Any]], Any], kind: str
) -> Callable[[dict[str, Any]], Any]:
    """The value a measure of ``kind`` takes from an event, as its ``update`` expects it: the
    field's value itself (numeric measures skip what is not a number themselves), or for
    ``distinct`` its key."""
    if kind == "distinct":

        def key(event: dict[str, Any]) -> str | None:
            value = get(event)
            # distinct_key may raise (a value JSON cannot write): it runs while the batch is
            # read, before anything is changed. Strings (the usual values) are their own key.
            return value if type(value) is str else distinct_key(value)

        return key
    return get


@dataclass(frozen=True)
class AggregateSpec:
    """One aggregate, compiled: everything a partition aggregator and a combiner need."""

    name: str
    """The aggregate's stable name (the stage id): names its state, metrics and records."""
    window: WindowSpec
    measures: tuple[MeasureSpec, ...]
    group_by: tuple[str, ...] = ()
    where: Callable[[dict[str, Any]], bool] | None = None
    """Only events for which this holds are aggregated (None: all)."""
    max_groups: int = 10_000
    """Open groups per window and partition; events of further groups go to the overflow group."""
    retain_ms: int | None = None
    """How long (event time, after its end) a closed window stays queryable; default 10 sizes."""

    def __post_init__(self) -> None:
        if not self.measures:
            raise ValueError("an aggregate needs at least one measure")
        if len({m.id for m in self.measures}) != len(self.measures):
            raise ValueError("measure ids must be unique")
        if self.max_groups < 1:
            raise ValueError("max_groups must be at least 1")

    @cached_property  # written with every meta record: computed once
    def state_fingerprint(self) -> str:
        """What the stored windows' layout depends on (window size and advance, group-by, the
        measures): kept in the state's meta, so that state written by another definition is
        refused with a clear error instead of being misread."""
        definition = {
            "window": [self.window.size_ms, self.window.advance_ms],
            "group_by": list(self.group_by),
            "measures": [[m.id, m.kind, m.field, m.method, m.precision] for m in self.measures],
        }
        return hashlib.sha256(orjson.dumps(definition)).hexdigest()[:16]

    def check_stored_definition(self, meta: Mapping[str, Any]) -> None:
        """Raise ``StateMismatch`` if ``meta`` was written for another definition (state written
        before fingerprints were kept has none: accepted)."""
        stored = meta.get("def")
        if stored is not None and stored != self.state_fingerprint:
            raise StateMismatch(
                f"aggregate {self.name!r}: its stored state was written by another definition "
                "(window, group_by or measures changed). Give the changed aggregate a new stage "
                "id (it starts empty; docs/operations.md, upgrades) or restore the old definition"
            )

    @property
    def retain(self) -> int:
        return self.retain_ms if self.retain_ms is not None else 10 * self.window.size_ms

    def group_dict(self, group: Group) -> dict[str, str]:
        if group is None:
            return dict.fromkeys(self.group_by, OVERFLOW_GROUP_VALUE)
        return dict(zip(self.group_by, group, strict=True))

    def results(self, measures: Sequence[Measure]) -> dict[str, Any]:
        return {spec.id: m.result() for spec, m in zip(self.measures, measures, strict=True)}

    def skipped(self, measures: Sequence[Measure]) -> dict[str, int]:
        return {
            spec.id: m.skipped
            for spec, m in zip(self.measures, measures, strict=True)
            if spec.field is not None
        }


@dataclass(frozen=True, slots=True)
class Partial:
    """One partition's partial aggregate of one (window, group), sent when the window closes
    (and, for open windows, periodically as a live value: the combiner keeps the latest)."""

    aggregate: str
    partition: int
    window_start: int
    window_end: int
    group: Group
    measures: bytes


@dataclass(frozen=True, slots=True)
class CloseMarker:
    """The partition is done with every window with ``end + grace <= closed_through``: all their
    partials were sent before this marker. A watermark rather than a per-window marker, so it also
    covers windows in which this partition had no event at all."""

    aggregate: str
    partition: int
    closed_through: int


@dataclass
class AddResult:
    late: list[int] = field(default_factory=list)
    """Indices (into the batch) of the late events: counted, not added."""
    added: int = 0
    filtered: int = 0
    """Events ``where`` rejected."""
    partially_late: int = 0
    overflowed: int = 0
    """Events counted in the overflow group because their window had ``max_groups`` groups."""


def group_key_bytes(group: Group) -> bytes:
    return b"null" if group is None else orjson.dumps(list(group))


def parse_group(data: bytes) -> Group:
    value = orjson.loads(data)
    return None if value is None else tuple(value)


class _Untracked(set):  # type: ignore[type-arg]
    """A set that stays empty: change tracking switched off."""

    def add(self, _item: object) -> None:
        pass

    def update(self, *_items: object) -> None:
        pass


_NEVER = float("-inf")
"""Stream time and watermark while reading a batch, when there are none yet."""

_ROW = -1
"""``PartitionAggregator._columns``: the batch's rows are the measure's values themselves."""

_timestamp_of = itemgetter("timestamp")


def _every_event(_event: dict[str, Any]) -> bool:
    return True  # the value of a measure without a field: every event counts


class _PendingWindow:
    """One window's share of a batch being read: the rows of each group, applied (once per
    group) only when the whole batch has been read."""

    __slots__ = ("by_key", "existing", "groups", "new_groups")

    def __init__(self, existing: dict[Group, list[Measure]] | None) -> None:
        self.existing: Mapping[Group, list[Measure]] = existing if existing is not None else {}
        """The window's groups before this batch: only read until the batch is applied."""
        self.groups: dict[Group, list[Any]] = {}
        """Group → one row per event added to it, in batch order."""
        self.new_groups = 0
        """How many of ``groups`` the window does not have yet (they count towards
        ``max_groups`` for the groups after them)."""
        self.by_key: dict[Any, list[Any]] = {}
        """Group key (``group_key_function``) → the rows its events join: its group's, or the
        overflow group's."""


RowReaders = tuple[
    Callable[[dict[str, Any]], Any] | None,
    Callable[[list[dict[str, Any]]], list[Any]],
    tuple[int | None, ...],
]


def _row_readers(measures: Sequence[MeasureSpec]) -> RowReaders:
    """What a batch keeps per added event (its "row"): nothing (None) when every measure is a
    count of events, the value when one measure reads a field, else a tuple of the values.

    Returns how to read one event's row (None: nothing to read), how to read the rows of many
    events at once (``_read_one_window``), and where each measure's values are: None (a count
    of events: only the number of rows matters), ``_ROW`` (the rows are its values) or an
    index into the tuples."""
    readers = []
    columns: list[int | None] = []
    for m in measures:
        if m.field is None and m.kind == "count":
            columns.append(None)
        else:
            columns.append(len(readers))
            readers.append((field_getter(m.field) if m.field else _every_event, m.kind))
    if not readers:
        return None, lambda events: [None] * len(events), tuple(columns)
    if len(readers) == 1:
        get, kind = readers[0]
        rows_of: Callable[[list[dict[str, Any]]], list[Any]]
        if kind == "distinct":
            rows_of = lambda events: distinct_keys(list(map(get, events)))
        else:
            rows_of = lambda events: list(map(get, events))
        return value_reader(get, kind), rows_of, tuple(None if c is None else _ROW for c in columns)
    many = tuple(value_reader(get, kind) for get, kind in readers)

    def row_of(event: dict[str, Any]) -> tuple[Any, ...]:
        return tuple(read(event) for read in many)

    return row_of, lambda events: list(map(row_of, events)), tuple(columns)


class PartitionAggregator:
    """Partial aggregates of one aggregate over one source partition's events."""

    def __init__(
        self, spec: AggregateSpec, partition: int, *, created_ms: int, track_changes: bool = True
    ) -> None:
        self.spec = spec
        self.partition = partition
        self.open: dict[int, dict[Group, list[Measure]]] = {}
        """Open windows by start: group → measures."""
        self.recent: dict[int, dict[Group, bytes]] = {}
        """Closed windows kept for queries (until ``end + retain <= watermark``): encoded."""
        self.stream_time: int | None = None
        self.watermark: int | None = None
        self.last_event_wall_ms = created_ms
        """Wall clock of the last batch with events (creation counts: a partition that never
        gets an event goes idle too)."""
        self.marked_through: int | None = None
        """``closed_through`` of the last close marker returned."""
        self.late_events = 0
        self.overflowed = 0
        self.offsets: dict[str, int] = {}
        """Per input topic: the next source offset not yet aggregated (last offset + 1). Kept in
        the same state as the windows, so after a crash that lost the consumer's offset commit
        but not the state, a replayed event can be recognised and not added twice."""
        # Change tracking (for the worker's table and live partials). Embedded mode never
        # drains it, so there it is off: the sets would grow with every window of the input.
        self._dirty: set[tuple[bytes, int, Group]] = set() if track_changes else _Untracked()
        self._meta_dirty = True
        """Starts set: a new one's meta is not stored yet (``from_state`` clears it once the
        stored meta is read), so the drained changes add up to ``to_state()`` from the start."""
        self._live_dirty: set[tuple[int, Group]] = set() if track_changes else _Untracked()
        """Open (window start, group)s changed since the last ``live_partials()`` (not state)."""
        self._tumbling = spec.window.advance_ms == spec.window.size_ms
        self._group_key = group_key_function(spec.group_by)
        self._one_group_field = len(spec.group_by) == 1
        self._row_of, self._rows_of, self._columns = _row_readers(spec.measures)
        self._distinct = tuple(m.kind == "distinct" for m in spec.measures)

    # --- events ---------------------------------------------------------------------------

    def add(self, events: Sequence[dict[str, Any]], now_ms: int) -> AddResult:
        """Aggregate a batch of validated events (``timestamp`` in epoch ms), in order.

        Nothing is changed until every event of the batch has been read, so an exception (a
        bug) leaves the aggregator as it was and the batch can be replayed event by event.

        The batch is read event by event (lateness, stream time and which group a new group
        key gets are decided in batch order; when it all falls in one open tumbling window,
        the usual case, no event can be late and map/filter do the reading), but each (window,
        group) is then updated once, with its rows of the batch in order: per-event measure
        updates and change tracking were most of the cost of an aggregate. The result is the
        one adding the events one by one would give, byte for byte
        (``tests/core/test_aggregator_batches.py``).
        """
        result = AddResult()
        if not events:
            return result
        read = self._read_tumbling if self._tumbling else self._read_hopping
        windows, stream_time, watermark = self._read_one_window(events, result) or read(
            events, result
        )

        # Apply: plain dict and arithmetic work from here on, once per (window, group).
        overflowed = 0
        for window_start, pending in windows.items():
            groups = self.open.get(window_start)
            if groups is None:
                groups = self.open[window_start] = {}
            for group, rows in pending.groups.items():
                measures = groups.get(group)
                if measures is None:
                    measures = groups[group] = [m.new() for m in self.spec.measures]
                self._update(measures, rows)
                if group is None:
                    overflowed += len(rows)
                self._dirty.add((b"w", window_start, group))
                self._live_dirty.add((window_start, group))
        # Every event is filtered, late or added (to at least one window).
        result.added = len(events) - result.filtered - len(result.late)
        result.overflowed = overflowed
        self.stream_time = stream_time
        self.watermark = watermark
        self.last_event_wall_ms = max(self.last_event_wall_ms, now_ms)
        self.late_events += len(result.late)
        self.overflowed += overflowed
        self._meta_dirty = True
        return result

    # Reading a batch: nothing in ``self`` is changed. Stream time and watermark start at -inf
    # when there are none yet (nothing is late then); a read batch has at least one event, so
    # they are numbers again at the end. An event is late for a window once
    # start + size + grace <= watermark, i.e. start <= closed_through.

    def _read_one_window(
        self, events: Sequence[dict[str, Any]], result: AddResult
    ) -> tuple[dict[int, _PendingWindow], int, int] | None:
        """``add``'s reading of the batch in the usual case, a few seconds of events that all
        fall in one open tumbling window (None when they do not): no event can be late then,
        so the per-event work is only ``where``, the group key and the row, each run by map /
        filter with no Python loop around it."""
        if not self._tumbling:
            return None
        window = self.spec.window
        size = window.size_ms
        times = list(map(_timestamp_of, events))
        earliest, latest = min(times), max(times)
        start = earliest - earliest % size
        if latest - latest % size != start:
            return None
        # The watermark only grows while the batch is read, to this at most: if the window is
        # open at the end, it was open for every event.
        stream_time = _NEVER if self.stream_time is None else self.stream_time
        watermark = _NEVER if self.watermark is None else self.watermark
        if latest > stream_time:
            stream_time = latest
            watermark = max(watermark, latest)
        if start + size + window.grace_ms <= watermark:
            return None
        where = self.spec.where
        kept = events if where is None else list(filter(where, events))
        result.filtered = len(events) - len(kept)
        windows: dict[int, _PendingWindow] = {}
        if not kept:
            return windows, stream_time, watermark  # type: ignore[return-value]
        pending = windows[start] = _PendingWindow(self.open.get(start))
        group_key = self._group_key
        if group_key is None:
            self._rows_for(pending, ()).extend(self._rows_of(kept))
        elif self._row_of is None:
            # Only counts of events: how many a group key has is all its rows say. (Counter
            # keeps the keys in the order they first come, in which groups are admitted.)
            for key, count in Counter(map(group_key, kept)).items():
                self._rows_for(pending, key).extend([None] * count)
        else:
            by_key = pending.by_key
            for key, row in zip(map(group_key, kept), self._rows_of(kept)):
                key_rows = by_key.get(key)
                if key_rows is None:
                    key_rows = self._rows_for(pending, key)
                key_rows.append(row)
        return windows, stream_time, watermark  # type: ignore[return-value]

    def _read_tumbling(
        self, events: Sequence[dict[str, Any]], result: AddResult
    ) -> tuple[dict[int, _PendingWindow], int, int]:
        """``add``'s reading of the batch for tumbling windows: one window per event, its start
        found by arithmetic (no list of starts per event)."""
        window = self.spec.window
        size = window.size_ms
        closes_after = size + window.grace_ms
        where = self.spec.where
        group_key = self._group_key
        row_of = self._row_of
        late = result.late
        stream_time = _NEVER if self.stream_time is None else self.stream_time
        watermark = _NEVER if self.watermark is None else self.watermark
        closed_through = watermark - closes_after
        windows: dict[int, _PendingWindow] = {}
        # The window the previous event went to, and its share of the batch: consecutive
        # events mostly go to the same one. (None: the first event looks its window up.)
        start = None
        pending = _PendingWindow(None)
        filtered = 0
        for index, event in enumerate(events):
            ts = event["timestamp"]
            if where is not None and not where(event):
                filtered += 1
            else:
                event_start = ts - ts % size
                if event_start <= closed_through:
                    late.append(index)
                else:
                    if event_start != start:
                        start = event_start
                        found = windows.get(start)
                        if found is None:
                            found = windows[start] = _PendingWindow(self.open.get(start))
                        pending = found
                    key = () if group_key is None else group_key(event)
                    rows = pending.by_key.get(key)
                    if rows is None:
                        rows = self._rows_for(pending, key)
                    rows.append(None if row_of is None else row_of(event))
            # Every event moves stream time, filtered and late ones too.
            if ts > stream_time:
                stream_time = ts
                if ts > watermark:
                    watermark = ts
                    closed_through = ts - closes_after
        result.filtered = filtered
        return windows, stream_time, watermark  # type: ignore[return-value]

    def _read_hopping(
        self, events: Sequence[dict[str, Any]], result: AddResult
    ) -> tuple[dict[int, _PendingWindow], int, int]:
        """``add``'s reading of the batch for hopping windows: an event is added to each of its
        windows that is still open."""
        window = self.spec.window
        closes_after = window.size_ms + window.grace_ms
        where = self.spec.where
        group_key = self._group_key
        row_of = self._row_of
        late = result.late
        stream_time = _NEVER if self.stream_time is None else self.stream_time
        watermark = _NEVER if self.watermark is None else self.watermark
        closed_through = watermark - closes_after
        windows: dict[int, _PendingWindow] = {}
        for index, event in enumerate(events):
            ts = event["timestamp"]
            if where is not None and not where(event):
                result.filtered += 1
            else:
                starts = window.starts(ts)
                open_starts = [s for s in starts if s > closed_through]
                if not open_starts:
                    late.append(index)
                else:
                    if len(open_starts) < len(starts):
                        result.partially_late += 1
                    key = () if group_key is None else group_key(event)
                    row = None if row_of is None else row_of(event)
                    for start in open_starts:
                        pending = windows.get(start)
                        if pending is None:
                            pending = windows[start] = _PendingWindow(self.open.get(start))
                        rows = pending.by_key.get(key)
                        if rows is None:
                            rows = self._rows_for(pending, key)
                        rows.append(row)
            if ts > stream_time:
                stream_time = ts
                if ts > watermark:
                    watermark = ts
                    closed_through = ts - closes_after
        return windows, stream_time, watermark  # type: ignore[return-value]

    def _rows_for(self, pending: _PendingWindow, key: Any) -> list[Any]:
        """The first event of a group key in one window of the batch: which group's rows it
        joins. Decided in batch order, as adding the events one by one would: a group the
        window does not have yet goes to the overflow group (None) once the window holds
        ``max_groups`` groups (the overflow group included), and stays there."""
        group: Group = (key,) if self._one_group_field else key
        existing = pending.existing
        if group not in existing and len(existing) + pending.new_groups >= self.spec.max_groups:
            group = None
        rows = pending.groups.get(group)
        if rows is None:
            rows = pending.groups[group] = []
            if group not in existing:
                pending.new_groups += 1
        pending.by_key[key] = rows
        return rows

    def _update(self, measures: list[Measure], rows: list[Any]) -> None:
        """Update one group's measures with its rows of the batch (in batch order)."""
        columns: list[tuple[Any, ...]] | None = None
        for measure, column, distinct in zip(measures, self._columns, self._distinct):
            if column is None:
                measure.add_events(len(rows))  # type: ignore[union-attr]
                continue
            if column == _ROW:
                values = rows
            else:
                if columns is None:
                    columns = list(zip(*rows))
                values = columns[column]
            if distinct:  # the rows hold distinct keys (value_reader), not raw values
                measure.update_keys(values)  # type: ignore[union-attr]
            else:
                measure.update_many(values)

    def note_offsets(self, offsets: Mapping[str, int]) -> None:
        """Record, per input topic, the next source offset not yet aggregated (``last + 1``).
        Only ever moves forward: a batch replayed after a crash must not lower it."""
        for topic, offset in offsets.items():
            previous = self.offsets.get(topic)
            if previous is None or offset > previous:
                self.offsets[topic] = offset
                self._meta_dirty = True

    def already_applied(self, topic: str, offset: int) -> bool:
        """Whether the event at ``offset`` of ``topic`` is already in these aggregates."""
        next_offset = self.offsets.get(topic)
        return next_offset is not None and offset < next_offset

    # --- closing --------------------------------------------------------------------------

    def close_due(self, now_ms: int, idle_after_ms: int | None) -> list[Partial | CloseMarker]:
        """Close the windows the watermark has passed; when the partition has been idle for
        ``idle_after_ms`` of wall-clock time (None: never idle), the watermark first advances to
        the stream time plus the wall-clock time since the last event (``now_ms`` if there was
        none). Returns their partials, then a close marker when the watermark passed the close
        time of another window since the last marker."""
        idle_for = now_ms - self.last_event_wall_ms
        if idle_after_ms is not None and idle_for >= idle_after_ms:
            self._advance(now_ms if self.stream_time is None else self.stream_time + idle_for)
        return self._close()

    def close_all(self) -> list[Partial | CloseMarker]:
        """End of input: close every window, and every later one (embedded mode)."""
        self._advance(CLOSED_FOREVER)
        return self._close()

    def _advance(self, watermark: int) -> None:
        if self.watermark is None or watermark > self.watermark:
            self.watermark = watermark
            self._meta_dirty = True

    def _closed_count(self, watermark: int | None) -> int | None:
        """How many window starts (from the epoch) are closed at ``watermark``: changes exactly
        when another window closes."""
        if watermark is None:
            return None
        w = self.spec.window
        return (watermark - w.size_ms - w.grace_ms) // w.advance_ms

    def _close(self) -> list[Partial | CloseMarker]:
        watermark = self.watermark
        if watermark is None:
            return []
        spec = self.spec
        window = spec.window
        records: list[Partial | CloseMarker] = []
        for start in sorted(s for s in self.open if window.closes_at(s) <= watermark):
            groups = self.open.pop(start)
            encoded = {}
            end = window.end(start)
            for group in sorted(groups, key=_group_order):
                data = encode_measures(groups[group])
                encoded[group] = data
                records.append(Partial(spec.name, self.partition, start, end, group, data))
                self._dirty.add((b"w", start, group))
                self._dirty.add((b"r", start, group))
                # The closing partial above is the last word: no live partial may follow it.
                self._live_dirty.discard((start, group))
            self.recent[start] = encoded
        retain = spec.retain
        for start in [s for s in self.recent if window.end(s) + retain <= watermark]:
            for group in self.recent.pop(start):
                self._dirty.add((b"r", start, group))
        if self.marked_through is None or self._closed_count(watermark) > self._closed_count(
            self.marked_through
        ):
            records.append(CloseMarker(spec.name, self.partition, watermark))
            self.marked_through = watermark
            self._meta_dirty = True
        return records

    def live_partials(self) -> list[Partial]:
        """The current partials of the open (window, group)s changed since the last call, by
        window start then group: sent periodically, so that the combiner (which keeps the latest
        partial per window, group and partition) can serve live values of open windows."""
        spec = self.spec
        window = spec.window
        partials = []
        for start, group in sorted(self._live_dirty, key=lambda sg: (sg[0], _group_order(sg[1]))):
            measures = self.open.get(start, {}).get(group)
            if measures is None:  # closed since: its closing partial was the last word
                continue
            partials.append(
                Partial(
                    spec.name,
                    self.partition,
                    start,
                    window.end(start),
                    group,
                    encode_measures(measures),
                )
            )
        self._live_dirty.clear()
        return partials

    # --- queries --------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """Open and recent windows with their current (partial) values, JSON-able."""
        spec = self.spec
        window = spec.window
        windows = []
        for start, groups in self.open.items():
            windows.append(self._window_view(start, False, groups.items()))
        for start, encoded in self.recent.items():
            decoded = ((g, decode_measures(spec.measures, d)) for g, d in encoded.items())
            windows.append(self._window_view(start, True, decoded))
        windows.sort(key=lambda w: (w["window_start"], w["closed"]))
        return {
            "aggregate": spec.name,
            "partition": self.partition,
            "stream_time": self.stream_time,
            "watermark": self.watermark,
            "late_events": self.late_events,
            "overflowed": self.overflowed,
            "window_size_ms": window.size_ms,
            "windows": windows,
        }

    def _window_view(
        self, start: int, closed: bool, groups: Iterable[tuple[Group, Sequence[Measure]]]
    ) -> dict[str, Any]:
        spec = self.spec
        rows = sorted(groups, key=lambda gm: _group_order(gm[0]))
        return {
            "window_start": start,
            "window_end": spec.window.end(start),
            "closed": closed,
            "groups": [
                {
                    "group": spec.group_dict(g),
                    "overflow": g is None,
                    "measures": spec.results(m),
                }
                for g, m in rows
            ],
        }

    # --- state ----------------------------------------------------------------------------
    # Keys: b"m" (meta: JSON, with the source offsets), b"w:<start>:<group JSON>" (an open
    # window's group: measures bytes), b"r:<start>:<group JSON>" (a recent, closed one). A table
    # per aggregate, keyed within the source partition, holds them.

    def _meta(self) -> bytes:
        return orjson.dumps(
            {
                "v": STATE_VERSION,
                "def": self.spec.state_fingerprint,
                "stream_time": self.stream_time,
                "watermark": self.watermark,
                "last_event_wall_ms": self.last_event_wall_ms,
                "marked_through": self.marked_through,
                "late_events": self.late_events,
                "overflowed": self.overflowed,
                "offsets": self.offsets,
            }
        )

    @staticmethod
    def _key(kind: bytes, start: int, group: Group) -> bytes:
        return kind + b":" + str(start).encode() + b":" + group_key_bytes(group)

    def to_state(self) -> dict[bytes, bytes]:
        state = {b"m": self._meta()}
        for start, groups in self.open.items():
            for group, measures in groups.items():
                state[self._key(b"w", start, group)] = encode_measures(measures)
        for start, encoded in self.recent.items():
            for group, data in encoded.items():
                state[self._key(b"r", start, group)] = data
        return state

    def drain_changes(self) -> dict[bytes, bytes | None]:
        """What changed since the last call: key → new value, or None for a deleted key."""
        changes: dict[bytes, bytes | None] = {}
        for kind, start, group in self._dirty:
            if kind == b"w":
                measures = self.open.get(start, {}).get(group)
                value = encode_measures(measures) if measures is not None else None
            else:
                value = self.recent.get(start, {}).get(group)
            changes[self._key(kind, start, group)] = value
        self._dirty.clear()
        # The meta record goes last (dicts keep insertion order): the runtime produces the
        # changes in this order, and an idempotent producer writes one partition in order, so a
        # meta record (with its source offsets) that reached the changelog implies that the
        # window records before it did too: the replay guard never skips an event whose effect
        # was lost.
        if self._meta_dirty:
            changes[b"m"] = self._meta()
            self._meta_dirty = False
        return changes

    @classmethod
    def from_state(
        cls,
        spec: AggregateSpec,
        partition: int,
        state: Iterable[tuple[bytes, bytes]],
        *,
        now_ms: int,
    ) -> PartitionAggregator:
        """Rebuild from ``to_state()`` / accumulated ``drain_changes()`` items. The idle clock
        restarts at ``now_ms`` (a restored partition is not idle just because of the restart).

        Every open (window, group) counts as changed for ``live_partials()``: the state may
        come from another worker (or from before a discarded batch) whose latest changes never
        went out as live partials, and the combiner would otherwise keep showing the older
        values of a window that gets no further event."""
        agg = cls(spec, partition, created_ms=now_ms)
        for key, value in state:
            if key == b"m":
                meta = orjson.loads(value)
                if meta.get("v") != STATE_VERSION:
                    raise ValueError(f"unknown aggregate state version {meta.get('v')!r}")
                spec.check_stored_definition(meta)
                agg.stream_time = meta["stream_time"]
                agg.watermark = meta["watermark"]
                agg.marked_through = meta["marked_through"]
                agg.late_events = meta["late_events"]
                agg.overflowed = meta["overflowed"]
                # Optional (absent in state written before offsets were kept): no guard then.
                agg.offsets = dict(meta.get("offsets") or {})
                agg._meta_dirty = False
                continue
            kind, start_text, group_text = key.split(b":", 2)
            start = int(start_text)
            group = parse_group(group_text)
            if kind == b"w":
                agg.open.setdefault(start, {})[group] = decode_measures(spec.measures, value)
            elif kind == b"r":
                agg.recent.setdefault(start, {})[group] = value
            else:
                raise ValueError(f"unknown aggregate state key {key!r}")
        agg._live_dirty.update((start, group) for start, groups in agg.open.items() for group in groups)
        return agg


def _group_order(group: Group) -> tuple[int, tuple[str, ...]]:
    return (1, ()) if group is None else (0, group)


# --- wire format of partials and markers (the partials topic) -------------------------------


def encode_record(record: Partial | CloseMarker) -> bytes:
    """Bytes for the partials topic: a JSON header line, then (partials) the measures bytes."""
    if isinstance(record, CloseMarker):
        return orjson.dumps(
            {
                "v": 1,
                "kind": "close",
                "aggregate": record.aggregate,
                "partition": record.partition,
                "closed_through": record.closed_through,
            }
        )
    header = orjson.dumps(
        {
            "v": 1,
            "kind": "partial",
            "aggregate": record.aggregate,
            "partition": record.partition,
            "window_start": record.window_start,
            "window_end": record.window_end,
            "group": None if record.group is None else list(record.group),
        }
    )
    return header + b"\n" + record.measures


def decode_record(data: bytes) -> Partial | CloseMarker:
    header, _, measures = data.partition(b"\n")
    h = orjson.loads(header)
    if h.get("v") != 1:
        raise ValueError(f"unknown partial record version {h.get('v')!r}")
    if h["kind"] == "close":
        return CloseMarker(h["aggregate"], h["partition"], h["closed_through"])
    group = None if h["group"] is None else tuple(h["group"])
    return Partial(
        h["aggregate"], h["partition"], h["window_start"], h["window_end"], group, measures
    )
