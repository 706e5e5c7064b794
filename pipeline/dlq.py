"""``pipeline dlq``: inspect a topology's dead-letter topic, and replay dead letters after a fix.

Two halves:

* plain functions on plain data (parsing a dead-letter record, the filter, what can be replayed
  and with which key, value and headers, the summary and its formatting, which records of a
  chunk a replay sends and which offsets it may commit), unit-tested without a broker;
* the Kafka glue (``inspect``, ``replay``): a consumer that reads the dead-letter topic by
  explicit assignment (it never joins a consumer group, so it never disturbs the worker), and
  for ``replay`` a transactional producer.

Exactly once per dead letter. A replay is named by its filter: its consumer group is
``<worker group>-dlq-replay-<reasons>[-since-<ms>][-until-<ms>]``. It reads the dead-letter topic
from that group's committed offsets to the end the topic had when the replay started, a chunk at
a time, and for each chunk, in ONE Kafka transaction, produces the chunk's replays to the source
topic and commits the chunk's dead-letter offsets to the group (``send_offsets_to_transaction``).
Either both happen or neither: an interrupted replay resumes after the last committed chunk, and
a second identical replay finds nothing left to send. The transactional id is derived from the
group, so a new run fences a stale one before it reads the committed offsets.

Replays that fail again are dead-lettered again by the worker. Those second-generation dead
letters are never replayed (their source message carries the replay header, which is how they
are recognised): their original dead letter is still in the topic, and a later replay with
another filter replays that one.
"""

from __future__ import annotations

import base64
import binascii
import heapq
import logging
import re
import signal
import time
import uuid
from collections import Counter
from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Self

import orjson

from pipeline.core.reasons import Reason
from pipeline.errors import BrokerUnavailable, PipelineError

if TYPE_CHECKING:
    from pipeline.settings import Settings
    from pipeline.topology.model import Topology

log = logging.getLogger(__name__)

REPLAY_HEADER = "pipeline-replay-of"
"""Header of every replayed message: ``<dead-letter topic>/<partition>/<offset>`` of its dead letter."""

KEY_LIMIT = 1024
"""The dead-letter builder keeps at most this many bytes of the key in the record's ``key``."""

PREVIEW_CHARS = 160
METADATA_TIMEOUT_S = 10.0
"""How long to wait for the broker's metadata before calling it unreachable."""
STALL_TIMEOUT_S = 60.0
"""How long reading may make no progress before giving up."""
CHUNK_RECORDS = 500
"""Dead letters read per chunk: one chunk, one transaction."""

KNOWN_REASONS = tuple(r.value for r in Reason)

# Why a dead letter cannot be replayed.
PAYLOAD_TRUNCATED = "payload_truncated"
PAYLOAD_OMITTED = "payload_omitted"
PAYLOAD_INCOMPLETE = "payload_incomplete"
PAYLOAD_UNDECODABLE = "payload_undecodable"
PAYLOAD_EMPTY = "payload_empty"
KEY_TRUNCATED = "key_truncated"
NOT_REPLAYABLE_HELP = {
    PAYLOAD_TRUNCATED: "only a prefix of the payload was kept (larger than dead_letter.max_payload_bytes)",
    PAYLOAD_OMITTED: "the record holds no payload",
    PAYLOAD_INCOMPLETE: "the kept payload is shorter than payload_size",
    PAYLOAD_UNDECODABLE: "the payload is not valid text/base64",
    PAYLOAD_EMPTY: "the original value was empty or a tombstone: nothing to replay",
    KEY_TRUNCATED: "the original key is longer than the record keeps",
}


# ------------------------------------------------------------------ plain data


@dataclass(frozen=True, slots=True, order=True)
class Position:
    topic: str
    partition: int
    offset: int

    def __str__(self) -> str:
        return f"{self.topic}/{self.partition}/{self.offset}"


@dataclass(frozen=True, slots=True)
class RawMessage:
    """A consumed message, as far as this module cares."""

    position: Position
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes | None]] = ()


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A dead-letter record (``avro/dead_letter.avsc``) and where it was read."""

    position: Position
    """Where the dead letter itself is (the dead-letter topic)."""
    key: bytes | None
    """The Kafka key of the dead-letter message: the original message's key, in full."""
    record: dict[str, Any]

    @property
    def reason(self) -> str:
        return self.record["reason"]

    @property
    def stage(self) -> str:
        return self.record["stage"]

    @property
    def failed_at(self) -> int:
        return self.record["failed_at"]

    @property
    def source(self) -> Position | None:
        """Where the original message was read (None in embedded mode or when unknown)."""
        src = self.record.get("source")
        if not isinstance(src, dict):
            return None
        topic, partition, offset = src.get("topic"), src.get("partition"), src.get("offset")
        if not (isinstance(topic, str) and type(partition) is int and type(offset) is int):
            return None
        if topic.startswith("file:") or partition < 0 or offset < 0:
            return None
        return Position(topic, partition, offset)


