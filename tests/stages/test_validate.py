"""The validate stage: one test per dead-letter reason, normalisation, and a property test."""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.core.processor import Processor
from pipeline.core.reasons import Reason
from pipeline.core.records import RawMessage
from pipeline.stages.validate import ValidateConfig, ValidateStage, parse_timestamp
from pipeline.topology import Topology

FIXED = 1_795_000_000.0
NOW_MS = int(FIXED * 1000)
MINUTE_MS = 60_000
DAY_MS = 86_400_000
DLQ = "invalid_events"
DROP = object()
"""Sentinel: leave this field out of the event."""

PURCHASE = {
    "order_id": "o-1001",
    "revenue": 59.9,
    "currency": "EUR",
    "tax": 9.5,
    "products": [
        {"product_id": "sku-1", "name": "Mug", "price": 19.95, "quantity": 2},
        {"product_id": "sku-2", "price": 20, "quantity": 1},
    ],
}


def event(name: Any = "page_viewed", **fields: Any) -> dict[str, Any]:
    """A valid event one minute before FIXED; ``field=DROP`` leaves a field out."""
    out: dict[str, Any] = {
        "event_id": "e-1",
        "event": name,
        "timestamp": NOW_MS - MINUTE_MS,
        "user_id": "u-1",
    }
    out.update(fields)
    return {k: v for k, v in out.items() if v is not DROP}


def purchase(**properties: Any) -> dict[str, Any]:
    props = {**PURCHASE, **properties}
    return event("purchase_completed", properties={k: v for k, v in props.items() if v is not DROP})


def encode(value: Any) -> bytes:
    return value if isinstance(value, bytes) else orjson.dumps(value)


def run_one(
    processor: Processor, value: Any, key: bytes | None = None
) -> tuple[str, dict[str, Any]]:
    ctx = processor.process([RawMessage(value=None if value is None else encode(value), key=key)])
    assert len(ctx.outputs) == 1, ctx.outputs
    topic, out_key, out = ctx.outputs[0]
    assert out_key == key
    return topic, orjson.loads(out)


def accepted(processor: Processor, value: Any) -> dict[str, Any]:
    topic, out = run_one(processor, value)
    assert topic != DLQ, out
    return out


def rejected(processor: Processor, value: Any) -> dict[str, Any]:
    topic, record = run_one(processor, value)
    assert topic == DLQ, f"expected a dead letter, got {topic}: {record}"
    return record


def assert_readable(message: str) -> None:
    assert isinstance(message, str)
    assert len(message) >= 10 and " " in message
    for noise in ("Traceback", "<class", "object at 0x", "_Invalid"):
        assert noise not in message


def assert_dead(record: dict[str, Any], reason: Reason, path: str | None, *words: str) -> None:
    assert record["reason"] == reason.value, record
    assert record["stage"] == "validate"
    assert record["path"] == path, record
    assert_readable(record["message"])
    for word in words:
        assert word.lower() in record["message"].lower(), (word, record["message"])


def nest(levels: int) -> Any:
    """A value whose nesting depth (as the validate stage counts it) is ``levels``."""
    value: Any = {}
    for i in range(levels - 1):
        value = {"a": value} if i % 2 else [value]
    return value


# ------------------------------------------------------------------ one case per reason code


@dataclass(frozen=True)
class Case:
    id: str
    value: Any
    reason: Reason
    path: str | None
    words: tuple[str, ...] = ()


BIG = b'{"event":"page_viewed","pad":"' + b"x" * 1_048_576 + b'"}'

