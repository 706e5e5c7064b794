"""``pipeline topics``: create, and describe, every topic a topology needs.

The topics are those the worker itself would create (``pipeline.runtime.admin``): the topology's
source and output topics as declared, and the worker's internal ones (a repartition topic per
dedupe stage, the aggregates' partials topic) with the source's real partition count. Faust
creates its tables' changelog topics when the worker starts; ``describe`` shows them too.

Two halves, like ``pipeline.dlq``:

* plain data (``TopicInfo``, ``PartitionInfo``, ``TopicsReport``), the comparison of declared
  and actual settings and the rendering, unit-tested with fake metadata;
* the Kafka glue (``create``, ``describe``): one admin client, every call bounded by
  ``timeout`` seconds, so an unreachable broker is a one-line error naming the bootstrap
  servers (``BrokerUnavailable``), never a hang.

Nothing here joins a consumer group or changes an existing topic: ``create`` reports, and warns
about, existing topics whose partitions, replication factor or configs differ from the
declared ones (raising partitions would move keys between partitions; configs are an
operator's call: ``kafka-configs.sh --alter``).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pipeline.errors import PipelineError
from pipeline.runtime.admin import (
    CHANGELOG,
    TopicPlan,
    changelog_topic_names,
    cluster_metadata,
    committed_offsets,
    create_topics,
    group_id_for,
    internal_partition_problem,
    internal_topic_names,
    internal_topics,
    kafka_message,
    planned_topics,
    quiet_admin_client,
)

if TYPE_CHECKING:
    from pipeline.settings import Settings
    from pipeline.topology.model import Topology

DEFAULT_TIMEOUT_S = 10.0
"""How long each request to the broker may take before the command gives up."""

# Statuses of ``create``.
CREATED = "created"
EXISTS = "exists"
WOULD_CREATE = "would create"
FAILED = "failed"
MISSING = "missing"


# ------------------------------------------------------------------ plain data


@dataclass(slots=True)
class PartitionInfo:
    partition: int
    leader: int = -1
    replicas: tuple[int, ...] = ()
    isr: tuple[int, ...] = ()
    low: int | None = None
    """Earliest offset (low watermark); None when it could not be read."""
    high: int | None = None
    """End offset (high watermark)."""
    committed: int | None = None
    """The worker group's committed offset; None when it has none here."""

    @property
    def messages(self) -> int | None:
        """An estimate: transaction markers and compaction gaps take offsets too."""
        if self.low is None or self.high is None:
            return None
        return max(0, self.high - self.low)

    @property
    def lag(self) -> int | None:
        if self.committed is None or self.high is None:
            return None
        return max(0, self.high - self.committed)

    @property
    def under_replicated(self) -> bool:
        return len(self.isr) < len(self.replicas)

    def to_json(self) -> dict[str, Any]:
        return {
            "partition": self.partition,
            "leader": self.leader,
            "replicas": list(self.replicas),
            "isr": list(self.isr),
            "low": self.low,
            "high": self.high,
            "messages": self.messages,
            "committed": self.committed,
            "lag": self.lag,
        }


def same_config_value(declared: str, actual: str | None) -> bool:
    """Whether a declared topic config and the broker's value mean the same (``604800000`` and
    ``604800000.0``, ``True`` and ``true``, ``compact,delete`` and ``delete, compact``)."""
    if actual is None:
        return False
    a, b = declared.strip(), actual.strip()
    if a == b or a.lower() == b.lower():
        return True
    try:
        return float(a) == float(b)
    except ValueError:
        pass
    if "," in a or "," in b:
        return {p.strip().lower() for p in a.split(",")} == {p.strip().lower() for p in b.split(",")}
    return False


