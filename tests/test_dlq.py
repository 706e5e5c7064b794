"""``pipeline dlq``: filters, what can be replayed, summaries and CLI errors (no broker)."""

from __future__ import annotations

import base64
import os
import signal
from pathlib import Path

import orjson
import pytest

from pipeline import dlq
from pipeline.cli import main
from pipeline.core.deadletter import DeadLetterBuilder
from pipeline.core.records import RawMessage as SourceRecord
from pipeline.dlq import (
    KEY_TRUNCATED,
    PAYLOAD_EMPTY,
    PAYLOAD_INCOMPLETE,
    PAYLOAD_OMITTED,
    PAYLOAD_TRUNCATED,
    PAYLOAD_UNDECODABLE,
    REPLAY_HEADER,
    Filter,
    Position,
    RawMessage,
    ReplayStats,
    Summary,
    format_replay,
    format_summary,
    parse_dead_letter,
    parse_time,
    plan_chunk,
    replay_group_id,
    replay_of,
    replayed_from,
    stages_after_dedupe,
)
from pipeline.errors import PipelineError

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "topologies" / "ecommerce.yaml"
DLQ = "invalid_events"
T0 = 1_795_000_000_000  # 2026-11-18T11:06:40Z


def dead_letter_message(
    value: bytes | None = b'{"event": "x"}',
    *,
    key: bytes | None = b"user-1",
    reason: str = "bad_timestamp",
    stage: str = "validate",
    failed_at: int = T0,
    offset: int = 0,
    partition: int = 0,
    source_offset: int = 100,
    max_payload_bytes: int = 256 * 1024,
    path: str | None = "timestamp",
) -> RawMessage:
    """A dead-letter message as the worker writes it: built by the real DeadLetterBuilder."""
    builder = DeadLetterBuilder(
        topic=DLQ, topology_name="ecommerce", topology_version="1",
        max_payload_bytes=max_payload_bytes,
    )
    source = SourceRecord(value=value, key=key, topic="raw_events", partition=2,
                          offset=source_offset, timestamp=T0 - 5)
    record = builder.build(source, reason=reason, stage=stage, detail=f"{reason} here",
                           path=path, failed_at_ms=failed_at)
    # Keyed by the original key, as BatchContext.dead_letter does.
    return RawMessage(Position(DLQ, partition, offset), key, record)


def edited(message: RawMessage, **changes: object) -> RawMessage:
    record = orjson.loads(message.value)
    record.update(changes)
    return RawMessage(message.position, message.key, orjson.dumps(record))


def parsed(message: RawMessage) -> dlq.DeadLetter:
    dead_letter = parse_dead_letter(message)
    assert dead_letter is not None
    return dead_letter


# ------------------------------------------------------------------ times and filters


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-18T11:06:40Z", T0),
        ("2026-11-18T11:06:40.250Z", T0 + 250),
        ("2026-11-18T12:06:40+01:00", T0),
        ("2026-11-18T11:06:40", T0),  # no offset: UTC
        ("2026-11-18", T0 - (11 * 3600 + 6 * 60 + 40) * 1000),
        (str(T0), T0),
        (f" {T0} ", T0),
    ],
)
def test_parse_time(text: str, expected: int) -> None:
    assert parse_time(text) == expected


@pytest.mark.parametrize("text", ["yesterday", "2026-13-01", "", "12:00"])
def test_parse_time_refuses_what_is_not_a_time(text: str) -> None:
    with pytest.raises(PipelineError, match="neither ISO-8601"):
        parse_time(text)


