"""``pipeline reset``: move the worker group's source offsets, and forget its state (``--state``).

What ``kafka-consumer-groups.sh --reset-offsets`` does for a plain consumer, for a worker group,
which also owns internal topics, changelogs and local state:

* ``--to earliest | latest | <ISO-8601 time>``: where the group resumes on every source
  partition (for a time: the first record at or after it; the end of a partition that has none).
* ``--state``: delete the group's internal topics (repartition, aggregate partials) and Faust's
  changelog topics (the group's offsets on them go with them; Kafka drops the offsets of deleted
  partitions), and the local state directory ``<data dir>/<group>`` on this host. The next
  worker starts with empty dedupe and aggregate tables and creates the topics again.

Safe by default: a dry run unless ``--execute``, and refused while any member of the group is
running. A running worker would overwrite the offsets with its next commit and keep its state in
memory (the broker itself refuses to change the offsets of a group that is not empty).

Local state lives on every host that ran a worker (a Kubernetes pod's volume, a compose volume):
this command can only delete the one it sees, so the output says where the others are. A worker
that starts with a RocksDB directory that outlived its changelog fails its recovery (measured:
Faust's ``ConsistencyError``, "the persisted offset ... is higher than the last offset in that
topic") and processes nothing until the directory is deleted.

Two halves, like ``pipeline.topics``: plain data (``ResetPlan``, parsing, rendering), unit-tested,
and the Kafka glue (``plan_reset``, ``execute``), tested against the real broker.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.dlq import parse_time
from pipeline.errors import PipelineError
from pipeline.runtime.admin import (
    changelog_topic_names,
    cluster_metadata,
    committed_offsets,
    group_id_for,
    internal_topic_names,
    kafka_message,
    quiet_admin_client,
)
from pipeline.stages.dedupe import DedupeConfig

if TYPE_CHECKING:
    from pipeline.settings import Settings
    from pipeline.topology.model import Topology

EARLIEST = "earliest"
LATEST = "latest"
DEFAULT_TIMEOUT_S = 30.0


# ------------------------------------------------------------------ plain data


def parse_target(text: str) -> str | int:
    """``earliest``, ``latest``, or a time as epoch milliseconds: ISO-8601 (UTC when it names no
    time zone) or epoch milliseconds, as ``pipeline dlq --since`` takes it."""
    value = text.strip()
    if value.lower() in (EARLIEST, LATEST):
        return value.lower()
    try:
        return parse_time(value)
    except PipelineError as exc:
        raise PipelineError(f"--to: expected earliest, latest or a time: {exc}") from None


def describe_target(target: str | int | None) -> str:
    if target is None:
        return "unchanged"
    if isinstance(target, int):
        return datetime.fromtimestamp(target / 1000, tz=timezone.utc).isoformat(timespec="milliseconds")
    return target


@dataclass(slots=True)
class PartitionMove:
    partition: int
    committed: int | None
    """The group's committed offset now; None when it has none (it would start at the earliest)."""
    new: int | None
    """Where the group resumes after the reset; None: left as it is."""

    def to_json(self) -> dict[str, Any]:
        return {"partition": self.partition, "committed": self.committed, "new": self.new}


@dataclass
class ResetPlan:
    topology: str
    servers: str
    group_id: str
    source: str
    target: str | int | None
    """Where the source offsets go (``--to``); None: not moved."""
    state: bool
    moves: list[PartitionMove] = field(default_factory=list)
    topics_to_delete: list[str] = field(default_factory=list)
    """The group's internal and changelog topics that exist (``--state``)."""
    local_state: Path | None = None
    """This host's state directory of the group (``--state``), when it exists."""
    members: list[str] = field(default_factory=list)
    """The group's running members (client id @ host): the reset is refused while there are any."""
    group_state: str = ""
    dedupe_window_s: float | None = None
    """The longest dedupe window, when the source is rewound without ``--state``."""
    executed: bool = False

    def problems(self) -> list[str]:
        problems = []
        if self.members:
            problems.append(
                f"group {self.group_id} has {len(self.members)} running member(s) "
                f"({', '.join(self.members)}): stop every worker of the group first"
            )
        if self.target is not None and not self.moves:
            problems.append(f"the source topic {self.source} does not exist")
        return problems

    def warnings(self) -> list[str]:
        warnings = []
        rewinds = any(
            m.new is not None and (m.committed is None or m.new < m.committed) for m in self.moves
        )
        if rewinds and not self.state and self.dedupe_window_s:
            warnings.append(
                "the dedupe state is kept: replayed events first seen less than "
                f"{self.dedupe_window_s:g} s ago are dropped as duplicates (add --state to "
                "process them again)"
            )
        if self.state:
            warnings.append(
                f"local state is per host: delete <data dir>/{self.group_id} on every other host "
                "that ran a worker of this group with the rocksdb store (a pod's or container's "
                "volume); a worker that keeps it fails its recovery (Faust's ConsistencyError: "
                "persisted offset higher than the changelog's end) and processes nothing"
            )
        return warnings

    def to_json(self) -> dict[str, Any]:
        return {
            "topology": self.topology,
            "servers": self.servers,
            "group_id": self.group_id,
            "group_state": self.group_state,
            "members": self.members,
            "source": self.source,
            "to": describe_target(self.target),
            "partitions": [m.to_json() for m in self.moves],
            "state": self.state,
            "topics_to_delete": self.topics_to_delete,
            "local_state": str(self.local_state) if self.local_state else None,
            "executed": self.executed,
            "problems": self.problems(),
            "warnings": self.warnings(),
        }