@dataclass
class TopicInfo:
    """One topic the topology needs: what is declared and what the broker has."""

    name: str
    role: str
    plan: TopicPlan | None = None
    """What the topology (or, for internal topics, the worker) declares; None for Faust's
    changelog topics (Faust decides their settings)."""
    exists: bool = False
    partitions: list[PartitionInfo] = field(default_factory=list)
    configs: dict[str, str] | None = None
    """The broker's value of every topic config (None: not read)."""
    overrides: dict[str, str] = field(default_factory=dict)
    """Configs set on the topic itself (not broker or built-in defaults)."""
    status: str = ""
    """What ``create`` did: created / exists / would create / failed."""
    error: str | None = None
    problem: str | None = None
    """Why the worker would refuse this topic (an internal topic with the wrong partition
    count): an error, not a warning."""

    @property
    def created_by(self) -> str:
        return "faust" if self.plan is None else "pipeline"

    @property
    def partition_count(self) -> int | None:
        return len(self.partitions) if self.exists else None

    @property
    def replication_factor(self) -> int | None:
        if not self.exists or not self.partitions:
            return None
        return max(len(p.replicas) for p in self.partitions)

    @property
    def messages(self) -> int | None:
        counts = [p.messages for p in self.partitions]
        if not counts or any(c is None for c in counts):
            return None
        return sum(c for c in counts if c is not None)

    @property
    def consumed(self) -> bool:
        """Whether the worker group committed offsets on this topic."""
        return any(p.committed is not None for p in self.partitions)

    def partition_lag(self, partition: PartitionInfo) -> int | None:
        """The group's lag on a partition. On a topic the group consumes, a partition without
        a committed offset lags by all it holds (the worker starts at the earliest offset)."""
        if partition.committed is None and self.consumed:
            return partition.messages
        return partition.lag

    @property
    def lag(self) -> int | None:
        """The worker group's lag on this topic; None when it committed nothing here."""
        if not self.consumed:
            return None
        lags = [self.partition_lag(p) for p in self.partitions]
        return sum(lag for lag in lags if lag is not None)

    def config_rows(self) -> list[tuple[str, str, str | None, bool]]:
        """(key, declared, on the broker or None, same) for every declared config."""
        if self.plan is None or self.configs is None:
            return []
        rows = []
        for key, declared in sorted(self.plan.config.items()):
            actual = self.configs.get(key)
            rows.append((key, declared, actual, same_config_value(declared, actual)))
        return rows

    def warnings(self) -> list[str]:
        """What differs from the declared settings (existing topics only)."""
        if not self.exists or self.plan is None or self.status == CREATED:
            return []
        found = []
        plan = self.plan
        count = self.partition_count
        if count != plan.partitions and self.problem is None:
            found.append(
                f"topic {self.name} has {count} partitions, the topology declares "
                f"{plan.partitions}; left as it is (more partitions would move keys between "
                "partitions and break per-key order)"
            )
        rf = self.replication_factor
        if rf is not None and rf != plan.replication_factor:
            found.append(
                f"topic {self.name} has replication factor {rf}, the topology declares "
                f"{plan.replication_factor}"
            )
        for key, declared, actual, same in self.config_rows():
            if not same:
                found.append(
                    f"topic {self.name}: {key} is {actual if actual is not None else 'not set'} "
                    f"on the broker, the topology declares {declared}; not changed (use "
                    "kafka-configs.sh --alter)"
                )
        under = [p.partition for p in self.partitions if p.under_replicated]
        if under:
            found.append(f"topic {self.name}: partitions {under} are under-replicated")
        return found

    def to_json(self) -> dict[str, Any]:
        plan = self.plan
        return {
            "name": self.name,
            "role": self.role,
            "created_by": self.created_by,
            "status": self.status or None,
            "exists": self.exists,
            "declared": None if plan is None else {
                "partitions": plan.partitions,
                "replication_factor": plan.replication_factor,
                "config": dict(plan.config),
            },
            "partitions": self.partition_count,
            "replication_factor": self.replication_factor,
            "configs": {
                key: {"declared": declared, "actual": actual, "same": same}
                for key, declared, actual, same in self.config_rows()
            },
            "overrides": dict(self.overrides),
            "messages": self.messages,
            "lag": self.lag,
            "partition_offsets": [
                {**p.to_json(), "lag": self.partition_lag(p)} for p in self.partitions
            ],
            "error": self.error,
            "problem": self.problem,
            "warnings": self.warnings(),
        }


