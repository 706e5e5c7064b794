"""Compile an Avro schema into a fast checker for decoded JSON values.

fastavro's validator costs ~15-80 µs per event and its errors do not say where a value went
wrong. Events are checked once per event on the hot path, so we compile each schema once at load
time into two sets of nested closures: a yes/no test that only looks at types and bounds (the
answer for the valid values that make up nearly all traffic), and the detailed walk that builds
paths and returns the first problem, run only for a value the test does not accept. The two
agree by construction: the test accepts a value only when the walk would find no problem, so a
checker's answer is always the walk's (``tests/core/test_avro_check.py`` checks both).

A ``{"type": "string", "logicalType": "json"}`` accepts any JSON value: it marks a free-form
object (``properties``) that is JSON text in an Avro encoding and an object in JSON.

Avro has no range or length constraints; fields may carry these extra attributes, which Avro
tools ignore and this checker enforces: ``minimum``, ``maximum`` (numbers), ``minLength``,
``maxLength``, ``pattern`` (strings), ``minItems``, ``maxItems`` (arrays).
A record accepts fields it does not declare (properties are open for product teams); a record
schema with ``"additionalProperties": false`` refuses them.
"""

from __future__ import annotations

import re
from typing import Any, Callable, NamedTuple

# A checker returns None when the value is fine, or (path, message) for the first problem.
Problem = tuple[str, str]
Checker = Callable[[Any, str], Problem | None]
# A quick test: True when the value is certainly fine; False means "ask the checker".
QuickTest = Callable[[Any], bool]


class SchemaCompileError(ValueError):
    """The schema uses something this checker cannot enforce, or is not valid Avro."""


def compile_schema(schema: Any) -> Checker:
    """Compile a parsed ``.avsc`` (JSON) into a checker."""
    node = _Compiler().compile(schema, namespace="")
    quick, detailed = node.quick, node.check

    def check(v: Any, p: str) -> Problem | None:
        return None if quick(v) else detailed(v, p)

    return check


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


_INT_BOUNDS = {"int": (-(2**31), 2**31 - 1), "long": (-(2**63), 2**63 - 1)}


class _Absent:
    """The type of ``_ABSENT``: what a record's quick test sees for a field the value lacks."""


_ABSENT = _Absent()
_NONE_TYPE = type(None)


class _Node(NamedTuple):
    """One compiled schema: the detailed checker and the quick test that spares calling it."""

    check: Checker
    quick: QuickTest
    types: frozenset[type] | None
    """When the quick test is exactly ``type(v) in types`` (no bounds, lengths or patterns):
    a record tests such fields inline instead of calling a closure per field. The quick tests
    compare exact types (JSON decoding makes no subclasses), so a subclass merely takes the
    detailed path, which accepts it as before."""


def _any_value(v: Any) -> bool:
    return True


def _of_types(check: Checker, *types: type) -> _Node:
    allowed = frozenset(types)
    return _Node(check, lambda v: type(v) in allowed, allowed)


