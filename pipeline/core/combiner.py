"""Merge the partial aggregates of all source partitions into final window records.

A ``WindowCombiner`` serves one aggregate. It receives, from each of the source partitions, the
partials of the windows that partition closed and its close markers (watermarks). A window is
final once every partition's watermark has passed its ``end + grace``; the combiner then emits
one record per (window, group) with the merged measures and forgets the window.

Idempotent, so an at-least-once transport is enough: a partial for a (window, group, partition)
replaces any earlier one (a partition that crashed and replayed its events re-sends the same
partials), markers only ever move a partition's watermark forward, and a partial for a window
that is already final (a re-send after the fact) is ignored and counted (``stale_partials``).

Queries. Partitions also send *live* partials of their open windows now and then; they replace
one another like any partial, so the pending windows merged over what has arrived so far are the
live values (``snapshot()``, ``live_values()``). After a window is final its records are kept
(``recent``) until ``end + retain`` is complete, so "the current and recent windows" can be
served from one place.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson

from pipeline.core.aggregator import (
    OVERFLOW_GROUP_VALUE,
    AggregateSpec,
    CloseMarker,
    Group,
    Partial,
    _group_order,
    group_key_bytes,
    parse_group,
)
from pipeline.core.measures import decode_measures, merge_all

STATE_VERSION = 1


class UnexpectedPartition(ValueError):
    """A partial or marker from a partition the combiner was not told about."""


class WindowCombiner:
    def __init__(self, spec: AggregateSpec, partitions: int | Iterable[int]) -> None:
        self.spec = spec
        self.partitions: frozenset[int] = frozenset(
            range(partitions) if isinstance(partitions, int) else partitions
        )
        """The source partitions whose markers a window waits for (an int n means 0..n-1)."""
        self.windows: dict[int, dict[Group, dict[int, bytes]]] = {}
        """Pending windows by start: group → source partition → encoded partial measures."""
        self.watermarks: dict[int, int] = {}
        """Per source partition: ``closed_through`` of its latest close marker."""
        self.stale_partials = 0
        self.recent: dict[int, list[dict[str, Any]]] = {}
        """Final windows by start: their final records (as emitted), kept for queries until
        ``end + retain <= complete_through()``."""
        self._dirty_partials: set[tuple[int, int, Group]] = set()
        """(start, partition, group) of partials stored or deleted since ``drain_changes()``."""
        self._dirty_finals: set[int] = set()
        """Starts of recent windows added or dropped since ``drain_changes()``."""
        self._meta_dirty = True
        """Starts set: a new one's meta is not stored yet (``from_state`` clears it once the
        stored meta is read), so the drained changes add up to ``to_state()`` from the start."""

    def set_partitions(self, partitions: Iterable[int]) -> list[dict[str, Any]]:
        """Change the partitions to wait for; returns the records of windows that are now final."""
        self.partitions = frozenset(partitions)
        return self._finalize()

    def complete_through(self) -> int | None:
        """Windows with ``end + grace`` at or before this are final (None: some partition has not
        reported yet)."""
        if not self.partitions:
            return None
        marks = [self.watermarks.get(p) for p in self.partitions]
        if any(m is None for m in marks):
            return None
        return min(marks)  # type: ignore[type-var]

    def add(self, records: Iterable[Partial | CloseMarker]) -> list[dict[str, Any]]:
        """Take partials and markers (in the order each partition sent them); returns the final
        records of the windows this completed, by window start then group."""
        window = self.spec.window
        done = self.complete_through()
        for record in records:
            if record.aggregate != self.spec.name:
                raise ValueError(
                    f"record of aggregate {record.aggregate!r} sent to {self.spec.name!r}"
                )
            if record.partition not in self.partitions:
                raise UnexpectedPartition(
                    f"aggregate {self.spec.name!r}: partition {record.partition} is not one of "
                    f"{sorted(self.partitions)}"
                )
            if isinstance(record, CloseMarker):
                previous = self.watermarks.get(record.partition)
                if previous is None or record.closed_through > previous:
                    self.watermarks[record.partition] = record.closed_through
                    self._meta_dirty = True
                    done = self.complete_through()
                continue
            if done is not None and window.closes_at(record.window_start) <= done:
                self.stale_partials += 1
                self._meta_dirty = True
                continue
            groups = self.windows.setdefault(record.window_start, {})
            groups.setdefault(record.group, {})[record.partition] = record.measures
            self._dirty_partials.add((record.window_start, record.partition, record.group))
        return self._finalize()

    def _finalize(self) -> list[dict[str, Any]]:
        done = self.complete_through()
        if done is None:
            return []
        window = self.spec.window
        finals = []
        for start in sorted(s for s in self.windows if window.closes_at(s) <= done):
            groups = self.windows.pop(start)
            records = []
            for group in sorted(groups, key=_group_order):
                by_partition = groups[group]
                records.append(self._record(start, group, by_partition))
                self._dirty_partials.update((start, p, group) for p in by_partition)
            # Normally new; a window is finalized again only when a re-sent partial was taken
            # while some partition had not reported yet (nothing was known final): its latest
            # records are the ones shown.
            self.recent[start] = records
            self._dirty_finals.add(start)
            finals.extend(records)
        retain = self.spec.retain
        for start in [s for s in self.recent if window.end(s) + retain <= done]:
            del self.recent[start]
            self._dirty_finals.add(start)
        return finals

    def _record(self, start: int, group: Group, by_partition: dict[int, bytes]) -> dict[str, Any]:
        spec = self.spec
        merged = merge_all(spec.measures, [by_partition[p] for p in sorted(by_partition)])
        return {
            "aggregate": spec.name,
            "window_start": start,
            "window_end": spec.window.end(start),
            "group": spec.group_dict(group),
            "overflow": group is None,
            "measures": spec.results(merged),
            "skipped": spec.skipped(merged),
            "partitions": sorted(by_partition),
        }

    def snapshot(self) -> dict[str, Any]:
        """Pending windows merged over the partials received so far (``final``: False) and the
        recent final windows (``final``: True), by window start (JSON-able)."""
        spec = self.spec
        windows = []
        for start, groups in self.windows.items():
            windows.append(
                {
                    "window_start": start,
                    "window_end": spec.window.end(start),
                    "closed": False,
                    "final": False,
                    "groups": [
                        self._record(start, g, groups[g]) for g in sorted(groups, key=_group_order)
                    ],
                }
            )
        for start, records in self.recent.items():
            windows.append(
                {
                    "window_start": start,
                    "window_end": spec.window.end(start),
                    "closed": True,
                    "final": True,
                    "groups": records,
                }
            )
        windows.sort(key=lambda w: (w["window_start"], w["final"]))
        return {
            "aggregate": spec.name,
            "partitions": sorted(self.partitions),
            "watermarks": {str(p): w for p, w in sorted(self.watermarks.items())},
            "stale_partials": self.stale_partials,
            "windows": windows,
        }

    def live_values(self, measure_id: str) -> tuple[int, dict[str, float]] | None:
        """The latest pending window (largest start), merged over the partials received so far:
        ``(window_start, {group label: value})`` of one measure, for a gauge. The label is the
        group values joined by "/" ("" without group_by, "__overflow__" for the overflow group);
        groups whose value is not a number (a min of nothing: None) are left out. None when no
        window is pending."""
        spec = self.spec
        index = next((i for i, m in enumerate(spec.measures) if m.id == measure_id), None)
        if index is None:
            raise KeyError(f"aggregate {spec.name!r} has no measure {measure_id!r}")
        if not self.windows:
            return None
        start = max(self.windows)
        values: dict[str, float] = {}
        for group, by_partition in self.windows[start].items():
            merged = merge_all(spec.measures, [by_partition[p] for p in sorted(by_partition)])
            value = merged[index].result()
            if type(value) in (int, float):
                label = OVERFLOW_GROUP_VALUE if group is None else "/".join(group)
                values[label] = float(value)
        return start, values

    # --- state: b"m" (meta JSON), b"p:<start>:<partition>:<group JSON>" (partial bytes) and
    # b"f:<start>" (a recent final window: JSON list of its final records) ---------------------

    def _meta(self) -> bytes:
        return orjson.dumps(
            {
                "v": STATE_VERSION,
                "def": self.spec.state_fingerprint,
                "watermarks": {str(p): w for p, w in self.watermarks.items()},
                "stale_partials": self.stale_partials,
            }
        )

    @staticmethod
    def _partial_key(start: int, partition: int, group: Group) -> bytes:
        return b"p:%d:%d:%s" % (start, partition, group_key_bytes(group))

    @staticmethod
    def _final_key(start: int) -> bytes:
        return b"f:%d" % start

    def to_state(self) -> dict[bytes, bytes]:
        state = {b"m": self._meta()}
        for start, groups in self.windows.items():
            for group, by_partition in groups.items():
                for partition, data in by_partition.items():
                    state[self._partial_key(start, partition, group)] = data
        for start, records in self.recent.items():
            state[self._final_key(start)] = orjson.dumps(records)
        return state

    def drain_changes(self) -> dict[bytes, bytes | None]:
        """What changed since the last call: key → new value, or None for a deleted key."""
        changes: dict[bytes, bytes | None] = {}
        for start, partition, group in self._dirty_partials:
            data = self.windows.get(start, {}).get(group, {}).get(partition)
            changes[self._partial_key(start, partition, group)] = data
        self._dirty_partials.clear()
        for start in self._dirty_finals:
            records = self.recent.get(start)
            changes[self._final_key(start)] = orjson.dumps(records) if records is not None else None
        self._dirty_finals.clear()
        # Meta last, as in ``PartitionAggregator.drain_changes``: the runtime produces the changes
        # in dict order to one changelog partition with an idempotent producer, so a meta record
        # (watermarks) that arrived implies that the partial and final records before it did.
        if self._meta_dirty:
            changes[b"m"] = self._meta()
            self._meta_dirty = False
        return changes

    @classmethod
    def from_state(
        cls,
        spec: AggregateSpec,
        partitions: int | Iterable[int],
        state: Iterable[tuple[bytes, bytes]],
    ) -> WindowCombiner:
        combiner = cls(spec, partitions)
        for key, value in state:
            if key == b"m":
                meta = orjson.loads(value)
                if meta.get("v") != STATE_VERSION:
                    raise ValueError(f"unknown combiner state version {meta.get('v')!r}")
                spec.check_stored_definition(meta)
                combiner.watermarks = {int(p): w for p, w in meta["watermarks"].items()}
                combiner.stale_partials = meta["stale_partials"]
                combiner._meta_dirty = False
                continue
            kind = key.split(b":", 1)[0]
            if kind == b"p":  # p:<start>:<partition>:<group JSON> (the JSON may hold colons)
                _, start, partition, group = key.split(b":", 3)
                decode_measures(spec.measures, value)  # refuse other measures' state now
                combiner.windows.setdefault(int(start), {}).setdefault(parse_group(group), {})[
                    int(partition)
                ] = value
            elif kind == b"f":  # f:<start>
                _, start = key.split(b":", 1)
                combiner.recent[int(start)] = orjson.loads(value)
            else:
                raise ValueError(f"unknown combiner state key {key!r}")
        return combiner
