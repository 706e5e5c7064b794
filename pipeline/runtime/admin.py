"""The topics a topology needs, and creating them (confluent-kafka AdminClient).

Two kinds of topics:

* the topology's own (``planned_topics``): the source and every declared output topic, with
  their declared partitions, replication factor and configs;
* the worker's internal ones (``internal_topics``): a repartition topic per dedupe stage and the
  aggregates' partials topic. Their names depend on the consumer group and they must have the
  source topic's *real* partition count (Faust assigns their partition N with source partition
  N).

Faust creates its tables' changelog topics itself when the worker starts
(``changelog_topic_names`` only names them, for ``pipeline topics describe``).

This module does not import Faust: the CLI uses it (``pipeline produce``, ``pipeline topics``).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, ClusterMetadata, NewTopic

from pipeline.errors import BrokerUnavailable, PipelineError
from pipeline.settings import Settings
from pipeline.stages.aggregate import AggregateConfig
from pipeline.stages.dedupe import DedupeConfig
from pipeline.topology.model import Topology

log = logging.getLogger(__name__)

INTERNAL_TOPIC_CONFIG = {"retention.ms": str(7 * 86_400_000)}
"""Configs of the worker's internal topics: they only hold data in transit."""

# Roles, as ``pipeline topics`` shows them.
SOURCE = "source"
OUTPUT = "output"
DEAD_LETTERS = "dead letters"
REPARTITION = "repartition (internal)"
PARTIALS = "aggregate partials (internal)"
CHANGELOG = "changelog (Faust)"


@dataclass(frozen=True)
class TopicPlan:
    name: str
    partitions: int
    replication_factor: int
    config: dict[str, str]
    role: str = field(default="", compare=False)
    """What the topic is for (``SOURCE``, ``OUTPUT``, ...): for people, not for creating it."""


# ------------------------------------------------------------------ names


def group_id_for(topology: Topology, settings: Settings) -> str:
    """The worker's consumer group (and Faust app id): ``--group-id``, else
    ``pipeline-<topology name>``."""
    return settings.group_id or f"pipeline-{topology.name}"


def repartition_topic_name(group_id: str, stage_id: str) -> str:
    return f"{group_id}-{stage_id}-repartition"


def partials_topic_name(group_id: str) -> str:
    return f"{group_id}-aggregate-partials"


def _dedupe_stage_ids(topology: Topology) -> list[str]:
    return [
        stage.id
        for stage in topology.spec.stages
        if isinstance(topology.stage_configs.get(stage.id), DedupeConfig)
    ]


def _has_aggregates(topology: Topology) -> bool:
    return any(isinstance(c, AggregateConfig) for c in topology.stage_configs.values())


def internal_topic_names(topology: Topology, settings: Settings) -> list[str]:
    """The worker's own topics: a repartition topic per dedupe stage, and the aggregates'
    partials topic. They depend on the consumer group."""
    group_id = group_id_for(topology, settings)
    names = [repartition_topic_name(group_id, stage_id) for stage_id in _dedupe_stage_ids(topology)]
    if _has_aggregates(topology):
        names.append(partials_topic_name(group_id))
    return names


def changelog_topic_names(topology: Topology, settings: Settings) -> list[str]:
    """The changelog topics of the worker's Faust tables (``dedupe-<stage id>`` per dedupe stage,
    ``aggregates``): Faust creates them when the worker starts, named ``<app id>-<table>-changelog``."""
    group_id = group_id_for(topology, settings)
    tables = [f"dedupe-{stage_id}" for stage_id in _dedupe_stage_ids(topology)]
    if _has_aggregates(topology):
        tables.append("aggregates")
    return [f"{group_id}-{table}-changelog" for table in tables]


# ------------------------------------------------------------------ plans


def _stringify(config: dict[str, object]) -> dict[str, str]:
    return {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in config.items()}


def planned_topics(topology: Topology) -> list[TopicPlan]:
    """The source topic and every output topic, with their declared settings."""
    spec = topology.spec
    plans = [
        TopicPlan(spec.source.topic, spec.source.partitions, spec.source.replication_factor,
                  _stringify(spec.source.config), role=SOURCE)
    ]
    plans += [
        TopicPlan(name, t.partitions, t.replication_factor, _stringify(t.config),
                  role=DEAD_LETTERS if name == spec.dead_letter.topic else OUTPUT)
        for name, t in spec.topics.items()
    ]
    return plans


