"""Smoke-check a contender end to end against the local broker.

    .venv/bin/python bench/contenders/verify.py classic --events 20000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from pipeline.produce import produce
from pipeline.runtime.admin import ensure_topics
from pipeline.settings import Settings
from pipeline.topology import load_topology
from pipeline.traffic import TrafficProfile, generate
from tests.integration.kafka_helpers import make_topology, topic_size

GEOIP = "/work/shared/data/geoip/test-data/GeoIP2-City-Test.mmdb"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("contender")
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--timeout", type=float, default=600)
    args = parser.parse_args()
    os.environ.setdefault("PIPELINE_PII_KEY", "bench-only-key-0123456789abcdef")
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        topology = make_topology(tmp, partitions=4)
        settings = Settings.from_env(env={})
        ensure_topics(load_topology(topology.path), settings)
        records = [(r.key, r.value) for r in generate(args.events, TrafficProfile(seed=5))]
        produce(settings, topology.source, records)
        assert topic_size(topology.source) == args.events
        result_path = tmp / "result.json"
        cmd = [sys.executable, str(REPO / "bench" / "contenders" / f"{args.contender}.py"),
               "--source", topology.source, "--prefix", topology.prefix,
               "--expected", str(args.events), "--geoip", GEOIP,
               "--group", f"{topology.prefix}{args.contender}"]
        if args.contender != "classic":
            cmd += ["--result", str(result_path)]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=args.timeout, cwd=REPO)
        wall = time.perf_counter() - t0
        print("rc", proc.returncode, "wall", round(wall, 2))
        print("stdout:", proc.stdout[-2000:])
        print("stderr tail:", proc.stderr[-3000:])
        sizes = {t: topic_size(t) for t in topology.outputs}
        print(json.dumps(sizes, indent=1))
        total = sum(sizes.values())
        line = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
        if line:
            res = json.loads(line[-1])
            print("events/s", round(res["events"] / res["seconds"]))
        print("total", total, "expected", args.events, "OK" if total == args.events else "MISMATCH")
        return 0 if total == args.events and proc.returncode == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
