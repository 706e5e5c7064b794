"""Where the dedupe stage remembers keys. The stage is given a store; it never builds one.

``MemoryDedupeStore`` serves embedded mode and tests. The worker gives the stage a store backed
by a Faust table with a changelog (``pipeline/runtime/state.py``), so the keys survive restarts and
rebalances.
"""

from __future__ import annotations

from typing import Protocol, Sequence


class DedupeStore(Protocol):
    def seen(self, partition: int, keys: Sequence[bytes], now_ms: int) -> list[bool]:
        """For each key: was it remembered (and not yet expired) in this partition?"""
        ...

    def remember(self, partition: int, entries: Sequence[tuple[bytes, int]]) -> None:
        """Remember ``(key, expires_at_ms)`` entries in this partition."""
        ...

    def size(self) -> int:
        """Keys held (for metrics and the bounded-state alert)."""
        ...


class MemoryDedupeStore:
    """Keys with an expiry, per partition, in dicts; expired keys are swept as writes go by."""

    def __init__(self, *, sweep_every: int = 50_000) -> None:
        self._partitions: dict[int, dict[bytes, int]] = {}
        self._sweep_every = sweep_every
        self._writes = 0

    def seen(self, partition: int, keys: Sequence[bytes], now_ms: int) -> list[bool]:
        held = self._partitions.get(partition)
        if not held or held.keys().isdisjoint(keys):
            # Nearly every key is new: one set test in C instead of a lookup per key in Python.
            return [False] * len(keys)
        get = held.get
        return [(expiry := get(k)) is not None and expiry > now_ms for k in keys]

    def remember(self, partition: int, entries: Sequence[tuple[bytes, int]]) -> None:
        held = self._partitions.setdefault(partition, {})
        held.update(entries)
        self._writes += len(entries)
        if self._writes >= self._sweep_every:
            self._writes = 0
            newest = max((e for _, e in entries), default=0)
            self.sweep(now_ms=newest - 1)

    def sweep(self, *, now_ms: int) -> int:
        """Forget expired keys. Returns how many."""
        removed = 0
        for held in self._partitions.values():
            expired = [k for k, e in held.items() if e <= now_ms]
            for k in expired:
                del held[k]
            removed += len(expired)
        return removed

    def size(self) -> int:
        return sum(len(h) for h in self._partitions.values())