def internal_topics(topology: Topology, settings: Settings, *, partitions: int) -> list[TopicPlan]:
    """The worker's internal topics, given the source topic's real partition count."""
    group_id = group_id_for(topology, settings)
    partials = partials_topic_name(group_id)
    return [
        TopicPlan(
            name,
            partitions,
            topology.spec.source.replication_factor,
            dict(INTERNAL_TOPIC_CONFIG),
            role=PARTIALS if name == partials else REPARTITION,
        )
        for name in internal_topic_names(topology, settings)
    ]


def internal_partition_problem(plan: TopicPlan, existing_partitions: int) -> str | None:
    """Why the worker cannot use an existing internal topic (None when it can)."""
    if existing_partitions == plan.partitions:
        return None
    return (
        f"topic {plan.name} has {existing_partitions} partitions but the source has "
        f"{plan.partitions}: delete it (it only holds data in transit) or give the source its "
        "old count"
    )


# ------------------------------------------------------------------ Kafka


def admin_client(settings: Settings, **config: object) -> AdminClient:
    """An admin client for the settings' broker; ``config``: extra librdkafka settings (the
    ``PIPELINE_KAFKA_*`` ones win)."""
    return AdminClient(
        {"bootstrap.servers": settings.bootstrap_servers, **config, **settings.extra_kafka}
    )


class ClientLog:
    """librdkafka's log of a short-lived client, kept rather than printed.

    librdkafka logs every failed connection attempt, a few times a second, to stderr; the call
    that needed the broker fails anyway. Its error says little ("Broker transport failure"), the
    log says why (connection refused, SASL authentication failed, ...): ``reason()`` is the
    latest error, for the message. Given to the client as its ``logger``: librdkafka then
    queues its log and the client's ``poll()`` delivers it here."""

    _PREFIX = re.compile(r"^.*?\]: (?:\S+/\S+: )?")
    _STATE = re.compile(r" \(after \d+ms in state \w+\)$")

    def __init__(self) -> None:
        self.last_error: str | None = None

    def log(self, level: int, fmt: str, *args: object) -> None:
        text = fmt % args if args else fmt
        if level >= logging.ERROR:
            self.last_error = text
        log.debug("librdkafka: %s", text)

    def reason(self) -> str | None:
        """The latest error without librdkafka's prefixes: "Connect to ipv4#127.0.0.1:1
        failed: Connection refused", "SASL authentication error: ..."."""
        if self.last_error is None:
            return None
        return self._STATE.sub("", self._PREFIX.sub("", self.last_error, count=1)).strip()


def quiet_admin_client(settings: Settings) -> tuple[AdminClient, ClientLog]:
    """An admin client that prints nothing; its ``ClientLog`` explains a failure."""
    client_log = ClientLog()
    return admin_client(settings, logger=client_log), client_log


def kafka_message(exc: BaseException) -> str:
    """The text of a confluent-kafka error, on one line."""
    error = exc.args[0] if exc.args else exc
    text = error.str() if hasattr(error, "str") else str(error)
    return text.replace("\n", " ")


def cluster_metadata(
    admin: AdminClient, *, servers: str, timeout: float = 10.0, client_log: ClientLog | None = None
) -> ClusterMetadata:
    """Every topic's metadata. Lists every topic rather than asking for some (the broker could
    auto-create them). Raises ``BrokerUnavailable``, naming ``servers`` (and the reason, from
    ``client_log``), when the broker does not answer within ``timeout`` seconds."""
    try:
        return admin.list_topics(timeout=timeout)
    except KafkaException as exc:
        message = f"cannot reach Kafka at {servers}: {kafka_message(exc)}"
        if client_log is not None:
            admin.poll(0)  # delivers librdkafka's queued log to client_log
            reason = client_log.reason()
            if reason:
                message += f" ({reason})"
        raise BrokerUnavailable(message) from None


def committed_offsets(admin: AdminClient, group_id: str, *, timeout: float = 10.0) -> dict[tuple[str, int], int]:
    """The group's committed offsets, (topic, partition) → offset. Only reads them (OffsetFetch):
    joins no group. Raises ``PipelineError`` when they cannot be read."""
    from confluent_kafka import ConsumerGroupTopicPartitions

    try:
        futures = admin.list_consumer_group_offsets(
            [ConsumerGroupTopicPartitions(group_id)], request_timeout=timeout
        )
        result = futures[group_id].result(timeout=timeout + 5)
    except (KafkaException, TimeoutError) as exc:
        raise PipelineError(
            f"cannot read the committed offsets of group {group_id}: {kafka_message(exc)}"
        ) from None
    return {
        (tp.topic, tp.partition): tp.offset
        for tp in result.topic_partitions or ()
        if tp.error is None and tp.offset >= 0
    }