def format_plan(plan: ResetPlan) -> str:
    done = plan.executed
    lines = [f"group {plan.group_id} ({plan.group_state or 'unknown state'}) on {plan.servers}"]
    if plan.target is not None:
        lines.append(f"source {plan.source}: {'moved' if done else 'move'} to {describe_target(plan.target)}")
        lines.append("  partition  committed  new")
        for move in plan.moves:
            committed = "-" if move.committed is None else str(move.committed)
            lines.append(f"  {move.partition:>9}  {committed:>9}  {move.new if move.new is not None else '-'}")
    if plan.state:
        verb = "deleted" if done else "delete"
        if plan.topics_to_delete:
            lines.append(f"state: {verb} {len(plan.topics_to_delete)} topic(s):")
            lines += [f"  {name}" for name in plan.topics_to_delete]
        else:
            lines.append("state: none of the group's internal or changelog topics exists")
        if plan.local_state is not None:
            lines.append(f"local state: {verb} {plan.local_state}")
        else:
            lines.append("local state: none on this host")
    lines += [f"warning: {w}" for w in plan.warnings()]
    lines += [f"refused: {p}" for p in plan.problems()]
    if not done:
        lines.append("dry run: nothing changed (add --execute to apply)")
    return "\n".join(lines)


# ------------------------------------------------------------------ Kafka glue


def _group_members(admin: Any, group_id: str, *, timeout: float) -> tuple[str, list[str]]:
    """The group's state and its members (``client id @ host``)."""
    from confluent_kafka import KafkaException

    deadline = time.monotonic() + timeout
    for attempt in range(1, 4):
        try:
            futures = admin.describe_consumer_groups([group_id], request_timeout=timeout)
            description = futures[group_id].result(timeout=timeout + 5)
            break
        except (KafkaException, TimeoutError) as exc:
            # Seen once, on a busy broker: a first describe failing with an empty message.
            if attempt == 3 or time.monotonic() >= deadline:
                raise PipelineError(f"cannot describe group {group_id}: {kafka_message(exc)}") from None
            time.sleep(0.5 * attempt)
    members = [f"{m.client_id}@{m.host}" for m in description.members or ()]
    return description.state.name.lower(), members


def _target_offsets(admin: Any, topic: str, partitions: list[int], target: str | int, *,
                    timeout: float) -> dict[int, int]:
    """Each partition's offset for ``target``: its low or high watermark, or the first record at
    or after a time (its high watermark when it has none that late)."""
    from confluent_kafka import KafkaException, TopicPartition
    from confluent_kafka.admin import OffsetSpec

    def list_offsets(spec: Any) -> dict[int, int]:
        request = {TopicPartition(topic, p): spec for p in partitions}
        try:
            futures = admin.list_offsets(request, request_timeout=timeout)
            return {tp.partition: f.result(timeout=timeout + 5).offset for tp, f in futures.items()}
        except (KafkaException, TimeoutError) as exc:
            raise PipelineError(f"cannot read the offsets of {topic}: {kafka_message(exc)}") from None

    if target == EARLIEST:
        return list_offsets(OffsetSpec.earliest())
    ends = list_offsets(OffsetSpec.latest())
    if target == LATEST:
        return ends
    at = list_offsets(OffsetSpec.for_timestamp(int(target)))
    return {p: offset if offset >= 0 else ends[p] for p, offset in at.items()}


def plan_reset(
    settings: Settings, topology: Topology, *, target: str | int | None, state: bool,
    timeout: float = DEFAULT_TIMEOUT_S,
) -> ResetPlan:
    """What ``execute`` would do, read from the broker; changes nothing."""
    if target is None and not state:
        raise PipelineError("nothing to reset: give --to, --state or both")
    if timeout <= 0:
        raise PipelineError("--timeout must be more than 0 seconds")
    admin, client_log = quiet_admin_client(settings)
    metadata = cluster_metadata(
        admin, servers=settings.bootstrap_servers, timeout=timeout, client_log=client_log
    )
    group_id = group_id_for(topology, settings)
    source = topology.spec.source.topic
    plan = ResetPlan(topology.name, settings.bootstrap_servers, group_id, source, target, state)
    plan.group_state, plan.members = _group_members(admin, group_id, timeout=timeout)
    topics = {name: t for name, t in metadata.topics.items() if not t.error}
    if source in topics:
        partitions = sorted(topics[source].partitions)
        committed = committed_offsets(admin, group_id, timeout=timeout)
        new: dict[int, int] = {}
        if target is not None:
            new = _target_offsets(admin, source, partitions, target, timeout=timeout)
        plan.moves = [PartitionMove(p, committed.get((source, p)), new.get(p)) for p in partitions]
    if state:
        names = internal_topic_names(topology, settings) + changelog_topic_names(topology, settings)
        plan.topics_to_delete = [name for name in names if name in topics]
        local = settings.data_dir / group_id
        plan.local_state = local if local.exists() else None
    else:
        windows = [c.window for c in topology.stage_configs.values() if isinstance(c, DedupeConfig)]
        plan.dedupe_window_s = max(windows, default=None)
    return plan


