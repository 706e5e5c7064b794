"""Measurement helpers for ``bench/run.py``, and the ceiling contender.

    python bench/common.py ceiling --source TOPIC --target TOPIC

runs the ceiling: a confluent-kafka consumer → ``json.loads`` → producer passthrough with no
processing, until SIGTERM. It runs as its own process so that its CPU and RSS are measured the
same way as every other contender's (from /proc), without the harness's memory in them.
"""

from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
import time
from collections import defaultdict, deque
from dataclasses import dataclass
from pathlib import Path

from confluent_kafka import Consumer, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

REPO = Path(__file__).resolve().parents[1]
BOOTSTRAP = os.environ.get("PIPELINE_TEST_BROKER", "127.0.0.1:9092")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def log(message: str) -> None:
    """Progress for the person watching (stderr; the result table goes to stdout)."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# The contender process: CPU and memory from /proc
# --------------------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """utime + stime of the process (all its threads: librdkafka's included)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    # The command name (field 2) may contain spaces: split after its closing parenthesis.
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # fields 14 and 15 of stat(5)


def peak_rss_mb(pid: int) -> float:
    """VmHWM: the process's peak resident set so far."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM for pid {pid}")


# --------------------------------------------------------------------------------------------
# Topics
# --------------------------------------------------------------------------------------------


def admin() -> AdminClient:
    # log_level 4 (warning): no "purging unserved events" notice each time a client is dropped.
    return AdminClient({"bootstrap.servers": BOOTSTRAP, "log_level": 4})


def create_topics(partitions: dict[str, int], *, log_append_time: bool = False) -> None:
    """Create topics (an existing topic is an error: every run uses fresh names).

    Output topics get ``message.timestamp.type=LogAppendTime`` so that each output carries the
    broker's clock at the moment it was written: that is the "delivered" time of the latency
    measurement, the same clock for every contender.
    """
    config = {"message.timestamp.type": "LogAppendTime"} if log_append_time else {}
    new = [NewTopic(name, num_partitions=n, replication_factor=1, config=config)
           for name, n in partitions.items()]
    client = admin()  # keep a reference: the futures fail if the client is collected
    for future in client.create_topics(new, request_timeout=30).values():
        future.result(timeout=30)


def delete_topics_with_prefix(prefixes: list[str]) -> int:
    """Delete every topic whose name starts with one of ``prefixes`` (the run's topics, the
    workers' changelogs, repartition and assignor topics: all carry the prefix)."""
    client = admin()
    names = [t for t in client.list_topics(timeout=10).topics if t.startswith(tuple(prefixes))]
    if not names:
        return 0
    for future in client.delete_topics(names, operation_timeout=30).values():
        try:
            future.result(timeout=60)
        except KafkaException:
            pass  # already gone; nothing to clean
    return len(names)


def delete_groups_with_prefix(prefixes: list[str]) -> int:
    """Delete the run's consumer groups (their committed offsets), best effort."""
    client = admin()
    try:
        listing = client.list_consumer_groups(request_timeout=10).result(timeout=30)
        names = [g.group_id for g in listing.valid if g.group_id.startswith(tuple(prefixes))]
        for future in (client.delete_consumer_groups(names, request_timeout=30).values() if names else []):
            future.result(timeout=60)
    except KafkaException:
        return 0  # leftover offsets are harmless
    return len(names)


class Watermarks:
    """High watermarks of a set of topics, read with one long-lived consumer.

    Polling these is how the harness sees outputs appear without consuming them (the contender's
    outputs are read once, after the phase, so the harness costs little CPU while it measures).
    """

    def __init__(self, topics: list[str], wait_s: float = 30.0) -> None:
        self._consumer = Consumer({"bootstrap.servers": BOOTSTRAP, "group.id": "bench-watermarks"})
        # Topics created a moment ago can be missing from the metadata for a while (seen right
        # after a broker start): wait for them rather than fail the run.
        deadline = time.monotonic() + wait_s
        while True:
            metadata = self._consumer.list_topics(timeout=10)
            missing = [t for t in topics if t not in metadata.topics or not metadata.topics[t].partitions]
            if not missing:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"topics not in the broker's metadata after {wait_s:.0f}s: {missing}")
            time.sleep(0.5)
        self.partitions = [
            TopicPartition(t, p) for t in topics for p in sorted(metadata.topics[t].partitions)
        ]

    def offsets(self) -> dict[tuple[str, int], int]:
        return {
            (tp.topic, tp.partition): self._consumer.get_watermark_offsets(tp, timeout=10, cached=False)[1]
            for tp in self.partitions
        }

    def total(self) -> int:
        return sum(self.offsets().values())

    def close(self) -> None:
        self._consumer.close()


@dataclass
class Output:
    topic: str
    append_ms: int  # LogAppendTime: when the broker wrote it
    value: bytes


def read_range(start: dict[tuple[str, int], int], end: dict[tuple[str, int], int],
               timeout: float = 120.0) -> list[Output]:
    """Every message from ``start`` up to ``end`` offsets (per topic-partition)."""
    consumer = Consumer({
        "bootstrap.servers": BOOTSTRAP, "group.id": "bench-reader", "enable.auto.commit": False,
    })
    todo = {tp: hi for tp, hi in end.items() if hi > start.get(tp, 0)}
    consumer.assign([TopicPartition(t, p, start.get((t, p), 0)) for (t, p) in todo])
    records: list[Output] = []
    deadline = time.monotonic() + timeout
    try:
        while todo and time.monotonic() < deadline:
            for msg in consumer.consume(num_messages=10000, timeout=0.5):
                if msg.error():
                    continue
                tp = (msg.topic(), msg.partition())
                if tp not in todo or msg.offset() >= todo[tp]:
                    continue
                records.append(Output(msg.topic(), msg.timestamp()[1], msg.value()))
                if msg.offset() + 1 >= todo[tp]:
                    del todo[tp]
    finally:
        consumer.close()
    if todo:
        raise RuntimeError(f"could not read to the end of {sorted(todo)}")
    return records


# --------------------------------------------------------------------------------------------
# Latency: match outputs to send times
# --------------------------------------------------------------------------------------------


def _event_id(value: bytes) -> tuple[str | None, int | None]:
    """(event_id, source timestamp) of an output value.

    Routed events (and the simple contenders' raw forwards) carry the input's ``event_id``. The
    pipeline's dead letters (``avro/dead_letter.avsc``) carry ``source.timestamp``, the input
    message's Kafka timestamp, which the harness set to the send time: an exact match even for
    payloads that are not JSON at all.
    """
    import orjson

    try:
        doc = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None, None
    if not isinstance(doc, dict):
        return None, None
    source = doc.get("source")
    if "reason" in doc and "payload" in doc and isinstance(source, dict):
        ts = source.get("timestamp")
        return None, ts if isinstance(ts, int) else None
    event_id = doc.get("event_id")
    return (event_id if isinstance(event_id, str) else None), None


def latencies_ms(outputs: list[Output], sent: dict[str, deque[int]]) -> tuple[list[tuple[int, int]], int]:
    """Per matched output: (send time, LogAppendTime − send time), in ms. Returns those pairs
    and the count of outputs that matched no send.

    ``sent`` maps event_id → send times in send order. A resent duplicate shares its original's
    event_id, so outputs are matched in delivery order to sends in send order: the first output
    of an id to its first send (the pipeline drops the resend; the simple contenders forward
    both, the second output then matches the resend).
    """
    sent = {k: deque(v) for k, v in sent.items()}
    result: list[tuple[int, int]] = []
    unmatched = 0
    for out in sorted(outputs, key=lambda o: o.append_ms):
        event_id, sent_ms = _event_id(out.value)
        if sent_ms is None and event_id is not None and sent.get(event_id):
            sent_ms = sent[event_id].popleft()
        if sent_ms is None:
            unmatched += 1
        else:
            result.append((sent_ms, out.append_ms - sent_ms))
    return result, unmatched


def percentile(values: list[int], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))  # ceil(n q / 100)
    return float(ordered[int(rank) - 1])


