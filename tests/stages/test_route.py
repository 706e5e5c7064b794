"""The route stage: first match wins, names and prefixes, every predicate op, the default."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from pipeline.core.processor import Processor
from pipeline.core.records import RawMessage
from pipeline.stages.route import RouteConfig, RouteStage

FIXED = 1_795_000_000.0
NOW_MS = int(FIXED * 1000)


def stage(*rules: dict[str, Any], default: str = "other") -> RouteStage:
    numbered = [{"id": f"r{i}", **rule} for i, rule in enumerate(rules)]
    return RouteStage("route", RouteConfig.model_validate({"rules": numbered, "default": default}))


def where(field: str, op: str, value: Any = None, to: str = "hit") -> RouteStage:
    predicate: dict[str, Any] = {"field": field, "op": op}
    if value is not None:
        predicate["value"] = value
    return stage({"when": {"where": [predicate]}, "to": to})


def ev(name: str = "page_viewed", **fields: Any) -> dict[str, Any]:
    return {"event": name, **fields}


# ------------------------------------------------------------------ names, prefixes, order


def test_first_matching_rule_wins() -> None:
    route = stage(
        {"when": {"event": ["purchase_completed"]}, "to": "first"},
        {"when": {"event_prefix": ["purchase_"]}, "to": "second"},
        {"when": {"event": ["purchase_completed", "purchase_failed"]}, "to": "third"},
    )
    assert route.topic_for(ev("purchase_completed")) == "first"
    assert route.topic_for(ev("purchase_failed")) == "second"
    assert route.topic_for(ev("refund_issued")) == "other"


def test_event_list_is_exact() -> None:
    route = stage({"when": {"event": ["signup", "login"]}, "to": "auth"})
    assert route.topic_for(ev("signup")) == "auth"
    assert route.topic_for(ev("login")) == "auth"
    for name in ("signup_started", "Signup", "sign", "logins", ""):
        assert route.topic_for(ev(name)) == "other", name


def test_event_prefix() -> None:
    route = stage({"when": {"event_prefix": ["subscription_", "refund_"]}, "to": "money"})
    assert route.topic_for(ev("subscription_started")) == "money"
    assert route.topic_for(ev("refund_issued")) == "money"
    assert route.topic_for(ev("subscription_")) == "money"
    assert route.topic_for(ev("subscription")) == "other"
    assert route.topic_for(ev("my_subscription_started")) == "other"


def test_event_list_or_prefix_in_one_rule() -> None:
    route = stage(
        {"when": {"event": ["purchase_completed"], "event_prefix": ["refund_"]}, "to": "money"}
    )
    assert route.topic_for(ev("purchase_completed")) == "money"
    assert route.topic_for(ev("refund_issued")) == "money"
    assert route.topic_for(ev("purchase_started")) == "other"


def test_name_and_where_must_both_hold() -> None:
    route = stage(
        {
            "when": {
                "event": ["purchase_completed"],
                "where": [{"field": "properties.revenue", "op": "gte", "value": 1000}],
            },
            "to": "big",
        },
        {"when": {"event": ["purchase_completed"]}, "to": "small"},
    )
    assert route.topic_for(ev("purchase_completed", properties={"revenue": 5000})) == "big"
    assert route.topic_for(ev("purchase_completed", properties={"revenue": 10})) == "small"
    assert route.topic_for(ev("refund_issued", properties={"revenue": 5000})) == "other"


def test_all_predicates_of_a_rule_must_hold() -> None:
    route = stage(
        {
            "when": {
                "where": [
                    {"field": "context.locale", "op": "prefix", "value": "de"},
                    {"field": "properties.revenue", "op": "gt", "value": 0},
                ]
            },
            "to": "german_revenue",
        }
    )
    assert (
        route.topic_for(ev(context={"locale": "de-AT"}, properties={"revenue": 3}))
        == "german_revenue"
    )
    assert route.topic_for(ev(context={"locale": "de-AT"}, properties={"revenue": 0})) == "other"
    assert route.topic_for(ev(context={"locale": "en"}, properties={"revenue": 3})) == "other"


def test_default_when_there_are_no_rules() -> None:
    route = stage(default="everything")
    assert route.topic_for(ev("anything")) == "everything"


def test_same_name_different_fields_with_predicates() -> None:
    # Name-only results may be cached; rules with predicates must still look at every event.
    route = stage(
        {"when": {"where": [{"field": "user_id", "op": "eq", "value": "vip"}]}, "to": "vip"}
    )
    for _ in range(3):
        assert route.topic_for(ev(user_id="vip")) == "vip"
        assert route.topic_for(ev(user_id="joe")) == "other"


def test_name_only_routing_is_stable_across_calls() -> None:
    route = stage({"when": {"event_prefix": ["error_"]}, "to": "errors"})
    answers = [route.topic_for(ev(name)) for name in ["error_x", "page", "error_x", "page"] * 3]
    assert answers == ["errors", "other", "errors", "other"] * 3


# ------------------------------------------------------------------ predicate ops


@pytest.mark.parametrize(
    ("op", "value", "field_value", "expected"),
    [
        ("eq", "EUR", "EUR", True),
        ("eq", "EUR", "USD", False),
        ("eq", 10, 10, True),
        ("eq", 10, 10.0, True),
        ("eq", 10, "10", False),
        ("eq", {"a": 1}, {"a": 1}, True),
        ("eq", [1, 2], [1, 2], True),
        ("ne", "EUR", "USD", True),
        ("ne", "EUR", "EUR", False),
        ("ne", 1, "1", True),
        ("gt", 100, 101, True),
        ("gt", 100, 100, False),
        ("gt", 100, 100.5, True),
        ("gt", 100, -5, False),
        ("gte", 100, 100, True),
        ("gte", 100, 99.999, False),
        ("lt", 0, -0.01, True),
        ("lt", 0, 0, False),
        ("lte", 0, 0, True),
        ("lte", 0, 0.001, False),
        ("gt", 1.5, 2, True),
        ("in", ["de", "at"], "de", True),
        ("in", ["de", "at"], "ch", False),
        ("in", [1, 2, 3], 2, True),
        ("in", [1, 2, 3], "2", False),
        ("not_in", ["de", "at"], "ch", True),
        ("not_in", ["de", "at"], "de", False),
        ("prefix", "https://shop.", "https://shop.example/cart", True),
        ("prefix", "https://shop.", "http://shop.example", False),
        ("prefix", "", "anything", True),
    ],
)
def test_predicate_ops(op: str, value: Any, field_value: Any, expected: bool) -> None:
    route = where("properties.x", op, value)
    assert (route.topic_for(ev(properties={"x": field_value})) == "hit") is expected


@pytest.mark.parametrize("op", ["gt", "gte", "lt", "lte"])
@pytest.mark.parametrize("field_value", ["5", None, [5], {"v": 5}, True, False])
def test_ordering_ops_need_a_number(op: str, field_value: Any) -> None:
    # Strings, nulls, containers and booleans are never ordered against a number.
    route = where("properties.x", op, 0 if op.startswith("g") else 10)
    assert route.topic_for(ev(properties={"x": field_value})) == "other"


def test_booleans_are_not_numbers_for_ordering() -> None:
    assert where("properties.flag", "gte", 1).topic_for(ev(properties={"flag": True})) == "other"
    assert where("properties.flag", "lte", 0).topic_for(ev(properties={"flag": False})) == "other"


@pytest.mark.parametrize(
    ("op", "value", "field_value", "expected"),
    [
        ("eq", 1, True, False),
        ("eq", True, 1, False),
        ("eq", 0, False, False),
        ("ne", 1, True, True),
        ("in", [0, 2], False, False),
        ("not_in", [1], True, True),
    ],
)
def test_booleans_are_not_numbers_for_equality(
    op: str, value: Any, field_value: Any, expected: bool
) -> None:
    route = where("properties.x", op, value)
    assert (route.topic_for(ev(properties={"x": field_value})) == "hit") is expected


def test_booleans_equal_booleans() -> None:
    assert where("properties.x", "eq", True).topic_for(ev(properties={"x": True})) == "hit"
    assert where("properties.x", "eq", False).topic_for(ev(properties={"x": True})) == "other"


@pytest.mark.parametrize(
    ("event", "exists"),
    [
        (ev(properties={"coupon": "SAVE10"}), True),
        (ev(properties={"coupon": ""}), True),
        (ev(properties={"coupon": 0}), True),
        (ev(properties={"coupon": False}), True),
        (ev(properties={"coupon": {}}), True),
        (ev(properties={"coupon": None}), False),
        (ev(properties={}), False),
        (ev(), False),
        (ev(properties="coupon"), False),
        (ev(properties=["coupon"]), False),
    ],
)
def test_exists_and_missing(event: dict[str, Any], exists: bool) -> None:
    assert (where("properties.coupon", "exists").topic_for(event) == "hit") is exists
    assert (where("properties.coupon", "missing").topic_for(event) == "hit") is (not exists)


@pytest.mark.parametrize("op", ["eq", "gt", "gte", "lt", "lte", "in", "prefix"])
@pytest.mark.parametrize(
    "event",
    [ev(), ev(properties={}), ev(properties={"x": None}), ev(properties=[1]), ev(properties=7)],
    ids=["no-properties", "no-field", "null", "properties-list", "properties-number"],
)
def test_positive_ops_never_match_a_missing_field(op: str, event: dict[str, Any]) -> None:
    value = {"eq": 1, "in": [1], "prefix": "a"}.get(op, 0)
    assert where("properties.x", op, value).topic_for(event) == "other"


def test_negative_ops_match_a_missing_field() -> None:
    # Current semantics: "not equal to X" and "not in [X]" hold when the field is absent.
    assert where("properties.x", "ne", 1).topic_for(ev()) == "hit"
    assert where("properties.x", "not_in", [1]).topic_for(ev()) == "hit"


def test_deep_and_top_level_fields() -> None:
    route = where("context.library.name", "eq", "analytics-js")
    assert route.topic_for(ev(context={"library": {"name": "analytics-js"}})) == "hit"
    assert route.topic_for(ev(context={"library": "analytics-js"})) == "other"
    assert where("user_id", "prefix", "test_").topic_for(ev(user_id="test_42")) == "hit"
    assert where("event", "eq", "page_viewed").topic_for(ev()) == "hit"


def test_field_names_with_dots_are_paths_not_keys() -> None:
    route = where("properties.a.b", "exists")
    assert route.topic_for(ev(properties={"a.b": 1})) == "other"
    assert route.topic_for(ev(properties={"a": {"b": 1}})) == "hit"


# ------------------------------------------------------------------ emit


class FakeContext:
    def __init__(self) -> None:
        self.outputs: list[tuple[str, bytes | None, bytes]] = []
        self.now_ms = 1_795_000_000_000

    def emit(self, topic: str, key: bytes | None, value: bytes) -> None:
        self.outputs.append((topic, key, value))


def test_emit_writes_json_with_the_original_key() -> None:
    from pipeline.core.records import Item

    route = stage({"when": {"event": ["a"]}, "to": "ta"})
    items = [
        Item({"event": "a", "n": 1}, RawMessage(value=b"", key=b"k1")),
        Item({"event": "b", "n": 2}, RawMessage(value=b"", key=None)),
    ]
    ctx = FakeContext()
    route.emit(items, ctx)  # type: ignore[arg-type]
    stamp = {"processed_at": ctx.now_ms, "pipeline": {}}
    assert [(t, k, orjson.loads(v)) for t, k, v in ctx.outputs] == [
        ("ta", b"k1", {"event": "a", "n": 1, **stamp}),
        ("other", None, {"event": "b", "n": 2, **stamp}),
    ]


# ------------------------------------------------------------------ the example topology


@pytest.mark.parametrize(
    ("name", "properties", "topic"),
    [
        (
            "purchase_completed",
            {
                "order_id": "o1",
                "revenue": 10.0,
                "currency": "EUR",
                "products": [{"product_id": "p", "price": 10.0, "quantity": 1}],
            },
            "revenue_events",
        ),
        ("subscription_started", {"plan": "pro"}, "revenue_events"),
        ("subscription_cancelled", {}, "revenue_events"),
        ("refund_issued", {"amount": 5}, "revenue_events"),
        ("error_occurred", {"error_type": "TypeError"}, "error_events"),
        ("error_boundary_hit", {}, "error_events"),
        ("page_viewed", {"path": "/"}, "processed_events"),
        (
            "add_to_cart",
            {"product_id": "p", "price": 1.0, "quantity": 1},
            "processed_events",
        ),
        ("purchase_started", {}, "processed_events"),
        ("app_error", {}, "processed_events"),
    ],
)
def test_example_topology_routes(
    processor: Processor, name: str, properties: dict[str, Any], topic: str
) -> None:
    value = {
        "event": name,
        "timestamp": NOW_MS - 1000,
        "user_id": "u1",
        "properties": properties,
    }
    ctx = processor.process([RawMessage(value=orjson.dumps(value), key=b"u1")])
    [(out_topic, key, out)] = ctx.outputs
    assert (out_topic, key) == (topic, b"u1")
    assert orjson.loads(out)["event"] == name
    assert not ctx.dead_letters


def test_example_topology_batch_routing(processor: Processor) -> None:
    names = ["purchase_completed", "page_viewed", "error_occurred", "refund_issued"] * 5
    props = {
        "purchase_completed": {
            "order_id": "o1",
            "revenue": 1,
            "currency": "USD",
            "products": [{"product_id": "p", "price": 1, "quantity": 1}],
        },
        "error_occurred": {"error_type": "E"},
    }
    batch = [
        RawMessage(
            value=orjson.dumps(
                {
                    "event": n,
                    "timestamp": NOW_MS,
                    "user_id": f"u{i}",
                    "properties": props.get(n, {}),
                }
            )
        )
        for i, n in enumerate(names)
    ]
    ctx = processor.process(batch)
    topics = [t for t, _, _ in ctx.outputs]
    assert topics.count("revenue_events") == 10
    assert topics.count("error_events") == 5
    assert topics.count("processed_events") == 5
    # Valid events keep their input order.
    assert [orjson.loads(v)["user_id"] for _, _, v in ctx.outputs] == [f"u{i}" for i in range(20)]


def test_an_event_too_large_for_kafka_is_dead_lettered_not_sent() -> None:
    from pipeline.core.batch import BatchContext
    from pipeline.core.deadletter import RECORD_SIZE_LIMIT, DeadLetterBuilder
    from pipeline.core.records import Item, RawMessage

    route = stage()
    builder = DeadLetterBuilder(topic="dlq", topology_name="t", topology_version="1", max_payload_bytes=4096)
    ctx = BatchContext(now_ms=1, dead_letter=builder)
    big = Item(ev(pad="x" * RECORD_SIZE_LIMIT), RawMessage(value=b"{}", key=b"k", topic="raw", partition=0, offset=7))
    # Just small enough with its key: sent.
    edge_event = ev(pad="")
    overhead = len(orjson.dumps({**edge_event, "processed_at": 1, "pipeline": {}}))
    edge = Item(ev(pad="y" * (RECORD_SIZE_LIMIT - overhead - 1)), RawMessage(value=b"{}", key=b"k", topic="raw", partition=0, offset=8))
    route.emit([big, edge], ctx)
    topics = [t for t, _, _ in ctx.outputs]
    assert topics == ["dlq", "other"]
    record = orjson.loads(ctx.outputs[0][2])
    assert record["reason"] == "output_too_large" and record["stage"] == "route"
    assert record["source"]["offset"] == 7
    assert len(ctx.outputs[1][1]) + len(ctx.outputs[1][2]) <= RECORD_SIZE_LIMIT


# ------------------------------------------------------------------ equality without _same
# eq/ne against a boolean or a string skip the _same call; they must answer exactly as _same.

FOUND = [True, False, 1, 0, 1.0, 0.0, -0.0, 2.5, "x", "1", "true", "", None, [1], {"a": 1}, [], {}]
FOUND += [b"true".decode(), b"x".decode()]  # equal strings that are other objects


@pytest.mark.parametrize("op", ["eq", "ne"])
@pytest.mark.parametrize("value", [True, False, "x", "1", "true", "", 1, 0, 1.0, 0.0, 2.5, [1], {"a": 1}])
@pytest.mark.parametrize("field", ["a", "a.b", "a.b.c", "a.b.c.d"])
def test_equality_predicates_answer_as_same(op: str, value: Any, field: str) -> None:
    from pipeline.stages.route import _MISSING, Predicate, _compile_predicate, _same

    predicate = _compile_predicate(Predicate(field=field, op=op, value=value))
    parts = field.split(".")
    for found in [*FOUND, _MISSING]:
        event: dict[str, Any] = {} if found is _MISSING else {parts[-1]: found}
        for part in reversed(parts[:-1]):
            event = {part: event}
        same = found is not _MISSING and _same(found, value)
        assert predicate(event) is (same if op == "eq" else not same), (found, value)