def execute(settings: Settings, plan: ResetPlan, *, timeout: float = DEFAULT_TIMEOUT_S) -> None:
    """Apply a plan from ``plan_reset``: delete the state (``plan.state``), then move the source
    offsets. Refused (``PipelineError``) if the group has running members, checked again now."""
    problems = plan.problems()
    if problems:
        raise PipelineError("; ".join(problems))
    admin, _ = quiet_admin_client(settings)
    _, members = _group_members(admin, plan.group_id, timeout=timeout)
    if members:
        plan.members = members
        raise PipelineError("; ".join(plan.problems()))
    if plan.state:
        _delete_topics(admin, plan.topics_to_delete, settings=settings, timeout=timeout)
        # The group's offsets on the deleted topics go too (the whole group: the source's are
        # written back below), so the recreated topics are read from their beginning.
        _delete_group(admin, plan.group_id, timeout=timeout)
        if plan.local_state is not None:
            shutil.rmtree(plan.local_state)
    _move_offsets(admin, plan, timeout=timeout)
    plan.executed = True


def _delete_group(admin: Any, group_id: str, *, timeout: float) -> None:
    from confluent_kafka import KafkaError, KafkaException

    try:
        admin.delete_consumer_groups([group_id], request_timeout=timeout)[group_id].result(timeout=timeout + 5)
    except KafkaException as exc:
        if exc.args and exc.args[0].code() == KafkaError.GROUP_ID_NOT_FOUND:
            return  # it never committed anything
        raise PipelineError(f"cannot delete the offsets of group {group_id}: {kafka_message(exc)}") from None
    except TimeoutError:
        raise PipelineError(f"cannot delete the offsets of group {group_id}: no answer in {timeout:g} s") from None


def _delete_topics(admin: Any, names: list[str], *, settings: Settings, timeout: float) -> None:
    """Delete the topics and wait until the broker no longer lists them (a worker started at once
    could otherwise find them still there, or fail to create them while they are marked for
    deletion)."""
    from confluent_kafka import KafkaError, KafkaException

    if not names:
        return
    futures = admin.delete_topics(names, operation_timeout=timeout, request_timeout=timeout)
    for name, future in futures.items():
        try:
            future.result(timeout=timeout + 5)
        except KafkaException as exc:
            if exc.args and exc.args[0].code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
                continue  # gone already
            raise PipelineError(f"cannot delete topic {name}: {kafka_message(exc)}") from None
        except TimeoutError:
            raise PipelineError(f"cannot delete topic {name}: no answer in {timeout:g} s") from None
    deadline = time.monotonic() + timeout
    while True:
        listed = cluster_metadata(admin, servers=settings.bootstrap_servers, timeout=timeout).topics
        left = [name for name in names if name in listed]
        if not left:
            return
        if time.monotonic() >= deadline:
            raise PipelineError(f"topics still listed {timeout:g} s after their deletion: {', '.join(left)}")
        time.sleep(0.2)


def _move_offsets(admin: Any, plan: ResetPlan, *, timeout: float) -> None:
    from confluent_kafka import ConsumerGroupTopicPartitions, KafkaException, TopicPartition

    # The new offsets; with --state alone, the committed ones written back after the group's
    # deletion.
    offsets = [
        TopicPartition(plan.source, m.partition, m.new if m.new is not None else m.committed)
        for m in plan.moves
        if m.new is not None or (plan.state and m.committed is not None)
    ]
    if not offsets:
        return
    request = ConsumerGroupTopicPartitions(plan.group_id, offsets)
    try:
        futures = admin.alter_consumer_group_offsets([request], request_timeout=timeout)
        result = futures[plan.group_id].result(timeout=timeout + 5)
    except (KafkaException, TimeoutError) as exc:
        raise PipelineError(
            f"cannot move the offsets of group {plan.group_id}: {kafka_message(exc)}"
        ) from None
    failed = [f"{tp.partition}: {tp.error.str()}" for tp in result.topic_partitions or () if tp.error]
    if failed:
        raise PipelineError(f"cannot move the offsets of {plan.source} partitions {'; '.join(failed)}")
