"""Merge the partial aggregates of all source partitions into final window records.

A ``WindowCombiner`` serves one aggregate. It receives, from each of the source partitions, the
partials of the windows that partition closed and its close markers (watermarks). A window is
final once every partition's watermark has passed its ``end + grace``; the combiner then emits
one record per (window, group) with the merged measures and forgets the window.

Idempotent, so an at-least-once transport is enough: a partial for a (window, group, partition)
replaces any earlier one (a partition that crashed and replayed its events re-sends the same
partials), markers only ever move a partition's watermark forward, and a partial for a window
that is already final (a re-send after the fact) is ignored and counted (``stale_partials``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson

from pipeline.core.aggregator import (
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
                    done = self.complete_through()
                continue
            if done is not None and window.closes_at(record.window_start) <= done:
                self.stale_partials += 1
                continue
            groups = self.windows.setdefault(record.window_start, {})
            groups.setdefault(record.group, {})[record.partition] = record.measures
        return self._finalize()

    def _finalize(self) -> list[dict[str, Any]]:
        done = self.complete_through()
        if done is None:
            return []
        window = self.spec.window
        finals = []
        for start in sorted(s for s in self.windows if window.closes_at(s) <= done):
            groups = self.windows.pop(start)
            for group in sorted(groups, key=_group_order):
                by_partition = groups[group]
                finals.append(self._record(start, group, by_partition))
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
        """Pending windows merged over the partials received so far (JSON-able)."""
        spec = self.spec
        windows = []
        for start in sorted(self.windows):
            groups = self.windows[start]
            windows.append(
                {
                    "window_start": start,
                    "window_end": spec.window.end(start),
                    "groups": [
                        self._record(start, g, groups[g]) for g in sorted(groups, key=_group_order)
                    ],
                }
            )
        return {
            "aggregate": spec.name,
            "partitions": sorted(self.partitions),
            "watermarks": {str(p): w for p, w in sorted(self.watermarks.items())},
            "stale_partials": self.stale_partials,
            "windows": windows,
        }

    # --- state: b"m" (meta JSON) and b"p:<start>:<partition>:<group JSON>" (partial bytes) ----

    def to_state(self) -> dict[bytes, bytes]:
        state = {
            b"m": orjson.dumps(
                {
                    "v": STATE_VERSION,
                    "watermarks": {str(p): w for p, w in self.watermarks.items()},
                    "stale_partials": self.stale_partials,
                }
            )
        }
        for start, groups in self.windows.items():
            for group, by_partition in groups.items():
                for partition, data in by_partition.items():
                    key = b"p:%d:%d:%s" % (start, partition, group_key_bytes(group))
                    state[key] = data
        return state

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
                combiner.watermarks = {int(p): w for p, w in meta["watermarks"].items()}
                combiner.stale_partials = meta["stale_partials"]
                continue
            kind, start, partition, group = key.split(b":", 3)
            if kind != b"p":
                raise ValueError(f"unknown combiner state key {key!r}")
            decode_measures(spec.measures, value)  # refuse state of other measures now, not later
            combiner.windows.setdefault(int(start), {}).setdefault(parse_group(group), {})[
                int(partition)
            ] = value
        return combiner
