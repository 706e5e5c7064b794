"""Compile an Avro schema into a fast checker for decoded JSON values.

fastavro's validator costs ~15-80 µs per event and its errors do not say where a value went
wrong. Events are checked once per event on the hot path, so we compile each schema into nested
closures once at load time (~1 µs per event) that return the first problem with its path.

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
from typing import Any, Callable

# A checker returns None when the value is fine, or (path, message) for the first problem.
Problem = tuple[str, str]
Checker = Callable[[Any, str], Problem | None]


class SchemaCompileError(ValueError):
    """The schema uses something this checker cannot enforce, or is not valid Avro."""


def compile_schema(schema: Any) -> Checker:
    """Compile a parsed ``.avsc`` (JSON) into a checker."""
    return _Compiler().compile(schema, namespace="")


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


class _Compiler:
    def __init__(self) -> None:
        self.named: dict[str, Checker] = {}

    def compile(self, schema: Any, namespace: str, field: dict[str, Any] | None = None) -> Checker:
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
                return lambda v, p: None
            if isinstance(kind, str):
                # A primitive with attributes, e.g. {"type": "string", "logicalType": "uuid"}.
                merged = dict(schema)
                if field:
                    merged.update({k: v for k, v in field.items() if k not in ("name", "type")})
                return self._named_or_primitive(kind, namespace, merged)
        raise SchemaCompileError(f"not an Avro schema: {schema!r}")

    def _named_or_primitive(
        self, name: str, namespace: str, attrs: dict[str, Any] | None
    ) -> Checker:
        attrs = attrs or {}
        if name == "null":
            return lambda v, p: None if v is None else (p, f"expected null, got {_type_name(v)}")
        if name == "boolean":
            return lambda v, p: (
                None if isinstance(v, bool) else (p, f"expected boolean, got {_type_name(v)}")
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
                return lambda v, p, c=candidate: self.named[c](v, p)
        raise SchemaCompileError(f"unknown type {name!r}")

    def _number(
        self, attrs: dict[str, Any], *, integer: bool, bounds: tuple[int, int] | None
    ) -> Checker:
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

        return check

    def _string(self, attrs: dict[str, Any]) -> Checker:
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

        return check

    def _union(self, branches: list[Any], namespace: str, field: dict[str, Any] | None) -> Checker:
        checkers = [self.compile(b, namespace, field) for b in branches]
        nullable = "null" in branches
        non_null = [
            c for b, c in zip(branches, checkers, strict=True) if b != "null"
        ]
        if nullable and len(non_null) == 1:
            only = non_null[0]
            return lambda v, p: None if v is None else only(v, p)

        def check(v: Any, p: str) -> Problem | None:
            first: Problem | None = None
            for c in checkers:
                problem = c(v, p)
                if problem is None:
                    return None
                first = first or problem
            return (p, f"matches no branch of the union ({first[1] if first else ''})")

        return check

    def _register(self, schema: dict[str, Any], namespace: str) -> tuple[str, str]:
        name = schema.get("name")
        if not isinstance(name, str):
            raise SchemaCompileError("a named type needs a 'name'")
        ns = schema.get("namespace", namespace) or ""
        full = name if "." in name or not ns else f"{ns}.{name}"
        return full, ns

    def _record(self, schema: dict[str, Any], namespace: str) -> Checker:
        full, ns = self._register(schema, namespace)
        # Placeholder so self-references compile; replaced below.
        self.named[full] = lambda v, p: None
        fields = []
        for f in schema.get("fields", []):
            fname = f["name"]
            checker = self.compile(f["type"], ns, f)
            has_default = "default" in f
            nullable = f["type"] == "null" or (isinstance(f["type"], list) and "null" in f["type"])
            fields.append((fname, checker, has_default or nullable))
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

        self.named[full] = check
        return check

    def _enum(self, schema: dict[str, Any], namespace: str) -> Checker:
        full, _ = self._register(schema, namespace)
        symbols = frozenset(schema.get("symbols", []))
        shown = ", ".join(sorted(symbols))

        def check(v: Any, p: str) -> Problem | None:
            if not isinstance(v, str):
                return (p, f"expected string, got {_type_name(v)}")
            if v not in symbols:
                return (p, f"{v[:64]!r} is not one of {shown}")
            return None

        self.named[full] = check
        return check

    def _array(self, schema: dict[str, Any], namespace: str, attrs: dict[str, Any]) -> Checker:
        items = self.compile(schema["items"], namespace)
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

        return check

    def _map(self, schema: dict[str, Any], namespace: str) -> Checker:
        values = self.compile(schema["values"], namespace)

        def check(v: Any, p: str) -> Problem | None:
            if not isinstance(v, dict):
                return (p, f"expected object, got {_type_name(v)}")
            for key, item in v.items():
                problem = values(item, f"{p}.{key}")
                if problem is not None:
                    return problem
            return None

        return check