@dataclass
class TopicsReport:
    topology: str
    bootstrap_servers: str
    group_id: str
    topics: list[TopicInfo]
    dry_run: bool = False
    offsets: bool = True
    """Whether offsets (watermarks, the group's commits) were read."""
    group_offsets: bool | None = None
    """Whether the worker group has committed offsets (None: not asked)."""
    notes: list[str] = field(default_factory=list)
    """Things that could not be read (offsets, configs), in a line each."""

    @property
    def managed(self) -> list[TopicInfo]:
        """The topics ``pipeline topics create`` creates."""
        return [t for t in self.topics if t.plan is not None]

    @property
    def changelogs(self) -> list[TopicInfo]:
        return [t for t in self.topics if t.plan is None]

    def warnings(self) -> list[str]:
        return [w for t in self.topics for w in t.warnings()]

    def problems(self) -> list[str]:
        """Errors: topics that could not be created, internal topics the worker would refuse."""
        found = [f"cannot create topic {t.name}: {t.error}" for t in self.topics if t.error]
        return found + [t.problem for t in self.topics if t.problem]

    def to_json(self) -> dict[str, Any]:
        return {
            "topology": self.topology,
            "bootstrap_servers": self.bootstrap_servers,
            "group_id": self.group_id,
            "dry_run": self.dry_run,
            "offsets_read": self.offsets,
            "group_has_offsets": self.group_offsets,
            "topics": [t.to_json() for t in self.topics],
            "warnings": self.warnings(),
            "problems": self.problems(),
            "notes": list(self.notes),
        }


# ------------------------------------------------------------------ rendering


