"""The ``dedupe`` stage: one copy of every event.

The key is ``event_id`` when the event has one; otherwise a fingerprint (BLAKE2b) over
configurable fields (default: event name, timestamp, identity, properties), like Snowplow's event
fingerprint. A key is remembered for ``window`` (default 24 h) from when it was first seen; a
second event with the same key inside the window is a duplicate: counted and dropped, or sent to
``topic`` (e.g. ``duplicate_events``) when configured.

Partitioning rule. Keys are remembered per source partition (in the worker, a Faust table whose
changelog partitions match the source topic's). A resend is caught when it reaches the same
partition as the original. The worker guarantees that: every event is processed in the partition
its *canonical identity* (``user_id``, else ``anonymous_id``, else ``device_id``) maps to under
Kafka's default partitioner (murmur2). An event that arrives on another partition — keyed by
something else, unkeyed, or partitioned differently by its producer — is first forwarded, as it
came, through a repartition topic keyed by its canonical identity. Events keyed the way
``pipeline produce`` and the standard Kafka clients key them pay nothing for this.
"""

from __future__ import annotations

import hashlib
from typing import Any, Callable, Literal

import orjson
from pydantic import Field, model_validator

from pipeline.core.batch import BatchContext
from pipeline.core.deadletter import RECORD_SIZE_LIMIT, fits
from pipeline.core.dedupe_store import DedupeStore, MemoryDedupeStore
from pipeline.core.identity import IDENTITY_FIELDS, canonical_identity
from pipeline.core.reasons import Reason
from pipeline.core.records import Item
from pipeline.stages import StageType
from pipeline.topology.model import Duration, Strict, TopicName, Topology, TopologySpec

FINGERPRINT_FIELDS = ("event", "timestamp", "identity", "properties")

# owner_partition(canonical_key, message) -> the partition that must process the event, or None
# when the message is already there (or partitioning does not apply, as in embedded mode).
Partitioner = Callable[[bytes, Any], "int | None"]


class DedupeConfig(Strict):
    window: Duration = 86400.0
    """How long a key is remembered, from when it was first seen."""
    fingerprint: list[str] = Field(default_factory=lambda: list(FINGERPRINT_FIELDS), min_length=1)
    """Fields hashed when an event has no ``event_id``: top-level names, dotted paths, and
    ``identity`` (= user_id, anonymous_id, device_id)."""
    on_duplicate: Literal["drop", "topic"] = "drop"
    topic: TopicName | None = None
    """With ``on_duplicate: topic``: where duplicates go (declared under ``topics``)."""

    @model_validator(mode="after")
    def _topic_when_needed(self) -> "DedupeConfig":
        if self.on_duplicate == "topic" and not self.topic:
            raise ValueError("on_duplicate: topic needs a topic")
        if self.on_duplicate == "drop" and self.topic:
            raise ValueError("topic is only used with on_duplicate: topic")
        return self


def _check(config: DedupeConfig, spec: TopologySpec) -> list[tuple[str, str]]:
    problems = []
    if config.topic and config.topic not in spec.topics:
        problems.append(("topic", f"topic {config.topic!r} is not declared under topics"))
    if config.topic and config.topic == spec.dead_letter.topic:
        problems.append(("topic", "duplicates cannot go to the dead-letter topic"))
    return problems


def canonical_identity_key(event: dict[str, Any]) -> bytes:
    """The canonical identity as a Kafka key (validated events always have one)."""
    identity = canonical_identity(event)
    return identity.encode("utf-8") if identity else b""


def _field_value(event: dict[str, Any], path: str) -> Any:
    if path == "identity":
        return [event.get(f) for f in IDENTITY_FIELDS]
    node: Any = event
    for part in path.split("."):
        if not isinstance(node, dict):
            return None
        node = node.get(part)
    return node


