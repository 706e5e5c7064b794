"""Event-time windows: which windows an event belongs to, and when a window may close.

Times are epoch milliseconds. Windows are aligned to the epoch: a window of ``size`` starts at
every multiple of ``advance`` (tumbling windows are the case ``advance == size``) and covers
``[start, start + size)``. A window *closes* once the partition's watermark reaches
``end + grace``: until then late-arriving events are still added to it; from then on it is final.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class WindowSpec:
    size_ms: int
    """Length of a window."""
    advance_ms: int
    """Distance between the starts of consecutive windows (= size for tumbling windows)."""
    grace_ms: int = 0
    """How long after its end a window still accepts out-of-order events."""

    def __post_init__(self) -> None:
        if self.size_ms <= 0 or self.advance_ms <= 0:
            raise ValueError("window size and advance must be positive")
        if self.advance_ms > self.size_ms:
            # Events between two windows would belong to none.
            raise ValueError("a window cannot advance by more than its size")
        if self.grace_ms < 0:
            raise ValueError("grace cannot be negative")

    @classmethod
    def tumbling(cls, size_ms: int, grace_ms: int = 0) -> WindowSpec:
        return cls(size_ms, size_ms, grace_ms)

    @classmethod
    def hopping(cls, size_ms: int, advance_ms: int, grace_ms: int = 0) -> WindowSpec:
        return cls(size_ms, advance_ms, grace_ms)

    def starts(self, timestamp_ms: int) -> list[int]:
        """Starts of every window containing ``timestamp_ms``, latest first."""
        start = timestamp_ms - timestamp_ms % self.advance_ms  # floor, negative times included
        found = []
        while start + self.size_ms > timestamp_ms:
            found.append(start)
            start -= self.advance_ms
        return found

    def last_start(self, timestamp_ms: int) -> int:
        """Start of the latest window containing ``timestamp_ms`` (the one that closes last)."""
        return timestamp_ms - timestamp_ms % self.advance_ms

    def end(self, start_ms: int) -> int:
        return start_ms + self.size_ms

    def closes_at(self, start_ms: int) -> int:
        """The watermark at which the window starting at ``start_ms`` is final."""
        return start_ms + self.size_ms + self.grace_ms

    def is_closed(self, start_ms: int, watermark_ms: int | None) -> bool:
        return watermark_ms is not None and self.closes_at(start_ms) <= watermark_ms