def test_parse_time_refuses_epoch_seconds() -> None:
    with pytest.raises(PipelineError, match="epoch milliseconds expected"):
        parse_time(str(T0 // 1000))


def test_unknown_reason_is_refused_with_the_known_ones() -> None:
    with pytest.raises(PipelineError) as info:
        Filter.from_args(["bad_timestamp", "bad_timestmp"])
    message = str(info.value)
    assert message.startswith("unknown reason 'bad_timestmp'")
    assert "schema_violation" in message and "\n" not in message


def test_since_must_come_before_until() -> None:
    with pytest.raises(PipelineError, match="must be before"):
        Filter.from_args(["bad_timestamp"], str(T0), str(T0))


def test_filter_by_reason_and_failure_time() -> None:
    flt = Filter.from_args(["bad_timestamp", "schema_violation"], str(T0), str(T0 + 1000))
    assert flt.matches(parsed(dead_letter_message(failed_at=T0)))  # since is inclusive
    assert flt.matches(parsed(dead_letter_message(reason="schema_violation", failed_at=T0 + 999)))
    assert not flt.matches(parsed(dead_letter_message(failed_at=T0 + 1000)))  # until is not
    assert not flt.matches(parsed(dead_letter_message(failed_at=T0 - 1)))
    assert not flt.matches(parsed(dead_letter_message(reason="malformed_json")))
    assert Filter().matches(parsed(dead_letter_message(reason="malformed_json")))
    assert flt.describe() == (
        "reason bad_timestamp, schema_violation, failed since 2026-11-18T11:06:40.000Z, "
        "failed before 2026-11-18T11:06:41.000Z"
    )


def test_replay_group_is_named_by_the_filter() -> None:
    flt = Filter.from_args(["schema_violation", "bad_timestamp", "bad_timestamp"])
    assert replay_group_id("pipeline-ecommerce", flt) == (
        "pipeline-ecommerce-dlq-replay-bad_timestamp+schema_violation"
    )
    timed = Filter.from_args(["bad_timestamp"], str(T0), str(T0 + 1))
    assert replay_group_id("g", timed) == f"g-dlq-replay-bad_timestamp-since-{T0}-until-{T0 + 1}"
    with pytest.raises(PipelineError):
        replay_group_id("g", Filter())


# ------------------------------------------------------------------ what can be replayed


def test_a_dead_letter_replays_its_original_bytes_key_and_a_replay_header() -> None:
    value = b'{"event": "page_viewed", "timestamp": "yesterday", "user_id": "caf\xc3\xa9"}'
    message = dead_letter_message(value, key=b"caf\xc3\xa9", offset=42, partition=1)
    replay = replay_of(parsed(message))
    assert not isinstance(replay, str)
    assert replay.value == value
    assert replay.key == b"caf\xc3\xa9"
    assert replay.headers == [(REPLAY_HEADER, b"invalid_events/1/42")]
    assert replayed_from(replay.headers) == "invalid_events/1/42"
    assert replayed_from([("other", b"x")]) is None and replayed_from(None) is None


def test_binary_payloads_come_back_byte_for_byte() -> None:
    value = b"\xff\xfe\x00garbage\x80"
    message = dead_letter_message(value, reason="invalid_utf8")
    assert orjson.loads(message.value)["payload_encoding"] == "base64"
    replay = replay_of(parsed(message))
    assert not isinstance(replay, str) and replay.value == value


def test_unkeyed_originals_are_replayed_unkeyed() -> None:
    replay = replay_of(parsed(dead_letter_message(key=None)))
    assert not isinstance(replay, str) and replay.key is None


def test_the_record_key_is_used_when_the_message_has_none() -> None:
    message = dead_letter_message(key=b"k\xffey")
    without = RawMessage(message.position, None, message.value)
    replay = replay_of(parsed(without))
    assert not isinstance(replay, str) and replay.key == b"k\xffey"
    # The builder keeps at most 1024 bytes of the key: a key that long may be cut.
    long_key = RawMessage(message.position, None, dead_letter_message(key=b"k" * 2000).value)
    assert replay_of(parsed(long_key)) == KEY_TRUNCATED
    # ... but the Kafka key of the dead-letter message is the whole original key.
    replay = replay_of(parsed(dead_letter_message(key=b"k" * 2000)))
    assert not isinstance(replay, str) and replay.key == b"k" * 2000


def test_a_truncated_payload_is_never_replayed() -> None:
    value = b'{"event": "x", "pad": "' + b"a" * 5000 + b'"}'
    message = dead_letter_message(value, reason="schema_violation", max_payload_bytes=1024)
    record = orjson.loads(message.value)
    assert record["payload_truncated"] is True and record["payload_size"] == len(value)
    assert replay_of(parsed(message)) == PAYLOAD_TRUNCATED


def test_a_payload_cut_to_fit_the_record_limit_is_never_replayed() -> None:
    # Control characters escape six-fold in JSON: the builder keeps a base64 prefix instead.
    value = b"\x01" * 700_000
    message = dead_letter_message(value, reason="malformed_json", max_payload_bytes=768 * 1024)
    assert orjson.loads(message.value)["payload_truncated"] is True
    assert replay_of(parsed(message)) == PAYLOAD_TRUNCATED


@pytest.mark.parametrize(
    ("changes", "why"),
    [
        ({"payload": None}, PAYLOAD_OMITTED),
        ({"payload_size": None}, PAYLOAD_OMITTED),
        ({"payload_truncated": False, "payload_size": 99}, PAYLOAD_INCOMPLETE),
        ({"payload": "not base64!", "payload_encoding": "base64"}, PAYLOAD_UNDECODABLE),
        ({"payload_encoding": "rot13"}, PAYLOAD_UNDECODABLE),
    ],
)
def test_payloads_not_kept_in_full_are_refused(changes: dict, why: str) -> None:
    assert replay_of(parsed(edited(dead_letter_message(), **changes))) == why


def test_a_missing_payload_field_is_an_omitted_payload() -> None:
    record = orjson.loads(dead_letter_message().value)
    del record["payload"]
    message = RawMessage(Position(DLQ, 0, 0), b"k", orjson.dumps(record))
    assert replay_of(parsed(message)) == PAYLOAD_OMITTED


def test_empty_payloads_and_tombstones_have_nothing_to_replay() -> None:
    for value in (b"", None):
        message = dead_letter_message(value, reason="empty_payload")
        assert replay_of(parsed(message)) == PAYLOAD_EMPTY


@pytest.mark.parametrize(
    "value",
    [None, b"", b"not json", b"[1]", b'{"reason": "x"}', b'{"reason": "x", "stage": "s", "failed_at": "now"}'],
)
def test_what_is_not_a_dead_letter_record_is_unreadable(value: bytes | None) -> None:
    assert parse_dead_letter(RawMessage(Position(DLQ, 0, 0), None, value)) is None


def test_source_position() -> None:
    dead_letter = parsed(dead_letter_message(source_offset=7))
    assert dead_letter.source == Position("raw_events", 2, 7)
    embedded = edited(dead_letter_message(), source={"topic": "file:x.jsonl", "partition": -1, "offset": 3})
    assert parsed(embedded).source is None
    assert parsed(edited(dead_letter_message(), source=None)).source is None


# ------------------------------------------------------------------ inspect's summary


def sample_topic() -> list[RawMessage]:
    messages = []
    offset = 0
    for i in range(5):
        messages.append(dead_letter_message(b'{"n": %d}' % i, reason="bad_timestamp",
                                            failed_at=T0 + i * 1000, offset=offset))
        offset += 1
    for i in range(2):
        messages.append(dead_letter_message(b"nope %d" % i, reason="malformed_json", path=None,
                                            failed_at=T0 - 60_000 + i, offset=offset))
        offset += 1
    messages.append(dead_letter_message(b'{"x": "' + b"y" * 3000 + b'"}', reason="schema_violation",
                                        stage="validate2", max_payload_bytes=1024,
                                        failed_at=T0 + 10_000, offset=offset, path="properties.x"))
    offset += 1
    messages.append(RawMessage(Position(DLQ, 0, offset), None, b"garbage"))
    return messages


def test_summary_counts_by_reason_and_stage_with_time_range_and_latest_samples() -> None:
    summary = Summary(topic=DLQ, samples_per_reason=2)
    for message in sample_topic():
        summary.add(message)
    assert summary.read == 9 and summary.unreadable == 1 and summary.matched == 8
    assert dict(summary.counts) == {
        ("bad_timestamp", "validate"): 5,
        ("malformed_json", "validate"): 2,
        ("schema_violation", "validate2"): 1,
    }
    assert dict(summary.not_replayable) == {("schema_violation", "validate2"): 1}
    assert summary.first_failed_at == T0 - 60_000 and summary.last_failed_at == T0 + 10_000
    latest = summary.samples("bad_timestamp")
    assert [d.failed_at for d in latest] == [T0 + 4000, T0 + 3000]  # newest first, at most 2

    data = summary.to_json()
    assert data["by_reason"] == {"bad_timestamp": 5, "malformed_json": 2, "schema_violation": 1}
    assert data["counts"][0] == {
        "reason": "bad_timestamp", "stage": "validate", "count": 5, "not_replayable": 0,
    }
    sample = data["samples"]["schema_violation"][0]
    assert sample["replayable"] is False and sample["not_replayable_because"] == PAYLOAD_TRUNCATED
    assert sample["source"] == "raw_events/2/100" and sample["path"] == "properties.x"
    assert len(sample["payload_preview"]) == dlq.PREVIEW_CHARS
    orjson.dumps(data)  # JSON-serialisable as it is


def test_summary_filters() -> None:
    summary = Summary(topic=DLQ, filter=Filter.from_args(["bad_timestamp"], str(T0 + 2000)))
    for message in sample_topic():
        summary.add(message)
    assert summary.matched == 3 and dict(summary.counts) == {("bad_timestamp", "validate"): 3}


def test_format_summary() -> None:
    summary = Summary(topic=DLQ, samples_per_reason=1)
    for message in sample_topic():
        summary.add(message)
    text = format_summary(summary)
    lines = text.splitlines()
    assert lines[0] == "invalid_events: 8 dead letter(s) matching every reason (read 9, 1 unreadable)"
    assert lines[1] == "failed between 2026-11-18T11:05:40.000Z and 2026-11-18T11:06:50.000Z"
    assert lines[2].split() == ["reason", "stage", "count", "not", "replayable"]
    assert lines[3].split() == ["bad_timestamp", "validate", "5", "0"]
    assert lines[5].split() == ["schema_violation", "validate2", "1", "1"]
    assert "samples (latest 1 per reason):" in lines
    assert "  bad_timestamp at invalid_events/0/4, stage validate, 2026-11-18T11:06:44.000Z" in lines
    assert "    message: bad_timestamp here" in lines
    assert "    path:    timestamp" in lines
    assert "    source:  raw_events/2/100" in lines
    assert '    payload (8 bytes): {"n": 4}' in lines
    assert any("not replayable: payload_truncated" in line for line in lines)


def test_format_summary_without_matches() -> None:
    summary = Summary(topic=DLQ, filter=Filter.from_args(["too_deep"]))
    for message in sample_topic():
        summary.add(message)
    assert format_summary(summary) == (
        "invalid_events: 0 dead letter(s) matching reason too_deep (read 9, 1 unreadable)"
    )


def test_preview_is_one_shortened_line() -> None:
    record = {"payload": "a\nb\tc" + "x" * 500, "payload_encoding": "utf8"}
    text = dlq.preview(record, 20)
    assert text == "a\\nb\\tc" + "x" * 12 + "…" and len(text) == 20
    binary = {"payload": base64.b64encode(b"\xffab").decode(), "payload_encoding": "base64"}
    assert dlq.preview(binary) == "\\xffab"
    assert dlq.preview({"payload": None}) == "(no payload)"


# ------------------------------------------------------------------ replay: planning a chunk


def test_plan_replays_matching_dead_letters_and_covers_every_offset() -> None:
    messages = sample_topic()
    stats = ReplayStats()
    plan = plan_chunk(messages, flt=Filter.from_args(["bad_timestamp", "schema_violation"]),
                      replayed_sources=(), stats=stats)
    assert [r.value for r in plan.replays] == [b'{"n": %d}' % i for i in range(5)]
    assert [r.of.offset for r in plan.replays] == [0, 1, 2, 3, 4]
    assert plan.offsets == {0: 9} and not plan.stopped
    assert stats.read == 9 and stats.unreadable == 1 and stats.matched == 6
    assert dict(stats.replayed) == {"bad_timestamp": 5}
    assert dict(stats.not_replayable) == {PAYLOAD_TRUNCATED: 1}


def test_plan_skips_re_failures_of_earlier_replays() -> None:
    messages = [
        dead_letter_message(b"a", offset=0, source_offset=10),
        dead_letter_message(b"b", offset=1, source_offset=11),  # its source was a replay
        dead_letter_message(b"c", offset=2, source_offset=12),
    ]
    stats = ReplayStats()
    plan = plan_chunk(messages, flt=Filter.from_args(["bad_timestamp"]),
                      replayed_sources={Position("raw_events", 2, 11)}, stats=stats)
    assert [r.value for r in plan.replays] == [b"a", b"c"]
    assert stats.refailures == 1 and plan.offsets == {0: 3}


def test_plan_stops_at_the_budget_and_commits_only_what_it_decided() -> None:
    messages = [
        dead_letter_message(b"a", offset=0, partition=0),
        dead_letter_message(b"b", offset=0, partition=1),
        dead_letter_message(b"z", reason="too_deep", offset=1, partition=0),  # not matching
        dead_letter_message(b"", reason="bad_timestamp", offset=1, partition=1),  # not replayable
        dead_letter_message(b"c", offset=2, partition=0),
        dead_letter_message(b"d", offset=2, partition=1),
    ]
    flt = Filter.from_args(["bad_timestamp"])
    stats = ReplayStats()
    plan = plan_chunk(messages, flt=flt, replayed_sources=(), stats=stats, budget=2)
    assert [r.value for r in plan.replays] == [b"a", b"b"]
    # What follows the budget's last replay up to the next replay is decided too.
    assert plan.offsets == {0: 2, 1: 2} and plan.stopped
    assert dict(stats.not_replayable) == {PAYLOAD_EMPTY: 1}
    rest = plan_chunk(messages[4:], flt=flt, replayed_sources=(), stats=stats, budget=0)
    assert rest.replays == [] and rest.offsets == {} and rest.stopped
    rest = plan_chunk(messages[4:], flt=flt, replayed_sources=(), stats=stats, budget=10)
    assert [r.value for r in rest.replays] == [b"c", b"d"] and rest.offsets == {0: 3, 1: 3}
    assert stats.replayed_total == 4


def test_plan_counts_replays_of_events_that_failed_after_dedupe(example_topology) -> None:
    stage, window, after = stages_after_dedupe(example_topology)
    assert stage == "dedupe" and window == 86400
    assert "validate" not in after and "consent" in after and "route" in after
    messages = [
        dead_letter_message(b"a", reason="enrichment_failed", stage="geo", offset=0),
        dead_letter_message(b"b", reason="enrichment_failed", stage="validate", offset=1),
    ]
    stats = ReplayStats()
    plan_chunk(messages, flt=Filter.from_args(["enrichment_failed"]), replayed_sources=(),
               stats=stats, stages_after_dedupe=after)
    assert stats.after_dedupe == 1
    text = format_replay(stats, flt=Filter.from_args(["enrichment_failed"]), dead_letter_topic=DLQ,
                         source_topic="raw_events", group_id="g", dry_run=False, stopped=None,
                         dedupe=(stage, window))
    assert "warning: 1 of them failed after the dedupe stage 'dedupe'" in text
    assert "24h window" in text


def test_format_replay() -> None:
    stats = ReplayStats()
    plan_chunk(sample_topic(), flt=Filter.from_args(["bad_timestamp", "schema_violation"]),
               replayed_sources={Position("raw_events", 2, 100)}, stats=stats)
    text = format_replay(stats, flt=Filter.from_args(["bad_timestamp", "schema_violation"]),
                         dead_letter_topic=DLQ, source_topic="raw_events", group_id="g",
                         dry_run=True, stopped="max_records", dedupe=(None, None))
    lines = text.splitlines()
    assert lines[0] == (
        "invalid_events -> raw_events, reason bad_timestamp, schema_violation "
        "(group g, dry run: nothing sent, nothing committed)"
    )
    # Every sample shares source position raw_events/2/100: all count as re-failures here.
    assert lines[1] == "read 9 new dead letter(s), 6 matching: would replay 0"
    assert "skipped 6 re-failure(s) of earlier replays" in text
    assert "skipped 1 unreadable record(s)" in text
    assert text.endswith("stopped at --max-records; run the same command again to continue")


def test_a_signal_during_a_replay_asks_it_to_stop_after_the_chunk_in_hand() -> None:
    before = signal.getsignal(signal.SIGINT)
    with dlq._StopRequested() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.requested  # the first one is noted, not raised
        with pytest.raises(KeyboardInterrupt):  # a second one aborts at once
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is before


# ------------------------------------------------------------------ the CLI


@pytest.mark.parametrize(
    "argv",
    [
        ["dlq"],
        ["dlq", "frobnicate"],
        ["dlq", "replay", str(EXAMPLE)],  # --reason is required
        ["dlq", "inspect"],
        ["dlq", "inspect", str(EXAMPLE), "--samples", "many"],
    ],
)
def test_dlq_usage_errors_exit_two(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert "usage:" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["dlq", "--help"], ["dlq", "inspect", "--help"], ["dlq", "replay", "--help"]])
def test_dlq_help(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: pipeline {' '.join(a for a in argv if a != '--help')}")
    assert "--max-records" not in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["dlq", "replay", str(EXAMPLE), "--reason", "bad_timestmp"], "error: unknown reason 'bad_timestmp'"),
        (["dlq", "inspect", str(EXAMPLE), "--reason", "nope"], "error: unknown reason 'nope'"),
        (["dlq", "replay", str(EXAMPLE), "--reason", "bad_timestamp", "--since", "yesterday"],
         "error: 'yesterday' is neither ISO-8601"),
        (["dlq", "replay", str(EXAMPLE), "--reason", "bad_timestamp", "--until", "1700000000"],
         "error: '1700000000': epoch milliseconds expected"),
        (["dlq", "replay", str(EXAMPLE), "--reason", "bad_timestamp", "--since", "2026-02-01",
          "--until", "2026-01-01"], "error: --since (2026-02-01T00:00:00.000Z) must be before --until"),
        (["dlq", "inspect", str(EXAMPLE), "--samples", "-1"], "error: --samples must be 0 or more"),
        (["dlq", "replay", str(EXAMPLE), "--reason", "bad_timestamp", "--max-records", "-1"],
         "error: --max-records must be 0 or more"),
    ],
)
def test_dlq_argument_errors_are_one_line_exit_two(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(message), err
    assert err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.parametrize("command", [["inspect"], ["replay", "--reason", "bad_timestamp"]])
def test_dlq_with_a_bad_topology_exits_one(
    command: list[str], tmp_path: Path, example_text: str, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(example_text.replace("max_depth: 32", "max_dept: 32"), encoding="utf-8")
    assert main(["dlq", command[0], str(bad), *command[1:]]) == 1
    assert capsys.readouterr().err.strip() == f"{bad}: stages[0].max_dept: unknown key"


@pytest.mark.parametrize(
    "command", [["inspect"], ["replay", "--reason", "bad_timestamp"],
                ["replay", "--reason", "bad_timestamp", "--dry-run"]]
)
def test_dlq_with_an_unreachable_broker_exits_two(
    command: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(dlq, "METADATA_TIMEOUT_S", 1.0)
    code = main(["dlq", command[0], str(EXAMPLE), "--broker", "127.0.0.1:1", *command[1:]])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot reach Kafka at 127.0.0.1:1: ")
    assert err.count("\n") == 1


@pytest.mark.parametrize("flag", [[], ["--group-id", "custom"]])
def test_the_replay_group_starts_from_the_worker_group(
    flag: list[str], example_topology, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from pipeline.runtime.admin import group_id_for
    from pipeline.settings import Settings

    seen = {}

    def fake_replay(settings, topology, *, flt, base_group, dry_run, max_records):
        seen["base_group"] = base_group
        stats = ReplayStats()
        return dlq.ReplayResult(stats=stats, group_id=replay_group_id(base_group, flt),
                                stopped=None, report="ok")

    monkeypatch.setattr(dlq, "replay", fake_replay)
    monkeypatch.delenv("PIPELINE_GROUP_ID", raising=False)
    assert main(["dlq", "replay", str(EXAMPLE), "--reason", "bad_timestamp", *flag]) == 0
    assert capsys.readouterr().out == "ok\n"
    # The CLI names it without importing the runtime (Faust), by the worker's rule.
    settings = Settings.from_env(env={}, group_id=flag[1] if flag else None)
    assert seen["base_group"] == group_id_for(example_topology, settings)
