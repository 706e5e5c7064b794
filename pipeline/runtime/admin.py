"""Create the topics a topology declares (confluent-kafka AdminClient)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from pipeline.errors import BrokerUnavailable, PipelineError
from pipeline.settings import Settings
from pipeline.topology.model import Topology

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TopicPlan:
    name: str
    partitions: int
    replication_factor: int
    config: dict[str, str]


def planned_topics(topology: Topology) -> list[TopicPlan]:
    """The source topic and every output topic, with their declared settings."""
    spec = topology.spec

    def stringify(config: dict[str, object]) -> dict[str, str]:
        return {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in config.items()}

    plans = [
        TopicPlan(spec.source.topic, spec.source.partitions, spec.source.replication_factor,
                  stringify(spec.source.config))
    ]
    plans += [
        TopicPlan(name, t.partitions, t.replication_factor, stringify(t.config))
        for name, t in spec.topics.items()
    ]
    return plans


def admin_client(settings: Settings) -> AdminClient:
    return AdminClient({"bootstrap.servers": settings.bootstrap_servers, **settings.extra_kafka})


def existing_topics(admin: AdminClient, *, timeout: float = 10.0) -> dict[str, int]:
    """Topic name → partition count. Raises ``BrokerUnavailable`` when the broker does not answer."""
    try:
        metadata = admin.list_topics(timeout=timeout)
    except KafkaException as exc:
        raise BrokerUnavailable(f"cannot reach Kafka: {exc.args[0]}") from None
    return {name: len(t.partitions) for name, t in metadata.topics.items() if not t.error}


def ensure_topics(topology: Topology, settings: Settings, *, timeout: float = 30.0) -> list[str]:
    """Create the topology's missing topics. Returns the names created.

    Existing topics are left as they are (a smaller partition count than declared is logged:
    raising it would move keys between partitions and break per-key ordering).
    """
    admin = admin_client(settings)
    existing = existing_topics(admin)
    missing = []
    for plan in planned_topics(topology):
        if plan.name in existing:
            if existing[plan.name] != plan.partitions:
                log.warning(
                    "topic %s has %d partitions, the topology declares %d; leaving it as it is",
                    plan.name, existing[plan.name], plan.partitions,
                )
            continue
        missing.append(
            NewTopic(plan.name, num_partitions=plan.partitions,
                     replication_factor=plan.replication_factor, config=plan.config)
        )
    if not missing:
        return []
    created = []
    for name, future in admin.create_topics(missing, request_timeout=timeout).items():
        try:
            future.result(timeout=timeout)
            created.append(name)
            log.info("created topic %s", name)
        except KafkaException as exc:
            error = exc.args[0]
            if isinstance(error, KafkaError) and error.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                continue  # another worker won the race
            raise PipelineError(f"cannot create topic {name}: {error}") from None
    return created