def parse_dead_letter(message: RawMessage) -> DeadLetter | None:
    """The dead letter in a message, or None when the value is not a dead-letter record."""
    if not message.value:
        return None
    try:
        record = orjson.loads(message.value)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(record, dict):
        return None
    if not isinstance(record.get("reason"), str) or not isinstance(record.get("stage"), str):
        return None
    if type(record.get("failed_at")) is not int:
        return None
    return DeadLetter(message.position, message.key, record)


def _decode(text: Any, encoding: Any) -> bytes | None:
    if not isinstance(text, str):
        return None
    if encoding == "base64":
        try:
            return base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            return None
    if encoding in ("utf8", None):
        return text.encode("utf-8")
    return None


# ------------------------------------------------------------------ filter and times


def parse_time(text: str) -> int:
    """Epoch milliseconds from ISO-8601 (UTC when it has no offset) or epoch milliseconds."""
    value = text.strip()
    if re.fullmatch(r"[+-]?\d+", value):
        ms = int(value)
        if ms < 10**11:
            raise PipelineError(
                f"{text!r}: epoch milliseconds expected (this looks like seconds or is too early)"
            )
        return ms
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise PipelineError(
            f"{text!r} is neither ISO-8601 (e.g. 2026-03-01T12:00:00Z) nor epoch milliseconds"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)


def format_time(ms: int | None) -> str:
    if ms is None:
        return "-"
    moment = datetime.fromtimestamp(ms / 1000, tz=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def check_reasons(values: Iterable[str] | None) -> frozenset[str]:
    """The given reason codes, each checked against the fixed set."""
    reasons = frozenset(values or ())
    unknown = sorted(reasons - set(KNOWN_REASONS))
    if unknown:
        raise PipelineError(
            f"unknown reason {', '.join(map(repr, unknown))} (known: {', '.join(KNOWN_REASONS)})"
        )
    return reasons


@dataclass(frozen=True, slots=True)
class Filter:
    """Which dead letters a command looks at: reasons (empty = all) and a failure-time range."""

    reasons: frozenset[str] = frozenset()
    since_ms: int | None = None
    """Inclusive lower bound on ``failed_at``."""
    until_ms: int | None = None
    """Exclusive upper bound on ``failed_at``."""

    @classmethod
    def from_args(
        cls, reasons: Iterable[str] | None, since: str | None = None, until: str | None = None
    ) -> Filter:
        checked = check_reasons(reasons)
        since_ms = parse_time(since) if since is not None else None
        until_ms = parse_time(until) if until is not None else None
        if since_ms is not None and until_ms is not None and since_ms >= until_ms:
            raise PipelineError(
                f"--since ({format_time(since_ms)}) must be before --until ({format_time(until_ms)})"
            )
        return cls(checked, since_ms, until_ms)

    def matches(self, dead_letter: DeadLetter) -> bool:
        if self.reasons and dead_letter.reason not in self.reasons:
            return False
        failed_at = dead_letter.failed_at
        if self.since_ms is not None and failed_at < self.since_ms:
            return False
        return self.until_ms is None or failed_at < self.until_ms

    def describe(self) -> str:
        parts = [f"reason {', '.join(sorted(self.reasons))}" if self.reasons else "every reason"]
        if self.since_ms is not None:
            parts.append(f"failed since {format_time(self.since_ms)}")
        if self.until_ms is not None:
            parts.append(f"failed before {format_time(self.until_ms)}")
        return ", ".join(parts)


def replay_group_id(base_group: str, flt: Filter) -> str:
    """The consumer group holding a replay's progress: one per (worker group, filter)."""
    if not flt.reasons:
        raise PipelineError("a replay needs at least one --reason")
    name = f"{base_group}-dlq-replay-{'+'.join(sorted(flt.reasons))}"
    if flt.since_ms is not None:
        name += f"-since-{flt.since_ms}"
    if flt.until_ms is not None:
        name += f"-until-{flt.until_ms}"
    return name


def transactional_id(group_id: str, dead_letter_topic: str) -> str:
    """Stable per replay and topic, so that a new run fences a stale run of the same replay."""
    return f"{group_id}@{dead_letter_topic}"


# ------------------------------------------------------------------ replayability


@dataclass(frozen=True, slots=True)
class Replay:
    """What a replay sends to the source topic for one dead letter."""

    of: Position
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]]


def replay_headers(of: Position) -> list[tuple[str, bytes]]:
    return [(REPLAY_HEADER, str(of).encode("utf-8"))]


