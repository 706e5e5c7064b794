"""Helpers for tests against the real local broker (``make kafka-up``)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import orjson
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

REPO = Path(__file__).resolve().parents[2]
BOOTSTRAP = os.environ.get("PIPELINE_TEST_BROKER", "127.0.0.1:9092")


def broker_reachable(timeout: float = 5.0) -> bool:
    try:
        AdminClient({"bootstrap.servers": BOOTSTRAP}).list_topics(timeout=timeout)
    except Exception:  # noqa: BLE001
        return False
    return True


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker_metric(port: int, name: str, **labels: str) -> float | None:
    """The sum of a live worker's ``name`` samples whose labels include ``labels`` (None when
    the worker does not answer), read with prometheus-client's own exposition parser."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            text = response.read().decode()
    except OSError:
        return None
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    )


@dataclass
class LocalBroker:
    """A broker of a test's own (``scripts/kafka-local.sh`` on other ports and another data
    directory), for tests that stop and start it without disturbing the shared one."""

    data_dir: Path
    port: int = field(default_factory=free_port)
    controller_port: int = field(default_factory=free_port)
    sasl_port: int = field(default_factory=free_port)

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _script(self, command: str, timeout: float = 240.0) -> None:
        env = {
            **os.environ,
            "KAFKA_DATA_DIR": str(self.data_dir),
            "KAFKA_PORT": str(self.port),
            "KAFKA_CONTROLLER_PORT": str(self.controller_port),
            "KAFKA_SASL_PORT": str(self.sasl_port),
            "KAFKA_HEAP": "-Xmx384m -Xms128m",
        }
        subprocess.run([str(REPO / "scripts" / "kafka-local.sh"), command], env=env, check=True,
                       timeout=timeout, cwd=REPO)

    def up(self) -> LocalBroker:
        self._script("up")
        return self

    def down(self) -> None:
        self._script("down", timeout=90)


@dataclass
class TestTopology:
    """The example topology with topic names unique to one test."""

    path: Path
    prefix: str
    source: str
    outputs: list[str]
    dead_letter: str
    group_id: str
    aggregates: str = ""

    def topic(self, name: str) -> str:
        return f"{self.prefix}{name}"


def make_topology(tmp_path: Path, *, partitions: int = 4) -> TestTopology:
    prefix = f"t{uuid.uuid4().hex[:10]}_"
    text = (REPO / "topologies" / "ecommerce.yaml").read_text()
    text = text.replace("../avro/", f"{REPO}/avro/")
    for name in ("raw_events", "revenue_events", "error_events", "processed_events", "bot_events", "invalid_events"):
        text = text.replace(f"{name}", f"{prefix}{name}")
    text = text.replace("{topic: aggregates}", f"{{topic: {prefix}aggregates}}")
    text = text.replace("\n  aggregates:\n", f"\n  {prefix}aggregates:\n")
    text = text.replace("partitions: 4", f"partitions: {partitions}")
    path = tmp_path / "topology.yaml"
    path.write_text(text)
    outputs = [f"{prefix}{n}" for n in ("revenue_events", "error_events", "processed_events", "bot_events", "invalid_events")]
    return TestTopology(
        path=path,
        prefix=prefix,
        source=f"{prefix}raw_events",
        outputs=outputs,
        dead_letter=f"{prefix}invalid_events",
        group_id=f"{prefix}group",
        aggregates=f"{prefix}aggregates",
    )


def topic_size(topic: str) -> int:
    """Messages in a topic (sum of high watermarks; topics here are never compacted/trimmed)."""
    admin = AdminClient({"bootstrap.servers": BOOTSTRAP})
    metadata = admin.list_topics(topic, timeout=10)
    info = metadata.topics.get(topic)
    if info is None or info.error is not None:
        return 0
    consumer = Consumer({"bootstrap.servers": BOOTSTRAP, "group.id": "size-probe"})
    try:
        for attempt in range(30):
            try:
                return sum(
                    consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                    for p in info.partitions
                )
            except KafkaException:
                # A partition of a topic created a moment ago can briefly have no leader.
                if attempt == 29:
                    raise
                time.sleep(0.5)
        raise AssertionError("unreachable")
    finally:
        consumer.close()


