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
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import orjson

from pipeline.core.identity import canonical_identity
from pipeline.errors import StateMismatch
from pipeline.core.measures import (
    Measure,
    MeasureSpec,
    _number,
    decode_measures,
    distinct_key,
    encode_measures,
)
from pipeline.core.windows import WindowSpec

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
        self._getters = tuple(field_getter(p) for p in spec.group_by)
        self._values = tuple(
            (field_getter(m.field) if m.field else None, m.kind) for m in spec.measures
        )

    # --- events ---------------------------------------------------------------------------

    def add(self, events: Sequence[dict[str, Any]], now_ms: int) -> AddResult:
        """Aggregate a batch of validated events (``timestamp`` in epoch ms), in order.

        Nothing is changed until every event of the batch has been read, so an exception (a
        bug) leaves the aggregator as it was and the batch can be replayed event by event.
        """
        result = AddResult()
        if not events:
            return result
        spec = self.spec
        window = spec.window
        where = spec.where
        watermark = self.watermark
        stream_time = self.stream_time
        prepared: list[tuple[list[int], Group, list[Any]]] = []
        for index, event in enumerate(events):
            ts = event["timestamp"]
            if where is not None and not where(event):
                result.filtered += 1
            else:
                starts = window.starts(ts)
                if watermark is not None:
                    open_starts = [s for s in starts if window.closes_at(s) > watermark]
                    if not open_starts:
                        result.late.append(index)
                    elif len(open_starts) < len(starts):
                        result.partially_late += 1
                    starts = open_starts
                if starts:
                    prepared.append((starts, self._group_of(event), self._values_of(event)))
            if stream_time is None or ts > stream_time:
                stream_time = ts
                watermark = stream_time if watermark is None else max(watermark, stream_time)

        # Apply: plain dict and arithmetic work from here on.
        for starts, group, values in prepared:
            for start in starts:
                groups = self.open.get(start)
                if groups is None:
                    groups = self.open[start] = {}
                measures = groups.get(group)
                if measures is None:
                    if len(groups) >= spec.max_groups and group is not None:
                        group = None
                        result.overflowed += 1
                        measures = groups.get(None)
                    if measures is None:
                        measures = groups[group] = [m.new() for m in spec.measures]
                for measure, value in zip(measures, values):
                    measure.update(value)  # type: ignore[arg-type]
                self._dirty.add((b"w", start, group))
                self._live_dirty.add((start, group))
            result.added += 1
        self.stream_time = stream_time
        self.watermark = watermark
        self.last_event_wall_ms = max(self.last_event_wall_ms, now_ms)
        self.late_events += len(result.late)
        self.overflowed += result.overflowed
        self._meta_dirty = True
        return result

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

    def _group_of(self, event: dict[str, Any]) -> Group:
        return tuple(render_group_value(get(event)) for get in self._getters)

    def _values_of(self, event: dict[str, Any]) -> list[Any]:
        values = []
        for get, kind in self._values:
            if get is None:
                values.append(True)  # a count of events: every event counts
                continue
            raw = get(event)
            if kind == "distinct":
                values.append(distinct_key(raw))  # may raise: before anything is changed
            elif kind == "count":
                values.append(raw)
            else:
                values.append(_number(raw) if raw is not None else None)
        return values

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
