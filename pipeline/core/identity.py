"""Who did it: the identity fields and the one rule that picks the canonical identity.

The rule decides the Kafka key events are produced with (``pipeline produce``) and the partition
the dedupe stage processes an event in, so it must be the same everywhere: keep it here.
"""

from __future__ import annotations

from typing import Any

IDENTITY_FIELDS = ("user_id", "anonymous_id", "device_id")


def canonical_identity(event: dict[str, Any]) -> str | None:
    """``user_id``, else ``anonymous_id``, else ``device_id`` (the first non-empty string)."""
    for field in IDENTITY_FIELDS:
        value = event.get(field)
        if isinstance(value, str) and value:
            return value
    return None
