"""The enrich stage's loop: outcomes counted, drops filtered, errors handled per ``on_error``.

``EnrichStage.process`` records outcomes in a tight loop and counts them afterwards; an exception
hands the rest of the batch to a careful loop. These tests hold it to the straightforward
per-event loop it replaced (``reference`` below), on scripted batches of every mix.
"""

from __future__ import annotations

import random
from typing import Any

import pytest
from pydantic import ValidationError

from pipeline.core.batch import BatchContext
from pipeline.core.deadletter import DeadLetterBuilder
from pipeline.core.reasons import Reason
from pipeline.core.records import Item, RawMessage
from pipeline.enrichers import DisabledEnricher, EnricherUnavailable, Outcome
from pipeline.stages.enrich import EnrichConfig, EnrichStage

RAISE = "raise"
SCRIPT_STEPS = [Outcome.HIT, Outcome.MISS, Outcome.SKIPPED, Outcome.DROP, RAISE]


class Scripted:
    """An enricher whose answer for each event is written in the event (``step``)."""

    def __init__(self) -> None:
        self.calls = 0

    def enrich(self, event: dict[str, Any]) -> Outcome:
        self.calls += 1
        event["seen"] = event.get("seen", 0) + 1
        step = event["step"]
        if step == RAISE:
            raise ValueError(f"bad event {event['n']}")
        return step

    def status(self) -> str:
        return "enabled"

    def close(self) -> None:
        pass


def context() -> BatchContext:
    builder = DeadLetterBuilder(
        topic="dead", topology_name="t", topology_version="1", max_payload_bytes=10_000
    )
    return BatchContext(now_ms=1_700_000_000_000, dead_letter=builder)


def batch(steps: list[Any]) -> list[Item]:
    return [
        Item({"n": i, "step": step}, RawMessage(b"{}", topic="raw", partition=0, offset=i))
        for i, step in enumerate(steps)
    ]


def reference(stage: EnrichStage, items: list[Item], ctx: BatchContext) -> list[Item]:
    """The per-event loop EnrichStage.process used before (kept here as the specification)."""
    enrich = stage.enricher.enrich
    counters = ctx.counters
    stage_id = stage.id
    kept: list[Item] = []
    hits = misses = skipped = 0
    for item in items:
        try:
            outcome = enrich(item.event)
        except Exception as exc:  # noqa: BLE001
            counters[(stage_id, "error")] += 1
            if stage.on_error == "dead_letter":
                ctx.dead_letter(
                    item.message,
                    reason=Reason.ENRICHMENT_FAILED,
                    stage=stage_id,
                    detail=f"{type(exc).__name__}: {exc}",
                    event=item.event,
                )
            else:
                kept.append(item)
            continue
        if outcome is Outcome.HIT:
            hits += 1
        elif outcome is Outcome.MISS:
            misses += 1
        elif outcome is Outcome.SKIPPED:
            skipped += 1
        elif outcome is Outcome.DROP:
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


def both(steps: list[Any], on_error: str) -> tuple[tuple, tuple]:
    """(what process gives, what the reference gives) on the same script."""
    results = []
    for run in (EnrichStage.process, reference):
        stage = EnrichStage("enr", EnrichConfig(enricher="consent", on_error=on_error), Scripted())
        items = batch(steps)
        ctx = context()
        kept = run(stage, items, ctx)
        results.append(
            (
                [item.event["n"] for item in kept],
                list(ctx.counters.items()),  # key order included
                list(ctx.dead_letters.items()),
                ctx.outputs,
                [item.event.get("seen") for item in items],  # every event enriched once
            )
        )
    return results[0], results[1]


@pytest.mark.parametrize("on_error", ["skip", "dead_letter"])
@pytest.mark.parametrize(
    "steps",
    [
        [],
        [Outcome.HIT] * 5,
        [Outcome.MISS, Outcome.SKIPPED, Outcome.HIT],
        [Outcome.DROP, Outcome.HIT, Outcome.DROP],
        [RAISE],
        [RAISE, Outcome.HIT, RAISE, Outcome.DROP],
        [Outcome.DROP, RAISE, Outcome.DROP, Outcome.MISS],
        [Outcome.HIT, Outcome.HIT, RAISE],
    ],
)
def test_same_as_the_per_event_loop(steps: list[Any], on_error: str) -> None:
    ours, expected = both(steps, on_error)
    assert ours == expected


@pytest.mark.parametrize("on_error", ["skip", "dead_letter"])
def test_same_as_the_per_event_loop_on_random_batches(on_error: str) -> None:
    rng = random.Random(20_241_130)
    for _ in range(300):
        weights = [rng.random() for _ in SCRIPT_STEPS]
        steps = rng.choices(SCRIPT_STEPS, weights=weights, k=rng.randrange(0, 40))
        ours, expected = both(steps, on_error)
        assert ours == expected, steps


