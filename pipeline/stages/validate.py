"""The ``validate`` stage: raw bytes in, normalised events out, everything else dead-lettered.

Checks, in order (the first failure decides the reason): payload present and within the size
limit; valid UTF-8 JSON; an object; nesting depth; ``event`` (or its alias ``event_name``);
``event_id``; ``timestamp`` parseable and within bounds; an identity; the types of
``session_id``, ``properties``, ``context``, ``user_properties``; the event's property schema.

Normalisation: ``event_name`` becomes ``event``; ``timestamp`` becomes epoch milliseconds (int,
UTC); ``properties``, ``context`` and ``user_properties`` are always objects. Unknown top-level
fields are kept as they are.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone
from typing import Any, Literal

import orjson
from pydantic import Field

from pipeline.core.avro_check import Checker, compile_schema
from pipeline.core.batch import BatchContext
from pipeline.core.identity import IDENTITY_FIELDS
from pipeline.core.reasons import Reason
from pipeline.core.records import Item, SourceMessage
from pipeline.stages import StageType
from pipeline.topology.model import Duration, Strict, Topology

_OBJECT_FIELDS = ("properties", "context", "user_properties")
_CONTEXT_STRING_FIELDS = ("ip", "user_agent", "page_url", "referrer", "locale")
_MAX_ID_LENGTH = 256
_MAX_EVENT_NAME_LENGTH = 128
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_ONE_MS = timedelta(milliseconds=1)


class ValidateConfig(Strict):
    max_payload_bytes: int = Field(default=1_048_576, ge=64, le=16 * 1_048_576)
    """Larger values are dead-lettered as ``payload_too_large`` before parsing."""
    max_depth: int = Field(default=32, ge=2, le=512)
    """Deepest allowed nesting of objects/arrays (the event object itself is level 1)."""
    max_future_skew: Duration = 300.0
    """How far ahead of the worker's clock an event time may be (client clocks drift)."""
    max_age: Duration = 30 * 86400.0
    """How old an event may be when it is processed."""
    unknown_events: Literal["allow", "reject"] = "allow"
    """Events with no property schema in ``schemas.events``: pass, or dead-letter."""


