"""Dotted-path readers (``pipeline/enrichers/_paths.py``): the specialised readers for two and
three parts answer exactly as the general one."""

from __future__ import annotations

from typing import Any

import pytest

from pipeline.enrichers._paths import getter

EVENTS: list[dict[str, Any]] = [
    {},
    {"a": None},
    {"a": "text"},
    {"a": [1, 2]},
    {"a": {}},
    {"a": {"b": None}},
    {"a": {"b": 0}},
    {"a": {"b": "x"}},
    {"a": {"b": []}},
    {"a": {"b": {}}},
    {"a": {"b": {"c": False}}},
    {"a": {"b": {"c": {"d": "deep"}}}},
    {"a": {"b": {"c": "leaf", "x": 1}}},
    {"a": {"b": "str", "c": 1}},
]


def general(path: str, event: dict[str, Any]) -> Any:
    node: Any = event
    for part in path.split("."):
        if type(node) is not dict:
            return None
        node = node.get(part)
    return node


@pytest.mark.parametrize("path", ["a", "a.b", "a.b.c", "a.b.c.d", "x.y.z"])
def test_every_reader_answers_as_the_general_walk(path: str) -> None:
    get = getter(path)
    assert [get(event) for event in EVENTS] == [general(path, event) for event in EVENTS]


def test_three_part_reader() -> None:
    get = getter("context.consent.analytics")
    assert get({"context": {"consent": {"analytics": "denied"}}}) == "denied"
    assert get({"context": {"consent": "yes"}}) is None
    assert get({"context": None}) is None