def replayed_from(headers: Iterable[tuple[str, bytes | None]] | None) -> str | None:
    """The dead letter a message replays (``topic/partition/offset``), or None."""
    for name, value in headers or ():
        if name == REPLAY_HEADER and value is not None:
            return value.decode("utf-8", "replace")
    return None


def original_key(dead_letter: DeadLetter) -> bytes | None | str:
    """The original key: the dead-letter message's own key (kept in full), else the record's."""
    if dead_letter.key is not None:
        return dead_letter.key
    record = dead_letter.record
    if record.get("key") is None:
        return None
    key = _decode(record["key"], record.get("key_encoding"))
    if key is None:
        return PAYLOAD_UNDECODABLE
    if len(key) >= KEY_LIMIT:
        return KEY_TRUNCATED
    return key


def replay_of(dead_letter: DeadLetter) -> Replay | str:
    """The replay of a dead letter, or why there can be none (a ``NOT_REPLAYABLE_HELP`` code).

    Only a payload kept in full is ever sent: never a prefix.
    """
    record = dead_letter.record
    if record.get("payload_truncated") is True:
        return PAYLOAD_TRUNCATED
    if record.get("payload") is None or type(record.get("payload_size")) is not int:
        return PAYLOAD_OMITTED
    payload = _decode(record["payload"], record.get("payload_encoding"))
    if payload is None:
        return PAYLOAD_UNDECODABLE
    if len(payload) != record["payload_size"]:
        return PAYLOAD_INCOMPLETE
    if not payload:
        return PAYLOAD_EMPTY
    key = original_key(dead_letter)
    if isinstance(key, str):
        return key
    return Replay(
        of=dead_letter.position, key=key, value=payload, headers=replay_headers(dead_letter.position)
    )


# ------------------------------------------------------------------ inspect: the summary


def preview(record: dict[str, Any], limit: int = PREVIEW_CHARS) -> str:
    """A one-line, shortened view of a record's payload."""
    text = record.get("payload")
    if not isinstance(text, str):
        return "(no payload)"
    if record.get("payload_encoding") == "base64":
        raw = _decode(text, "base64")
        text = (
            "base64:" + text
            if raw is None
            else raw.decode("utf-8", "backslashreplace")
        )
    text = text.replace("\r", "\\r").replace("\n", "\\n").replace("\t", "\\t")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def sample_of(dead_letter: DeadLetter, *, preview_chars: int = PREVIEW_CHARS) -> dict[str, Any]:
    record = dead_letter.record
    source = dead_letter.source
    outcome = replay_of(dead_letter)
    return {
        "position": str(dead_letter.position),
        "reason": dead_letter.reason,
        "stage": dead_letter.stage,
        "failed_at": dead_letter.failed_at,
        "message": record.get("message"),
        "path": record.get("path"),
        "event": record.get("event"),
        "event_id": record.get("event_id"),
        "source": str(source) if source else None,
        "payload_size": record.get("payload_size"),
        "payload_truncated": bool(record.get("payload_truncated")),
        "replayable": not isinstance(outcome, str),
        "not_replayable_because": outcome if isinstance(outcome, str) else None,
        "payload_preview": preview(record, preview_chars),
    }


