"""`make demo`: a worker on the example topology, a few thousand generated events, a report.

Runs against the local broker (`make kafka-up`). Leaves the broker running and stops the worker.
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
from confluent_kafka import Consumer, KafkaException, TopicPartition

from pipeline.produce import produce
from pipeline.runtime.admin import admin_client, ensure_topics
from pipeline.settings import Settings
from pipeline.topology import load_topology
from pipeline.traffic import TrafficProfile, generate

REPO = Path(__file__).resolve().parents[1]


def sizes(settings: Settings, topics: list[str], *, attempts: int = 30) -> dict[str, int]:
    """Messages per topic. Retries for a while: just after the broker starts (or a topic is
    created) a partition can briefly have no leader, or the topic be missing from the metadata."""
    for attempt in range(attempts):
        metadata = admin_client(settings).list_topics(timeout=10)
        consumer = Consumer({"bootstrap.servers": settings.bootstrap_servers, "group.id": "demo-probe"})
        try:
            return {
                t: sum(
                    consumer.get_watermark_offsets(TopicPartition(t, p), timeout=10)[1]
                    for p in metadata.topics[t].partitions
                )
                for t in topics
            }
        except (KafkaException, KeyError):
            if attempt == attempts - 1:
                raise
            time.sleep(1)
        finally:
            consumer.close()
    raise AssertionError("unreachable")


def last_record(settings: Settings, topic: str) -> dict | None:
    consumer = Consumer({"bootstrap.servers": settings.bootstrap_servers, "group.id": "demo-probe"})
    try:
        metadata = admin_client(settings).list_topics(topic, timeout=10)
        for p in metadata.topics[topic].partitions:
            lo, hi = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            if hi > lo:
                consumer.assign([TopicPartition(topic, p, hi - 1)])
                msg = consumer.poll(10)
                if msg is not None and not msg.error():
                    return orjson.loads(msg.value())
        return None
    finally:
        consumer.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--topology", default="topologies/ecommerce.yaml")
    parser.add_argument("--events", type=int, default=5000)
    args = parser.parse_args()

    if not os.environ.get("PIPELINE_PII_KEY"):
        # The pii stage needs a hashing key. A throwaway one is fine for a demo; a deployment
        # sets its own secret (see README, "Privacy").
        os.environ["PIPELINE_PII_KEY"] = secrets.token_hex(32)
        print("== PIPELINE_PII_KEY is not set: using a random key for this demo")
    if not os.environ.get("GEOIP_CITY_DB"):
        print("== GEOIP_CITY_DB is not set: the geo stage runs disabled (README: GeoIP databases)")
    topology = load_topology(args.topology)
    settings = Settings.from_env()
    outputs = list(topology.spec.topics)
    print(f"== topology {topology.name} v{topology.version}: {topology.spec.source.topic} -> {', '.join(outputs)}")
    created = ensure_topics(topology, settings)
    if created:
        print(f"== created topics: {', '.join(created)}")
    before = sizes(settings, outputs)

    log_path = REPO / ".local" / "demo-worker.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    print(f"== starting a worker (log: {log_path})")
    with log_path.open("wb") as log:
        worker = subprocess.Popen(
            [sys.executable, "-m", "pipeline", "worker", args.topology, "--web-port", os.environ.get("DEMO_WEB_PORT", "6066")],
            stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
        )
    try:
        profile = TrafficProfile(seed=int(time.time()), invalid_fraction=0.03, duplicate_fraction=0.01)
        generated = list(generate(args.events, profile))
        resent = sum(1 for r in generated if r.kind == "duplicate")
        # Window records of the aggregates are not events: they do not count towards the input.
        aggregate_topics = {
            topology.stage_config(stage.id).output.topic  # type: ignore[attr-defined]
            for stage in topology.spec.stages
            if stage.type == "aggregate"
        }
        event_topics = [t for t in outputs if t not in aggregate_topics]
        result = produce(settings, topology.spec.source.topic, [(r.key, r.value) for r in generated])
        print(f"== produced {result.sent} events ({profile.invalid_fraction:.0%} invalid, {profile.duplicate_fraction:.0%} resent) to {topology.spec.source.topic}")
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            now = sizes(settings, outputs)
            done = sum(now[t] - before[t] for t in event_topics)
            if done >= result.sent - resent:
                break
            if worker.poll() is not None:
                print(f"!! the worker exited with {worker.returncode}; see {log_path}")
                return 1
            time.sleep(0.5)
        else:
            print(f"!! only {done} of {result.sent} events arrived in 120 s; see {log_path}")
            return 1
    finally:
        if worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
            worker.wait(timeout=90)

    print("\n== what reached each output topic")
    width = max(len(t) for t in outputs)
    for topic in outputs:
        print(f"  {topic:<{width}}  {now[topic] - before[topic]:>6}")
    print(f"  {'events':<{width}}  {done:>6}  (= {result.sent} produced - {resent} resent, dropped by dedupe;"
          f" not counting {', '.join(sorted(aggregate_topics)) or 'no aggregate topics'})")
    sample = last_record(settings, topology.spec.dead_letter.topic)
    if sample:
        print("\n== a dead letter, as downstream tooling sees it")
        print("  " + orjson.dumps({k: sample[k] for k in ("reason", "stage", "message", "path", "source")}).decode())
    print(
        "\n== where to look next\n"
        f"  worker log:             {log_path}\n"
        f"  run the worker:         .venv/bin/pipeline worker {args.topology}\n"
        f"  send more traffic:      .venv/bin/pipeline produce {args.topology} --generate 100000\n"
        f"  try a file, no broker:  .venv/bin/pipeline run {args.topology} --input events.jsonl --output out/\n"
        "  topology reference:     README.md#topology-reference\n"
        "  stop Kafka:             make kafka-down"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
