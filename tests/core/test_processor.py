"""The batch processor: stage failures are isolated to the events that cause them."""

from __future__ import annotations

import logging
from typing import Any

import orjson
import pytest

from pipeline.core.batch import BatchContext
from pipeline.core.processor import Processor
from pipeline.core.reasons import Reason
from pipeline.core.records import Item, RawMessage
from pipeline.topology import Topology

FIXED = 1_795_000_000.0
NOW_MS = int(FIXED * 1000)
DLQ = "invalid_events"


@pytest.fixture(autouse=True)
def _quiet_stage_failure_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.CRITICAL, logger="pipeline.core.processor")


def msg(user: str, name: str = "page_viewed", **fields: Any) -> RawMessage:
    value = {"event": name, "event_id": f"id-{user}", "timestamp": NOW_MS - 1000, "user_id": user}
    value.update(fields)
    return RawMessage(value=orjson.dumps(value), key=user.encode())


def users(outputs: list[tuple[str, bytes | None, bytes]], topic: str | None = None) -> list[str]:
    return [orjson.loads(v)["user_id"] for t, _, v in outputs if topic is None or t == topic]


def dead(outputs: list[tuple[str, bytes | None, bytes]]) -> list[dict[str, Any]]:
    return [orjson.loads(v) for t, _, v in outputs if t == DLQ]


class Enrich:
    """A middle stage that counts what it did and fails on the events of one user."""

    def __init__(self, bad_user: str | None = "bad", stage_id: str = "enrich") -> None:
        self.id = stage_id
        self.bad_user = bad_user
        self.calls: list[int] = []

    def process(self, items: list[Item], ctx: BatchContext) -> list[Item]:
        self.calls.append(len(items))
        out = []
        for item in items:
            if item.event["user_id"] == self.bad_user:
                raise ValueError(f"cannot enrich {item.event['event_id']}")
            item.event["enriched"] = True
            ctx.counters[(self.id, "enriched")] += 1
            out.append(item)
        return out


BATCH = ["a", "b", "bad", "c", "d"]


def test_clock_is_read_once_per_batch(example_topology: Topology) -> None:
    ticks = iter([FIXED, FIXED + 10, FIXED + 20])
    processor = Processor(example_topology, clock=lambda: next(ticks))
    assert processor.process([msg("a"), RawMessage(value=b"x")]).now_ms == NOW_MS
    ctx = processor.process([RawMessage(value=b"x")])
    assert ctx.now_ms == NOW_MS + 10_000
    assert orjson.loads(ctx.outputs[0][2])["failed_at"] == NOW_MS + 10_000


def test_stages_are_built_from_the_topology(processor: Processor) -> None:
    ids = [s.id for s in processor.topology.spec.stages]
    assert processor.stage_ids == ids
    assert ids[0] == "validate" and ids[-1] == "route"
    assert processor.source.id == "validate"
    assert processor.sink.id == "route"
    full = Processor(processor.topology)
    assert [s.id for s in full.middle] == ids[1:-1], "middle stages in topology order"
    assert processor.sink.id == "route"


def test_empty_batch(processor: Processor) -> None:
    ctx = processor.process([])
    assert ctx.outputs == [] and not ctx.dead_letters and not ctx.counters


def test_accepts_any_sequence(processor: Processor) -> None:
    ctx = processor.process(tuple(msg(u) for u in "xyz"))
    assert users(ctx.outputs) == ["x", "y", "z"]


