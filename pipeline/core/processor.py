"""Runs a topology's stages over a batch of messages. Used by the worker and embedded mode alike."""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from time import perf_counter
from typing import Any

from pipeline.core.batch import BatchContext
from pipeline.core.deadletter import DeadLetterBuilder
from pipeline.core.reasons import Reason
from pipeline.core.records import Item, SourceMessage
from pipeline.errors import PipelineError
from pipeline.stages import stage_type
from pipeline.topology.model import Topology

log = logging.getLogger(__name__)

_Snapshot = tuple[dict[tuple[str, str], int], dict[tuple[str, str], int]]


def _snapshot(ctx: BatchContext) -> _Snapshot:
    """The batch's counts before a stage runs, to undo its partial counts if it fails.

    Plain dict copies: one is taken for every stage of every batch but used only after a
    failure, and ``Counter.copy()`` runs Python code (~10x the cost of ``dict()``)."""
    return dict(ctx.dead_letters), dict(ctx.counters)


def _restore(ctx: BatchContext, snapshot: _Snapshot) -> None:
    ctx.dead_letters, ctx.counters = Counter(snapshot[0]), Counter(snapshot[1])


def _build_stage(spec: Any, topology: Topology) -> Any:
    return stage_type(spec.type).build(spec.id, topology.stage_configs[spec.id], topology)


def _status(stage: Any) -> str:
    """``enabled`` / ``disabled: why`` (stages that cannot be disabled have no ``status``)."""
    return stage.status() if hasattr(stage, "status") else "enabled"


def _close(stage: Any) -> None:
    close = getattr(stage, "close", None)
    if close is not None:
        close()


def start_each_stage(topology: Topology) -> tuple[dict[str, str], list[str]]:
    """Build every stage as a worker does (databases opened, secrets read), each on its own,
    then close it: (stage id → ``enabled`` / ``disabled: why``, the stages that cannot start
    and why). Every failure is reported, not just the first (``pipeline check --start``)."""
    statuses: dict[str, str] = {}
    problems: list[str] = []
    for spec in topology.spec.stages:
        try:
            stage = _build_stage(spec, topology)
        except PipelineError as exc:  # EnricherUnavailable names the stage and the enricher
            problems.append(str(exc))
            continue
        except Exception as exc:  # noqa: BLE001 - a bug in a stage's start-up is reported too
            problems.append(f"stage {spec.id!r} cannot start: {type(exc).__name__}: {exc}")
            continue
        statuses[spec.id] = _status(stage)
        _close(stage)
    return statuses, problems


class Processor:
    """validate → middle stages → route, over whole batches.

    Stages work on batches because per-event overhead, not the work, dominates a Python stream
    processor. If a stage raises on a batch (a bug, or an input nobody foresaw) the batch is
    replayed through that stage one item at a time, so only the events that really fail are
    dead-lettered as ``stage_error`` with the stage id, and the worker keeps going.
    """

    def __init__(self, topology: Topology, *, clock: Callable[[], float] = time.time) -> None:
        self.topology = topology
        self._clock = clock
        topology.clock = clock
        spec = topology.spec
        self._dead_letter = DeadLetterBuilder(
            topic=spec.dead_letter.topic,
            topology_name=topology.name,
            topology_version=topology.version,
            max_payload_bytes=spec.dead_letter.max_payload_bytes,
        )
        stages = [_build_stage(s, topology) for s in spec.stages]
        self.source = stages[0]
        self.middle = stages[1:-1]
        self.sink = stages[-1]
        self.stage_ids = [s.id for s in spec.stages]

    def close(self) -> None:
        """Release what stages hold (database readers, caches)."""
        for stage in (self.source, *self.middle, self.sink):
            _close(stage)

    def statuses(self) -> dict[str, str]:
        """Stage id → ``enabled`` / ``disabled: why``, for start-up logs and metrics."""
        return {stage.id: _status(stage) for stage in (self.source, *self.middle, self.sink)}

    def new_context(self) -> BatchContext:
        return BatchContext(now_ms=int(self._clock() * 1000), dead_letter=self._dead_letter)

    def process(self, messages: Sequence[SourceMessage]) -> BatchContext:
        """Process one batch; the context holds every output, in input order per stage."""
        ctx = self.new_context()
        batch = messages if isinstance(messages, list) else list(messages)
        mark = len(ctx.outputs)
        before = _snapshot(ctx)
        seconds = ctx.stage_seconds
        started = perf_counter()
        try:
            items = self.source.decode(batch, ctx)
        except Exception:
            log.exception("stage %r failed on a batch; isolating the failing messages", self.source.id)
            del ctx.outputs[mark:]
            _restore(ctx, before)
            items = self._decode_one_by_one(batch, ctx)
        ctx.event_times_ms = [item.event["timestamp"] for item in items]
        now = perf_counter()
        seconds[self.source.id] = now - started
        try:
            for stage in self.middle:
                started = now
                items = self._guarded(stage.id, stage.process, items, ctx)
                now = perf_counter()
                seconds[stage.id] = now - started
            self._guarded(self.sink.id, self.sink.emit, items, ctx)
        finally:
            ctx.shared.clear()
        seconds[self.sink.id] = perf_counter() - now
        return ctx

    def _decode_one_by_one(self, batch: list[SourceMessage], ctx: BatchContext) -> list[Item]:
        items: list[Item] = []
        for message in batch:
            mark = len(ctx.outputs)
            before = _snapshot(ctx)
            try:
                items.extend(self.source.decode([message], ctx))
            except Exception as exc:  # noqa: BLE001 - a bug must not stop the stream
                del ctx.outputs[mark:]
                _restore(ctx, before)
                ctx.dead_letter(
                    message,
                    reason=Reason.STAGE_ERROR,
                    stage=self.source.id,
                    detail=f"{type(exc).__name__}: {exc}",
                )
        return items

    def _guarded(
        self,
        stage_id: str,
        run: Callable[[list[Item], BatchContext], Any],
        items: list[Item],
        ctx: BatchContext,
    ) -> list[Item]:
        mark = len(ctx.outputs)
        before = _snapshot(ctx)
        try:
            return run(items, ctx) or []
        except Exception:
            log.exception("stage %r failed on a batch; isolating the failing events", stage_id)
        # Undo the batch's partial outputs and counts, then replay one event at a time.
        del ctx.outputs[mark:]
        _restore(ctx, before)
        survivors: list[Item] = []
        for item in items:
            mark = len(ctx.outputs)
            before = _snapshot(ctx)
            try:
                survivors.extend(run([item], ctx) or [])
            except Exception as exc:  # noqa: BLE001 - a bug must not stop the stream
                del ctx.outputs[mark:]
                _restore(ctx, before)
                ctx.counters[(stage_id, "error")] += 1
                ctx.dead_letter(
                    item.message,
                    reason=Reason.STAGE_ERROR,
                    stage=stage_id,
                    detail=f"{type(exc).__name__}: {exc}",
                    event=item.event,
                )
        return survivors
