#!/usr/bin/env python3
"""Check that both Python Kafka clients work against a running broker.

Round trips, each on its own fresh topic with 3 partitions:
  1. confluent-kafka Producer  -> aiokafka AIOKafkaConsumer
  2. aiokafka AIOKafkaProducer -> confluent-kafka Consumer

Every message carries a unique key; a round trip passes only if each key
comes back exactly once with its value. Topics are deleted at the end,
pass or fail. Exit status: 0 all good, 1 a check failed, 2 a client
library is missing.

Usage: python scripts/verify_kafka_clients.py [--bootstrap 127.0.0.1:9092]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid

try:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
    from confluent_kafka import Consumer, KafkaError, KafkaException, Producer
    from confluent_kafka.admin import AdminClient, NewTopic
except ImportError as exc:  # pragma: no cover - environment problem
    print(f"FAIL: missing client library: {exc} (pip install confluent-kafka aiokafka)")
    sys.exit(2)

PARTITIONS = 3


class CheckFailed(Exception):
    pass


def log(msg: str) -> None:
    print(msg, flush=True)


def expected_messages(tag: str, count: int) -> dict[bytes, bytes]:
    return {f"{tag}-{i}".encode(): f"value-{tag}-{i}".encode() for i in range(count)}


def check_received(name: str, expected: dict[bytes, bytes], got: list[tuple[bytes, bytes]]) -> None:
    seen: dict[bytes, bytes] = {}
    dupes = 0
    for key, value in got:
        if key in seen:
            dupes += 1
        seen[key] = value
    missing = expected.keys() - seen.keys()
    wrong = [k for k in expected.keys() & seen.keys() if seen[k] != expected[k]]
    if missing or wrong or dupes or len(seen) != len(expected):
        raise CheckFailed(
            f"{name}: expected {len(expected)} messages, got {len(got)} "
            f"({len(missing)} missing, {len(wrong)} wrong value, {dupes} duplicates)"
        )


def create_topics(admin: AdminClient, topics: list[str], timeout: float) -> None:
    futures = admin.create_topics(
        [NewTopic(t, num_partitions=PARTITIONS, replication_factor=1) for t in topics],
        operation_timeout=timeout,
        request_timeout=timeout,
    )
    for topic, fut in futures.items():
        fut.result()
        log(f"  created topic {topic} ({PARTITIONS} partitions)")
    # Topic creation is acknowledged by the controller before every partition
    # has a leader on the broker; wait until metadata shows them all.
    deadline = time.monotonic() + timeout
    while True:
        md = admin.list_topics(timeout=timeout)
        ready = all(
            t in md.topics
            and md.topics[t].error is None
            and len(md.topics[t].partitions) == PARTITIONS
            and all(p.leader >= 0 for p in md.topics[t].partitions.values())
            for t in topics
        )
        if ready:
            return
        if time.monotonic() > deadline:
            raise CheckFailed(f"topics {topics} have no leaders after {timeout}s")
        time.sleep(0.2)


def delete_topics(admin: AdminClient, topics: list[str], timeout: float) -> None:
    futures = admin.delete_topics(topics, operation_timeout=timeout, request_timeout=timeout)
    for topic, fut in futures.items():
        try:
            fut.result()
            log(f"  deleted topic {topic}")
        except KafkaException as exc:
            err = exc.args[0]
            if err.code() != KafkaError.UNKNOWN_TOPIC_OR_PART:
                log(f"  WARNING: could not delete {topic}: {err}")


def confluent_produce(bootstrap: str, topic: str, messages: dict[bytes, bytes], timeout: float) -> None:
    errors: list[str] = []

    def on_delivery(err, _msg) -> None:
        if err is not None:
            errors.append(str(err))

    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 5})
    for key, value in messages.items():
        while True:
            try:
                producer.produce(topic, key=key, value=value, on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
    remaining = producer.flush(timeout)
    if remaining or errors:
        raise CheckFailed(f"confluent produce: {remaining} undelivered, errors: {errors[:3]}")


def confluent_consume(bootstrap: str, topic: str, count: int, timeout: float) -> list[tuple[bytes, bytes]]:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"verify-confluent-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": True,
        }
    )
    got: list[tuple[bytes, bytes]] = []
    try:
        consumer.subscribe([topic])
        deadline = time.monotonic() + timeout
        while len(got) < count and time.monotonic() < deadline:
            for msg in consumer.consume(num_messages=500, timeout=1.0):
                if msg.error():
                    raise CheckFailed(f"confluent consume: {msg.error()}")
                got.append((msg.key(), msg.value()))
    finally:
        consumer.close()
    return got


async def aiokafka_produce(bootstrap: str, topic: str, messages: dict[bytes, bytes]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        futures = [await producer.send(topic, key=k, value=v) for k, v in messages.items()]
        await producer.flush()
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def aiokafka_consume(bootstrap: str, topic: str, count: int, timeout: float) -> list[tuple[bytes, bytes]]:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"verify-aiokafka-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest",
        enable_auto_commit=True,
    )
    got: list[tuple[bytes, bytes]] = []
    await consumer.start()
    try:
        deadline = time.monotonic() + timeout
        while len(got) < count and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=1000, max_records=500)
            for records in batches.values():
                got.extend((r.key, r.value) for r in records)
    finally:
        await consumer.stop()
    return got


def run(bootstrap: str, count: int, timeout: float) -> None:
    run_id = uuid.uuid4().hex[:8]
    topic_a = f"verify-ck-to-aio-{run_id}"
    topic_b = f"verify-aio-to-ck-{run_id}"
    admin = AdminClient({"bootstrap.servers": bootstrap})

    log(f"bootstrap {bootstrap}; confluent-kafka {confluent_version()}, librdkafka {librdkafka_version()}, "
        f"aiokafka {aiokafka_version()}")
    t0 = time.monotonic()
    create_topics(admin, [topic_a, topic_b], timeout)
    try:
        msgs_a = expected_messages("a", count)
        t = time.monotonic()
        confluent_produce(bootstrap, topic_a, msgs_a, timeout)
        got_a = asyncio.run(aiokafka_consume(bootstrap, topic_a, count, timeout))
        check_received("confluent Producer -> AIOKafkaConsumer", msgs_a, got_a)
        log(f"OK confluent Producer -> AIOKafkaConsumer: {len(got_a)} messages ({time.monotonic() - t:.1f}s)")

        msgs_b = expected_messages("b", count)
        t = time.monotonic()
        asyncio.run(aiokafka_produce(bootstrap, topic_b, msgs_b))
        got_b = confluent_consume(bootstrap, topic_b, count, timeout)
        check_received("AIOKafkaProducer -> confluent Consumer", msgs_b, got_b)
        log(f"OK AIOKafkaProducer -> confluent Consumer: {len(got_b)} messages ({time.monotonic() - t:.1f}s)")
    finally:
        delete_topics(admin, [topic_a, topic_b], timeout)
    log(f"all checks passed in {time.monotonic() - t0:.1f}s")


def confluent_version() -> str:
    import confluent_kafka

    return confluent_kafka.__version__


def librdkafka_version() -> str:
    import confluent_kafka

    return confluent_kafka.libversion()[0]


def aiokafka_version() -> str:
    import aiokafka

    return aiokafka.__version__


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bootstrap", default="127.0.0.1:9092", help="broker address (default %(default)s)")
    parser.add_argument("--messages", type=int, default=1000, help="messages per round trip (default %(default)s)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per step (default %(default)s)")
    args = parser.parse_args()
    try:
        run(args.bootstrap, args.messages, args.timeout)
    except CheckFailed as exc:
        log(f"FAIL: {exc}")
        return 1
    except Exception as exc:  # noqa: BLE001 - any client error is a failed check
        log(f"FAIL: {type(exc).__name__}: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