def existing_topics(
    admin: AdminClient, *, servers: str, timeout: float = 10.0, client_log: ClientLog | None = None
) -> dict[str, int]:
    """Topic name → partition count. Raises ``BrokerUnavailable`` when the broker does not answer."""
    metadata = cluster_metadata(admin, servers=servers, timeout=timeout, client_log=client_log)
    return {name: len(t.partitions) for name, t in metadata.topics.items() if not t.error}


@dataclass
class CreateResult:
    created: list[str] = field(default_factory=list)
    raced: list[str] = field(default_factory=list)
    """Created by another client meanwhile (e.g. a second worker starting)."""
    failed: dict[str, str] = field(default_factory=dict)
    """Topic → why it could not be created."""

    def raise_failures(self) -> None:
        if self.failed:
            raise PipelineError(
                "; ".join(f"cannot create topic {name}: {why}" for name, why in self.failed.items())
            )


def create_topics(admin: AdminClient, plans: list[TopicPlan], *, timeout: float = 30.0) -> CreateResult:
    """Create the topics as planned. A topic that exists by now counts as ``raced``."""
    result = CreateResult()
    if not plans:
        return result
    new = [
        NewTopic(p.name, num_partitions=p.partitions, replication_factor=p.replication_factor,
                 config=p.config)
        for p in plans
    ]
    for name, future in admin.create_topics(new, request_timeout=timeout).items():
        try:
            future.result(timeout=timeout + 5)
            result.created.append(name)
        except KafkaException as exc:
            error = exc.args[0]
            if isinstance(error, KafkaError) and error.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                result.raced.append(name)
            else:
                result.failed[name] = kafka_message(exc)
        except TimeoutError:
            result.failed[name] = f"no answer within {timeout + 5:.0f}s"
    return result


def ensure_topics(topology: Topology, settings: Settings, *, timeout: float = 30.0) -> list[str]:
    """Create the topology's missing topics. Returns the names created.

    Existing topics are left as they are (a smaller partition count than declared is logged:
    raising it would move keys between partitions and break per-key ordering).
    """
    admin, client_log = quiet_admin_client(settings)
    existing = existing_topics(admin, servers=settings.bootstrap_servers, client_log=client_log)
    missing = []
    for plan in planned_topics(topology):
        if plan.name in existing:
            if existing[plan.name] != plan.partitions:
                log.warning(
                    "topic %s has %d partitions, the topology declares %d; leaving it as it is",
                    plan.name, existing[plan.name], plan.partitions,
                )
            continue
        missing.append(plan)
    result = create_topics(admin, missing, timeout=timeout)
    for name in result.created:
        log.info("created topic %s", name)
    result.raise_failures()
    return result.created


def ensure_internal_topics(topology: Topology, settings: Settings) -> int:
    """Create the worker's own topics with the source's real partition count (Faust assigns
    partition N of each of them with source partition N). Returns that count."""
    admin, client_log = quiet_admin_client(settings)
    existing = existing_topics(admin, servers=settings.bootstrap_servers, client_log=client_log)
    partitions = existing.get(topology.spec.source.topic, topology.spec.source.partitions)
    plans = internal_topics(topology, settings, partitions=partitions)
    problems = [
        problem
        for plan in plans
        if plan.name in existing and (problem := internal_partition_problem(plan, existing[plan.name]))
    ]
    # The tables' changelogs (Faust creates them) are partitioned like the source too: with
    # fewer partitions every batch would fail ("Unknown partition") and the worker crash-loop.
    problems += [
        f"changelog topic {name} has {existing[name]} partitions but the source has "
        f"{partitions}: its state is partitioned by the old count; see docs/operations.md "
        "(partition counts) for resetting it"
        for name in changelog_topic_names(topology, settings)
        if name in existing and existing[name] != partitions
    ]
    if problems:
        raise PipelineError("; ".join(problems))
    result = create_topics(admin, [p for p in plans if p.name not in existing])
    for name in result.created:
        log.info("created internal topic %s", name)
    result.raise_failures()
    return partitions