def test_middle_stage_failure_isolates_the_bad_event(processor: Processor) -> None:
    enrich = Enrich()
    processor.middle.append(enrich)
    ctx = processor.process([msg(u) for u in BATCH])

    assert len(ctx.outputs) == len(BATCH)
    assert users(ctx.outputs, "processed_events") == ["a", "b", "c", "d"]
    assert all(orjson.loads(v).get("enriched") for t, _, v in ctx.outputs if t != DLQ)
    [record] = dead(ctx.outputs)
    assert record["reason"] == "stage_error"
    assert record["stage"] == "enrich"
    assert record["message"] == "ValueError: cannot enrich id-bad"
    assert record["event_id"] == "id-bad"
    assert record["event"] == "page_viewed"
    assert record["key"] == "bad"
    assert ctx.dead_letters == {(Reason.STAGE_ERROR, "enrich"): 1}
    assert ctx.counters[("enrich", "error")] == 1
    # One batch attempt, then one call per event.
    assert enrich.calls == [5, 1, 1, 1, 1, 1]


def test_dead_letter_key_is_the_original_message_key(processor: Processor) -> None:
    processor.middle.append(Enrich())
    ctx = processor.process([msg("bad")])
    [(topic, key, _)] = ctx.outputs
    assert (topic, key) == (DLQ, b"bad")


def test_counters_are_not_double_counted(processor: Processor) -> None:
    processor.middle.append(Enrich())
    ctx = processor.process([msg(u) for u in BATCH])
    assert ctx.counters[("enrich", "enriched")] == 4
    assert ctx.counters[("enrich", "error")] == 1


def test_dead_letter_counts_are_not_double_counted(processor: Processor) -> None:
    class DeadLettersThenFails:
        id = "filter"

        def process(self, items: list[Item], ctx: BatchContext) -> list[Item]:
            out = []
            for item in items:
                if item.event["user_id"] == "a":
                    ctx.dead_letter(
                        item.message, reason=Reason.INVALID_VALUE, stage=self.id, detail="no a's"
                    )
                    continue
                if item.event["user_id"] == "bad":
                    raise RuntimeError("boom")
                out.append(item)
            return out

    processor.middle.append(DeadLettersThenFails())
    ctx = processor.process([msg(u) for u in BATCH])
    assert len(ctx.outputs) == len(BATCH)
    assert ctx.dead_letters == {
        (Reason.INVALID_VALUE, "filter"): 1,
        (Reason.STAGE_ERROR, "filter"): 1,
    }
    assert sorted(r["key"] for r in dead(ctx.outputs)) == ["a", "bad"]
    assert users(ctx.outputs, "processed_events") == ["b", "c", "d"]


def test_only_the_failing_stage_is_blamed(processor: Processor) -> None:
    first = Enrich(bad_user="b", stage_id="geo")
    second = Enrich(bad_user="c", stage_id="user_agent")
    processor.middle.extend([first, second])
    ctx = processor.process([msg(u) for u in "abcd"])
    assert ctx.dead_letters == {
        (Reason.STAGE_ERROR, "geo"): 1,
        (Reason.STAGE_ERROR, "user_agent"): 1,
    }
    stages = {r["key"]: r["stage"] for r in dead(ctx.outputs)}
    assert stages == {"b": "geo", "c": "user_agent"}
    assert users(ctx.outputs, "processed_events") == ["a", "d"]
    # The second stage only sees what the first let through.
    assert second.calls[0] == 3


def test_every_event_failing_in_a_stage(processor: Processor) -> None:
    class AlwaysFails:
        id = "broken"

        def process(self, items: list[Item], ctx: BatchContext) -> list[Item]:
            raise ZeroDivisionError("division by zero")

    processor.middle.append(AlwaysFails())
    ctx = processor.process([msg(u) for u in "abc"] + [RawMessage(value=b"junk")])
    assert [r["reason"] for r in dead(ctx.outputs)] == ["malformed_json"] + ["stage_error"] * 3
    assert ctx.dead_letters[(Reason.STAGE_ERROR, "broken")] == 3
    assert ctx.counters[("broken", "error")] == 3


def test_middle_stage_may_drop_events(processor: Processor) -> None:
    class DropsOdd:
        id = "sample"

        def process(self, items: list[Item], ctx: BatchContext) -> list[Item]:
            return [i for i in items if i.event["user_id"] in ("a", "c")]

    processor.middle.append(DropsOdd())
    ctx = processor.process([msg(u) for u in "abcd"])
    assert users(ctx.outputs) == ["a", "c"]


