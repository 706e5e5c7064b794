"""Contender: "the classic approach most teams start from".

    python bench/contenders/classic.py --source TOPIC --prefix PREFIX --expected N --geoip PATH [--group G]

kafka-python (``KafkaConsumer`` / ``KafkaProducer``, default client settings), one event at a
time: ``json.loads`` → validate required fields → ``user_agents.parse`` (no cache) →
``geoip2`` city lookup → route by event name → ``producer.send(json.dumps(event))``.
No batching tricks, no caches. Consumes ``--source`` from the beginning, stops after ``--expected``
input events (after a flush) and prints one JSON line:
``{"events", "seconds" (first consumed → last flushed), "cpu_s", "peak_rss_mb"}``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
import uuid

import geoip2.database
import geoip2.errors


def _lz4_codec_fallback():
    """kafka-python decodes lz4 batches only with the ``lz4`` package, which is not a dependency
    here (aiokafka uses ``cramjam``). The source topic is produced lz4-compressed, so when ``lz4``
    is missing, register a minimal ``lz4.frame`` backed by cramjam's LZ4 *frame* codec before
    kafka-python is imported. Not part of the measured "approach": a team would `pip install lz4`."""
    try:
        import lz4.frame  # noqa: F401
        return
    except ImportError:
        pass
    import types

    import cramjam

    frame = types.ModuleType("lz4.frame")
    frame.compress = lambda data, **_kw: bytes(cramjam.lz4.compress(data))
    frame.decompress = lambda data, **_kw: bytes(cramjam.lz4.decompress(data))
    pkg = types.ModuleType("lz4")
    pkg.frame = frame
    sys.modules["lz4"] = pkg
    sys.modules["lz4.frame"] = frame


_lz4_codec_fallback()

from kafka import KafkaConsumer, KafkaProducer

BOOTSTRAP = os.environ.get("PIPELINE_TEST_BROKER", "127.0.0.1:9092")
from simple_stages import enrich, validate  # noqa: E402  (beside this script)


def route(name, prefix):
    if name == "purchase_completed" or name.startswith(("subscription_", "refund_")):
        return prefix + "revenue_events"
    if name.startswith("error_"):
        return prefix + "error_events"
    return prefix + "processed_events"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--expected", type=int, required=True)
    parser.add_argument("--geoip", required=True)
    parser.add_argument("--group", default=None)
    args = parser.parse_args()

    reader = geoip2.database.Reader(args.geoip)
    consumer = KafkaConsumer(
        args.source,
        bootstrap_servers=BOOTSTRAP,
        group_id=args.group or f"classic-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest",
        enable_auto_commit=True,
    )
    producer = KafkaProducer(bootstrap_servers=BOOTSTRAP)
    invalid_topic = args.prefix + "invalid_events"

    seen = 0
    started = None
    for msg in consumer:
        if started is None:
            started = time.perf_counter()
        try:
            event = json.loads(msg.value)
        except ValueError:  # includes UnicodeDecodeError
            event = None
            error = "not_json"
        else:
            error = validate(event)
        if error is not None:
            producer.send(invalid_topic, msg.value, key=msg.key)
        else:
            name = event.get("event", event.get("event_name"))
            event = enrich(event, reader)
            producer.send(route(name, args.prefix), json.dumps(event).encode(), key=msg.key)
        seen += 1
        if seen >= args.expected:
            break
    producer.flush()
    elapsed = time.perf_counter() - started
    usage = resource.getrusage(resource.RUSAGE_SELF)
    producer.close()
    consumer.close()
    reader.close()
    print(json.dumps({
        "events": seen,
        "seconds": round(elapsed, 4),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 3),
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
    }), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
