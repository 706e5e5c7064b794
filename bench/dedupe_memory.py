"""Worker memory with N dedupe keys held in the RocksDB table store.

    .venv/bin/python bench/dedupe_memory.py --keys 200000          # quick
    .venv/bin/python bench/dedupe_memory.py --keys 5000000         # the issue-4 target (≤ 400 MB)

Creates a fresh copy of the example topology (4 source partitions by default), produces N small
valid events with distinct ``event_id``s (keyed by ``user_id`` with murmur2, so nothing is
repartitioned), runs one worker (``python -m pipeline worker``, ``PIPELINE_STORE=rocksdb``) until
all N events reached the outputs, sampling its RSS from ``/proc/<pid>/status`` meanwhile. Then it
stops the worker (SIGTERM) and counts the keys in the dedupe table's RocksDB databases.

Progress goes to stderr; the last stdout line is one JSON object:
``{"keys", "store", "peak_rss_mb", "final_rss_mb", "keys_held", "events_per_s", "seconds", ...}``
(``peak_rss_mb`` is the kernel's high-water mark, VmHWM, of the worker process; ``seconds`` is
from the worker's start to the last output; ``events_per_s`` is N over the time from its first
output to its last). The bench's topics are deleted at the end unless ``--keep-topics``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.runtime.admin import ensure_topics  # noqa: E402
from pipeline.settings import Settings  # noqa: E402
from pipeline.topology import load_topology  # noqa: E402
from tests.integration.kafka_helpers import BOOTSTRAP, WorkerProcess, make_topology  # noqa: E402

OFFSET_KEY = b"__faust\0offset__"


def say(message: str) -> None:
    print(f"[dedupe_memory {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def produce_events(topic: str, n: int, *, users: int) -> float:
    """N distinct small valid events; returns the seconds it took."""
    producer = Producer({
        "bootstrap.servers": BOOTSTRAP,
        "enable.idempotence": True,
        "linger.ms": 50,
        "batch.size": 1_000_000,
        "batch.num.messages": 10_000,
        "compression.type": "lz4",
        "queue.buffering.max.messages": 1_000_000,
        "partitioner": "murmur2_random",  # as `pipeline produce`: no repartitioning needed
    })
    failures: list[object] = []

    def on_delivery(err: object, _msg: object) -> None:
        if err is not None:
            failures.append(err)

    run = uuid.uuid4().hex[:16]
    now_ms = int(time.time() * 1000)
    produce = producer.produce
    started = time.monotonic()
    for i in range(n):
        user = b"u%d" % (i % users)
        # event_id: 36 characters, like a UUID (the dedupe key is b"i:" + event_id).
        value = b'{"event":"page_viewed","timestamp":%d,"user_id":"%s","event_id":"%s-%019d"}' % (
            now_ms, user, run.encode(), i)
        while True:
            try:
                produce(topic, value, user, on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.05)
        if i % 20_000 == 0:
            producer.poll(0)
            if i and i % 1_000_000 == 0:
                say(f"produced {i:,}")
    remaining = producer.flush(120)
    if remaining or failures:
        raise SystemExit(f"producing failed: {remaining} undelivered, {len(failures)} errors: {failures[:1]}")
    return time.monotonic() - started


class Watermarks:
    """Total messages in some topics (sum of high watermarks), with one reused consumer."""

    def __init__(self, topics: list[str]) -> None:
        admin = AdminClient({"bootstrap.servers": BOOTSTRAP})
        metadata = admin.list_topics(timeout=10)
        self.tps = [
            TopicPartition(t, p) for t in topics for p in metadata.topics[t].partitions
        ]
        self.consumer = Consumer({"bootstrap.servers": BOOTSTRAP, "group.id": "dedupe-memory-probe"})

    def total(self) -> int:
        return sum(self.consumer.get_watermark_offsets(tp, timeout=10)[1] for tp in self.tps)

    def close(self) -> None:
        self.consumer.close()


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS / VmHWM (kB) of a process, {} once it has gone."""
    result = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    name, value = line.split(":", 1)
                    result[name] = int(value.split()[0])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return result


class RssSampler(threading.Thread):
    def __init__(self, pid: int, interval: float = 0.25) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.samples: list[tuple[float, int]] = []  # (seconds since start, kB)
        self.peak_kb = 0
        self._halt = threading.Event()
        self._t0 = time.monotonic()

    def run(self) -> None:
        while not self._halt.is_set():
            status = proc_status(self.pid)
            if not status:
                return
            rss = status.get("VmRSS", 0)
            self.samples.append((time.monotonic() - self._t0, rss))
            self.peak_kb = max(self.peak_kb, rss, status.get("VmHWM", 0))
            self._halt.wait(self.interval)

    def stop(self) -> None:
        self._halt.set()
        self.join()


def count_keys(state_dir: Path) -> tuple[int, list[str]]:
    """Keys in every dedupe table partition DB under the worker's data dir (worker stopped)."""
    import rocksdict

    total = 0
    dbs = sorted(p for p in state_dir.rglob("*.db") if p.is_dir() and "dedupe" in p.name)
    for path in dbs:
        db = rocksdict.Rdict(
            str(path), options=rocksdict.Options(raw_mode=True),
            access_type=rocksdict.AccessType.read_only(),
        )
        try:
            total += sum(1 for key in db.keys() if key != OFFSET_KEY)
        finally:
            db.close()
    return total, [str(p.relative_to(state_dir)) for p in dbs]