def test_sink_failure_isolates_the_bad_event_without_duplicates(
    processor: Processor, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_emit = processor.sink.emit
    calls: list[int] = []

    def emit(items: list[Item], ctx: BatchContext) -> None:
        calls.append(len(items))
        for item in items:
            if item.event["user_id"] == "bad":
                raise OSError("producer queue full")
            real_emit([item], ctx)

    monkeypatch.setattr(processor.sink, "emit", emit)
    ctx = processor.process([msg(u) for u in BATCH])
    assert len(ctx.outputs) == len(BATCH)
    # "a" and "b" were emitted before the batch failed: they are not emitted twice.
    assert users(ctx.outputs, "processed_events") == ["a", "b", "c", "d"]
    [record] = dead(ctx.outputs)
    assert (record["reason"], record["stage"]) == ("stage_error", "route")
    assert record["message"] == "OSError: producer queue full"
    assert ctx.dead_letters == {(Reason.STAGE_ERROR, "route"): 1}
    assert calls == [5, 1, 1, 1, 1, 1]


def test_source_failure_on_a_single_message(
    processor: Processor, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_check = processor.source.check

    def check(value: bytes | None, now_ms: int) -> dict[str, Any]:
        if value == b"BOOM":
            raise RuntimeError("decoder bug")
        return real_check(value, now_ms)

    monkeypatch.setattr(processor.source, "check", check)
    ctx = processor.process([msg("a"), RawMessage(value=b"BOOM", key=b"k"), msg("b")])
    assert len(ctx.outputs) == 3
    [record] = dead(ctx.outputs)
    assert (record["reason"], record["stage"], record["key"]) == ("stage_error", "validate", "k")
    assert record["message"] == "RuntimeError: decoder bug"
    assert users(ctx.outputs, "processed_events") == ["a", "b"]
    assert ctx.dead_letters == {(Reason.STAGE_ERROR, "validate"): 1}


def test_source_failure_does_not_duplicate_earlier_dead_letters(
    processor: Processor, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_check = processor.source.check

    def check(value: bytes | None, now_ms: int) -> dict[str, Any]:
        if value == b"BOOM":
            raise RuntimeError("decoder bug")
        return real_check(value, now_ms)

    monkeypatch.setattr(processor.source, "check", check)
    batch = [RawMessage(value=b"not json"), RawMessage(value=b"BOOM"), msg("a")]
    ctx = processor.process(batch)
    assert len(ctx.outputs) == len(batch)
    assert ctx.dead_letters == {
        (Reason.MALFORMED_JSON, "validate"): 1,
        (Reason.STAGE_ERROR, "validate"): 1,
    }


def test_outputs_are_grouped_dead_letters_first_then_routed_in_order(
    processor: Processor,
) -> None:
    batch = [
        msg("a"),
        RawMessage(value=b"{"),
        msg("b", "error_occurred", properties={"error_type": "E"}),
        RawMessage(value=None),
        msg("c"),
    ]
    ctx = processor.process(batch)
    assert [t for t, _, _ in ctx.outputs] == [
        DLQ,
        DLQ,
        "processed_events",
        "error_events",
        "processed_events",
    ]
    assert ctx.dead_letters == {
        (Reason.MALFORMED_JSON, "validate"): 1,
        (Reason.EMPTY_PAYLOAD, "validate"): 1,
    }


def test_processor_does_not_share_state_between_batches(processor: Processor) -> None:
    processor.middle.append(Enrich())
    first = processor.process([msg("bad")])
    second = processor.process([msg("a")])
    assert len(first.outputs) == 1 and len(second.outputs) == 1
    assert not second.dead_letters
    assert second.counters == {("enrich", "enriched"): 1}
