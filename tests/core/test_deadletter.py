"""Dead-letter records: always valid against avro/dead_letter.avsc, always under 1 MB."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any, Callable

import fastavro
import orjson
import pytest

from pipeline.core.avro_check import compile_schema
from pipeline.core.deadletter import RECORD_SIZE_LIMIT, DeadLetterBuilder, decode_payload
from pipeline.core.processor import Processor
from pipeline.core.reasons import Reason
from pipeline.core.records import Item, RawMessage
from pipeline.topology import Topology

REPO = Path(__file__).resolve().parents[2]
SCHEMA = json.loads((REPO / "avro" / "dead_letter.avsc").read_text(encoding="utf-8"))
PARSED = fastavro.parse_schema(SCHEMA)
CHECK = compile_schema(SCHEMA)
FIXED = 1_795_000_000.0
NOW_MS = int(FIXED * 1000)
DEFAULT_LIMIT = 256 * 1024


def assert_valid_record(raw: bytes) -> dict[str, Any]:
    assert len(raw) < RECORD_SIZE_LIMIT, len(raw)
    record = orjson.loads(raw)
    assert CHECK(record, "") is None, CHECK(record, "")
    assert fastavro.validation.validate(record, PARSED, raise_errors=True)
    assert set(record) == {f["name"] for f in SCHEMA["fields"]}
    return record


def builder(limit: int = DEFAULT_LIMIT) -> DeadLetterBuilder:
    return DeadLetterBuilder(
        topic="invalid_events", topology_name="shop", topology_version="7", max_payload_bytes=limit
    )


def build(
    message: RawMessage,
    *,
    limit: int = DEFAULT_LIMIT,
    reason: str = Reason.MALFORMED_JSON,
    path: str | None = None,
    detail: str = "not valid JSON",
    event: dict[str, Any] | None = None,
) -> dict[str, Any]:
    raw = builder(limit).build(
        message,
        reason=reason,
        stage="validate",
        detail=detail,
        path=path,
        failed_at_ms=NOW_MS,
        event=event,
    )
    return assert_valid_record(raw)


# ------------------------------------------------------------------ schema conformance


@pytest.mark.parametrize("reason", list(Reason))
def test_every_reason_builds_a_valid_record(reason: Reason) -> None:
    record = build(RawMessage(value=b"x", key=b"k"), reason=reason, path="properties.x")
    assert record["reason"] == reason.value


BAD_INPUTS = [
    None,
    b"",
    b"\xff\xfe",
    b"{",
    b"[]",
    b'{"a":' * 40 + b"1" + b"}" * 40,
    b'{"event": 1}',
    b'{"event": ""}',
    b'{"event": "x"}',
    b'{"event": "x", "timestamp": "soon", "user_id": "u"}',
    b'{"event": "x", "timestamp": 1, "user_id": "u"}',
    b'{"event": "x", "timestamp": %d}' % NOW_MS,
    b'{"event": "purchase_completed", "timestamp": %d, "user_id": "u"}' % NOW_MS,
    b'{"event": "x", "pad": "' + b"\x01" * 1_100_000 + b'"}',
]


@pytest.mark.parametrize("key", [None, b"user-1", b"\xff\x00binary", "ключ".encode()])
def test_processor_dead_letters_are_valid(processor: Processor, key: bytes | None) -> None:
    ctx = processor.process([RawMessage(value=v, key=key) for v in BAD_INPUTS])
    assert len(ctx.outputs) == len(BAD_INPUTS)
    reasons = set()
    for topic, out_key, raw in ctx.outputs:
        assert topic == "invalid_events"
        assert out_key == key
        record = assert_valid_record(raw)
        assert record["failed_at"] == NOW_MS
        assert record["topology"] == {"name": "ecommerce", "version": "1"}
        assert record["source"] is None  # not from a broker
        reasons.add(record["reason"])
    assert len(reasons) >= 10


def test_stage_error_dead_letter_is_valid_and_names_the_event(processor: Processor) -> None:
    class Broken:
        id = "enrich"

        def process(self, items: list[Item], ctx: Any) -> list[Item]:
            raise KeyError("geo")

    processor.middle.append(Broken())
    value = {"event": "page_viewed", "event_id": "e-9", "timestamp": NOW_MS, "user_id": "u"}
    ctx = processor.process([RawMessage(value=orjson.dumps(value), key=b"u")])
    [(topic, key, raw)] = ctx.outputs
    record = assert_valid_record(raw)
    assert (topic, key) == ("invalid_events", b"u")
    assert record["reason"] == "stage_error"
    assert record["stage"] == "enrich"
    assert record["message"] == "KeyError: 'geo'"
    assert record["event"] == "page_viewed"
    assert record["event_id"] == "e-9"
    assert orjson.loads(decode_payload(record)) == value


# ------------------------------------------------------------------ payload encodings


def test_text_payload() -> None:
    value = '{"event": "café ☕"'.encode()
    record = build(RawMessage(value=value))
    assert record["payload_encoding"] == "utf8"
    assert record["payload"] == value.decode()
    assert record["payload_truncated"] is False
    assert record["payload_size"] == len(value)
    assert decode_payload(record) == value


@pytest.mark.parametrize("value", [b"\xff", b"\x80abc", b"ok \xc3", bytes(range(256))])
def test_binary_payload_is_base64(value: bytes) -> None:
    record = build(RawMessage(value=value))
    assert record["payload_encoding"] == "base64"
    assert base64.b64decode(record["payload"]) == value
    assert decode_payload(record) == value
    assert record["payload_size"] == len(value)


@pytest.mark.parametrize("value", [None, b""])
def test_empty_payload(value: bytes | None) -> None:
    record = build(RawMessage(value=value), reason=Reason.EMPTY_PAYLOAD)
    assert (record["payload"], record["payload_encoding"], record["payload_size"]) == (
        "",
        "utf8",
        0,
    )
    assert decode_payload(record) == b""


@pytest.mark.parametrize(
    "value",
    [
        b"plain",
        "ünïcödé 🎉".encode(),
        b"\x00\x01\x02 control",
        b"\xfe\xff\x00",
        b'{"a":"\\u0000"}',
    ],
)
def test_decode_payload_round_trip(value: bytes) -> None:
    assert decode_payload(build(RawMessage(value=value))) == value


# ------------------------------------------------------------------ truncation


def test_payload_at_the_limit_is_kept_whole() -> None:
    value = b"a" * 1024
    record = build(RawMessage(value=value), limit=1024)
    assert record["payload_truncated"] is False
    assert decode_payload(record) == value


def test_payload_over_the_limit_is_truncated_with_a_flag() -> None:
    value = b"a" * 1025
    record = build(RawMessage(value=value), limit=1024)
    assert record["payload_truncated"] is True
    assert record["payload_size"] == 1025
    assert decode_payload(record) == value[:1024]


@pytest.mark.parametrize("char", ["é", "€", "😀"])
@pytest.mark.parametrize("lead", [0, 1, 2, 3])
def test_truncation_does_not_split_a_utf8_character(char: str, lead: int) -> None:
    value = b"a" * lead + char.encode() * 2000
    record = build(RawMessage(value=value), limit=1024)
    assert record["payload_truncated"] is True
    assert record["payload_encoding"] == "utf8"
    kept = decode_payload(record)
    assert value.startswith(kept)
    assert 1024 - len(char.encode()) < len(kept) <= 1024
    kept.decode("utf-8")  # whole characters only


def test_truncated_invalid_utf8_stays_base64() -> None:
    value = b"\xff" * 5000
    record = build(RawMessage(value=value), limit=1024)
    assert record["payload_encoding"] == "base64"
    assert record["payload_truncated"] is True
    assert decode_payload(record) == value[:1024]


TEN_MB = 10_000_000


@pytest.mark.parametrize("limit", [1024, DEFAULT_LIMIT, 768 * 1024])
@pytest.mark.parametrize(
    "value",
    [
        pytest.param(b'{"event": "x", "s": "' + b"\x01" * TEN_MB + b'"}', id="control-chars"),
        pytest.param(b'"' * TEN_MB, id="quotes"),
        pytest.param(b"\xff" * TEN_MB, id="invalid-utf8"),
        pytest.param("\u2028".encode() * (TEN_MB // 3), id="line-separators"),
        pytest.param(b"a" * TEN_MB, id="plain"),
    ],
)
def test_huge_payloads_stay_under_the_record_limit(limit: int, value: bytes) -> None:
    message = RawMessage(value=value, key=b"k" * 5000, topic="raw_events", partition=3, offset=9)
    record = build(message, limit=limit, reason=Reason.PAYLOAD_TOO_LARGE, detail="x" * 10_000)
    assert record["payload_truncated"] is True
    assert record["payload_size"] == len(value)
    kept = decode_payload(record)
    assert value.startswith(kept)
    assert len(kept) > 0
    assert len(record["message"]) <= 2000


def test_fallback_keeps_no_more_than_max_payload_bytes() -> None:
    value = b'{"s": "' + b"\x01" * TEN_MB + b'"}'
    record = build(RawMessage(value=value), limit=DEFAULT_LIMIT)
    assert len(decode_payload(record)) <= DEFAULT_LIMIT


def test_huge_payload_through_the_processor(processor: Processor) -> None:
    value = b'{"event": "x", "s": "' + b"\x01" * TEN_MB + b'"}'
    ctx = processor.process([RawMessage(value=value)])
    [(topic, _key, raw)] = ctx.outputs
    assert topic == "invalid_events"
    record = assert_valid_record(raw)
    assert record["reason"] == "payload_too_large"
    assert record["payload_truncated"] is True


def test_long_map_key_in_path_keeps_the_record_under_the_limit(
    tmp_path: Path, make_topology: Callable[..., Topology]
) -> None:
    schema = {
        "type": "record",
        "name": "Tagged",
        "fields": [{"name": "tags", "type": {"type": "map", "values": "int"}}],
    }
    (tmp_path / "tagged.avsc").write_text(json.dumps(schema), encoding="utf-8")
    original = f"add_to_cart: {REPO / 'avro'}/events/add_to_cart.avsc"
    topology = make_topology(replace={original: f"add_to_cart: {tmp_path / 'tagged.avsc'}"})
    processor = Processor(topology, clock=lambda: FIXED)
    event = {
        "event": "add_to_cart",
        "timestamp": NOW_MS,
        "user_id": "u",
        "properties": {"tags": {"k" * 900_000: "not an int"}},
    }
    ctx = processor.process([RawMessage(value=orjson.dumps(event))])
    [(_topic, _key, raw)] = ctx.outputs
    assert len(raw) < RECORD_SIZE_LIMIT
    assert_valid_record(raw)


# ------------------------------------------------------------------ metadata


def test_source_is_filled_from_a_broker_message() -> None:
    message = RawMessage(
        value=b"x", key=b"k", topic="raw_events", partition=2, offset=12345, timestamp=NOW_MS - 5
    )
    record = build(message)
    assert record["source"] == {
        "topic": "raw_events",
        "partition": 2,
        "offset": 12345,
        "timestamp": NOW_MS - 5,
    }


def test_source_timestamp_may_be_null() -> None:
    record = build(RawMessage(value=b"x", topic="raw_events", partition=0, offset=0))
    assert record["source"]["timestamp"] is None


def test_source_is_null_without_a_topic() -> None:
    assert build(RawMessage(value=b"x", offset=7))["source"] is None


def test_topology_and_failure_metadata() -> None:
    record = build(
        RawMessage(value=b"x"),
        reason=Reason.SCHEMA_VIOLATION,
        path="properties.revenue",
        detail="-1 is below the minimum 0",
    )
    assert record["topology"] == {"name": "shop", "version": "7"}
    assert record["failed_at"] == NOW_MS
    assert record["stage"] == "validate"
    assert record["reason"] == "schema_violation"
    assert record["path"] == "properties.revenue"
    assert record["message"] == "-1 is below the minimum 0"


@pytest.mark.parametrize(
    ("key", "expected", "encoding"),
    [
        (None, None, None),
        (b"user-42", "user-42", "utf8"),
        ("ü-42".encode(), "ü-42", "utf8"),
        (b"\xff\x00", base64.b64encode(b"\xff\x00").decode(), "base64"),
        (b"", "", "utf8"),
    ],
)
def test_original_key_is_kept(
    key: bytes | None, expected: str | None, encoding: str | None
) -> None:
    record = build(RawMessage(value=b"x", key=key))
    assert (record["key"], record["key_encoding"]) == (expected, encoding)


def test_long_keys_are_capped() -> None:
    record = build(RawMessage(value=b"x", key=b"k" * 100_000))
    assert record["key"] == "k" * 1024


def test_event_name_and_id_from_the_event() -> None:
    event = {"event": "e" * 1000, "event_id": "id-1"}
    record = build(RawMessage(value=b"x"), event=event, reason=Reason.STAGE_ERROR)
    assert record["event"] == "e" * 256
    assert record["event_id"] == "id-1"
    record = build(RawMessage(value=b"x"), event={"event": 5, "event_id": None})
    assert (record["event"], record["event_id"]) == (None, None)
    assert build(RawMessage(value=b"x"))["event"] is None


def test_long_messages_are_capped() -> None:
    assert len(build(RawMessage(value=b"x"), detail="d" * 5000)["message"]) == 2000


def test_a_huge_key_is_replaced_by_its_hash_and_the_record_still_fits() -> None:
    from pipeline.core.batch import BatchContext
    from pipeline.core.deadletter import MAX_KEY_BYTES, dead_letter_key

    key = b"k" * 1_048_576
    ctx = BatchContext(now_ms=1, dead_letter=builder(limit=2_000_000))
    message = RawMessage(value=b"\x01" * 400_000 + b"x" * 300_000, key=key, topic="raw", partition=0, offset=1)
    ctx.dead_letter(message, reason=Reason.MALFORMED_JSON, stage="validate", detail="bad")
    [(_, out_key, value)] = ctx.outputs
    assert out_key == dead_letter_key(key) and out_key.startswith(b"sha256:")
    assert len(out_key) + len(value) <= RECORD_SIZE_LIMIT
    assert dead_letter_key(b"short") == b"short" and dead_letter_key(b"x" * MAX_KEY_BYTES) == b"x" * MAX_KEY_BYTES
    record = assert_valid_record(value)
    assert record["key"] == "k" * 1024, "the record keeps the key's first 1 KiB"