class DedupeStage:
    def __init__(
        self,
        stage_id: str,
        config: DedupeConfig,
        *,
        store: DedupeStore | None = None,
        partitioner: Partitioner | None = None,
        repartition_topic: str | None = None,
    ) -> None:
        self.id = stage_id
        self.config = config
        self.store: DedupeStore = store if store is not None else MemoryDedupeStore()
        self.partitioner = partitioner
        self.repartition_topic = repartition_topic
        self._window_ms = int(config.window * 1000)
        self._fields = tuple(config.fingerprint)

    def key_for(self, event: dict[str, Any]) -> bytes:
        event_id = event.get("event_id")
        if event_id:
            return b"i:" + event_id.encode("utf-8")
        return self._fingerprint(event)

    def _fingerprint(self, event: dict[str, Any]) -> bytes:
        values = [_field_value(event, f) for f in self._fields]
        digest = hashlib.blake2b(
            orjson.dumps(values, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS),
            digest_size=16,
        ).digest()
        return b"f:" + digest

    def process(self, items: list[Item], ctx: BatchContext) -> list[Item]:
        items = self._route_to_owner(items, ctx)
        now_ms = ctx.now_ms
        # Each partition's events and their keys, as two parallel lists (a pair per event costs).
        by_partition: dict[int, tuple[list[Item], list[bytes]]] = {}
        fingerprint = self._fingerprint
        for item in items:
            event = item.event
            # key_for, inlined: most events have an event_id.
            event_id = event.get("event_id")
            key = b"i:" + event_id.encode("utf-8") if event_id else fingerprint(event)
            partition = item.message.partition
            group = by_partition.get(partition)
            if group is None:
                group = by_partition[partition] = ([], [])
            group[0].append(item)
            group[1].append(key)
        kept: list[Item] = []
        duplicates = 0
        expires_at = now_ms + self._window_ms
        to_remember: list[tuple[int, list[tuple[bytes, int]]]] = []
        for partition, (group_items, keys) in by_partition.items():
            seen = self.store.seen(partition, keys, now_ms)
            fresh = dict.fromkeys(keys, expires_at)
            if len(fresh) == len(keys) == len(seen) and not any(seen):
                # The common case, decided in C: no key was seen before or twice in the batch.
                kept.extend(group_items)
            else:
                fresh = {}
                for item, key, was_seen in zip(group_items, keys, seen, strict=True):
                    if was_seen or key in fresh:
                        duplicates += 1
                        self._duplicate(item, ctx)
                    else:
                        fresh[key] = expires_at
                        kept.append(item)
            if fresh:
                to_remember.append((partition, list(fresh.items())))
        # Last, once nothing can raise: if this batch is replayed event by event after a
        # failure (Processor._guarded), no key of it is remembered yet.
        for partition, entries in to_remember:
            self.store.remember(partition, entries)
        if duplicates:
            ctx.counters[(self.id, "duplicate")] += duplicates
        ctx.counters[(self.id, "unique")] += len(kept)
        return kept

    def _duplicate(self, item: Item, ctx: BatchContext) -> None:
        if self.config.on_duplicate == "topic":
            ctx.emit(self.config.topic, item.message.key, orjson.dumps(item.event))  # type: ignore[arg-type]

    def _route_to_owner(self, items: list[Item], ctx: BatchContext) -> list[Item]:
        """Forward events that are not in their canonical identity's partition (see module doc)."""
        if self.partitioner is None or self.repartition_topic is None:
            return items
        owner = self.partitioner
        here: list[Item] = []
        forwarded = 0
        for item in items:
            key = canonical_identity_key(item.event)
            if owner(key, item.message) is None:
                here.append(item)
            else:
                value = item.message.value or b""
                if not fits(key, value):
                    ctx.dead_letter(
                        item.message, reason=Reason.OUTPUT_TOO_LARGE, stage=self.id,
                        detail=f"cannot forward {len(value)} bytes to partition of its identity; "
                        f"a record may be {RECORD_SIZE_LIMIT}",
                        event=item.event,
                    )
                    continue
                forwarded += 1
                ctx.emit(self.repartition_topic, key, value)
        if forwarded:
            ctx.counters[(self.id, "repartitioned")] += forwarded
        return here


def _build(stage_id: str, config: DedupeConfig, topology: Topology) -> DedupeStage:
    # Embedded mode: memory store, no partitioning. The worker replaces the store and partitioner.
    return DedupeStage(stage_id, config)


STAGE_TYPE = StageType(
    name="dedupe", role="middle", config_model=DedupeConfig, build=_build, check=_check
)
