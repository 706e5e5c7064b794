"""Where a worker's CPU goes: py-spy samples of one worker (every enricher, dedupe, aggregates)
working through a backlog, grouped by part of the pipeline.

    .venv/bin/python bench/profile_worker.py [--events 200000] [--seconds 30]

Starts a worker on the example topology (unique topics on the local broker), lets it warm up,
produces a backlog and records py-spy (``--nonblocking``, busy samples only, every thread) while
the worker drains it. Prints the share of busy samples per part, and the events/s of the run,
and writes the raw collapsed stacks next to the results (``bench/results/profile.txt``).
Each sample is attributed to the innermost frame that belongs to a known part (so time inside
orjson called by the validator counts as validation).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import Watermarks, geoip_databases, log
from pipeline.produce import produce
from pipeline.runtime.admin import ensure_topics
from pipeline.settings import Settings
from pipeline.topology import load_topology
from pipeline.traffic import TrafficProfile, generate
from tests.integration.kafka_helpers import BOOTSTRAP, WorkerProcess, make_topology

RESULTS = Path(__file__).resolve().parent / "results"
PY_SPY = Path(sys.executable).parent / "py-spy"

# (part, substrings of a frame "function (file:line)"), most specific first.
PARTS: list[tuple[str, tuple[str, ...]]] = [
    ("enricher: geoip", ("enrichers/geoip",)),
    ("enricher: user agent", ("enrichers/user_agent", "ua_parser", "user_agents")),
    ("enricher: referrer", ("enrichers/referrer",)),
    ("enricher: campaign", ("enrichers/campaign",)),
    ("enricher: bot", ("enrichers/bot",)),
    ("enricher: pii", ("enrichers/pii",)),
    ("enricher: ip anonymisation", ("enrichers/ip_anonymize",)),
    ("enricher: consent", ("enrichers/consent",)),
    ("enrichers: other and the stage loop", ("enrichers/", "stages/enrich")),
    ("parse and validate", ("stages/validate",)),
    ("dedupe", ("stages/dedupe", "core/dedupe_store", "runtime/state", "partitioning", "rocksdict")),
    ("aggregates", ("stages/aggregate", "core/aggregator", "core/combiner", "core/measures",
                    "runtime/aggregates")),
    ("route (stamp, serialise)", ("stages/route",)),
    ("output: produce and delivery", ("runtime/output", "cimpl", "confluent_kafka")),
    ("metrics", ("pipeline/metrics", "prometheus_client")),
    ("dead letters", ("core/deadletter",)),
    ("pipeline: batch and processor", ("core/processor", "core/batch", "core/records", "runtime/app",
                                       "runtime/faust_compat")),
    ("fetch (aiokafka)", ("aiokafka",)),
    ("faust and mode", ("faust/", "mode/")),
    ("asyncio and threads", ("asyncio/", "threading", "concurrent/")),
]


def part_of(stack: str) -> str:
    frames = stack.split(";")
    for frame in reversed(frames):  # innermost first
        for part, needles in PARTS:
            if any(n in frame for n in needles):
                return part
    return "other (gc, interpreter, libraries)"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--seconds", type=float, default=30.0)
    args = parser.parse_args()

    settings = Settings.from_env(env={}, broker=BOOTSTRAP)
    tmp = Path(tempfile.mkdtemp(prefix="profile-"))
    city, asn, _ = geoip_databases(tmp)
    topology = make_topology(tmp)
    ensure_topics(load_topology(topology.path), settings)
    marks = Watermarks(topology.outputs)
    env = {"PIPELINE_PII_KEY": "profile-only-pii-key-0123456789abcdef",
           "GEOIP_CITY_DB": str(city), "GEOIP_ASN_DB": str(asn)}
    worker = WorkerProcess(topology).start(tmp, env=env)
    assert worker.proc is not None
    raw = tmp / "profile.txt"
    try:
        produce(settings, topology.source, ((r.key, r.value) for r in generate(5_000, TrafficProfile(seed=900))))
        deadline = time.monotonic() + 180
        while marks.total() < 4_900 and time.monotonic() < deadline:
            time.sleep(0.5)
        base = marks.total()
        log(f"producing a backlog of {args.events:,} events")
        produce(settings, topology.source, ((r.key, r.value) for r in generate(args.events, TrafficProfile(seed=901))))
        started = time.monotonic()
        subprocess.run([str(PY_SPY), "record", "--nonblocking", "--format", "raw", "--rate", "200",
                        "--duration", str(int(args.seconds)), "--pid", str(worker.proc.pid),
                        "--output", str(raw)], check=True, capture_output=True)
        elapsed = time.monotonic() - started
        done = marks.total() - base
    finally:
        worker.terminate()
        worker.kill()
        marks.close()

    shares: Counter[str] = Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            shares[part_of(stack)] += int(count)
    total = sum(shares.values())
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "profile.txt").write_text(raw.read_text())
    print(f"{done:,} outputs in {elapsed:.0f} s of sampling ({done / elapsed:,.0f}/s); {total:,} busy samples")
    for part, n in shares.most_common():
        print(f"{100 * n / total:5.1f}%  {part}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
