"""Worker throughput on the example topology vs. a confluent-kafka passthrough, in one run.

    .venv/bin/python bench/worker_throughput.py --events 300000

Produces N generated events to a fresh copy of the example topology's source topic, then:
(a) ceiling: confluent-kafka consume → json.loads → produce to one topic, no processing;
(d) the pipeline worker (`pipeline worker`, one process) on the same input.
Throughput = events / (time from the first output to the last). Figures are machine-dependent;
compare the ratio. The full benchmark (all contenders, latency, RSS) is `make bench`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from confluent_kafka import Consumer, Producer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.produce import produce  # noqa: E402
from pipeline.runtime.admin import ensure_topics  # noqa: E402
from pipeline.settings import Settings  # noqa: E402
from pipeline.topology import load_topology  # noqa: E402
from pipeline.traffic import TrafficProfile, generate  # noqa: E402
from tests.integration.kafka_helpers import (  # noqa: E402
    BOOTSTRAP,
    WorkerProcess,
    make_topology,
    topic_size,
)


def ceiling(source: str, target: str, expected: int) -> float:
    consumer = Consumer({
        "bootstrap.servers": BOOTSTRAP, "group.id": f"ceiling-{time.time()}",
        "auto.offset.reset": "earliest", "enable.auto.commit": True,
    })
    producer = Producer({"bootstrap.servers": BOOTSTRAP, "linger.ms": 5, "compression.type": "lz4"})
    consumer.subscribe([source])
    seen = 0
    started = None
    while seen < expected:
        for msg in consumer.consume(num_messages=5000, timeout=1.0):
            if msg.error():
                continue
            if started is None:
                started = time.perf_counter()
            value = msg.value()
            try:
                json.loads(value)
            except ValueError:
                pass
            while True:
                try:
                    producer.produce(target, value, msg.key())
                    break
                except BufferError:
                    producer.poll(0.05)
            seen += 1
        producer.poll(0)
    producer.flush()
    elapsed = time.perf_counter() - started
    consumer.close()
    return expected / elapsed


def pipeline_worker(topology, tmp: Path, expected: int) -> float:
    worker = WorkerProcess(topology).start(tmp)
    try:
        started = None
        while True:
            total = sum(topic_size(t) for t in topology.outputs)
            if total and started is None:
                started = time.perf_counter()
            if total >= expected:
                break
            if worker.proc.poll() is not None:
                raise SystemExit(f"worker died:\n{worker.log()[-3000:]}")
            time.sleep(0.1)
        elapsed = time.perf_counter() - started
    finally:
        worker.terminate()
    return expected / elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=300_000)
    args = parser.parse_args()
    os.environ.setdefault("PIPELINE_PII_KEY", "bench-only-key-0123456789abcdef")
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        topology = make_topology(tmp, partitions=4)
        settings = Settings.from_env(env={})
        ensure_topics(load_topology(topology.path), settings)
        generated = list(generate(args.events, TrafficProfile(seed=5)))
        produce(settings, topology.source, [(r.key, r.value) for r in generated])
        expected_out = args.events - sum(1 for r in generated if r.kind == "duplicate")
        a = ceiling(topology.source, topology.prefix + "ceiling_out", args.events)
        d = pipeline_worker(topology, tmp, expected_out) * args.events / expected_out
    result = {"events": args.events, "ceiling_eps": round(a), "pipeline_eps": round(d),
              "pipeline/ceiling": round(d / a, 3)}
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