def new_sent_index() -> dict[str, deque[int]]:
    return defaultdict(deque)


# --------------------------------------------------------------------------------------------
# The machine
# --------------------------------------------------------------------------------------------


def broker_pid() -> int | None:
    """The local broker's pid (scripts/kafka-local.sh writes it), None when it is not ours."""
    pid_file = Path(os.environ.get("KAFKA_DATA_DIR", REPO / ".local" / "kafka")) / "kafka.pid"
    try:
        pid = int(pid_file.read_text().split()[0])
        cpu_seconds(pid)
    except (OSError, ValueError, IndexError):
        return None
    return pid


def kafka_version() -> str:
    """The running local broker's version, from the jar on its classpath (scripts/kafka-local.sh
    launches ``java -cp <cache>/<version>/libs/* kafka.Kafka``)."""
    pid = broker_pid()
    try:
        if pid is None:
            raise OSError("no local broker")
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        for part in cmdline.split(b"\0"):
            if b"kafka.Kafka" in part:
                break
            if part.endswith(b"/libs/*"):
                jars = sorted(Path(part[:-2].decode()).glob("kafka_2.*-*.jar"))
                for jar in jars:
                    m = re.fullmatch(r"kafka_2\.\d+-(\d[\w.]*)\.jar", jar.name)
                    if m:
                        return m.group(1)
    except (OSError, ValueError):
        pass
    return os.environ.get("KAFKA_VERSION", "unknown (not the local broker?)")