def delete_topics(topics: list[str]) -> None:
    admin = AdminClient({"bootstrap.servers": BOOTSTRAP})
    existing = admin.list_topics(timeout=10).topics
    names = [t for t in topics if t in existing]
    if names:
        for future in admin.delete_topics(names, operation_timeout=30).values():
            try:
                future.result(timeout=60)
            except Exception as exc:  # noqa: BLE001 - best effort clean-up
                say(f"could not delete a topic: {exc}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keys", type=int, default=200_000, help="distinct events (= dedupe keys)")
    parser.add_argument("--partitions", type=int, default=4, help="source partitions")
    parser.add_argument("--users", type=int, default=100_000, help="distinct user_ids (Kafka keys)")
    parser.add_argument("--timeout", type=float, default=3600.0, help="give up after this many seconds")
    parser.add_argument("--keep-topics", action="store_true", help="do not delete the bench's topics")
    parser.add_argument("--keep-state", action="store_true", help="keep the worker's data dir (path printed)")
    args = parser.parse_args()
    n = args.keys
    env = {
        "PIPELINE_STORE": "rocksdb",
        "PIPELINE_PII_KEY": os.environ.get("PIPELINE_PII_KEY", "bench-only-key-0123456789abcdef"),
        "PIPELINE_LOG_LEVEL": os.environ.get("PIPELINE_LOG_LEVEL", "info"),
    }

    tmp = Path(tempfile.mkdtemp(prefix="dedupe-memory-"))
    topology = make_topology(tmp, partitions=args.partitions)
    changelog = f"{topology.group_id}-dedupe-dedupe-changelog"
    repartition = f"{topology.group_id}-dedupe-repartition"
    all_topics = [topology.source, *topology.outputs, changelog, repartition]
    worker: WorkerProcess | None = None
    try:
        ensure_topics(load_topology(topology.path), Settings.from_env(env={}))
        say(f"producing {n:,} events to {topology.source} ({args.partitions} partitions)")
        produce_s = produce_events(topology.source, n, users=min(args.users, n))
        say(f"produced {n:,} in {produce_s:.1f}s ({n / produce_s:,.0f}/s); starting the worker")

        outputs: Watermarks | None = None  # created once the worker has created the topics
        worker = WorkerProcess(topology).start(tmp, env=env)
        assert worker.proc is not None
        started = time.monotonic()
        sampler = RssSampler(worker.proc.pid)
        sampler.start()
        first_output = done = None
        last_log = 0.0
        total = 0
        while True:
            if worker.proc.poll() is not None:
                raise SystemExit(f"worker died:\n{worker.log()[-3000:]}")
            now = time.monotonic()
            if now - started > args.timeout:
                raise SystemExit(f"timed out with {total:,}/{n:,} outputs:\n{worker.log()[-3000:]}")
            if outputs is None:
                try:
                    outputs = Watermarks(topology.outputs)
                except KeyError:
                    time.sleep(0.5)
                    continue
            total = outputs.total()
            if total and first_output is None:
                first_output = now
            if total >= n:
                done = now
                break
            if now - last_log >= 15:
                last_log = now
                rss = proc_status(worker.proc.pid).get("VmRSS", 0)
                say(f"{total:,}/{n:,} outputs, worker RSS {rss / 1024:,.0f} MB")
            time.sleep(0.5)
        final = proc_status(worker.proc.pid)
        sampler.stop()
        seconds = done - started
        events_per_s = n / max(done - (first_output or started), 1e-9)
        say(f"all {total:,} outputs in {seconds:.1f}s; stopping the worker")
        rc = worker.terminate()
        if rc != 0:
            say(f"worker exited with {rc}:\n{worker.log()[-2000:]}")
        outputs.close()
        keys_held, dbs = count_keys(tmp / "state")
        say(f"dedupe store: {keys_held:,} keys in {len(dbs)} partition DBs")
        peak_kb = max(sampler.peak_kb, final.get("VmHWM", 0))
        samples = sampler.samples
        # A coarse RSS timeline for the log: ~10 points.
        step = max(1, len(samples) // 10)
        timeline = [(round(t), round(kb / 1024)) for t, kb in samples[::step]]
        say(f"RSS timeline (s, MB): {timeline}")
        result = {
            "keys": n,
            "store": "rocksdb",
            "peak_rss_mb": round(peak_kb / 1024, 1),
            "final_rss_mb": round(final.get("VmRSS", 0) / 1024, 1),
            "keys_held": keys_held,
            "events_per_s": round(events_per_s),
            "seconds": round(seconds, 1),
            "partitions": args.partitions,
            "produce_s": round(produce_s, 1),
        }
        print(json.dumps(result))
        return 0 if keys_held == n else 1
    finally:
        if worker is not None:
            worker.kill()
        if not args.keep_topics:
            delete_topics(all_topics)
        if args.keep_state:
            say(f"state kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
