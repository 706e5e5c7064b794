"""Build dead-letter records: every failure becomes data with a reason, never a silent drop."""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import orjson

from pipeline.core.records import SourceMessage

MESSAGE_SIZE_LIMIT = 1_000_000
"""librdkafka's default ``message.max.bytes``: key, value and headers of one message, plus a
few dozen bytes of framing, must stay below it (the broker's default limit is 1 MiB)."""
RECORD_SIZE_LIMIT = MESSAGE_SIZE_LIMIT - 1_024
"""Key plus value of any record we produce; the rest is headroom for the framing."""
MAX_KEY_BYTES = 4_096
"""A dead letter keeps its message's key up to this size; a longer one is replaced by its
SHA-256 (``sha256:<hex>``), so a huge key cannot make the dead letter unsendable."""
_MAX_PATH = 1024


def dead_letter_key(key: bytes | None) -> bytes | None:
    if key is None or len(key) <= MAX_KEY_BYTES:
        return key
    return b"sha256:" + hashlib.sha256(key).hexdigest().encode()


def fits(key: bytes | None, value: bytes) -> bool:
    """Whether a record with this key and value can be produced."""
    return len(value) + (len(key) if key else 0) <= RECORD_SIZE_LIMIT


def _text_or_base64(data: bytes) -> tuple[str, str]:
    try:
        return data.decode("utf-8"), "utf8"
    except UnicodeDecodeError:
        return base64.b64encode(data).decode("ascii"), "base64"


class DeadLetterBuilder:
    """Turns a failed message into a dead-letter record (schema: ``avro/dead_letter.avsc``)."""

    def __init__(
        self, *, topic: str, topology_name: str, topology_version: str, max_payload_bytes: int
    ) -> None:
        self.topic = topic
        self._topology = {"name": topology_name, "version": topology_version}
        self._max_payload_bytes = max_payload_bytes

    def build(
        self,
        message: SourceMessage,
        *,
        reason: str,
        stage: str,
        detail: str,
        path: str | None,
        failed_at_ms: int,
        event: dict[str, Any] | None = None,
    ) -> bytes:
        raw = message.value if message.value is not None else b""
        truncated = len(raw) > self._max_payload_bytes
        payload, encoding = _text_or_base64(_prefix(raw, self._max_payload_bytes))
        key, key_encoding = (None, None)
        if message.key is not None:
            key, key_encoding = _text_or_base64(message.key[:1024])
        source = None
        if message.topic:
            source = {
                "topic": message.topic,
                "partition": message.partition,
                "offset": message.offset,
                "timestamp": message.timestamp,
            }
        record = {
            "reason": reason,
            "stage": stage,
            "message": detail[:2000],
            "path": path[:_MAX_PATH] if path else path,
            "payload": payload,
            "payload_encoding": encoding,
            "payload_truncated": truncated,
            "payload_size": len(raw),
            "key": key,
            "key_encoding": key_encoding,
            "event": _short_str(event, "event"),
            "event_id": _short_str(event, "event_id"),
            "source": source,
            "failed_at": failed_at_ms,
            "topology": self._topology,
        }
        encoded = orjson.dumps(record)
        # The record travels with the (possibly shortened) original key: both must fit.
        limit = RECORD_SIZE_LIMIT - len(dead_letter_key(message.key) or b"")
        keep = min(self._max_payload_bytes, (limit // 2) * 3 // 4)
        while len(encoded) > limit and keep > 0:
            # JSON escaping can blow control characters up six-fold; base64 of a prefix is
            # bounded (4/3). Halve the prefix until the record fits.
            record["payload"] = base64.b64encode(raw[:keep]).decode("ascii")
            record["payload_encoding"] = "base64"
            record["payload_truncated"] = len(raw) > keep
            encoded = orjson.dumps(record)
            keep //= 2
        return encoded


def _prefix(data: bytes, limit: int) -> bytes:
    """At most ``limit`` bytes, cut before a UTF-8 continuation byte so text stays text."""
    if len(data) <= limit:
        return data
    cut = limit
    # Continuation bytes are 0b10xxxxxx; a character is at most 4 bytes long.
    while cut > limit - 4 and cut > 0 and (data[cut] & 0xC0) == 0x80:
        cut -= 1
    return data[:cut]


def _short_str(event: dict[str, Any] | None, key: str) -> str | None:
    if not event:
        return None
    value = event.get(key)
    return value[:256] if isinstance(value, str) else None


def decode_payload(record: dict[str, Any]) -> bytes:
    """The original bytes of a dead-letter record's payload (as far as it was kept)."""
    if record["payload_encoding"] == "base64":
        return base64.b64decode(record["payload"])
    return record["payload"].encode("utf-8")
