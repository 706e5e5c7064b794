"""The compiled Avro checker for decoded JSON values."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.core.avro_check import SchemaCompileError, _Compiler, compile_schema

REPO = Path(__file__).resolve().parents[2]


def record(*fields: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"type": "record", "name": "R", "fields": list(fields), **extra}


def check(schema: Any, value: Any, path: str = "v") -> tuple[str, str] | None:
    return compile_schema(schema)(value, path)


def ok(schema: Any, value: Any) -> None:
    assert check(schema, value) is None, (schema, value)


def bad(schema: Any, value: Any, path: str = "v", *words: str) -> str:
    problem = check(schema, value)
    assert problem is not None, f"{value!r} should fail {schema!r}"
    assert problem[0] == path, problem
    for word in words:
        assert word in problem[1], (word, problem)
    return problem[1]


# ------------------------------------------------------------------ primitives


@pytest.mark.parametrize(
    ("schema", "good", "wrong"),
    [
        ("null", [None], [0, "", False, {}, []]),
        ("boolean", [True, False], [0, 1, "true", None]),
        ("int", [0, -5, 2**31 - 1, -(2**31)], [1.0, 1.5, "1", None, True, False]),
        ("long", [0, 2**63 - 1, -(2**63)], [1.0, "1", True]),
        ("float", [0, 1.5, -3, 1e300], ["1.5", None, False]),
        ("double", [0.0, 7, -1e-9], ["x", True, [1.0]]),
        ("string", ["", "héllo", "😀"], [1, None, b"bytes", ["a"], {"a": 1}]),
    ],
)
def test_primitives(schema: str, good: list[Any], wrong: list[Any]) -> None:
    for value in good:
        ok(schema, value)
        ok({"type": schema}, value)
    for value in wrong:
        expected = {"int": "integer", "long": "integer", "float": "number", "double": "number"}
        assert bad(schema, value).startswith(f"expected {expected.get(schema, schema)}, got ")


@pytest.mark.parametrize(
    ("schema", "value"),
    [("int", 2**31), ("int", -(2**31) - 1), ("long", 2**63), ("long", -(2**63) - 1)],
)
def test_integer_bounds(schema: str, value: int) -> None:
    message = bad(schema, value)
    assert "minimum" in message or "maximum" in message


def test_booleans_are_not_integers_or_numbers() -> None:
    assert bad("int", True) == "expected integer, got boolean"
    assert bad("double", False) == "expected number, got boolean"


def test_messages_name_the_json_type() -> None:
    assert bad("string", 1) == "expected string, got integer"
    assert bad("string", 1.5) == "expected string, got number"
    assert bad("string", None) == "expected string, got null"
    assert bad("boolean", []) == "expected boolean, got array"
    assert bad("int", {}) == "expected integer, got object"


def test_logical_types_on_primitives_check_the_base_type() -> None:
    ok({"type": "long", "logicalType": "timestamp-millis"}, 1_795_000_000_000)
    bad({"type": "long", "logicalType": "timestamp-millis"}, "2026-01-01")
    ok({"type": "string", "logicalType": "uuid"}, "6f1c2a8e-0000-4000-8000-000000000000")


def test_logical_type_json_accepts_anything() -> None:
    schema = {"type": "string", "logicalType": "json"}
    for value in [None, 1, "x", [1, {"a": None}], {"deep": {"er": [True]}}, 1.5, False]:
        ok(schema, value)
    ok(record({"name": "payload", "type": schema}), {"payload": {"any": ["thing"]}})


# ------------------------------------------------------------------ constraint attributes


def test_minimum_and_maximum() -> None:
    schema = record({"name": "n", "type": "double", "minimum": 0, "maximum": 10})
    ok(schema, {"n": 0})
    ok(schema, {"n": 10})
    ok(schema, {"n": 5.5})
    assert bad(schema, {"n": -0.1}, "v.n") == "-0.1 is below the minimum 0"
    assert bad(schema, {"n": 10.01}, "v.n") == "10.01 is above the maximum 10"


def test_minimum_on_the_type_itself() -> None:
    ok({"type": "int", "minimum": 1}, 1)
    bad({"type": "int", "minimum": 1}, 0, "v", "minimum")


def test_maximum_never_exceeds_the_int_range() -> None:
    schema = {"type": "int", "maximum": 2**40}
    bad(schema, 2**31, "v", "maximum")
    schema = {"type": "int", "minimum": -(2**40)}
    bad(schema, -(2**31) - 1, "v", "minimum")


def test_min_and_max_length() -> None:
    schema = record({"name": "s", "type": "string", "minLength": 2, "maxLength": 4})
    ok(schema, {"s": "ab"})
    ok(schema, {"s": "abcd"})
    ok(schema, {"s": "😀😀"})  # characters, not bytes
    bad(schema, {"s": "a"}, "v.s", "shorter than 2")
    bad(schema, {"s": "abcde"}, "v.s", "longer than 4")


def test_pattern_must_match_the_whole_string() -> None:
    schema = record({"name": "c", "type": "string", "pattern": "[A-Z]{3}"})
    ok(schema, {"c": "EUR"})
    for value in ["eur", "EURO", "XEUR", "EU", " EUR"]:
        message = bad(schema, {"c": value}, "v.c", "does not match")
        assert repr(value) in message


def test_pattern_message_truncates_long_values() -> None:
    message = bad({"type": "string", "pattern": "a"}, "b" * 10_000)
    assert len(message) < 200


def test_attributes_on_a_nullable_field_apply_to_the_value() -> None:
    schema = record(
        {"name": "tax", "type": ["null", "double"], "default": None, "minimum": 0},
        {"name": "cur", "type": ["null", "string"], "default": None, "pattern": "[A-Z]{3}"},
    )
    ok(schema, {})
    ok(schema, {"tax": None, "cur": None})
    ok(schema, {"tax": 1.5, "cur": "USD"})
    bad(schema, {"tax": -1}, "v.tax", "minimum")
    bad(schema, {"cur": "usd"}, "v.cur", "does not match")


# ------------------------------------------------------------------ unions


def test_union_with_null() -> None:
    schema = ["null", "string"]
    ok(schema, None)
    ok(schema, "x")
    assert bad(schema, 5) == "expected string, got integer"


def test_union_of_several_types() -> None:
    schema = ["null", "long", "string"]
    for value in [None, 42, "E42"]:
        ok(schema, value)
    message = bad(schema, True, "v", "matches no branch of the union")
    assert "boolean" in message
    bad(schema, 1.5, "v", "matches no branch")


def test_union_without_null_refuses_null() -> None:
    bad(["int", "string"], None, "v", "no branch")


# ------------------------------------------------------------------ records


def test_nested_records_report_the_full_path() -> None:
    schema = record(
        {
            "name": "order",
            "type": {
                "type": "record",
                "name": "Order",
                "fields": [
                    {
                        "name": "customer",
                        "type": {
                            "type": "record",
                            "name": "Customer",
                            "fields": [{"name": "email", "type": "string", "minLength": 3}],
                        },
                    }
                ],
            },
        }
    )
    ok(schema, {"order": {"customer": {"email": "a@b"}}})
    bad(schema, {"order": {"customer": {"email": "x"}}}, "v.order.customer.email", "shorter")
    bad(schema, {"order": {"customer": {}}}, "v.order.customer.email", "required field is missing")
    bad(schema, {"order": {"customer": "me"}}, "v.order.customer", "expected object, got string")
    bad(schema, {"order": []}, "v.order", "expected object, got array")


def test_empty_path_prefix() -> None:
    schema = record({"name": "a", "type": "int"})
    assert compile_schema(schema)({"a": "x"}, "") == ("a", "expected integer, got string")
    assert compile_schema(schema)({}, "") == ("a", "required field is missing")


def test_required_vs_default_vs_nullable_fields() -> None:
    schema = record(
        {"name": "required", "type": "string"},
        {"name": "with_default", "type": "string", "default": "x"},
        {"name": "nullable", "type": ["null", "string"]},
        {"name": "nullable_default", "type": ["null", "int"], "default": None},
    )
    ok(schema, {"required": "r"})
    bad(schema, {}, "v.required", "required field is missing")
    bad(schema, {"required": None}, "v.required", "expected string, got null")
    # A default makes a field optional, not nullable.
    bad(schema, {"required": "r", "with_default": None}, "v.with_default", "got null")
    ok(schema, {"required": "r", "nullable": None, "nullable_default": None})
    bad(schema, {"required": "r", "nullable_default": "1"}, "v.nullable_default")


def test_records_are_open_by_default() -> None:
    ok(record({"name": "a", "type": "int"}), {"a": 1, "extra": {"anything": True}})


def test_additional_properties_false_closes_a_record() -> None:
    schema = record(
        {"name": "a", "type": "int"},
        {"name": "b", "type": ["null", "int"], "default": None},
        additionalProperties=False,
    )
    ok(schema, {"a": 1})
    ok(schema, {"a": 1, "b": 2})
    assert bad(schema, {"a": 1, "c": 3}, "v.c") == "field is not allowed by the schema"


def test_first_problem_in_field_order() -> None:
    schema = record({"name": "a", "type": "int"}, {"name": "b", "type": "int"})
    assert check(schema, {"b": "x", "a": "y"}) == ("v.a", "expected integer, got string")


def test_error_type_is_a_record() -> None:
    ok({"type": "error", "name": "E", "fields": [{"name": "m", "type": "string"}]}, {"m": "x"})


# ------------------------------------------------------------------ arrays, maps, enums


def test_arrays_with_item_paths() -> None:
    schema = {"type": "array", "items": "int"}
    ok(schema, [])
    ok(schema, [1, 2, 3])
    bad(schema, [1, "2"], "v[1]", "expected integer")
    bad(schema, {"0": 1}, "v", "expected array, got object")
    bad(schema, "123", "v", "expected array")


def test_min_and_max_items_on_the_field() -> None:
    schema = record(
        {"name": "xs", "minItems": 1, "maxItems": 3, "type": {"type": "array", "items": "string"}}
    )
    ok(schema, {"xs": ["a"]})
    ok(schema, {"xs": ["a", "b", "c"]})
    bad(schema, {"xs": []}, "v.xs", "fewer than 1 items")
    bad(schema, {"xs": ["a"] * 4}, "v.xs", "more than 3 items")


def test_min_and_max_items_on_a_standalone_array() -> None:
    schema = {"type": "array", "items": "int", "minItems": 2, "maxItems": 2}
    ok(schema, [1, 2])
    bad(schema, [1], "v", "fewer than 2")
    bad(schema, [1, 2, 3], "v", "more than 2")


def test_min_items_on_the_array_type_of_a_field() -> None:
    schema = record({"name": "xs", "type": {"type": "array", "items": "int", "minItems": 1}})
    bad(schema, {"xs": []}, "v.xs", "fewer than 1 items")


def test_array_of_records_paths() -> None:
    schema = {
        "type": "array",
        "items": {
            "type": "record",
            "name": "Item",
            "fields": [{"name": "q", "type": "int", "minimum": 1}],
        },
    }
    bad(schema, [{"q": 1}, {"q": 1}, {"q": 0}], "v[2].q", "minimum")


def test_nullable_array_field_keeps_its_attributes() -> None:
    schema = record(
        {
            "name": "xs",
            "type": ["null", {"type": "array", "items": "int"}],
            "default": None,
            "minItems": 1,
        }
    )
    ok(schema, {"xs": None})
    ok(schema, {"xs": [1]})
    bad(schema, {"xs": []}, "v.xs", "fewer than 1")


def test_maps() -> None:
    schema = {"type": "map", "values": "long"}
    ok(schema, {})
    ok(schema, {"a": 1, "b": -2})
    bad(schema, {"a": 1, "b": "2"}, "v.b", "expected integer")
    bad(schema, [["a", 1]], "v", "expected object, got array")
    nested = {"type": "map", "values": {"type": "array", "items": "string"}}
    bad(nested, {"tags": ["a", 2]}, "v.tags[1]", "expected string")


def test_enums() -> None:
    schema = {"type": "enum", "name": "Color", "symbols": ["RED", "GREEN"]}
    ok(schema, "RED")
    message = bad(schema, "BLUE", "v", "not one of")
    assert "GREEN, RED" in message
    bad(schema, "red", "v", "not one of")
    bad(schema, 0, "v", "expected string, got integer")


# ------------------------------------------------------------------ named types


def test_named_types_can_be_reused_by_name() -> None:
    schema = {
        "type": "record",
        "name": "Pair",
        "namespace": "shop",
        "fields": [
            {"name": "a", "type": {"type": "enum", "name": "Side", "symbols": ["L", "R"]}},
            {"name": "b", "type": "Side"},
            {"name": "c", "type": ["null", "shop.Side"], "default": None},
        ],
    }
    ok(schema, {"a": "L", "b": "R", "c": "L"})
    bad(schema, {"a": "L", "b": "X"}, "v.b", "not one of")
    bad(schema, {"a": "L", "b": "R", "c": "X"}, "v.c", "not one of")


def test_recursive_named_types() -> None:
    schema = {
        "type": "record",
        "name": "Node",
        "fields": [
            {"name": "value", "type": "int"},
            {"name": "next", "type": ["null", "Node"], "default": None},
            {"name": "children", "type": {"type": "array", "items": "Node"}, "default": []},
        ],
    }
    ok(schema, {"value": 1})
    ok(schema, {"value": 1, "next": {"value": 2, "next": {"value": 3, "next": None}}})
    bad(schema, {"value": 1, "next": {"value": 2, "next": {"value": "3"}}}, "v.next.next.value")
    bad(
        schema,
        {"value": 1, "children": [{"value": 2, "children": [{"value": None}]}]},
        "v.children[0].children[0].value",
    )


def test_recursion_through_a_namespace() -> None:
    schema = {
        "type": "record",
        "name": "Tree",
        "namespace": "a.b",
        "fields": [{"name": "kids", "type": {"type": "map", "values": "a.b.Tree"}}],
    }
    ok(schema, {"kids": {"x": {"kids": {}}}})
    bad(schema, {"kids": {"x": {"kids": {"y": {}}}}}, "v.kids.x.kids.y.kids", "required")


# ------------------------------------------------------------------ errors


@pytest.mark.parametrize(
    "schema",
    [
        "Unknown",
        record({"name": "a", "type": "NotDefined"}),
        {"type": "array", "items": "Mystery"},
        {"type": "fixed", "name": "F", "size": 16},
        "bytes",
        {"type": "record", "fields": []},
        {"no": "type"},
        42,
        None,
    ],
)
def test_unsupported_or_invalid_schemas_raise(schema: Any) -> None:
    with pytest.raises(SchemaCompileError):
        compile_schema(schema)


def test_schema_compile_error_is_a_value_error() -> None:
    assert issubclass(SchemaCompileError, ValueError)


@pytest.mark.parametrize(
    "path", sorted(str(p.relative_to(REPO)) for p in (REPO / "avro").rglob("*.avsc"))
)
def test_shipped_schemas_compile(path: str) -> None:
    compile_schema(json.loads((REPO / path).read_text(encoding="utf-8")))


def test_shipped_purchase_schema() -> None:
    schema = json.loads((REPO / "avro/events/purchase_completed.avsc").read_text(encoding="utf-8"))
    checker = compile_schema(schema)
    good = {
        "order_id": "o1",
        "revenue": 0,
        "currency": "JPY",
        "products": [{"product_id": "p", "price": 0, "quantity": 1}],
    }
    assert checker(good, "properties") is None
    assert checker({**good, "shipping": -1}, "properties") == (
        "properties.shipping",
        "-1 is below the minimum 0",
    )


# ------------------------------------------------------------------ quick test = detailed walk
# A compiled checker first asks a quick yes/no test and walks the value for the first problem only
# when the test says no. The test must never say yes where the walk finds a problem, or a bad
# value would pass. Compared on valid values with one spot changed (a value with two problems
# could hide a missed one behind the other), and on random JSON.

EDGE_VALUES: list[Any] = [
    None, True, False, 0, 1, -1, 0.5, -1e-9, 1e300, 2**31 - 1, 2**31, -(2**31) - 1, 2**63,
    -(2**63) - 1, 2**64, "", "x", "A", "EUR", "eur", "EURO", "a" * 201, "nope", [], [1], ["x"],
    [None], {}, {"x": 1}, {"value": 1},
]


def one_change(value: Any) -> Iterator[Any]:
    """``value`` itself, then ``value`` with one spot changed: a node replaced by an edge value, a
    key removed or added, an array item dropped or repeated."""
    yield value
    yield from EDGE_VALUES
    if isinstance(value, dict):
        for key, item in value.items():
            for changed in one_change(item):
                yield {**value, key: changed}
            yield {k: v for k, v in value.items() if k != key}
        yield {**value, "extra": 1}
    elif isinstance(value, list):
        for i, item in enumerate(value):
            for changed in one_change(item):
                yield [*value[:i], changed, *value[i + 1 :]]
        yield value[:-1]
        yield [*value, *value[:1]]


def _shipped(path: str) -> Any:
    return json.loads((REPO / path).read_text(encoding="utf-8"))


# Each schema with a valid value that has every field (so every field gets changed).
QUICK_CASES: dict[str, tuple[Any, Any]] = {
    "add_to_cart": (
        _shipped("avro/events/add_to_cart.avsc"),
        {"product_id": "p", "name": "Mug", "category": None, "price": 2.5, "currency": "EUR",
         "quantity": 1},
    ),
    "error_occurred": (
        _shipped("avro/events/error_occurred.avsc"),
        {"error_type": "E", "message": None, "code": "x", "fatal": True, "component": "c"},
    ),
    "purchase_completed": (
        _shipped("avro/events/purchase_completed.avsc"),
        {"order_id": "o", "revenue": 1, "currency": "EUR", "shipping": 0.0, "tax": None,
         "coupon": "C", "products": [{"product_id": "p", "name": None, "category": "c",
                                      "price": 1.0, "quantity": 2}]},
    ),
    "bounded": (
        record(
            {"name": "n", "type": ["null", "double"], "default": None, "minimum": 0, "maximum": 10},
            {"name": "i", "type": "int", "minimum": -1, "maximum": 2**40},
            {"name": "s", "type": "string", "minLength": 1, "maxLength": 3, "pattern": "[A-Z]+"},
            {"name": "a", "type": {"type": "array", "items": "long"}, "minItems": 1, "maxItems": 2},
            {"name": "u", "type": ["long", "string", "boolean"]},
            {"name": "e", "type": {"type": "enum", "name": "E", "symbols": ["A", "B"]}, "default": "A"},
            {"name": "m", "type": {"type": "map", "values": ["null", "E"]}, "default": {}},
            {"name": "j", "type": {"type": "string", "logicalType": "json"}},
            {"name": "d", "type": "string", "default": "x"},
            {"name": "f", "type": "float"},
        ),
        {"n": 5, "i": 0, "s": "AB", "a": [1, 2], "u": False, "e": "B", "m": {"k": "A", "l": None},
         "j": [{}], "d": "y", "f": 1},
    ),
    "closed": (
        record(
            {"name": "a", "type": "string"},
            {"name": "b", "type": ["null", "int"], "default": None},
            additionalProperties=False,
        ),
        {"a": "x", "b": 1},
    ),
    "recursive": (
        {
            "type": "record",
            "name": "Node",
            "fields": [
                {"name": "value", "type": "int"},
                {"name": "next", "type": ["null", "Node"], "default": None},
                {"name": "children", "type": {"type": "array", "items": "Node"}, "default": []},
            ],
        },
        {"value": 1, "next": {"value": 2, "next": None}, "children": [{"value": 3}]},
    ),
}


@pytest.mark.parametrize("name", sorted(QUICK_CASES))
def test_quick_test_never_accepts_what_the_walk_refuses(name: str) -> None:
    schema, valid = QUICK_CASES[name]
    node = _Compiler().compile(schema, namespace="")
    checker = compile_schema(schema)
    answered = {True: 0, False: 0}
    for value in one_change(valid):
        problem = node.check(value, "v")
        quick = node.quick(value)
        answered[quick] += 1
        if quick:
            assert problem is None, (value, problem)
        assert checker(value, "v") == problem, value
    # The quick test answers the valid value and many near it itself (or the checker is no faster).
    assert node.quick(valid)
    assert answered[True] >= 10 and answered[False] >= 20, answered


@pytest.mark.parametrize(
    "path", sorted(str(p.relative_to(REPO)) for p in (REPO / "avro").rglob("*.avsc"))
)
@settings(max_examples=200, deadline=None, database=None)
@given(value=st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=4),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.text(max_size=3), children, max_size=3),
    max_leaves=8,
))
def test_quick_test_never_accepts_what_the_walk_refuses_any_json(path: str, value: Any) -> None:
    schema = _shipped(path)
    node = _Compiler().compile(schema, namespace="")
    problem = node.check(value, "v")
    if node.quick(value):
        assert problem is None, (value, problem)
    assert compile_schema(schema)(value, "v") == problem