@dataclass
class Summary:
    """Counts by (reason, stage), the failure-time range and the latest samples per reason."""

    topic: str
    filter: Filter = field(default_factory=Filter)
    samples_per_reason: int = 3
    read: int = 0
    unreadable: int = 0
    matched: int = 0
    counts: Counter[tuple[str, str]] = field(default_factory=Counter)
    not_replayable: Counter[tuple[str, str]] = field(default_factory=Counter)
    first_failed_at: int | None = None
    last_failed_at: int | None = None
    _samples: dict[str, list[tuple[int, int, DeadLetter]]] = field(default_factory=dict)

    def add(self, message: RawMessage) -> None:
        self.read += 1
        dead_letter = parse_dead_letter(message)
        if dead_letter is None:
            self.unreadable += 1
            return
        if not self.filter.matches(dead_letter):
            return
        self.matched += 1
        group = (dead_letter.reason, dead_letter.stage)
        self.counts[group] += 1
        if isinstance(replay_of(dead_letter), str):
            self.not_replayable[group] += 1
        failed_at = dead_letter.failed_at
        if self.first_failed_at is None or failed_at < self.first_failed_at:
            self.first_failed_at = failed_at
        if self.last_failed_at is None or failed_at > self.last_failed_at:
            self.last_failed_at = failed_at
        if self.samples_per_reason > 0:
            # The latest N per reason: a min-heap on (failed_at, read order).
            heap = self._samples.setdefault(dead_letter.reason, [])
            entry = (failed_at, self.read, dead_letter)
            if len(heap) < self.samples_per_reason:
                heapq.heappush(heap, entry)
            elif entry[:2] > heap[0][:2]:
                heapq.heapreplace(heap, entry)

    def samples(self, reason: str) -> list[DeadLetter]:
        """The latest samples of a reason, newest first."""
        entries = sorted(self._samples.get(reason, []), key=lambda e: e[:2], reverse=True)
        return [e[2] for e in entries]

    def by_reason(self) -> Counter[str]:
        totals: Counter[str] = Counter()
        for (reason, _stage), n in self.counts.items():
            totals[reason] += n
        return totals

    def to_json(self) -> dict[str, Any]:
        return {
            "topic": self.topic,
            "filter": {
                "reasons": sorted(self.filter.reasons),
                "since": self.filter.since_ms,
                "until": self.filter.until_ms,
            },
            "read": self.read,
            "unreadable": self.unreadable,
            "matched": self.matched,
            "first_failed_at": self.first_failed_at,
            "last_failed_at": self.last_failed_at,
            "counts": [
                {"reason": reason, "stage": stage, "count": n,
                 "not_replayable": self.not_replayable[(reason, stage)]}
                for (reason, stage), n in _ordered(self.counts)
            ],
            "by_reason": dict(sorted(self.by_reason().items())),
            "samples": {
                reason: [sample_of(d) for d in self.samples(reason)]
                for reason in sorted(self._samples)
            },
        }


def _ordered(counts: Counter[tuple[str, str]]) -> list[tuple[tuple[str, str], int]]:
    """Largest first, then by reason and stage (a stable order for people and diffs)."""
    return sorted(counts.items(), key=lambda item: (-item[1], item[0]))