def test_a_batch_without_drops_or_errors_is_passed_on_as_it_is() -> None:
    stage = EnrichStage("enr", EnrichConfig(enricher="consent"), Scripted())
    items = batch([Outcome.HIT, Outcome.SKIPPED, Outcome.MISS])
    ctx = context()
    assert stage.process(items, ctx) is items
    assert dict(ctx.counters) == {("enr", "hit"): 1, ("enr", "miss"): 1, ("enr", "skipped"): 1}


def test_errors_skip_or_dead_letter() -> None:
    steps = [Outcome.HIT, RAISE, Outcome.DROP, RAISE, Outcome.MISS]
    skip = EnrichStage("enr", EnrichConfig(enricher="consent", on_error="skip"), Scripted())
    ctx = context()
    kept = skip.process(batch(steps), ctx)
    assert [item.event["n"] for item in kept] == [0, 1, 3, 4]
    assert ctx.counters[("enr", "error")] == 2 and ctx.counters[("enr", "drop")] == 1
    assert not ctx.outputs

    dead = EnrichStage("enr", EnrichConfig(enricher="consent", on_error="dead_letter"), Scripted())
    ctx = context()
    kept = dead.process(batch(steps), ctx)
    assert [item.event["n"] for item in kept] == [0, 4]
    assert ctx.dead_letters == {(Reason.ENRICHMENT_FAILED, "enr"): 2}
    assert [topic for topic, _key, _value in ctx.outputs] == ["dead", "dead"]
    assert b"ValueError: bad event 1" in ctx.outputs[0][2]


# ------------------------------------------------------------ an optional stage that could not start


class Starter:
    """``start`` of a disabled stage: each call takes the next scripted answer."""

    def __init__(self, *answers: Any) -> None:
        self.answers = list(answers)
        self.calls = 0

    def __call__(self) -> Any:
        self.calls += 1
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


def at(now_ms: int) -> BatchContext:
    ctx = context()
    ctx.now_ms = now_ms
    return ctx


def disabled_stage(start: Starter, *, retry_interval: str = "60s") -> EnrichStage:
    config = EnrichConfig(enricher="geoip", optional=True, retry_interval=retry_interval)
    return EnrichStage("geo", config, DisabledEnricher("no database"), start=start)


def test_a_disabled_stage_tries_to_start_once_per_interval_and_then_runs() -> None:
    enricher = Scripted()
    start = Starter(
        EnricherUnavailable("no database"),
        EnricherUnavailable("/db/city.mmdb is not a MaxMind database"),
        RuntimeError("a bug in start-up"),
        enricher,
    )
    stage = disabled_stage(start)
    steps = [Outcome.HIT, Outcome.MISS]

    ctx = at(0)  # the first batch: skipped; the first attempt is one interval later
    assert [i.event["n"] for i in stage.process(batch(steps), ctx)] == [0, 1]
    assert start.calls == 0 and ctx.counters == {("geo", "skipped"): 2}
    stage.process(batch(steps), at(59_999))
    assert start.calls == 0

    stage.process(batch(steps), at(60_000))  # same reason: still disabled
    assert start.calls == 1 and stage.status() == "disabled: no database"
    stage.process(batch(steps), at(119_999))  # next attempt one interval after the last
    assert start.calls == 1

    stage.process(batch(steps), at(120_000))  # another reason: the status says the new one
    assert stage.status() == "disabled: /db/city.mmdb is not a MaxMind database"

    ctx = at(180_000)  # an unexpected error: logged, stays disabled, the batch goes on
    assert len(stage.process(batch(steps), ctx)) == 2
    assert stage.status().startswith("disabled: ") and ctx.counters == {("geo", "skipped"): 2}

    ctx = at(240_000)  # started: this very batch is enriched
    kept = stage.process(batch(steps), ctx)
    assert stage.status() == "enabled" and stage.enricher is enricher
    assert [i.event["seen"] for i in kept] == [1, 1]
    assert ctx.counters == {("geo", "hit"): 1, ("geo", "miss"): 1}
    stage.process(batch(steps), at(10**12))  # no more attempts once started
    assert start.calls == 4


def test_a_zero_retry_interval_never_tries_again() -> None:
    start = Starter(Scripted())
    stage = disabled_stage(start, retry_interval="0")
    stage.process(batch([Outcome.HIT]), at(10**12))
    assert start.calls == 0 and stage.status() == "disabled: no database"


def test_retry_interval_is_a_duration_and_not_negative() -> None:
    assert EnrichConfig(enricher="geoip", retry_interval="5m").retry_interval == 300
    with pytest.raises(ValidationError):
        EnrichConfig(enricher="geoip", retry_interval="-1s")