def render_table(
    headers: Sequence[str], rows: Iterable[Sequence[object]], *, right: Iterable[int] = ()
) -> list[str]:
    """Plain-text columns; ``right``: indexes of right-aligned (numeric) columns."""
    body = [["-" if v is None else str(v) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in body:
        widths = [max(w, len(v)) for w, v in zip(widths, row, strict=True)]
    right = set(right)

    def line(values: Sequence[str]) -> str:
        cells = [
            v.rjust(w) if i in right else v.ljust(w)
            for i, (v, w) in enumerate(zip(values, widths, strict=True))
        ]
        return "  ".join(cells).rstrip()

    return [line(list(headers)), *(line(r) for r in body)]


def _status(topic: TopicInfo) -> str:
    """The summary table's last column."""
    if not topic.exists:
        if topic.plan is None:
            return "MISSING: Faust creates it when the worker starts"
        return "MISSING: pipeline topics create"
    if topic.problem:
        return "PROBLEM: see below"
    if topic.plan is None:
        return ", ".join(["ok", *(f"{k}={v}" for k, v in sorted(topic.overrides.items()))])
    if topic.warnings():
        return "DIFFERS: see warnings"
    if topic.configs is None and topic.plan.config:
        return "ok (configs not read)"
    return "ok"


def format_describe(report: TopicsReport) -> str:
    heading = (
        f"topology {report.topology}: {len(report.topics)} topics on {report.bootstrap_servers}, "
        f"worker group {report.group_id}"
    )
    lines = [heading, ""]
    rows = []
    for t in report.topics:
        row = [t.name, t.role, t.partition_count, t.replication_factor, t.messages, t.lag,
               _status(t)]
        rows.append(row if report.offsets else row[:4] + row[6:])
    headers = ["TOPIC", "ROLE", "PARTITIONS", "RF", "~MESSAGES", "GROUP LAG", "STATUS"]
    if not report.offsets:
        headers = headers[:4] + headers[6:]
    lines += render_table(headers, rows, right=range(2, len(headers) - 1))
    config_rows = [
        (t.name, key, declared, actual, "" if same else "DIFFERS")
        for t in report.topics
        for key, declared, actual, same in t.config_rows()
    ]
    if config_rows:
        lines += ["", "declared configs:"]
        lines += ["  " + line for line in render_table(
            ["TOPIC", "CONFIG", "DECLARED", "ON THE BROKER", ""], config_rows)]
    partition_rows = [
        (t.name, p.partition, p.low, p.high, p.messages, p.committed, t.partition_lag(p), p.leader,
         ",".join(map(str, p.isr)) + (" (under-replicated)" if p.under_replicated else ""))
        for t in report.topics
        for p in t.partitions
    ]
    if partition_rows and report.offsets:
        lines += ["", f"partitions (committed: by group {report.group_id}):"]
        lines += ["  " + line for line in render_table(
            ["TOPIC", "P", "LOW", "HIGH", "~MESSAGES", "COMMITTED", "LAG", "LEADER", "ISR"],
            partition_rows, right=(1, 2, 3, 4, 5, 6, 7),
        )]
    if report.offsets:
        lines += [
            "", "~messages: high - low offset (transaction markers and compaction gaps count too)"
        ]
    if report.group_offsets is False:
        lines.append(f"group {report.group_id} has committed no offsets (has a worker run yet?)")
    lines += [f"note: {n}" for n in report.notes]
    lines += [f"warning: {w}" for w in report.warnings()]
    lines += [f"problem: {p}" for p in report.problems()]
    return "\n".join(lines)


def format_create(report: TopicsReport) -> str:
    verb = "would create" if report.dry_run else "created"
    heading = (
        f"topology {report.topology} on {report.bootstrap_servers} (worker group "
        f"{report.group_id}){': dry run, nothing created' if report.dry_run else ''}:"
    )
    lines = [heading]
    rows = []
    for t in report.managed:
        plan = t.plan
        assert plan is not None
        config = ", ".join(f"{k}={v}" for k, v in sorted(plan.config.items()))
        # An existing topic shows what it has (a warning says where that differs from the plan).
        partitions = t.partition_count if t.exists else plan.partitions
        replication = t.replication_factor if t.exists else plan.replication_factor
        rows.append((t.status, t.name, t.role, partitions, replication, config))
    lines += ["  " + line for line in render_table(
        ["STATUS", "TOPIC", "ROLE", "PARTITIONS", "RF", "DECLARED CONFIGS"], rows, right=(3, 4))]
    changed = sum(1 for t in report.managed if t.status in (CREATED, WOULD_CREATE))
    existed = sum(1 for t in report.managed if t.status == EXISTS)
    lines.append(f"{changed} {verb}, {existed} already existed")
    if report.changelogs:
        lines.append(
            "Faust creates the tables' changelog topics when the worker starts: "
            + ", ".join(t.name for t in report.changelogs)
        )
    lines += [f"warning: {w}" for w in report.warnings()]
    return "\n".join(lines)


# ------------------------------------------------------------------ Kafka glue


def _partitions_from(metadata: Any) -> list[PartitionInfo]:
    return [
        PartitionInfo(p.id, p.leader, tuple(p.replicas), tuple(p.isrs))
        for p in sorted(metadata.partitions.values(), key=lambda p: p.id)
    ]


def _plans(topology: Topology, settings: Settings, existing: dict[str, int]) -> list[TopicPlan]:
    """What the worker would create: the declared topics and its internal ones (with the source's
    real partition count, the declared one until the source exists)."""
    source = topology.spec.source
    partitions = existing.get(source.topic, source.partitions)
    return planned_topics(topology) + internal_topics(topology, settings, partitions=partitions)


def _infos(topology: Topology, settings: Settings, metadata: Any, *, changelogs: bool) -> list[TopicInfo]:
    topics = {name: t for name, t in metadata.topics.items() if not t.error}
    existing = {name: len(t.partitions) for name, t in topics.items()}
    infos = [TopicInfo(plan.name, plan.role, plan) for plan in _plans(topology, settings, existing)]
    if changelogs:
        infos += [TopicInfo(name, CHANGELOG) for name in changelog_topic_names(topology, settings)]
    internal = set(internal_topic_names(topology, settings))
    for info in infos:
        if info.name in topics:
            info.exists = True
            info.partitions = _partitions_from(topics[info.name])
            if info.plan is not None and info.name in internal:
                info.problem = internal_partition_problem(info.plan, len(info.partitions))
    return infos


def _fetch_configs(admin: Any, infos: list[TopicInfo], *, timeout: float, notes: list[str]) -> None:
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import ConfigResource, ConfigSource, ResourceType

    wanted = {info.name: info for info in infos if info.exists}
    if not wanted:
        return
    futures = admin.describe_configs(
        [ConfigResource(ResourceType.TOPIC, name) for name in wanted], request_timeout=timeout
    )
    for resource, future in futures.items():
        info = wanted[resource.name]
        try:
            entries = future.result(timeout=timeout + 5)
        except (KafkaException, TimeoutError) as exc:
            notes.append(f"cannot read the configs of {info.name}: {kafka_message(exc)}")
            continue
        info.configs = {name: entry.value for name, entry in entries.items()}
        info.overrides = {
            name: entry.value
            for name, entry in entries.items()
            if getattr(entry.source, "value", entry.source) == ConfigSource.DYNAMIC_TOPIC_CONFIG.value
            and not entry.is_sensitive
        }


def _fetch_watermarks(admin: Any, infos: list[TopicInfo], *, timeout: float, notes: list[str]) -> None:
    """Low and high watermarks of every partition, in two requests (retried while a partition of
    a topic created a moment ago has no leader yet, within ``timeout``)."""
    from confluent_kafka import KafkaException, TopicPartition
    from confluent_kafka.admin import OffsetSpec

    partitions = {(i.name, p.partition): p for i in infos for p in i.partitions}
    deadline = time.monotonic() + timeout
    errors: dict[tuple[str, int], str] = {}
    for attempt in range(100):
        pending = [key for key, p in partitions.items() if p.low is None or p.high is None]
        if not pending:
            return
        errors = {}
        for spec, attr in ((OffsetSpec.earliest(), "low"), (OffsetSpec.latest(), "high")):
            request = {TopicPartition(t, p): spec for t, p in pending}
            remaining = max(1.0, deadline - time.monotonic())
            try:
                futures = admin.list_offsets(request, request_timeout=remaining)
            except KafkaException as exc:
                errors[pending[0]] = kafka_message(exc)
                break
            for tp, future in futures.items():
                key = (tp.topic, tp.partition)
                try:
                    setattr(partitions[key], attr, future.result(timeout=remaining + 5).offset)
                except (KafkaException, TimeoutError) as exc:
                    errors[key] = kafka_message(exc)
        if not errors or time.monotonic() >= deadline:
            break
        time.sleep(min(0.5 * (attempt + 1), 2.0))
    if errors:
        (topic, partition), why = next(iter(sorted(errors.items())))
        notes.append(
            f"cannot read the offsets of {len(errors)} partition(s), e.g. {topic}/{partition}: {why}"
        )


def _fetch_committed(admin: Any, group_id: str, infos: list[TopicInfo], *, timeout: float,
                     notes: list[str]) -> bool | None:
    """Fill in the group's committed offsets; whether it has any (None: could not be read).
    Only reads them (OffsetFetch): joins no group."""
    try:
        offsets = committed_offsets(admin, group_id, timeout=timeout)
    except PipelineError as exc:
        notes.append(str(exc))
        return None
    partitions = {(i.name, p.partition): p for i in infos for p in i.partitions}
    for key, offset in offsets.items():
        partition = partitions.get(key)
        if partition is not None:
            partition.committed = offset
    return bool(offsets)


def _start(settings: Settings, topology: Topology, timeout: float) -> tuple[Any, Any, str]:
    if timeout <= 0:
        raise PipelineError("--timeout must be more than 0 seconds")
    admin, client_log = quiet_admin_client(settings)
    metadata = cluster_metadata(
        admin, servers=settings.bootstrap_servers, timeout=timeout, client_log=client_log
    )
    return admin, metadata, group_id_for(topology, settings)


def describe(
    settings: Settings, topology: Topology, *, timeout: float = DEFAULT_TIMEOUT_S,
    offsets: bool = True,
) -> TopicsReport:
    """Every topic the topology needs (Faust's changelogs included): does it exist, its
    partitions, replication, declared vs actual configs, watermarks and the worker group's
    committed offsets (``offsets``)."""
    admin, metadata, group_id = _start(settings, topology, timeout)
    report = TopicsReport(
        topology.name, settings.bootstrap_servers, group_id,
        _infos(topology, settings, metadata, changelogs=True), offsets=offsets,
    )
    _fetch_configs(admin, report.topics, timeout=timeout, notes=report.notes)
    if offsets:
        _fetch_watermarks(admin, report.topics, timeout=timeout, notes=report.notes)
        report.group_offsets = _fetch_committed(
            admin, group_id, report.topics, timeout=timeout, notes=report.notes
        )
    return report


def create(
    settings: Settings, topology: Topology, *, dry_run: bool = False,
    timeout: float = DEFAULT_TIMEOUT_S,
) -> TopicsReport:
    """Create every missing topic the topology needs (the worker's internal ones included) and
    report each: created, exists (with warnings where it differs from the declared settings),
    would create (``dry_run``) or failed. Existing topics are never changed."""
    admin, metadata, group_id = _start(settings, topology, timeout)
    infos = _infos(topology, settings, metadata, changelogs=True)
    report = TopicsReport(
        topology.name, settings.bootstrap_servers, group_id, infos, dry_run=dry_run, offsets=False
    )
    managed = report.managed
    for info in managed:
        info.status = EXISTS if info.exists else (WOULD_CREATE if dry_run else MISSING)
    _fetch_configs(admin, [i for i in managed if i.exists], timeout=timeout, notes=report.notes)
    missing = [i for i in managed if i.status == MISSING]
    if missing:
        result = create_topics(admin, [i.plan for i in missing if i.plan is not None], timeout=timeout)
        for info in missing:
            if info.name in result.created:
                info.status = CREATED
            elif info.name in result.raced:
                info.status = EXISTS  # another client created it meanwhile
            else:
                info.status = FAILED
                info.error = result.failed.get(info.name, "no answer")
    return report