def format_summary(summary: Summary, *, preview_chars: int = PREVIEW_CHARS) -> str:
    lines = [
        f"{summary.topic}: {summary.matched} dead letter(s) matching {summary.filter.describe()} "
        f"(read {summary.read}"
        + (f", {summary.unreadable} unreadable" if summary.unreadable else "")
        + ")"
    ]
    if not summary.matched:
        return "\n".join(lines)
    lines.append(
        f"failed between {format_time(summary.first_failed_at)} "
        f"and {format_time(summary.last_failed_at)}"
    )
    rows = [("reason", "stage", "count", "not replayable")]
    rows += [
        (reason, stage, str(n), str(summary.not_replayable[(reason, stage)]))
        for (reason, stage), n in _ordered(summary.counts)
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        lines.append(
            f"  {row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  "
            f"{row[2]:>{widths[2]}}  {row[3]:>{widths[3]}}".rstrip()
        )
    if summary.samples_per_reason > 0:
        lines.append(f"samples (latest {summary.samples_per_reason} per reason):")
        for reason, _n in sorted(summary.by_reason().items(), key=lambda i: (-i[1], i[0])):
            for dead_letter in summary.samples(reason):
                sample = sample_of(dead_letter, preview_chars=preview_chars)
                lines.append(
                    f"  {reason} at {sample['position']}, stage {sample['stage']}, "
                    f"{format_time(sample['failed_at'])}"
                )
                lines.append(f"    message: {sample['message']}")
                if sample["path"]:
                    lines.append(f"    path:    {sample['path']}")
                lines.append(f"    source:  {sample['source'] or '-'}")
                flags = "" if sample["replayable"] else f", not replayable: {sample['not_replayable_because']}"
                lines.append(
                    f"    payload ({sample['payload_size']} bytes{flags}): {sample['payload_preview']}"
                )
    return "\n".join(lines)


# ------------------------------------------------------------------ replay: planning a chunk


@dataclass
class ReplayStats:
    read: int = 0
    unreadable: int = 0
    matched: int = 0
    replayed: Counter[str] = field(default_factory=Counter)
    """Replayed (or, in a dry run, to be replayed) by reason."""
    not_replayable: Counter[str] = field(default_factory=Counter)
    """Matching dead letters that cannot be replayed, by why."""
    refailures: int = 0
    """Matching dead letters of earlier replays (never replayed again)."""
    after_dedupe: int = 0
    """Replayed dead letters whose stage runs after a dedupe stage."""

    @property
    def replayed_total(self) -> int:
        return sum(self.replayed.values())

    def to_json(self) -> dict[str, Any]:
        return {
            "read": self.read,
            "unreadable": self.unreadable,
            "matched": self.matched,
            "replayed": self.replayed_total,
            "replayed_by_reason": dict(sorted(self.replayed.items())),
            "not_replayable": dict(sorted(self.not_replayable.items())),
            "refailures_skipped": self.refailures,
            "after_dedupe": self.after_dedupe,
        }


@dataclass
class ChunkPlan:
    replays: list[Replay]
    offsets: dict[int, int]
    """Per dead-letter partition, the next offset to read: every dead letter below it is done."""
    stopped: bool
    """The record budget ran out before the end of the chunk."""


def plan_chunk(
    messages: Sequence[RawMessage],
    *,
    flt: Filter,
    replayed_sources: Collection[Position],
    stats: ReplayStats,
    budget: int | None = None,
    stages_after_dedupe: Collection[str] = (),
) -> ChunkPlan:
    """Decide, in topic order, what a chunk of dead-letter messages sends.

    ``replayed_sources``: source positions whose message was itself a replay (its dead letter is
    a re-failure and is skipped). ``budget``: most replays to send; the chunk stops before the
    first dead letter beyond it, and offsets only cover what was decided.
    """
    replays: list[Replay] = []
    offsets: dict[int, int] = {}
    stopped = False
    for message in messages:
        matching = None
        dead_letter = parse_dead_letter(message)
        if dead_letter is not None and flt.matches(dead_letter):
            matching = dead_letter
        if matching is not None and budget is not None and len(replays) >= budget:
            outcome = replay_of(matching)
            if not isinstance(outcome, str) and matching.source not in replayed_sources:
                stopped = True
                break
        stats.read += 1
        offsets[message.position.partition] = message.position.offset + 1
        if dead_letter is None:
            stats.unreadable += 1
            continue
        if matching is None:
            continue
        stats.matched += 1
        if matching.source is not None and matching.source in replayed_sources:
            stats.refailures += 1
            continue
        outcome = replay_of(matching)
        if isinstance(outcome, str):
            stats.not_replayable[outcome] += 1
            continue
        replays.append(outcome)
        stats.replayed[matching.reason] += 1
        if matching.stage in stages_after_dedupe:
            stats.after_dedupe += 1
    return ChunkPlan(replays, offsets, stopped)


def stages_after_dedupe(topology: Topology) -> tuple[str | None, float | None, frozenset[str]]:
    """The first dedupe stage, its window (seconds), and the ids of the stages after it.

    An event dead-lettered after dedupe was remembered by it: its replay is dropped as a
    duplicate while the original is inside the window.
    """
    stages = topology.spec.stages
    for index, stage in enumerate(stages):
        if stage.type == "dedupe":
            window = getattr(topology.stage_configs.get(stage.id), "window", None)
            return stage.id, window, frozenset(s.id for s in stages[index + 1:])
    return None, None, frozenset()


def format_replay(
    stats: ReplayStats,
    *,
    flt: Filter,
    dead_letter_topic: str,
    source_topic: str,
    group_id: str,
    dry_run: bool,
    stopped: str | None,
    dedupe: tuple[str | None, float | None],
) -> str:
    """The replay's report. ``stopped``: ``"max_records"``, ``"signal"`` or None (the end)."""
    verb = "would replay" if dry_run else "replayed"
    lines = [
        f"{dead_letter_topic} -> {source_topic}, {flt.describe()} (group {group_id}"
        + (", dry run: nothing sent, nothing committed" if dry_run else "")
        + ")",
        (
            f"read {stats.read} new dead letter(s), {stats.matched} matching: "
            f"{verb} {stats.replayed_total}"
        ),
    ]
    for reason, n in sorted(stats.replayed.items()):
        lines.append(f"  {reason}: {n}")
    if stats.not_replayable:
        lines.append(
            f"not replayable: {sum(stats.not_replayable.values())} (never sent)"
        )
        for why, n in sorted(stats.not_replayable.items()):
            lines.append(f"  {why}: {n} - {NOT_REPLAYABLE_HELP.get(why, why)}")
    if stats.refailures:
        lines.append(
            f"skipped {stats.refailures} re-failure(s) of earlier replays (their original dead "
            "letters are what a replay sends)"
        )
    if stats.unreadable:
        lines.append(f"skipped {stats.unreadable} unreadable record(s) (not dead-letter JSON)")
    stage, window = dedupe
    if stats.after_dedupe and stage:
        lines.append(
            f"warning: {stats.after_dedupe} of them failed after the dedupe stage {stage!r}: the "
            f"worker drops a replay as a duplicate while its original is within the "
            f"{_duration(window)} window"
        )
    if stopped == "max_records":
        lines.append("stopped at --max-records; run the same command again to continue")
    elif stopped == "signal":
        lines.append("interrupted after a committed chunk; run the same command again to continue")
    return "\n".join(lines)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "dedupe"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= 2 * size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


# ------------------------------------------------------------------ Kafka glue

# confluent-kafka is imported inside the functions below: the plain half of this module (and
# its unit tests) never needs it, and importing the CLI opens nothing.


_KAFKA_QUIET = {
    # librdkafka logs every failed connection attempt (a few a second) to stderr; what matters
    # surfaces as an error of the call that needed the broker (one line, see the CLI).
    "log_level": 2,
    "logger": logging.getLogger("pipeline.dlq.librdkafka"),
}


def _consumer(settings: Settings, group_id: str, **extra: Any) -> Any:
    from confluent_kafka import Consumer

    return Consumer(
        {
            **_KAFKA_QUIET,
            "bootstrap.servers": settings.bootstrap_servers,
            "group.id": group_id,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
            **settings.extra_kafka,
            **extra,
        }
    )


def _partitions(client: Any, topic: str, settings: Settings) -> list[int]:
    """The topic's partitions. Lists every topic rather than asking for this one, which the
    broker could auto-create."""
    from confluent_kafka import KafkaException

    try:
        metadata = client.list_topics(timeout=METADATA_TIMEOUT_S)
    except KafkaException as exc:
        raise BrokerUnavailable(
            f"cannot reach Kafka at {settings.bootstrap_servers}: {_kafka_message(exc)}"
        ) from None
    info = metadata.topics.get(topic)
    if info is None or info.error is not None:
        raise PipelineError(f"topic {topic} does not exist on {settings.bootstrap_servers}")
    return sorted(info.partitions)


def _kafka_message(exc: BaseException) -> str:
    error = exc.args[0] if exc.args else exc
    text = error.str() if hasattr(error, "str") else str(error)
    return text.replace("\n", " ")


def _watermarks(consumer: Any, topic: str, partitions: Iterable[int]) -> dict[int, tuple[int, int]]:
    from confluent_kafka import KafkaException, TopicPartition

    marks = {}
    for partition in partitions:
        for attempt in range(20):
            try:
                marks[partition] = consumer.get_watermark_offsets(
                    TopicPartition(topic, partition), timeout=METADATA_TIMEOUT_S
                )
                break
            except KafkaException as exc:
                # A partition of a topic created a moment ago can briefly have no leader.
                if attempt == 19:
                    raise PipelineError(
                        f"cannot read the offsets of {topic}/{partition}: {_kafka_message(exc)}"
                    ) from None
                time.sleep(0.5)
    return marks


def _fatal_read_errors() -> frozenset[int]:
    from confluent_kafka import KafkaError

    return frozenset(
        {
            KafkaError.UNKNOWN_TOPIC_OR_PART,
            KafkaError.TOPIC_AUTHORIZATION_FAILED,
            KafkaError.GROUP_AUTHORIZATION_FAILED,
            KafkaError._UNKNOWN_TOPIC,
            KafkaError._UNKNOWN_PARTITION,
        }
    )


def _read_range(
    consumer: Any, topic: str, starts: dict[int, int], ends: dict[int, int], *, chunk: int
) -> Iterator[list[RawMessage]]:
    """Every message from ``starts`` up to (not including) ``ends``, in chunks, per-partition
    order kept."""
    from confluent_kafka import KafkaException, TopicPartition

    fatal_codes = _fatal_read_errors()
    pending = {p: end for p, end in ends.items() if starts.get(p, end) < end}
    if not pending:
        return
    consumer.assign([TopicPartition(topic, p, starts[p]) for p in sorted(pending)])
    last_progress = time.monotonic()
    while pending:
        batch: list[RawMessage] = []
        for msg in consumer.consume(num_messages=chunk, timeout=1.0):
            error = msg.error()
            if error is not None:
                if error.fatal() or error.code() in fatal_codes:
                    raise PipelineError(f"reading {topic}: {error.str()}")
                # Connection trouble and the like: librdkafka retries; the stall timeout
                # below gives up if it never recovers.
                log.debug("reading %s: %s", topic, error.str())
                continue
            partition = msg.partition()
            end = pending.get(partition)
            if end is None or msg.offset() >= end:
                continue
            batch.append(
                RawMessage(
                    Position(topic, partition, msg.offset()), msg.key(), msg.value(),
                    tuple(msg.headers() or ()),
                )
            )
            if msg.offset() + 1 >= end:
                del pending[partition]
        if pending:
            # Past the end without a message there (transaction markers, compaction gaps).
            try:
                positions = consumer.position([TopicPartition(topic, p) for p in pending])
            except KafkaException:
                positions = []
            for tp in positions:
                if tp.offset >= 0 and tp.offset >= pending.get(tp.partition, 0):
                    pending.pop(tp.partition, None)
        if batch:
            last_progress = time.monotonic()
            yield batch
        elif pending and time.monotonic() - last_progress > STALL_TIMEOUT_S:
            raise PipelineError(
                f"no progress reading {topic} for {STALL_TIMEOUT_S:.0f}s "
                f"(partitions {sorted(pending)} not read to their end)"
            )


def inspect(settings: Settings, topology: Topology, *, flt: Filter, samples: int = 3) -> Summary:
    """Read the dead-letter topic from the beginning to its current end; commit nothing."""
    topic = topology.spec.dead_letter.topic
    # A throwaway group id: the consumer only assigns partitions, so it joins no group (and
    # never the worker's) and, committing nothing, leaves no trace on the broker.
    consumer = _consumer(settings, f"pipeline-dlq-inspect-{uuid.uuid4().hex}")
    try:
        partitions = _partitions(consumer, topic, settings)
        marks = _watermarks(consumer, topic, partitions)
        summary = Summary(topic=topic, filter=flt, samples_per_reason=samples)
        starts = {p: lo for p, (lo, _hi) in marks.items()}
        ends = {p: hi for p, (_lo, hi) in marks.items()}
        for batch in _read_range(consumer, topic, starts, ends, chunk=CHUNK_RECORDS * 4):
            for message in batch:
                summary.add(message)
        return summary
    finally:
        consumer.close()


class SourceLookup:
    """Tells which source messages were replays (carry ``REPLAY_HEADER``).

    Reads uncommitted data: a replay from an aborted transaction is still a replay (the worker
    reads uncommitted data too). Positions are read in order per partition; a gap of more than
    ``max_gap`` offsets is sought over rather than read.
    """

    def __init__(self, consumer: Any, *, max_gap: int = 2000) -> None:
        self._consumer = consumer
        self._max_gap = max_gap
        self._marks: dict[tuple[str, int], tuple[int, int]] = {}

    def replays(self, positions: Iterable[Position]) -> set[Position]:
        by_partition: dict[tuple[str, int], set[int]] = {}
        for position in positions:
            by_partition.setdefault((position.topic, position.partition), set()).add(position.offset)
        found: set[Position] = set()
        for (topic, partition), offsets in sorted(by_partition.items()):
            found |= self._scan(topic, partition, sorted(offsets))
        return found

    def _watermark(self, topic: str, partition: int, *, fresh: bool = False) -> tuple[int, int]:
        if fresh or (topic, partition) not in self._marks:
            from confluent_kafka import KafkaException, TopicPartition

            try:
                self._marks[(topic, partition)] = self._consumer.get_watermark_offsets(
                    TopicPartition(topic, partition), timeout=METADATA_TIMEOUT_S
                )
            except KafkaException:
                # A topic that no longer exists (or never did, e.g. a renamed source): its
                # messages cannot be replays we can see.
                self._marks[(topic, partition)] = (0, 0)
        return self._marks[(topic, partition)]

    def _scan(self, topic: str, partition: int, offsets: list[int]) -> set[Position]:
        from confluent_kafka import TopicPartition

        lo, hi = self._watermark(topic, partition)
        if offsets and offsets[-1] >= hi:
            lo, hi = self._watermark(topic, partition, fresh=True)
        wanted = [o for o in offsets if lo <= o < hi]
        found: set[Position] = set()
        i = 0
        while i < len(wanted):
            self._consumer.assign([TopicPartition(topic, partition, wanted[i])])
            last_progress = time.monotonic()
            seek = False
            while i < len(wanted) and not seek:
                messages = self._consumer.consume(num_messages=500, timeout=1.0)
                if not messages:
                    if time.monotonic() - last_progress > STALL_TIMEOUT_S:
                        raise PipelineError(
                            f"cannot read {topic}/{partition} at offset {wanted[i]} "
                            "to check whether it was a replay"
                        )
                    continue
                last_progress = time.monotonic()
                last = -1
                for msg in messages:
                    if msg.error() is not None or msg.partition() != partition:
                        continue
                    last = msg.offset()
                    # Offsets before this message that we wanted no longer exist (compaction,
                    # retention): not replays we can see.
                    while i < len(wanted) and wanted[i] < last:
                        i += 1
                    if i < len(wanted) and wanted[i] == last:
                        if replayed_from(msg.headers()) is not None:
                            found.add(Position(topic, partition, last))
                        i += 1
                if i < len(wanted) and last >= 0 and wanted[i] - last > self._max_gap:
                    seek = True
        return found


@dataclass
class ReplayResult:
    stats: ReplayStats
    group_id: str
    stopped: str | None
    """``"max_records"``, ``"signal"``, or None when it read to the end."""
    report: str


class _StopRequested:
    """SIGINT/SIGTERM during a replay: finish (commit) the chunk in hand, then stop."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> Self:
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: no handler, default behaviour
                pass
        return self

    def _handle(self, signum: int, _frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        log.warning("stopping after the chunk in hand (signal %d again to abort it)", signum)

    def __exit__(self, *_exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def replay(
    settings: Settings,
    topology: Topology,
    *,
    flt: Filter,
    base_group: str,
    dry_run: bool = False,
    max_records: int | None = None,
    chunk: int = CHUNK_RECORDS,
) -> ReplayResult:
    """Replay the dead letters matching ``flt`` into the source topic, exactly once each."""
    from confluent_kafka import KafkaException, TopicPartition

    from pipeline.produce import new_producer

    dead_letter_topic = topology.spec.dead_letter.topic
    source_topic = topology.spec.source.topic
    group_id = replay_group_id(base_group, flt)
    dedupe_stage, dedupe_window, after_dedupe = stages_after_dedupe(topology)
    stats = ReplayStats()
    consumer = _consumer(settings, group_id)
    lookup_consumer = _consumer(
        settings, f"{group_id}-lookup", **{"isolation.level": "read_uncommitted"}
    )
    producer = None
    in_transaction = False
    stopped: str | None = None
    try:
        partitions = _partitions(consumer, dead_letter_topic, settings)
        _partitions(consumer, source_topic, settings)
        if not dry_run:
            producer = new_producer(
                settings,
                **_KAFKA_QUIET,
                **{
                    "transactional.id": transactional_id(group_id, dead_letter_topic),
                    "transaction.timeout.ms": 60_000,
                    "acks": "all",
                },
            )
            try:
                # Fences any earlier run of this replay still alive and completes its open
                # transaction, so the offsets read next are final.
                producer.init_transactions(30)
            except KafkaException as exc:
                raise PipelineError(
                    f"cannot start the replay transaction: {_kafka_message(exc)}"
                ) from None
        try:
            committed = consumer.committed(
                [TopicPartition(dead_letter_topic, p) for p in partitions], timeout=30
            )
        except KafkaException as exc:
            raise PipelineError(
                f"cannot read the committed offsets of {group_id}: {_kafka_message(exc)}"
            ) from None
        marks = _watermarks(consumer, dead_letter_topic, partitions)
        starts = {}
        for tp in committed:
            lo, _hi = marks[tp.partition]
            starts[tp.partition] = max(tp.offset, lo) if tp.offset >= 0 else lo
        ends = {p: hi for p, (_lo, hi) in marks.items()}
        lookup = SourceLookup(lookup_consumer)
        with _StopRequested() as stop:
            for batch in _read_range(consumer, dead_letter_topic, starts, ends, chunk=chunk):
                candidates = []
                for message in batch:
                    dead_letter = parse_dead_letter(message)
                    if dead_letter is not None and dead_letter.source and flt.matches(dead_letter):
                        candidates.append(dead_letter.source)
                budget = None if max_records is None else max_records - stats.replayed_total
                plan = plan_chunk(
                    batch,
                    flt=flt,
                    replayed_sources=lookup.replays(candidates),
                    stats=stats,
                    budget=budget,
                    stages_after_dedupe=after_dedupe,
                )
                if producer is not None and plan.offsets:
                    producer.begin_transaction()
                    in_transaction = True
                    for item in plan.replays:
                        _produce(producer, source_topic, item)
                    producer.send_offsets_to_transaction(
                        [TopicPartition(dead_letter_topic, p, o) for p, o in sorted(plan.offsets.items())],
                        consumer.consumer_group_metadata(),
                        30,
                    )
                    producer.commit_transaction(60)
                    in_transaction = False
                if plan.stopped:
                    stopped = "max_records"
                    break
                if stop.requested:
                    stopped = "signal"
                    break
    except KafkaException as exc:
        raise PipelineError(
            f"replay failed ({_kafka_message(exc)}); the chunk in hand was not committed: "
            "run the same command again to resume"
        ) from None
    finally:
        if producer is not None and in_transaction:
            try:
                producer.abort_transaction(30)
            except Exception:  # best effort: the broker times the transaction out anyway
                log.warning("could not abort the open replay transaction", exc_info=True)
        consumer.close()
        lookup_consumer.close()
    report = format_replay(
        stats,
        flt=flt,
        dead_letter_topic=dead_letter_topic,
        source_topic=source_topic,
        group_id=group_id,
        dry_run=dry_run,
        stopped=stopped,
        dedupe=(dedupe_stage, dedupe_window),
    )
    return ReplayResult(stats=stats, group_id=group_id, stopped=stopped, report=report)


def _produce(producer: Any, topic: str, item: Replay) -> None:
    while True:
        try:
            producer.produce(topic, item.value, item.key, headers=item.headers)
            return
        except BufferError:
            producer.poll(0.05)
