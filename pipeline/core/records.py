"""The plain data that flows through the stages."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence


class SourceMessage(Protocol):
    """A consumed message. aiokafka's ``ConsumerRecord`` satisfies it as is (no copy per event)."""

    topic: str
    partition: int
    offset: int
    timestamp: int | None
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes]]


@dataclass(slots=True)
class RawMessage:
    """A message that did not come from a broker (embedded mode, tests, replays)."""

    value: bytes | None
    key: bytes | None = None
    topic: str = ""
    partition: int = -1
    offset: int = -1
    timestamp: int | None = None
    headers: Sequence[tuple[str, bytes]] = field(default_factory=tuple)


class Item:
    """One event on its way through the stages: the decoded event and where it came from."""

    __slots__ = ("event", "message")

    def __init__(self, event: dict[str, Any], message: SourceMessage) -> None:
        self.event = event
        self.message = message


# (topic, key, value): what a batch produces.
Output = tuple[str, bytes | None, bytes]
