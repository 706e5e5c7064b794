"""Per-stage cost of the example topology on generated traffic, in one process.

    .venv/bin/python bench/stage_costs.py [--events 60000] [--geoip PATH]

Runs the Processor over the same batches with stages removed one at a time from the end of the
enrichment chain and reports µs/event per stage (the difference), so figures share one run.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.core.processor import Processor  # noqa: E402
from pipeline.core.records import RawMessage  # noqa: E402
from pipeline.topology import load_topology  # noqa: E402
from pipeline.traffic import TrafficProfile, generate  # noqa: E402


def run(processor: Processor, batches: list[list[RawMessage]]) -> float:
    gc.collect()
    start = time.process_time()
    for batch in batches:
        processor.process(batch)
    return time.process_time() - start


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=60_000)
    parser.add_argument("--geoip", default=os.environ.get("GEOIP_CITY_DB", ""))
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    env = {**os.environ, "PIPELINE_PII_KEY": os.environ.get("PIPELINE_PII_KEY", "bench-key-0123456789abcdef"),
           "GEOIP_CITY_DB": args.geoip}
    topology = load_topology(Path(__file__).resolve().parents[1] / "topologies" / "ecommerce.yaml", env=env)
    records = list(generate(args.events, TrafficProfile(seed=1)))
    batches = [[RawMessage(r.value, r.key, topic="raw", partition=0, offset=i) for i, r in enumerate(records[s:s + 5000])]
               for s in range(0, len(records), 5000)]
    warm_records = list(generate(20_000, TrafficProfile(seed=2)))
    warm = [[RawMessage(r.value, r.key, topic="raw", partition=0, offset=i) for i, r in enumerate(warm_records[s:s + 5000])]
            for s in range(0, len(warm_records), 5000)]
    full = Processor(topology)
    ids = [s.id for s in full.middle]
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)
    # prefix k = validate + first k middle stages + route
    best: dict[int, float] = {}
    for _ in range(args.rounds):
        for k in range(len(ids) + 1):
            # Fresh dedupe state; caches warmed on other traffic of the same shape (as a
            # long-running worker's are).
            processor = Processor(topology)
            processor.middle = processor.middle[:k]
            run(processor, warm)
            elapsed = run(processor, batches)
            best[k] = min(best.get(k, float("inf")), elapsed)
    n = len(records)
    print(f"{n} events, best of {args.rounds} rounds, CPU µs/event")
    print(f"  {'validate + route':<28} {best[0] / n * 1e6:7.2f}")
    for k, stage_id in enumerate(ids, start=1):
        print(f"  + {stage_id:<26} {(best[k] - best[k - 1]) / n * 1e6:7.2f}")
    print(f"  {'whole topology':<28} {best[len(ids)] / n * 1e6:7.2f}  ({n / best[len(ids)]:,.0f} events/s on one core)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
