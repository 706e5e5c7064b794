"""The fixed, documented set of dead-letter reason codes.

Downstream tooling (alerts, ``pipeline dlq``) keys on these strings: never rename one.
"""

from __future__ import annotations

from enum import StrEnum


class Reason(StrEnum):
    EMPTY_PAYLOAD = "empty_payload"
    """The message value is empty or null (a tombstone)."""
    PAYLOAD_TOO_LARGE = "payload_too_large"
    """The value is larger than ``max_payload_bytes``."""
    INVALID_UTF8 = "invalid_utf8"
    """The value is not valid UTF-8, so it cannot be JSON."""
    MALFORMED_JSON = "malformed_json"
    """The value is not JSON (including NaN/Infinity, which JSON does not allow)."""
    NOT_AN_OBJECT = "not_an_object"
    """The value is JSON but not an object (an array, string, number, null)."""
    TOO_DEEP = "too_deep"
    """Objects/arrays nest deeper than ``max_depth``."""
    MISSING_FIELD = "missing_field"
    """A required envelope field is absent or null."""
    MISSING_IDENTITY = "missing_identity"
    """None of ``user_id``, ``anonymous_id``, ``device_id`` is present."""
    WRONG_TYPE = "wrong_type"
    """An envelope field has the wrong JSON type."""
    INVALID_VALUE = "invalid_value"
    """An envelope field has the right type but an unacceptable value."""
    BAD_TIMESTAMP = "bad_timestamp"
    """``timestamp`` cannot be parsed (ISO-8601 with an offset, or epoch milliseconds)."""
    TIMESTAMP_OUT_OF_RANGE = "timestamp_out_of_range"
    """``timestamp`` is further in the future than ``max_future_skew`` or older than ``max_age``."""
    UNKNOWN_EVENT = "unknown_event"
    """The event has no property schema and the topology rejects unknown events."""
    SCHEMA_VIOLATION = "schema_violation"
    """``properties`` do not match the event's Avro schema (path says where)."""
    ENRICHMENT_FAILED = "enrichment_failed"
    """An enricher raised on this event and its stage says ``on_error: dead_letter``."""
    OUTPUT_TOO_LARGE = "output_too_large"
    """The event to send on (routed after enrichment, or forwarded to its partition) is larger
    than a Kafka message may be (``MESSAGE_SIZE_LIMIT``)."""
    STAGE_ERROR = "stage_error"
    """A stage raised an unexpected exception on this event (a bug); the stage id says which."""
