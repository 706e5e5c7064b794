"""The ``enrich`` stage: runs one enricher (``pipeline/enrichers/<name>.py``) on every event.

    - id: geo                 # the stage id: metrics, dead letters
      type: enrich
      enricher: geoip         # the enricher module
      on_error: skip          # skip: count and pass the event on unchanged; dead_letter: dead-letter it
      optional: true          # if it cannot start (no database), run without it and say so
      retry_interval: 60s     # ...and try to start it again this often (0: never)
      config: {city_db: "${GEOIP_CITY_DB:-}"}

An enricher never kills the worker: an exception on one event is handled by ``on_error``.

An optional stage that could not start skips every event (``disabled: <why>`` in its status,
``pipeline_enricher_enabled 0``) and is built again by the first batch ``retry_interval`` after
its first batch, then after each attempt, so a database that appears later (an init container
or ``geoipupdate`` finishing after the worker started) is picked up without a restart. The attempt runs on the
batch path, on the batch clock (no thread): it costs what starting the enricher costs, once per
interval, and only while the stage is disabled.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Literal

from pydantic import Field, ValidationError

from pipeline.core.batch import BatchContext
from pipeline.core.reasons import Reason
from pipeline.core.records import Item
from pipeline.enrichers import (
    DisabledEnricher,
    Enricher,
    EnricherContext,
    EnricherUnavailable,
    Outcome,
    UnknownEnricher,
    enricher_type,
)
from pipeline.stages import StageType
from pipeline.topology.model import Duration, Strict, Topology, TopologySpec

log = logging.getLogger(__name__)

# Enum member lookups cost ~0.2 µs each on the hot path; bind them once.
_HIT, _MISS, _SKIPPED, _DROP = Outcome.HIT, Outcome.MISS, Outcome.SKIPPED, Outcome.DROP


class EnrichConfig(Strict):
    enricher: str
    """Name of the enricher module in ``pipeline/enrichers``."""
    on_error: Literal["skip", "dead_letter"] = "skip"
    optional: bool = False
    """When the enricher cannot start: false = refuse to start; true = run disabled."""
    retry_interval: Duration = Field(default=60.0, ge=0)
    """An optional stage running disabled tries to start its enricher again this often
    (0: never; it then stays disabled until the worker restarts)."""
    config: dict[str, Any] = Field(default_factory=dict)
    """The enricher's own settings (validated by its config model)."""


def _check(config: EnrichConfig, spec: TopologySpec) -> list[tuple[str, str]]:
    from pipeline.topology.loader import _loc_to_path

    try:
        kind = enricher_type(config.enricher)
    except UnknownEnricher as exc:
        return [("enricher", str(exc))]
    if config.optional and kind.protects_privacy:
        return [("optional", f"the {kind.name} enricher protects privacy and cannot be optional")]
    try:
        kind.config_model.model_validate(config.config)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = _loc_to_path(err["loc"])
            message = "unknown key" if err["type"] == "extra_forbidden" else err["msg"].removeprefix("Value error, ")
            if err["type"] == "missing":
                message = "required key is missing"
            problems.append((f"config.{loc}" if loc and not loc.startswith("[") else f"config{loc}", message))
        return problems
    return []