class _Compiler:
    def __init__(self) -> None:
        self.named: dict[str, _Node] = {}

    def compile(self, schema: Any, namespace: str, field: dict[str, Any] | None = None) -> _Node:
        if isinstance(schema, list):
            return self._union(schema, namespace, field)
        if isinstance(schema, str):
            return self._named_or_primitive(schema, namespace, field)
        if isinstance(schema, dict):
            kind = schema.get("type")
            if kind == "record" or kind == "error":
                return self._record(schema, namespace)
            if kind == "enum":
                return self._enum(schema, namespace)
            if kind == "array":
                return self._array(schema, namespace, {**schema, **(field or {})})
            if kind == "map":
                return self._map(schema, namespace)
            if kind == "fixed":
                raise SchemaCompileError("fixed is not supported in JSON events")
            if schema.get("logicalType") == "json":
                # Any JSON value in the JSON form of an event (JSON text in an Avro encoding).
                return _Node(lambda v, p: None, _any_value, None)
            if isinstance(kind, str):
                # A primitive with attributes, e.g. {"type": "string", "logicalType": "uuid"}.
                merged = dict(schema)
                if field:
                    merged.update({k: v for k, v in field.items() if k not in ("name", "type")})
                return self._named_or_primitive(kind, namespace, merged)
        raise SchemaCompileError(f"not an Avro schema: {schema!r}")

    def _named_or_primitive(
        self, name: str, namespace: str, attrs: dict[str, Any] | None
    ) -> _Node:
        attrs = attrs or {}
        if name == "null":
            return _of_types(
                lambda v, p: None if v is None else (p, f"expected null, got {_type_name(v)}"),
                _NONE_TYPE,
            )
        if name == "boolean":
            return _of_types(
                lambda v, p: (
                    None if isinstance(v, bool) else (p, f"expected boolean, got {_type_name(v)}")
                ),
                bool,
            )
        if name in ("int", "long"):
            return self._number(attrs, integer=True, bounds=_INT_BOUNDS[name])
        if name in ("float", "double"):
            return self._number(attrs, integer=False, bounds=None)
        if name == "string":
            return self._string(attrs)
        if name == "bytes":
            raise SchemaCompileError("bytes is not supported in JSON events")
        full = name if "." in name or not namespace else f"{namespace}.{name}"
        for candidate in (full, name):
            if candidate in self.named:
                # Late-bound so recursive types work.
                return _Node(
                    lambda v, p, c=candidate: self.named[c].check(v, p),
                    lambda v, c=candidate: self.named[c].quick(v),
                    None,
                )
        raise SchemaCompileError(f"unknown type {name!r}")

    def _number(
        self, attrs: dict[str, Any], *, integer: bool, bounds: tuple[int, int] | None
    ) -> _Node:
        minimum = attrs.get("minimum")
        maximum = attrs.get("maximum")
        lo = bounds[0] if bounds else None
        hi = bounds[1] if bounds else None
        if minimum is not None:
            lo = minimum if lo is None else max(lo, minimum)
        if maximum is not None:
            hi = maximum if hi is None else min(hi, maximum)
        expected = "integer" if integer else "number"

        def check(v: Any, p: str) -> Problem | None:
            if isinstance(v, bool) or not isinstance(v, (int, float) if not integer else int):
                return (p, f"expected {expected}, got {_type_name(v)}")
            if lo is not None and v < lo:
                return (p, f"{v} is below the minimum {lo}")
            if hi is not None and v > hi:
                return (p, f"{v} is above the maximum {hi}")
            return None

        # type() excludes booleans, which isinstance(v, int) would let in.
        kinds = (int,) if integer else (int, float)
        if lo is None and hi is None:
            return _of_types(check, *kinds)
        allowed = frozenset(kinds)

        def quick(v: Any) -> bool:
            # The same comparisons as check(), so NaN and odd bounds behave the same way.
            return type(v) in allowed and not (
                (lo is not None and v < lo) or (hi is not None and v > hi)
            )

        return _Node(check, quick, None)

    def _string(self, attrs: dict[str, Any]) -> _Node:
        min_len = attrs.get("minLength")
        max_len = attrs.get("maxLength")
        pattern = attrs.get("pattern")
        regex = re.compile(pattern) if pattern else None

        def check(v: Any, p: str) -> Problem | None:
            if not isinstance(v, str):
                return (p, f"expected string, got {_type_name(v)}")
            if min_len is not None and len(v) < min_len:
                return (p, f"string shorter than {min_len} characters")
            if max_len is not None and len(v) > max_len:
                return (p, f"string longer than {max_len} characters")
            if regex is not None and not regex.fullmatch(v):
                return (p, f"{v[:64]!r} does not match {pattern!r}")
            return None

        if min_len is None and max_len is None and regex is None:
            return _of_types(check, str)

        def quick(v: Any) -> bool:
            return (
                type(v) is str
                and (min_len is None or not len(v) < min_len)
                and (max_len is None or not len(v) > max_len)
                and (regex is None or regex.fullmatch(v) is not None)
            )

        return _Node(check, quick, None)

    def _union(self, branches: list[Any], namespace: str, field: dict[str, Any] | None) -> _Node:
        nodes = [self.compile(b, namespace, field) for b in branches]
        checkers = [n.check for n in nodes]
        nullable = "null" in branches
        non_null = [
            n for b, n in zip(branches, nodes, strict=True) if b != "null"
        ]
        if all(n.types is not None for n in nodes):
            # e.g. ["null", "string"]: one type test covers every branch.
            types = frozenset().union(*(n.types for n in nodes if n.types is not None))
        else:
            types = None
        if nullable and len(non_null) == 1:
            only, only_quick = non_null[0].check, non_null[0].quick
            check: Checker = lambda v, p: None if v is None else only(v, p)
            if types is not None:
                return _of_types(check, *types)
            return _Node(check, lambda v: v is None or only_quick(v), None)

        def check_any(v: Any, p: str) -> Problem | None:
            first: Problem | None = None
            for c in checkers:
                problem = c(v, p)
                if problem is None:
                    return None
                first = first or problem
            return (p, f"matches no branch of the union ({first[1] if first else ''})")

        if types is not None:
            return _of_types(check_any, *types)
        quick_tests = tuple(n.quick for n in nodes)

        def quick(v: Any) -> bool:
            for test in quick_tests:
                if test(v):
                    return True
            return False

        return _Node(check_any, quick, None)

    def _register(self, schema: dict[str, Any], namespace: str) -> tuple[str, str]:
        name = schema.get("name")
        if not isinstance(name, str):
            raise SchemaCompileError("a named type needs a 'name'")
        ns = schema.get("namespace", namespace) or ""
        full = name if "." in name or not ns else f"{ns}.{name}"
        return full, ns

    def _record(self, schema: dict[str, Any], namespace: str) -> _Node:
        full, ns = self._register(schema, namespace)
        # Placeholder so self-references compile; replaced below.
        self.named[full] = _Node(lambda v, p: None, _any_value, None)
        fields = []
        # For the quick test: fields tested by type alone, and fields that need their own test.
        typed_fields: list[tuple[str, frozenset[type]]] = []
        tested_fields: list[tuple[str, QuickTest, bool]] = []
        for f in schema.get("fields", []):
            fname = f["name"]
            node = self.compile(f["type"], ns, f)
            has_default = "default" in f
            nullable = f["type"] == "null" or (isinstance(f["type"], list) and "null" in f["type"])
            optional = has_default or nullable
            fields.append((fname, node.check, optional))
            if node.types is not None:
                # An optional field may be absent: admit the type of the stand-in for "absent".
                typed_fields.append((fname, node.types | {_Absent} if optional else node.types))
            else:
                tested_fields.append((fname, node.quick, optional))
        closed = schema.get("additionalProperties") is False
        declared = {name for name, _, _ in fields}

        def check(v: Any, p: str) -> Problem | None:
            if not isinstance(v, dict):
                return (p, f"expected object, got {_type_name(v)}")
            for fname, checker, optional in fields:
                sub = f"{p}.{fname}" if p else fname
                if fname not in v:
                    if optional:
                        continue
                    return (sub, "required field is missing")
                problem = checker(v[fname], sub)
                if problem is not None:
                    return problem
            if closed:
                for key in v:
                    if key not in declared:
                        return (f"{p}.{key}" if p else key, "field is not allowed by the schema")
            return None

        typed = tuple(typed_fields)
        tested = tuple(tested_fields)

        def quick(v: Any) -> bool:
            if type(v) is not dict:
                return False
            get = v.get
            for fname, types in typed:
                if type(get(fname, _ABSENT)) not in types:
                    return False
            for fname, test, optional in tested:
                item = get(fname, _ABSENT)
                if item is _ABSENT:
                    if not optional:
                        return False
                elif not test(item):
                    return False
            return not closed or declared.issuperset(v)

        node = _Node(check, quick, None)
        self.named[full] = node
        return node

    def _enum(self, schema: dict[str, Any], namespace: str) -> _Node:
        full, _ = self._register(schema, namespace)
        symbols = frozenset(schema.get("symbols", []))
        shown = ", ".join(sorted(symbols))

        def check(v: Any, p: str) -> Problem | None:
            if not isinstance(v, str):
                return (p, f"expected string, got {_type_name(v)}")
            if v not in symbols:
                return (p, f"{v[:64]!r} is not one of {shown}")
            return None

        node = _Node(check, lambda v: type(v) is str and v in symbols, None)
        self.named[full] = node
        return node

    def _array(self, schema: dict[str, Any], namespace: str, attrs: dict[str, Any]) -> _Node:
        items_node = self.compile(schema["items"], namespace)
        items = items_node.check
        min_items = attrs.get("minItems")
        max_items = attrs.get("maxItems")

        def check(v: Any, p: str) -> Problem | None:
            if not isinstance(v, list):
                return (p, f"expected array, got {_type_name(v)}")
            if min_items is not None and len(v) < min_items:
                return (p, f"fewer than {min_items} items")
            if max_items is not None and len(v) > max_items:
                return (p, f"more than {max_items} items")
            for i, item in enumerate(v):
                problem = items(item, f"{p}[{i}]")
                if problem is not None:
                    return problem
            return None

        item_quick = items_node.quick

        def quick(v: Any) -> bool:
            if type(v) is not list:
                return False
            if (min_items is not None and len(v) < min_items) or (
                max_items is not None and len(v) > max_items
            ):
                return False
            for item in v:
                if not item_quick(item):
                    return False
            return True

        return _Node(check, quick, None)

    def _map(self, schema: dict[str, Any], namespace: str) -> _Node:
        values_node = self.compile(schema["values"], namespace)
        values = values_node.check

        def check(v: Any, p: str) -> Problem | None:
            if not isinstance(v, dict):
                return (p, f"expected object, got {_type_name(v)}")
            for key, item in v.items():
                problem = values(item, f"{p}.{key}")
                if problem is not None:
                    return problem
            return None

        value_quick = values_node.quick

        def quick(v: Any) -> bool:
            if type(v) is not dict:
                return False
            for item in v.values():
                if not value_quick(item):
                    return False
            return True

        return _Node(check, quick, None)
