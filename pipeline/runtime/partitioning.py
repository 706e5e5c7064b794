"""Which partition a key belongs to under Kafka's default partitioner (murmur2)."""

from __future__ import annotations

from typing import Any

from aiokafka.partitioner import murmur2


def kafka_partition(key: bytes, partitions: int) -> int:
    """The partition the Java client, aiokafka and librdkafka's murmur2 partitioners choose."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


class OwnerPartitioner:
    """For the dedupe stage: None when a message is in its canonical key's partition, else the
    partition it belongs to. Messages from the repartition topic are already placed by key."""

    def __init__(self, *, partitions: int, repartition_topic: str, cache_size: int = 200_000) -> None:
        self.partitions = partitions
        self.repartition_topic = repartition_topic
        self._cache: dict[bytes, int] = {}
        self._cache_size = cache_size

    def __call__(self, key: bytes, message: Any) -> int | None:
        if message.topic == self.repartition_topic or not key:
            return None
        partition = self._cache.get(key)
        if partition is None:
            partition = kafka_partition(key, self.partitions)
            if len(self._cache) >= self._cache_size:
                self._cache.clear()
            self._cache[key] = partition
        return None if partition == message.partition else partition
