"""``pipeline produce``: send events to a topology's source topic, keyed by user identity."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import orjson
from confluent_kafka import KafkaError, Producer

from pipeline.core.identity import canonical_identity
from pipeline.embedded import read_lines
from pipeline.errors import BrokerUnavailable
from pipeline.settings import Settings


def identity_key(value: bytes) -> bytes | None:
    """The user identity a raw event should be keyed by (None when it has none)."""
    try:
        event = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(event, dict):
        return None
    identity = canonical_identity(event)
    return identity.encode("utf-8") if identity else None


def file_records(path: Path) -> Iterator[tuple[bytes | None, bytes]]:
    with path.open("rb") as stream:
        for value in read_lines(stream):
            yield identity_key(value), value


@dataclass
class ProduceResult:
    sent: int
    failed: int
    seconds: float
    first_error: str | None = None


def new_producer(settings: Settings, **extra: object) -> Producer:
    return Producer(
        {
            "bootstrap.servers": settings.bootstrap_servers,
            "enable.idempotence": True,
            "linger.ms": 5,
            "compression.type": "lz4",
            "queue.buffering.max.messages": 500_000,
            # The same key → partition mapping as the Java client, aiokafka and Faust.
            "partitioner": "murmur2_random",
            **settings.extra_kafka,
            **extra,
        }
    )


def produce(
    settings: Settings,
    topic: str,
    records: Iterable[tuple[bytes | None, bytes]],
    *,
    rate: float | None = None,
    producer: Producer | None = None,
) -> ProduceResult:
    """Send every record; ``rate`` caps events per second. Waits until all are delivered."""
    producer = producer or new_producer(settings)
    try:
        producer.list_topics(topic, timeout=10)
    except Exception as exc:  # noqa: BLE001 - confluent raises KafkaException with varied args
        raise BrokerUnavailable(f"cannot reach Kafka at {settings.bootstrap_servers}: {exc}") from None
    failures: list[KafkaError] = []

    def on_delivery(err: KafkaError | None, _msg: object) -> None:
        if err is not None:
            failures.append(err)

    started = time.monotonic()
    sent = 0
    for key, value in records:
        while True:
            try:
                producer.produce(topic, value, key, on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.05)
        sent += 1
        if sent % 1000 == 0:
            producer.poll(0)
        if rate:
            ahead = sent / rate - (time.monotonic() - started)
            if ahead > 0.005:
                producer.poll(0)
                time.sleep(ahead)
    remaining = producer.flush(60)
    seconds = time.monotonic() - started
    failed = len(failures) + remaining
    first = failures[0].str() if failures else ("flush timed out" if remaining else None)
    return ProduceResult(sent=sent, failed=failed, seconds=seconds, first_error=first)