class _Invalid(Exception):
    """Internal: one event failed. Raised and caught within this module only."""

    def __init__(self, reason: Reason, detail: str, path: str | None = None) -> None:
        self.reason = reason
        self.detail = detail
        self.path = path
        self.event: dict[str, Any] | None = None


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _depth(value: Any, limit: int) -> int:
    """Nesting depth, iteratively (no recursion limit), stopping once past ``limit``."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        node, level = stack.pop()
        if level > deepest:
            deepest = level
            if deepest > limit:
                return deepest
        children = node.values() if isinstance(node, dict) else node
        for child in children:
            if isinstance(child, (dict, list)):
                stack.append((child, level + 1))
    return deepest


def parse_timestamp(value: Any) -> int:
    """Epoch milliseconds from epoch milliseconds (number) or ISO-8601 with an offset or ``Z``."""
    # Exact types first: nearly every timestamp is an int or a str (a bool is neither type).
    if type(value) is int:
        return value
    if type(value) is str:
        return _parse_text_timestamp(value)
    if isinstance(value, bool):
        raise _Invalid(Reason.BAD_TIMESTAMP, "timestamp is a boolean", "timestamp")
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _Invalid(Reason.BAD_TIMESTAMP, "timestamp is not finite", "timestamp")
        return int(value)
    if isinstance(value, str):
        return _parse_text_timestamp(value)
    raise _Invalid(
        Reason.BAD_TIMESTAMP, f"timestamp is a {_json_type(value)}", "timestamp"
    )


def _parse_text_timestamp(value: str) -> int:
    text = value.strip()
    # text[4] exists once len(text) >= 10; indexing is cheaper than slicing.
    if 10 <= len(text) <= 40 and text[4] == "-":
        try:
            parsed = datetime.fromisoformat(text)
        except ValueError:
            pass
        else:
            if parsed.tzinfo is None:
                raise _Invalid(
                    Reason.BAD_TIMESTAMP,
                    f"timestamp {text!r} has no UTC offset (add Z or +hh:mm)",
                    "timestamp",
                )
            # Integer arithmetic: float seconds * 1000 can lose a millisecond.
            return (parsed - _EPOCH) // _ONE_MS
    raise _Invalid(
        Reason.BAD_TIMESTAMP,
        f"timestamp {value[:64]!r} is neither ISO-8601 with an offset nor epoch milliseconds",
        "timestamp",
    )


class ValidateStage:
    def __init__(
        self, stage_id: str, config: ValidateConfig, event_schemas: dict[str, Checker]
    ) -> None:
        self.id = stage_id
        self.config = config
        self._event_schemas = event_schemas
        self._max_future_ms = int(config.max_future_skew * 1000)
        self._max_age_ms = int(config.max_age * 1000)

    def decode(self, messages: list[SourceMessage], ctx: BatchContext) -> list[Item]:
        items: list[Item] = []
        append = items.append
        check = self.check
        now_ms = ctx.now_ms
        for message in messages:
            try:
                append(Item(check(message.value, now_ms), message))
            except _Invalid as bad:
                ctx.dead_letter(
                    message,
                    reason=bad.reason,
                    stage=self.id,
                    detail=bad.detail,
                    path=bad.path,
                    event=bad.event,
                )
        return items

    def check(self, value: bytes | None, now_ms: int) -> dict[str, Any]:
        """The normalised event, or raises ``_Invalid`` with the reason."""
        config = self.config
        if not value:
            raise _Invalid(Reason.EMPTY_PAYLOAD, "the message value is empty or null")
        size = len(value)
        if size > config.max_payload_bytes:
            raise _Invalid(
                Reason.PAYLOAD_TOO_LARGE,
                f"payload is {size} bytes, the limit is {config.max_payload_bytes}",
            )
        # Nesting beyond the limit needs more than max_depth brackets; counting them (in C) is far
        # cheaper than walking every event, and orjson itself stops at 1024 levels. A count is a
        # byte-by-byte loop (~1 ns a byte), while `in` is a memchr: most events have no array.
        brackets = value.count(b"{")
        if b"[" in value:
            brackets += value.count(b"[")
        maybe_deep = brackets > config.max_depth
        try:
            event = orjson.loads(value)
        except orjson.JSONDecodeError as exc:
            raise self._decode_failure(value, exc) from None
        if type(event) is not dict:
            raise _Invalid(
                Reason.NOT_AN_OBJECT, f"expected a JSON object, got {_json_type(event)}"
            )
        if maybe_deep:
            depth = _depth(event, config.max_depth)
            if depth > config.max_depth:
                raise _Invalid(
                    Reason.TOO_DEEP, f"nesting is deeper than the limit of {config.max_depth}"
                )
        try:
            return self._check_event(event, now_ms)
        except _Invalid as bad:
            bad.event = event  # so the dead letter can say which event it was
            raise

    def _check_event(self, event: dict[str, Any], now_ms: int) -> dict[str, Any]:
        config = self.config
        name = self._event_name(event)
        event_id = event.get("event_id")
        if event_id is not None and (
            type(event_id) is not str or not event_id or len(event_id) > _MAX_ID_LENGTH
        ):
            raise _Invalid(
                Reason.WRONG_TYPE if type(event_id) is not str else Reason.INVALID_VALUE,
                f"event_id must be a non-empty string of at most {_MAX_ID_LENGTH} characters",
                "event_id",
            )

        if "timestamp" not in event or event["timestamp"] is None:
            raise _Invalid(Reason.MISSING_FIELD, "timestamp is required", "timestamp")
        ts = parse_timestamp(event["timestamp"])
        if ts > now_ms + self._max_future_ms:
            raise _Invalid(
                Reason.TIMESTAMP_OUT_OF_RANGE,
                f"timestamp is {(ts - now_ms) / 1000:.0f}s in the future "
                f"(limit {config.max_future_skew:.0f}s)",
                "timestamp",
            )
        if ts < now_ms - self._max_age_ms:
            raise _Invalid(
                Reason.TIMESTAMP_OUT_OF_RANGE,
                f"timestamp is {(now_ms - ts) / 86_400_000:.1f} days old "
                f"(limit {config.max_age / 86400:.1f} days)",
                "timestamp",
            )
        event["timestamp"] = ts

        has_identity = False
        for field in IDENTITY_FIELDS:
            ident = event.get(field)
            if ident is None:
                continue
            if type(ident) is not str:
                raise _Invalid(
                    Reason.WRONG_TYPE, f"{field} must be a string, got {_json_type(ident)}", field
                )
            if ident and len(ident) <= _MAX_ID_LENGTH:
                has_identity = True
            elif ident:
                raise _Invalid(
                    Reason.INVALID_VALUE, f"{field} is longer than {_MAX_ID_LENGTH}", field
                )
        if not has_identity:
            raise _Invalid(
                Reason.MISSING_IDENTITY,
                "at least one of user_id, anonymous_id, device_id is required",
            )
        session_id = event.get("session_id")
        if session_id is not None and type(session_id) is not str:
            raise _Invalid(
                Reason.WRONG_TYPE,
                f"session_id must be a string, got {_json_type(session_id)}",
                "session_id",
            )

        for field in _OBJECT_FIELDS:
            obj = event.get(field)
            if obj is None:
                event[field] = {}
            elif type(obj) is not dict:
                raise _Invalid(
                    Reason.WRONG_TYPE, f"{field} must be an object, got {_json_type(obj)}", field
                )
        context = event["context"]
        if context:
            for field in _CONTEXT_STRING_FIELDS:
                item = context.get(field)
                if item is not None and type(item) is not str:
                    raise _Invalid(
                        Reason.WRONG_TYPE,
                        f"context.{field} must be a string, got {_json_type(item)}",
                        f"context.{field}",
                    )

        schema = self._event_schemas.get(name)
        if schema is not None:
            problem = schema(event["properties"], "properties")
            if problem is not None:
                raise _Invalid(Reason.SCHEMA_VIOLATION, problem[1], problem[0])
        elif config.unknown_events == "reject":
            raise _Invalid(
                Reason.UNKNOWN_EVENT, f"event {name!r} has no property schema", "event"
            )
        return event

    @staticmethod
    def _event_name(event: dict[str, Any]) -> str:
        name = event.get("event")
        alias = event.get("event_name")
        if alias is None and "event_name" in event:
            del event["event_name"]
        if alias is not None:
            if name is not None and name != alias:
                raise _Invalid(
                    Reason.INVALID_VALUE,
                    "event and event_name are both present and differ",
                    "event_name",
                )
            name = alias
            del event["event_name"]
            event["event"] = name
        if name is None:
            raise _Invalid(Reason.MISSING_FIELD, "event is required", "event")
        if type(name) is not str:
            raise _Invalid(
                Reason.WRONG_TYPE, f"event must be a string, got {_json_type(name)}", "event"
            )
        if not name or len(name) > _MAX_EVENT_NAME_LENGTH or not name.isprintable():
            raise _Invalid(
                Reason.INVALID_VALUE,
                f"event must be 1-{_MAX_EVENT_NAME_LENGTH} printable characters",
                "event",
            )
        return name

    @staticmethod
    def _decode_failure(value: bytes, exc: orjson.JSONDecodeError) -> _Invalid:
        text = str(exc)
        lowered = text.lower()
        if "recursion" in lowered or "depth limit" in lowered:
            return _Invalid(Reason.TOO_DEEP, "nesting is deeper than JSON decoding allows")
        try:
            value.decode("utf-8")
        except UnicodeDecodeError as bad:
            return _Invalid(
                Reason.INVALID_UTF8, f"not valid UTF-8 at byte {bad.start}: {bad.reason}"
            )
        return _Invalid(Reason.MALFORMED_JSON, f"not valid JSON: {text[:200]}")


def _build(stage_id: str, config: ValidateConfig, topology: Topology) -> ValidateStage:
    checkers = {
        name.removeprefix("event:"): compile_schema(schema)
        for name, schema in topology.schemas.items()
        if name.startswith("event:")
    }
    return ValidateStage(stage_id, config, checkers)


STAGE_TYPE = StageType(name="validate", role="source", config_model=ValidateConfig, build=_build)
