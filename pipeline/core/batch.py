"""What one batch accumulates on its way through the stages."""

from __future__ import annotations

from collections import Counter
from typing import Any

from pipeline.core.deadletter import DeadLetterBuilder, dead_letter_key
from pipeline.core.records import Output, SourceMessage


class BatchContext:
    """Collects the outputs, dead letters and counters of one batch.

    ``now_ms`` is read once per batch from the injected clock, so every event of a batch is
    judged against the same "now" and tests control time without sleeping.
    """

    __slots__ = (
        "_dead_letter",
        "counters",
        "dead_letters",
        "event_times_ms",
        "now_ms",
        "outputs",
        "shared",
        "stage_seconds",
    )

    def __init__(self, *, now_ms: int, dead_letter: DeadLetterBuilder) -> None:
        self.now_ms = now_ms
        self.outputs: list[Output] = []
        self.dead_letters: Counter[tuple[str, str]] = Counter()
        """Dead letters by (reason, stage id)."""
        self.counters: Counter[tuple[str, str]] = Counter()
        """Free-form per-stage outcomes by (stage id, outcome), for metrics."""
        self.stage_seconds: dict[str, float] = {}
        """Time each stage spent on the batch, by stage id (for metrics)."""
        self.event_times_ms: list[int] = []
        """Event times (epoch ms) of the batch's valid events (for the event-lag metric)."""
        self.shared: dict[str, Any] = {}
        """What several stages derive alike from the items they are given, computed by the
        first of them (each kind under its own key; see ``AggregateStage``). Emptied once the
        batch has been through every stage, so it does not keep the events alive."""
        self._dead_letter = dead_letter

    def emit(self, topic: str, key: bytes | None, value: bytes) -> None:
        self.outputs.append((topic, key, value))

    def dead_letter(
        self,
        message: SourceMessage,
        *,
        reason: str,
        stage: str,
        detail: str,
        path: str | None = None,
        event: dict[str, Any] | None = None,
    ) -> None:
        record = self._dead_letter.build(
            message,
            reason=reason,
            stage=stage,
            detail=detail,
            path=path,
            failed_at_ms=self.now_ms,
            event=event,
        )
        self.outputs.append((self._dead_letter.topic, dead_letter_key(message.key), record))
        self.dead_letters[(reason, stage)] += 1