def machine() -> dict:
    cpu_model = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu_model = line.split(":", 1)[1].strip()
            break
    mem_kb = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kb = int(line.split()[1])
    return {
        "cpu_model": cpu_model,
        "cores": os.cpu_count(),
        "ram_gb": round(mem_kb / 1024 / 1024, 1),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "kafka": kafka_version(),
        "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
    }


# --------------------------------------------------------------------------------------------
# GeoIP databases
# --------------------------------------------------------------------------------------------

SHARED_GEOIP = REPO.parent / "shared" / "data" / "geoip" / "test-data"


def geoip_databases(tmp: Path) -> tuple[Path, Path, str]:
    """(city db, asn db, where they came from): MaxMind's test databases when ../shared/data is
    there, else small ones written now (the same way the enricher tests do)."""
    city = SHARED_GEOIP / "GeoIP2-City-Test.mmdb"
    asn = SHARED_GEOIP / "GeoLite2-ASN-Test.mmdb"
    if city.exists() and asn.exists():
        return city, asn, "MaxMind test databases (../shared/data/geoip/test-data)"
    from tests.enrichers.mmdb_fixtures import city_record, write_asn_db, write_city_db

    # A handful of wide networks so that some of the generated public addresses are found.
    city = write_city_db(tmp / "city.mmdb", {
        "2.0.0.0/8": city_record("GB", "United Kingdom", city="London", latitude=51.5, longitude=-0.1),
        "81.0.0.0/8": city_record("DE", "Germany", city="Berlin", latitude=52.5, longitude=13.4),
        "89.0.0.0/8": city_record("FR", "France", city="Paris", latitude=48.9, longitude=2.35),
        "2a00::/12": city_record("NL", "Netherlands", city="Amsterdam", latitude=52.4, longitude=4.9),
    })
    asn = write_asn_db(tmp / "asn.mmdb", {"2.0.0.0/8": (3215, "Orange"), "81.0.0.0/8": (3320, "DTAG")})
    return city, asn, "generated (../shared/data absent): tests/enrichers/mmdb_fixtures.py"


# --------------------------------------------------------------------------------------------
# The ceiling contender
# --------------------------------------------------------------------------------------------


def ceiling(source: str, target: str) -> None:
    """Consume → json.loads → produce, no processing, until killed (the harness counts outputs)."""
    import json

    from confluent_kafka import Producer

    consumer = Consumer({
        "bootstrap.servers": BOOTSTRAP, "group.id": f"{target}-group",
        "auto.offset.reset": "earliest", "enable.auto.commit": True,
    })
    # The same producer settings as the pipeline's output producer (linger 5 ms, lz4).
    producer = Producer({"bootstrap.servers": BOOTSTRAP, "linger.ms": 5, "compression.type": "lz4"})
    consumer.subscribe([source])
    while True:
        # A short timeout: consume() waits for a full batch or the timeout, and at low rates
        # (the latency phase) a long one would be measured as latency.
        for msg in consumer.consume(num_messages=5000, timeout=0.02):
            if msg.error():
                continue
            value = msg.value()
            try:
                json.loads(value)
            except ValueError:  # includes UnicodeDecodeError
                pass
            while True:
                try:
                    producer.produce(target, value, msg.key())
                    break
                except BufferError:
                    producer.poll(0.05)
        producer.poll(0)


def start_ceiling(source: str, target: str, log_path: Path) -> subprocess.Popen:
    with log_path.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, __file__, "ceiling", "--source", source, "--target", target],
            stdout=out, stderr=subprocess.STDOUT, cwd=REPO,
        )


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["ceiling"])
    parser.add_argument("--source", required=True)
    parser.add_argument("--target", required=True)
    args = parser.parse_args()
    ceiling(args.source, args.target)