def wait_for_total(topics: Iterable[str], expected: int, timeout: float = 90.0) -> int:
    topics = list(topics)
    deadline = time.monotonic() + timeout
    total = 0
    while time.monotonic() < deadline:
        total = sum(topic_size(t) for t in topics)
        if total >= expected:
            return total
        time.sleep(0.5)
    return total


@dataclass
class ConsumedRecord:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes


def consume_all(topics: Iterable[str], timeout: float = 30.0) -> list[ConsumedRecord]:
    """Read every message currently in the topics (from the beginning, up to the high watermarks)."""
    topics = list(topics)
    consumer = Consumer(
        {
            "bootstrap.servers": BOOTSTRAP,
            "group.id": f"reader-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
            # The end of a partition is reported as an event: with transactions the last
            # offsets are commit markers, never delivered, so "last offset + 1 == high
            # watermark" cannot tell the end.
            "enable.partition.eof": True,
        }
    )
    try:
        admin = AdminClient({"bootstrap.servers": BOOTSTRAP})
        ends: dict[tuple[str, int], int] = {}
        assignment = []
        for topic in topics:
            info = admin.list_topics(topic, timeout=10).topics[topic]
            for p in info.partitions:
                lo, hi = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
                if hi > lo:
                    ends[(topic, p)] = hi
                    assignment.append(TopicPartition(topic, p, lo))
        consumer.assign(assignment)
        records: list[ConsumedRecord] = []
        deadline = time.monotonic() + timeout
        while ends and time.monotonic() < deadline:
            for msg in consumer.consume(num_messages=10000, timeout=0.5):
                if msg.error():
                    if msg.error().code() == KafkaError._PARTITION_EOF:
                        ends.pop((msg.topic(), msg.partition()), None)
                    continue
                tp = (msg.topic(), msg.partition())
                records.append(
                    ConsumedRecord(msg.topic(), msg.partition(), msg.offset(), msg.key(), msg.value())
                )
                if tp in ends and msg.offset() + 1 >= ends[tp]:
                    del ends[tp]
        if ends:
            raise AssertionError(f"could not read to the end of {sorted(ends)}")
        return records
    finally:
        consumer.close()


@dataclass
class WorkerProcess:
    topology: TestTopology
    web_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    def start(self, tmp_path: Path, *extra: str, env: dict[str, str] | None = None) -> WorkerProcess:
        self.log_path = tmp_path / f"worker-{self.web_port}.log"
        log = self.log_path.open("ab")
        env = {**os.environ, "PIPELINE_DATA_DIR": str(tmp_path / "state"), **(env or {})}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline", "worker", str(self.topology.path),
             "--broker", BOOTSTRAP, "--web-port", str(self.web_port),
             "--group-id", self.topology.group_id, *extra],
            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO,
        )
        return self

    def terminate(self, timeout: float = 90.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path else ""


def parse(value: bytes) -> dict:
    return orjson.loads(value)


class RawHeaderName(str):
    """A header name written as arbitrary bytes by clients that call ``.encode("utf-8")`` on it
    (kafka-python, aiokafka's record builder).

    Kafka's protocol says header names are UTF-8, but the broker does not check, and clients
    whose header names are bytes (librdkafka's C API, Go's sarama and franz-go) send anything."""

    def __new__(cls, raw: bytes) -> Self:
        text = super().__new__(cls, raw.decode("latin-1"))
        text.raw = raw  # type: ignore[attr-defined]
        return text

    def encode(self, *args: Any, **kwargs: Any) -> bytes:  # type: ignore[override]
        return self.raw  # type: ignore[attr-defined]
