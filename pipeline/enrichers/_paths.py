"""Dotted paths into events (``context.user_agent``): a config type and fast readers/writers."""

from __future__ import annotations

from typing import Annotated, Any, Callable

from pydantic import Field

DottedPath = Annotated[
    str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$", max_length=200)
]
"""A config field naming a place in an event, e.g. ``context.device``."""


def getter(path: str) -> Callable[[dict[str, Any]], Any]:
    """A fast reader of a dotted path (None when any step is missing or not an object)."""
    parts = tuple(path.split("."))
    if len(parts) == 2:
        first, second = parts

        def get2(event: dict[str, Any]) -> Any:
            node = event.get(first)
            return node.get(second) if type(node) is dict else None

        return get2
    if len(parts) == 3:
        first, second, third = parts

        def get3(event: dict[str, Any]) -> Any:
            node = event.get(first)
            if type(node) is not dict:
                return None
            node = node.get(second)
            return node.get(third) if type(node) is dict else None

        return get3

    def get(event: dict[str, Any]) -> Any:
        node: Any = event
        for part in parts:
            if type(node) is not dict:
                return None
            node = node.get(part)
        return node

    return get


def setter(path: str) -> Callable[[dict[str, Any], Any], None]:
    """A writer of a dotted path that creates missing parent objects. A parent that exists but
    is not an object raises ``ValueError`` (the stage's ``on_error`` applies)."""
    *parents, leaf = path.split(".")

    def put(event: dict[str, Any], value: Any) -> None:
        node = event
        for part in parents:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif type(child) is not dict:
                raise ValueError(
                    f"cannot write {path}: {part} is a {type(child).__name__}, not an object"
                )
            node = child
        node[leaf] = value

    return put