CASES = [
    # empty_payload
    Case("none", None, Reason.EMPTY_PAYLOAD, None, ("empty",)),
    Case("empty-bytes", b"", Reason.EMPTY_PAYLOAD, None, ("empty",)),
    # payload_too_large
    Case("too-large", BIG, Reason.PAYLOAD_TOO_LARGE, None, (str(len(BIG)), "1048576")),
    # invalid_utf8
    Case("latin1", b'{"event": "caf\xe9"}', Reason.INVALID_UTF8, None, ("utf-8", "byte 14")),
    Case("lone-continuation", b"\x80\x81", Reason.INVALID_UTF8, None, ("utf-8",)),
    Case("encoded-surrogate", b'{"e": "\xed\xa0\x80"}', Reason.INVALID_UTF8, None, ("utf-8",)),
    # malformed_json
    Case(
        "truncated",
        b'{"event": "page_viewed", "timestamp": 17',
        Reason.MALFORMED_JSON,
        None,
        ("json",),
    ),
    Case("nan", b'{"event": "x", "v": NaN}', Reason.MALFORMED_JSON, None, ("json",)),
    Case("infinity", b'{"event": "x", "v": Infinity}', Reason.MALFORMED_JSON, None, ("json",)),
    Case("minus-infinity", b'{"event": "x", "v": -Infinity}', Reason.MALFORMED_JSON, None),
    Case("single-quotes", b"{'event': 'x'}", Reason.MALFORMED_JSON, None),
    Case("trailing-comma", b'{"event": "x",}', Reason.MALFORMED_JSON, None),
    Case("two-objects", b'{"a": 1}{"b": 2}', Reason.MALFORMED_JSON, None),
    Case("bom", b'\xef\xbb\xbf{"event": "x"}', Reason.MALFORMED_JSON, None),
    Case("whitespace", b"   ", Reason.MALFORMED_JSON, None),
    # not_an_object
    Case("array", b'[{"event": "page_viewed"}]', Reason.NOT_AN_OBJECT, None, ("array",)),
    Case("string", b'"page_viewed"', Reason.NOT_AN_OBJECT, None, ("string",)),
    Case("number", b"42", Reason.NOT_AN_OBJECT, None, ("number",)),
    Case("null", b"null", Reason.NOT_AN_OBJECT, None, ("null",)),
    Case("boolean", b"true", Reason.NOT_AN_OBJECT, None, ("boolean",)),
    # too_deep
    Case("depth-40", event(properties=nest(40)), Reason.TOO_DEEP, None, ("32",)),
    Case("depth-33", event(properties=nest(32)), Reason.TOO_DEEP, None, ("32",)),
    # missing_field
    Case("no-event", event(DROP), Reason.MISSING_FIELD, "event", ("event",)),
    Case("null-event", event(None), Reason.MISSING_FIELD, "event", ("event",)),
    Case("no-timestamp", event(timestamp=DROP), Reason.MISSING_FIELD, "timestamp", ("timestamp",)),
    Case("null-timestamp", event(timestamp=None), Reason.MISSING_FIELD, "timestamp"),
    # wrong_type
    Case("event-number", event(42), Reason.WRONG_TYPE, "event", ("string", "number")),
    Case("event-object", event({"name": "x"}), Reason.WRONG_TYPE, "event", ("object",)),
    Case("event-id-number", event(event_id=123), Reason.WRONG_TYPE, "event_id", ("string",)),
    Case("event-id-bool", event(event_id=True), Reason.WRONG_TYPE, "event_id"),
    Case("user-id-number", event(user_id=42), Reason.WRONG_TYPE, "user_id", ("user_id", "number")),
    Case(
        "anon-id-list", event(user_id=DROP, anonymous_id=["a"]), Reason.WRONG_TYPE, "anonymous_id"
    ),
    Case("device-id-bool", event(device_id=False), Reason.WRONG_TYPE, "device_id", ("boolean",)),
    Case("session-id-number", event(session_id=7), Reason.WRONG_TYPE, "session_id"),
    Case(
        "properties-string",
        event(properties="{}"),
        Reason.WRONG_TYPE,
        "properties",
        ("object", "string"),
    ),
    Case("properties-list", event(properties=[]), Reason.WRONG_TYPE, "properties", ("array",)),
    Case("context-list", event(context=["ip"]), Reason.WRONG_TYPE, "context"),
    Case("user-properties-number", event(user_properties=1), Reason.WRONG_TYPE, "user_properties"),
    Case(
        "context-ip-number",
        event(context={"ip": 2130706433}),
        Reason.WRONG_TYPE,
        "context.ip",
        ("context.ip",),
    ),
    Case(
        "context-locale-bool", event(context={"locale": True}), Reason.WRONG_TYPE, "context.locale"
    ),
    # invalid_value
    Case("event-empty", event(""), Reason.INVALID_VALUE, "event", ("printable",)),
    Case("event-too-long", event("e" * 129), Reason.INVALID_VALUE, "event", ("128",)),
    Case("event-control-char", event("page\nviewed"), Reason.INVALID_VALUE, "event"),
    Case(
        "event-and-alias-differ",
        event("page_viewed", event_name="screen_viewed"),
        Reason.INVALID_VALUE,
        "event_name",
        ("differ",),
    ),
    Case("event-id-empty", event(event_id=""), Reason.INVALID_VALUE, "event_id", ("non-empty",)),
    Case(
        "event-id-too-long", event(event_id="e" * 257), Reason.INVALID_VALUE, "event_id", ("256",)
    ),
    Case("user-id-too-long", event(user_id="u" * 257), Reason.INVALID_VALUE, "user_id", ("256",)),
    # bad_timestamp
    Case(
        "ts-yesterday",
        event(timestamp="yesterday"),
        Reason.BAD_TIMESTAMP,
        "timestamp",
        ("yesterday",),
    ),
    Case(
        "ts-naive-iso",
        event(timestamp="2026-11-18T10:00:00"),
        Reason.BAD_TIMESTAMP,
        "timestamp",
        ("offset",),
    ),
    Case(
        "ts-date-only",
        event(timestamp="2026-11-18"),
        Reason.BAD_TIMESTAMP,
        "timestamp",
        ("offset",),
    ),
    Case("ts-bool", event(timestamp=True), Reason.BAD_TIMESTAMP, "timestamp", ("boolean",)),
    Case("ts-object", event(timestamp={"s": 1}), Reason.BAD_TIMESTAMP, "timestamp", ("object",)),
    Case("ts-list", event(timestamp=[NOW_MS]), Reason.BAD_TIMESTAMP, "timestamp", ("array",)),
    Case("ts-empty", event(timestamp=""), Reason.BAD_TIMESTAMP, "timestamp"),
    Case("ts-digits", event(timestamp=str(NOW_MS)), Reason.BAD_TIMESTAMP, "timestamp"),
    Case(
        "ts-bad-month", event(timestamp="2026-13-01T00:00:00Z"), Reason.BAD_TIMESTAMP, "timestamp"
    ),
    # timestamp_out_of_range
    Case(
        "ts-future",
        event(timestamp=NOW_MS + 10 * MINUTE_MS),
        Reason.TIMESTAMP_OUT_OF_RANGE,
        "timestamp",
        ("future", "600s"),
    ),
    Case(
        "ts-far-future",
        event(timestamp="2099-01-01T00:00:00Z"),
        Reason.TIMESTAMP_OUT_OF_RANGE,
        "timestamp",
        ("future",),
    ),
    Case(
        "ts-too-old",
        event(timestamp=NOW_MS - 31 * DAY_MS),
        Reason.TIMESTAMP_OUT_OF_RANGE,
        "timestamp",
        ("31.0 days old", "30.0 days"),
    ),
    Case(
        "ts-epoch-seconds",
        event(timestamp=int(FIXED)),
        Reason.TIMESTAMP_OUT_OF_RANGE,
        "timestamp",
        ("days old",),
    ),
    Case("ts-negative", event(timestamp=-1), Reason.TIMESTAMP_OUT_OF_RANGE, "timestamp"),
    Case("ts-huge", event(timestamp=2**63 - 1), Reason.TIMESTAMP_OUT_OF_RANGE, "timestamp"),
    # missing_identity
    Case(
        "no-identity",
        event(user_id=DROP),
        Reason.MISSING_IDENTITY,
        None,
        ("user_id", "anonymous_id", "device_id"),
    ),
    Case("null-identity", event(user_id=None, device_id=None), Reason.MISSING_IDENTITY, None),
    Case("empty-identity", event(user_id="", anonymous_id=""), Reason.MISSING_IDENTITY, None),
    # schema_violation (purchase_completed)
    Case(
        "revenue-negative",
        purchase(revenue=-1),
        Reason.SCHEMA_VIOLATION,
        "properties.revenue",
        ("minimum",),
    ),
    Case(
        "revenue-string",
        purchase(revenue="59.90"),
        Reason.SCHEMA_VIOLATION,
        "properties.revenue",
        ("number", "string"),
    ),
    Case(
        "revenue-bool",
        purchase(revenue=True),
        Reason.SCHEMA_VIOLATION,
        "properties.revenue",
        ("boolean",),
    ),
    Case(
        "no-order-id",
        purchase(order_id=DROP),
        Reason.SCHEMA_VIOLATION,
        "properties.order_id",
        ("required",),
    ),
    Case(
        "empty-order-id",
        purchase(order_id=""),
        Reason.SCHEMA_VIOLATION,
        "properties.order_id",
        ("shorter",),
    ),
    Case(
        "products-empty",
        purchase(products=[]),
        Reason.SCHEMA_VIOLATION,
        "properties.products",
        ("fewer than 1",),
    ),
    Case(
        "products-object",
        purchase(products={}),
        Reason.SCHEMA_VIOLATION,
        "properties.products",
        ("array",),
    ),
    Case(
        "quantity-zero",
        purchase(products=[{"product_id": "p", "price": 1, "quantity": 0}]),
        Reason.SCHEMA_VIOLATION,
        "properties.products[0].quantity",
        ("minimum",),
    ),
    Case(
        "quantity-float",
        purchase(
            products=[PURCHASE["products"][0], {"product_id": "p", "price": 1, "quantity": 1.5}]
        ),
        Reason.SCHEMA_VIOLATION,
        "properties.products[1].quantity",
        ("integer",),
    ),
    Case(
        "product-id-missing",
        purchase(products=[{"price": 1, "quantity": 1}]),
        Reason.SCHEMA_VIOLATION,
        "properties.products[0].product_id",
        ("required",),
    ),
    Case(
        "currency-lowercase",
        purchase(currency="eur"),
        Reason.SCHEMA_VIOLATION,
        "properties.currency",
        ("'eur'",),
    ),
    Case(
        "currency-long", purchase(currency="EURO"), Reason.SCHEMA_VIOLATION, "properties.currency"
    ),
    Case("tax-negative", purchase(tax=-0.01), Reason.SCHEMA_VIOLATION, "properties.tax"),
    Case(
        "purchase-no-properties",
        event("purchase_completed"),
        Reason.SCHEMA_VIOLATION,
        "properties.order_id",
        ("required",),
    ),
    Case(
        "add-to-cart-quantity",
        event("add_to_cart", properties={"product_id": "p", "price": 1.0, "quantity": -3}),
        Reason.SCHEMA_VIOLATION,
        "properties.quantity",
    ),
    Case(
        "error-code-bool",
        event("error_occurred", properties={"error_type": "Crash", "code": True}),
        Reason.SCHEMA_VIOLATION,
        "properties.code",
        ("union",),
    ),
    Case(
        "error-type-too-long",
        event("error_occurred", properties={"error_type": "x" * 201}),
        Reason.SCHEMA_VIOLATION,
        "properties.error_type",
        ("200",),
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_dead_letter_reason(processor: Processor, case: Case) -> None:
    record = rejected(processor, case.value)
    assert_dead(record, case.reason, case.path, *case.words)


def test_every_reason_code_has_a_case() -> None:
    covered = {c.reason for c in CASES} | {Reason.UNKNOWN_EVENT}  # tested on its own below
    # stage_error, enrichment_failed and output_too_large come from later stages (tests/core,
    # tests/stages/test_enrich, test_route, test_dedupe).
    assert covered == set(Reason) - {
        Reason.STAGE_ERROR, Reason.ENRICHMENT_FAILED, Reason.OUTPUT_TOO_LARGE
    }


def test_reasons_match_the_dead_letter_schema(example_topology: Topology) -> None:
    schema = example_topology.schemas["dead_letter"]
    [reason_field] = [f for f in schema["fields"] if f["name"] == "reason"]
    assert reason_field["type"]["symbols"] == [r.value for r in Reason]


@pytest.mark.parametrize("levels", [1025, 5000])
def test_very_deep_nesting_is_too_deep(processor: Processor, levels: int) -> None:
    value = b'{"event":"x","a":' + b"[" * levels + b"]" * levels + b"}"
    assert_dead(rejected(processor, value), Reason.TOO_DEEP, None)


def test_deep_nesting_inside_orjsons_limit_is_too_deep(processor: Processor) -> None:
    value = b'{"event":"x","a":' + b"[" * 1000 + b"]" * 1000 + b"}"
    assert_dead(rejected(processor, value), Reason.TOO_DEEP, None)


def test_nesting_up_to_max_depth_is_fine(processor: Processor) -> None:
    out = accepted(processor, event(properties=nest(31)))  # the event itself is level 1
    assert out["properties"] == nest(31)


def test_brackets_inside_strings_are_not_nesting(processor: Processor) -> None:
    out = accepted(processor, event(properties={"text": "{[" * 100}))
    assert out["properties"]["text"] == "{[" * 100


def test_payload_at_exactly_the_limit_is_accepted(processor: Processor) -> None:
    stub = encode(event(pad=""))
    padded = encode(event(pad="x" * (1_048_576 - len(stub))))
    assert len(padded) == 1_048_576
    # Validate accepts it; stamped and routed it no longer fits a Kafka record (1,000,000
    # bytes): the route stage dead-letters it instead of failing the batch.
    record = rejected(processor, padded)
    assert (record["reason"], record["stage"]) == ("output_too_large", "route"), record
    fits = encode(event(pad="x" * (990_000 - len(stub))))
    assert accepted(processor, fits)["pad"].startswith("xxx")
    too_big = encode(event(pad="x" * (1_048_577 - len(stub))))
    assert_dead(rejected(processor, too_big), Reason.PAYLOAD_TOO_LARGE, None)


def test_size_is_checked_before_parsing(processor: Processor) -> None:
    value = b"\xff" * 2_000_000  # not UTF-8 either; the size decides first
    assert_dead(rejected(processor, value), Reason.PAYLOAD_TOO_LARGE, None)


# ------------------------------------------------------------------ unknown events


def test_unknown_events_are_allowed_by_default(processor: Processor) -> None:
    out = accepted(processor, event("newsletter_opened", properties={"anything": [1, {"x": None}]}))
    assert out["properties"] == {"anything": [1, {"x": None}]}


def test_unknown_events_rejected_when_configured(make_topology: Callable[..., Topology]) -> None:
    topology = make_topology(replace={"unknown_events: allow": "unknown_events: reject"})
    processor = Processor(topology, clock=lambda: FIXED)
    assert_dead(
        rejected(processor, event("newsletter_opened")),
        Reason.UNKNOWN_EVENT,
        "event",
        "'newsletter_opened'",
        "schema",
    )
    # Events with a schema still pass.
    assert accepted(processor, purchase())["event"] == "purchase_completed"


# ------------------------------------------------------------------ normalisation


def test_valid_purchase_passes_unchanged(processor: Processor) -> None:
    out = accepted(processor, purchase())
    assert out["properties"] == PURCHASE
    assert out["event"] == "purchase_completed"
    assert out["timestamp"] == NOW_MS - MINUTE_MS
    assert out["event_id"] == "e-1"


def test_event_name_alias_is_normalised(processor: Processor) -> None:
    value = event(DROP, event_name="page_viewed")
    out = accepted(processor, value)
    assert out["event"] == "page_viewed"
    assert "event_name" not in out


def test_event_and_equal_alias_are_accepted(processor: Processor) -> None:
    out = accepted(processor, event("page_viewed", event_name="page_viewed"))
    assert out["event"] == "page_viewed" and "event_name" not in out


def test_alias_with_null_event(processor: Processor) -> None:
    out = accepted(processor, event(None, event_name="purchase_completed", properties=PURCHASE))
    assert out["event"] == "purchase_completed"


def test_alias_is_schema_checked(processor: Processor) -> None:
    value = event(DROP, event_name="purchase_completed", properties={**PURCHASE, "revenue": -5})
    assert_dead(rejected(processor, value), Reason.SCHEMA_VIOLATION, "properties.revenue")


def iso(ms: int, offset_hours: int = 0) -> str:
    tz = timezone(timedelta(hours=offset_hours))
    when = datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(milliseconds=ms)
    return when.astimezone(tz).isoformat(timespec="milliseconds")


def test_timestamp_forms_normalise_to_the_same_epoch_ms(processor: Processor) -> None:
    ms = NOW_MS - 3 * 3_600_000 + 250
    zulu = iso(ms).replace("+00:00", "Z")
    assert zulu.endswith(".250Z")
    forms = [
        ms,
        float(ms),
        zulu,
        iso(ms),
        iso(ms, 2),  # +02:00
        iso(ms, -5),  # -05:00
        f" {zulu} ",
    ]
    assert iso(ms, 2).endswith("+02:00")
    for form in forms:
        out = accepted(processor, event(timestamp=form))
        assert out["timestamp"] == ms, form
        assert type(out["timestamp"]) is int


def test_iso_without_fraction(processor: Processor) -> None:
    out = accepted(processor, event(timestamp="2026-11-18T10:06:40Z"))
    assert out["timestamp"] == NOW_MS - 3_600_000


def test_float_epoch_ms_is_truncated_to_int(processor: Processor) -> None:
    out = accepted(processor, event(timestamp=NOW_MS - 1000.75))
    assert out["timestamp"] == NOW_MS - 1001 or out["timestamp"] == NOW_MS - 1000
    assert type(out["timestamp"]) is int


def test_iso_milliseconds_are_exact() -> None:
    # 2004-03-15T07:55:47.472Z is epoch ms 1079337347472.
    clock = 1_079_337_400.0
    stage = ValidateStage("validate", ValidateConfig(), {})
    assert parse_timestamp("2004-03-15T07:55:47.472Z") == 1_079_337_347_472
    assert (
        stage.check(encode(event(timestamp="2004-03-15T07:55:47.472Z")), int(clock * 1000))[
            "timestamp"
        ]
        == 1_079_337_347_472
    )


def test_parse_timestamp_takes_exact_types_first_and_subclasses_as_before() -> None:
    from pipeline.stages.validate import _Invalid

    # int and str are tested by exact type first; subclasses and booleans take the isinstance
    # checks behind them, with the same results as exact types (booleans are refused).
    class Millis(int):
        pass

    class Text(str):
        pass

    zulu = "2004-03-15T07:55:47.472Z"
    assert parse_timestamp(1_079_337_347_472) == 1_079_337_347_472
    assert parse_timestamp(Millis(1_079_337_347_472)) == 1_079_337_347_472
    assert parse_timestamp(zulu) == parse_timestamp(Text(zulu)) == 1_079_337_347_472
    assert parse_timestamp(f"  {zulu} ") == 1_079_337_347_472
    for value, words in [
        (True, "boolean"),
        (Text("2004-03-15T07:55:47"), "no UTC offset"),
        ("2004_03-15T07:55:47Z", "neither"),
        ("20040315T075547Z", "neither"),
        ("2004-03-15T07:55:47.472Z" + "0" * 20, "neither"),  # longer than 40 characters
    ]:
        with pytest.raises(_Invalid) as raised:
            parse_timestamp(value)
        assert raised.value.reason == Reason.BAD_TIMESTAMP
        assert words in raised.value.detail


def test_timestamp_window_edges(processor: Processor) -> None:
    skew_ms = 5 * MINUTE_MS
    age_ms = 30 * DAY_MS
    assert accepted(processor, event(timestamp=NOW_MS + skew_ms))["timestamp"] == NOW_MS + skew_ms
    assert accepted(processor, event(timestamp=NOW_MS - age_ms))["timestamp"] == NOW_MS - age_ms
    for ts in (NOW_MS + skew_ms + 1, NOW_MS - age_ms - 1):
        assert_dead(
            rejected(processor, event(timestamp=ts)), Reason.TIMESTAMP_OUT_OF_RANGE, "timestamp"
        )


def test_clock_decides_the_window(example_topology: Topology) -> None:
    ts = NOW_MS - 2 * DAY_MS
    later = Processor(example_topology, clock=lambda: FIXED + 29 * 86400)
    assert_dead(rejected(later, event(timestamp=ts)), Reason.TIMESTAMP_OUT_OF_RANGE, "timestamp")
    earlier = Processor(example_topology, clock=lambda: FIXED - 3 * 86400)
    assert_dead(
        rejected(earlier, event(timestamp=ts)), Reason.TIMESTAMP_OUT_OF_RANGE, "timestamp", "future"
    )


@pytest.mark.parametrize(
    "identity",
    [{"user_id": "u"}, {"user_id": DROP, "anonymous_id": "a"}, {"user_id": None, "device_id": "d"}],
)
def test_any_one_identity_is_enough(processor: Processor, identity: dict[str, Any]) -> None:
    accepted(processor, event(**identity))


def test_unknown_top_level_fields_are_kept(processor: Processor) -> None:
    extra = {"app_version": "3.1.4", "experiment": {"id": "exp-7", "arms": [1, 2]}, "flag": None}
    out = accepted(processor, event(**extra))
    for key, value in extra.items():
        assert out[key] == value


@pytest.mark.parametrize("present", [DROP, None])
def test_object_fields_default_to_empty_objects(processor: Processor, present: Any) -> None:
    out = accepted(processor, event(properties=present, context=present, user_properties=present))
    assert out["properties"] == {} and out["context"] == {} and out["user_properties"] == {}


def test_context_keeps_other_keys(processor: Processor) -> None:
    context = {"ip": "10.0.0.1", "locale": "de-DE", "library": {"name": "js", "version": 3}, "x": 1}
    assert accepted(processor, event(context=context))["context"] == context


def test_message_key_is_kept_on_valid_and_dead_events(processor: Processor) -> None:
    topic, _ = run_one(processor, event(), key=b"u-1")
    assert topic == "processed_events"
    topic, record = run_one(processor, b"nope", key=b"u-1")
    assert topic == DLQ and record["key"] == "u-1"


def test_order_of_checks_first_failure_decides(processor: Processor) -> None:
    # Both the timestamp and the identity are bad: the timestamp is checked first.
    record = rejected(processor, event(timestamp="soon", user_id=DROP))
    assert record["reason"] == Reason.BAD_TIMESTAMP


def test_batch_of_mixed_messages_keeps_one_output_each(processor: Processor) -> None:
    values = [c.value for c in CASES] + [encode(event()), encode(purchase())]
    ctx = processor.process([RawMessage(value=None if v is None else encode(v)) for v in values])
    assert len(ctx.outputs) == len(values)
    assert sum(ctx.dead_letters.values()) == len(CASES)
    assert [t for t, _, _ in ctx.outputs].count(DLQ) == len(CASES)


def test_validate_config_defaults() -> None:
    config = ValidateConfig()
    assert config.max_payload_bytes == 1_048_576
    assert config.max_depth == 32
    assert config.unknown_events == "allow"


# ------------------------------------------------------------------ property tests

JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=15,
)
FIELD_VALUES = (
    JSON_VALUES
    | st.sampled_from(["purchase_completed", "add_to_cart", "error_occurred", "subscription_x"])
    | st.integers(min_value=NOW_MS - 40 * DAY_MS, max_value=NOW_MS + DAY_MS)
    | st.just(iso(NOW_MS - 1000))
)
EVENT_LIKE = st.dictionaries(
    st.sampled_from(
        [
            "event",
            "event_name",
            "event_id",
            "timestamp",
            "user_id",
            "anonymous_id",
            "device_id",
            "session_id",
            "properties",
            "context",
            "user_properties",
            "extra",
        ]
    ),
    FIELD_VALUES,
) | st.builds(
    lambda name, props: event(name, properties=props),
    st.sampled_from(["purchase_completed", "add_to_cart", "error_occurred"]),
    st.dictionaries(
        st.sampled_from(list(PURCHASE) + ["product_id", "price", "quantity", "error_type", "code"]),
        FIELD_VALUES,
    ),
)

PROPERTY_SETTINGS = settings(
    max_examples=100,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def _one_output_each(processor: Processor, values: list[bytes | None]) -> None:
    ctx = processor.process([RawMessage(value=v) for v in values])
    assert len(ctx.outputs) == len(values)
    topics = set(processor.topology.output_topics)
    for (topic, _key, out), value in zip(ctx.outputs, values, strict=True):
        assert topic in topics
        decoded = orjson.loads(out)
        if topic == DLQ:
            assert decoded["reason"] in {r.value for r in Reason}
            assert decoded["reason"] != Reason.STAGE_ERROR, decoded
        else:
            assert type(decoded["timestamp"]) is int
    # Each message alone gets the same answer as in the batch (no cross-talk between events).
    # Dead letters are written as the source stage finds them, routed events after, so compare
    # the topics as multisets.
    alone = [processor.process([RawMessage(value=v)]).outputs for v in values]
    assert all(len(outputs) == 1 for outputs in alone)
    assert Counter(o[0][0] for o in alone) == Counter(t for t, _, _ in ctx.outputs)


@PROPERTY_SETTINGS
@given(st.lists(st.binary(max_size=200) | st.none(), max_size=8))
def test_any_bytes_give_exactly_one_output(
    processor: Processor, values: list[bytes | None]
) -> None:
    _one_output_each(processor, values)


@PROPERTY_SETTINGS
@given(st.lists(JSON_VALUES, min_size=1, max_size=4))
def test_any_json_value_gives_exactly_one_output(processor: Processor, values: list[Any]) -> None:
    _one_output_each(processor, [json.dumps(v).encode() for v in values])


@PROPERTY_SETTINGS
@given(st.lists(EVENT_LIKE, min_size=1, max_size=4))
def test_any_event_like_object_gives_exactly_one_output(
    processor: Processor, values: list[dict[str, Any]]
) -> None:
    _one_output_each(processor, [json.dumps(v).encode() for v in values])


@PROPERTY_SETTINGS
@given(st.floats(allow_nan=True, allow_infinity=True))
def test_non_finite_numbers_never_pass(processor: Processor, number: float) -> None:
    value = json.dumps(event(properties={"n": number})).encode()  # NaN/Infinity when not finite
    topic, _ = run_one(processor, value)
    assert (topic == DLQ) == (not math.isfinite(number))