class EnrichStage:
    def __init__(
        self,
        stage_id: str,
        config: EnrichConfig,
        enricher: Enricher,
        *,
        start: Callable[[], Enricher] | None = None,
    ) -> None:
        """``start`` builds the enricher again (given while ``enricher`` stands in for one that
        could not start): called once ``retry_interval`` has passed since the first batch, then
        since the last attempt, on the batches' clock."""
        self.id = stage_id
        self.enricher_name = config.enricher
        self.on_error = config.on_error
        self.enricher = enricher
        self._retry_ms = int(config.retry_interval * 1000)
        self._start = start if self._retry_ms else None
        self._next_start_ms: int | None = None

    def process(self, items: list[Item], ctx: BatchContext) -> list[Item]:
        if self._start is not None:
            self._maybe_start(ctx.now_ms)
        # The per-event loop only calls the enricher and records its outcome (counted and
        # filtered afterwards, in C); an exception hands the rest of the batch to the careful
        # loop of _process_after_error.
        enrich = self.enricher.enrich
        outcomes: list[Any] = []
        record = outcomes.append
        try:
            for item in items:
                record(enrich(item.event))
        except Exception as exc:  # noqa: BLE001 - one bad event must not stop the stream
            return self._process_after_error(items, outcomes, exc, ctx)
        return self._tally(items, outcomes, ctx.counters)

    def _tally(self, items: list[Item], outcomes: list[Any], counters: Any) -> list[Item]:
        """Count the outcomes of a batch without errors; the events that were not dropped."""
        stage_id = self.id
        count = outcomes.count
        total = len(outcomes)
        # list.count compares every element; stop once the outcomes are all accounted for
        hits = count(_HIT)
        misses = count(_MISS) if hits != total else 0
        skipped = count(_SKIPPED) if hits + misses != total else 0
        kept = items
        if hits + misses + skipped != total:
            drops = count(_DROP)
            if drops:
                counters[(stage_id, "drop")] += drops
                kept = [
                    item
                    for item, outcome in zip(items, outcomes, strict=True)
                    if outcome is not _DROP
                ]
        if hits:
            counters[(stage_id, "hit")] += hits
        if misses:
            counters[(stage_id, "miss")] += misses
        if skipped:
            counters[(stage_id, "skipped")] += skipped
        return kept

    def _process_after_error(
        self, items: list[Item], outcomes: list[Any], exc: Exception, ctx: BatchContext
    ) -> list[Item]:
        """The batch from the event that raised ``exc`` on (``outcomes`` holds the outcomes of
        the events before it), one event at a time, with ``on_error`` applied."""
        enrich = self.enricher.enrich
        counters = ctx.counters
        stage_id = self.id
        done = len(outcomes)
        # Counted as the loop goes, so the counters' keys appear in the same order as always.
        drops = outcomes.count(_DROP)
        if drops:
            counters[(stage_id, "drop")] += drops
        kept = [  # the events before the one that raised
            item for item, outcome in zip(items, outcomes, strict=False) if outcome is not _DROP
        ]
        count = outcomes.count
        hits, misses, skipped = count(_HIT), count(_MISS), count(_SKIPPED)
        error: Exception | None = exc
        for item in items[done:]:
            if error is None:
                try:
                    outcome = enrich(item.event)
                except Exception as raised:  # noqa: BLE001 - one bad event must not stop the stream
                    error = raised
            if error is not None:
                counters[(stage_id, "error")] += 1
                if self.on_error == "dead_letter":
                    ctx.dead_letter(
                        item.message,
                        reason=Reason.ENRICHMENT_FAILED,
                        stage=stage_id,
                        detail=f"{type(error).__name__}: {error}",
                        event=item.event,
                    )
                else:
                    kept.append(item)
                error = None
                continue
            if outcome is _HIT:
                hits += 1
            elif outcome is _MISS:
                misses += 1
            elif outcome is _SKIPPED:
                skipped += 1
            elif outcome is _DROP:
                counters[(stage_id, "drop")] += 1
                continue
            kept.append(item)
        if hits:
            counters[(stage_id, "hit")] += hits
        if misses:
            counters[(stage_id, "miss")] += misses
        if skipped:
            counters[(stage_id, "skipped")] += skipped
        return kept

    def _maybe_start(self, now_ms: int) -> None:
        """Build the enricher of a disabled stage again when it is time; on success it
        replaces the stand-in. (Timed by the batches, not at build time: the clock is read once
        per batch, by the processor.)"""
        if self._next_start_ms is None:
            self._next_start_ms = now_ms + self._retry_ms
        if now_ms < self._next_start_ms:
            return
        assert self._start is not None
        self._next_start_ms = now_ms + self._retry_ms  # the next attempt, should this one fail
        was = self.enricher.status()
        try:
            enricher = self._start()
        except EnricherUnavailable as exc:
            if f"disabled: {exc}" == was:
                log.debug(
                    "enricher %s (stage %s) still cannot start: %s",
                    self.enricher_name, self.id, exc,
                )
                return
            log.warning(
                "enricher %s (stage %s) is still disabled, now because: %s",
                self.enricher_name, self.id, exc,
            )
            self.enricher = DisabledEnricher(str(exc))
            return
        except Exception:  # a bug in its start-up must not stop the stream
            log.exception(
                "enricher %s (stage %s) failed to start; it stays disabled",
                self.enricher_name, self.id,
            )
            return
        self.enricher = enricher
        self._start = self._next_start_ms = None
        log.info("enricher %s (stage %s) has started (it was %s)", self.enricher_name, self.id, was)

    def status(self) -> str:
        return self.enricher.status()

    def close(self) -> None:
        self.enricher.close()


def _build(stage_id: str, config: EnrichConfig, topology: Topology) -> EnrichStage:
    kind = enricher_type(config.enricher)
    enricher_config = kind.config_model.model_validate(config.config)
    context = EnricherContext(
        env=topology.env, base_dir=topology.path.parent, stage_id=stage_id, clock=topology.clock
    )
    try:
        enricher = kind.build(enricher_config, context)
    except EnricherUnavailable as exc:
        if not config.optional:
            raise EnricherUnavailable(
                f"stage {stage_id!r} (enricher {config.enricher}) cannot start: {exc}"
            ) from None
        retry = f"; trying again every {config.retry_interval:g}s" if config.retry_interval else ""
        log.warning(
            "enricher %s (stage %s) is disabled: %s%s", config.enricher, stage_id, exc, retry
        )
        return EnrichStage(
            stage_id,
            config,
            DisabledEnricher(str(exc)),
            start=lambda: kind.build(enricher_config, context),
        )
    return EnrichStage(stage_id, config, enricher)


STAGE_TYPE = StageType(
    name="enrich", role="middle", config_model=EnrichConfig, build=_build, check=_check
)
