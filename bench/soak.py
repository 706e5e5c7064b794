"""Soak: one worker (RocksDB store, every enricher) at half of its maximum rate for a long run.

    python bench/soak.py [--minutes 10] [--rate EPS]

First it measures the worker's maximum rate on a backlog (unless ``--rate`` is given), then
sends generated traffic at half of it for ``--minutes`` while sampling, every 10 s, the
worker's RSS and CPU, its consumer lag (``pipeline_consumer_lag`` from ``/metrics``) and the
error lines in its log. The verdict: RSS flat outside the RocksDB budget (its block cache fills
up to the fixed PIPELINE_ROCKSDB_MEMORY_MB as dedupe keys accumulate; the rest's last-quarter
median within 10% and 30 MB of the second quarter's), RocksDB within its budget, lag stable (no growth from the second half's first samples to its last),
no error log lines, and every event accounted for at the end. Results go to
``bench/results/soak.json`` and ``soak.md``; ``make soak`` runs it. Not a CI test: it takes
``--minutes`` plus about two.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (
    Watermarks,
    cpu_seconds,
    geoip_databases,
    log,
    machine,
)
from pipeline.produce import produce
from pipeline.settings import Settings
from pipeline.traffic import TrafficProfile, generate
from tests.integration.kafka_helpers import BOOTSTRAP, WorkerProcess, make_topology, worker_metric

RESULTS = Path(__file__).resolve().parent / "results"
PII_KEY = "soak-only-pii-key-0123456789abcdef0123456789"
SAMPLE_S = 10.0
ERROR_LINE = re.compile(r"\[(ERROR|CRITICAL)\]|Traceback")
# The worker's dedupe sweep log line (every 60 s): what its RocksDB tables use of their budget.
ROCKSDB_LINE = re.compile(r"RocksDB cache (\d+) MB \(memtables \d+ MB\) of (\d+) MB")
OUTPUTS = ("revenue_events", "error_events", "processed_events", "bot_events", "invalid_events")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def consumer_lag(port: int, source: str) -> int | None:
    """Sum of ``pipeline_consumer_lag`` over the source's partitions (None: no answer)."""
    value = worker_metric(port, "pipeline_consumer_lag", topic=source)
    return None if value is None else int(value)


def error_lines(path: Path) -> list[str]:
    return [line for line in path.read_text(errors="replace").splitlines() if ERROR_LINE.search(line)]


def rocksdb_mb(path: Path) -> tuple[int, int] | None:
    """(RocksDB memory in use, its budget) from the worker's latest sweep log line."""
    found = ROCKSDB_LINE.findall(path.read_text(errors="replace"))
    return (int(found[-1][0]), int(found[-1][1])) if found else None


def wait_outputs(marks: Watermarks, target: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    total = marks.total()
    while total < target and time.monotonic() < deadline:
        time.sleep(0.5)
        total = marks.total()
    return total


def max_rate(worker: WorkerProcess, topology, settings: Settings, marks: Watermarks, n: int) -> float:
    """Events/s the worker sustains on a backlog of ``n`` events (after a warm-up)."""
    profile = TrafficProfile(seed=700)
    produce(settings, topology.source, ((r.key, r.value) for r in generate(2_000, profile)))
    warm = wait_outputs(marks, 1_900, 180)
    backlog = [(r.key, r.value) for r in generate(n, TrafficProfile(seed=701))]
    produce(settings, topology.source, backlog)
    started = time.monotonic()
    done = wait_outputs(marks, warm + int(n * 0.95), 600)
    return (done - warm) / (time.monotonic() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=float, help="events/s (default: half of the measured maximum)")
    parser.add_argument("--backlog", type=int, default=60_000, help="events of the maximum-rate phase")
    args = parser.parse_args()

    settings = Settings.from_env(env={}, broker=BOOTSTRAP)
    tmp = Path(tempfile.mkdtemp(prefix="soak-"))
    city, asn, geo_source = geoip_databases(tmp)
    topology = make_topology(tmp)
    env = {"PIPELINE_PII_KEY": PII_KEY, "GEOIP_CITY_DB": str(city), "GEOIP_ASN_DB": str(asn),
           "PIPELINE_STORE": "rocksdb"}
    from pipeline.runtime.admin import ensure_topics
    from pipeline.topology import load_topology

    ensure_topics(load_topology(topology.path), settings)
    marks = Watermarks([topology.topic(n) for n in OUTPUTS])
    worker = WorkerProcess(topology).start(tmp, env=env)
    assert worker.proc is not None and worker.log_path is not None
    samples: list[dict] = []
    try:
        measured = None
        if args.rate is None:
            log(f"measuring the maximum rate on a backlog of {args.backlog:,} events")
            measured = max_rate(worker, topology, settings, marks, args.backlog)
            log(f"maximum {measured:,.0f} events/s")
        rate = args.rate or measured / 2
        seconds = args.minutes * 60
        count = int(rate * seconds)
        log(f"soak: {count:,} events at {rate:,.0f}/s for {args.minutes:g} min")
        errors_before = len(error_lines(worker.log_path))
        base = marks.total()
        profile = TrafficProfile(seed=702, events_per_second_of_event_time=rate)
        generated = {"valid_or_invalid": 0, "duplicates": 0}

        def records():
            for r in generate(count, profile):
                generated["duplicates" if r.kind == "duplicate" else "valid_or_invalid"] += 1
                yield r.key, r.value

        sent: list = []
        sender = threading.Thread(
            target=lambda: sent.append(produce(settings, topology.source, records(), rate=rate)),
            daemon=True,
        )
        started = time.monotonic()
        cpu_start = cpu_seconds(worker.proc.pid)
        sender.start()
        next_sample = started
        while sender.is_alive() or time.monotonic() - started < seconds:
            next_sample += SAMPLE_S
            time.sleep(max(0.0, next_sample - time.monotonic()))
            if worker.proc.poll() is not None:
                raise RuntimeError(f"the worker exited ({worker.proc.returncode}):\n{worker.log()[-3000:]}")
            now = time.monotonic()
            rocksdb = rocksdb_mb(worker.log_path)
            rss = rss_mb(worker.proc.pid)
            samples.append({
                "t_s": round(now - started, 1),
                "rss_mb": round(rss, 1),
                # The RocksDB block cache fills up to its fixed budget as dedupe keys accumulate:
                # bounded by design. What must stay flat is the rest.
                "rocksdb_mb": rocksdb[0] if rocksdb else None,
                "rocksdb_budget_mb": rocksdb[1] if rocksdb else None,
                "rss_outside_rocksdb_mb": round(rss - (rocksdb[0] if rocksdb else 0), 1),
                "cpu_cores": round((cpu_seconds(worker.proc.pid) - cpu_start) / (now - started), 2),
                "lag": consumer_lag(worker.web_port, topology.source),
                "outputs": marks.total() - base,
                "error_lines": len(error_lines(worker.log_path)) - errors_before,
            })
            s = samples[-1]
            log(f"t={s['t_s']:>5.0f}s rss={s['rss_mb']:.0f} MB (RocksDB {s['rocksdb_mb']} MB) "
                f"lag={s['lag']} outputs={s['outputs']:,} "
                f"cpu={s['cpu_cores']} errors={s['error_lines']}")
        sender.join()
        result_sent = sent[0]
        expected = generated["valid_or_invalid"]  # resent duplicates are dropped by dedupe
        final = wait_outputs(marks, base + expected, 180) - base
        errors = error_lines(worker.log_path)[errors_before:]
        code = worker.terminate()
    finally:
        worker.kill()

    n = len(samples)
    second_quarter = [s["rss_outside_rocksdb_mb"] for s in samples[n // 4: n // 2]]
    last_quarter = [s["rss_outside_rocksdb_mb"] for s in samples[3 * n // 4:]]
    budget = max((s["rocksdb_budget_mb"] or 0) for s in samples)
    lags = [s["lag"] for s in samples if s["lag"] is not None]
    half = lags[len(lags) // 2:]
    head, tail = half[: max(1, len(half) // 4)], half[-max(1, len(half) // 4):]
    rss_q2, rss_q4 = statistics.median(second_quarter), statistics.median(last_quarter)
    checks = {
        "rss_flat": rss_q4 <= rss_q2 * 1.10 and rss_q4 - rss_q2 <= 30,
        "rocksdb_within_budget": all((s["rocksdb_mb"] or 0) <= budget for s in samples),
        "lag_stable": statistics.median(tail) <= max(statistics.median(head) * 1.5, rate * 2),
        "no_error_logs": not errors,
        "nothing_lost": final >= expected and result_sent.failed == 0,
        "clean_stop": code == 0,
    }
    result = {
        "when": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "geoip": geo_source,
        "store": "rocksdb",
        "minutes": args.minutes,
        "max_events_per_s": round(measured) if measured else None,
        "rate": round(rate),
        "sent": result_sent.sent,
        "expected_outputs": expected,
        "outputs": final,
        "rss_mb": {"first": samples[0]["rss_mb"], "max": max(s["rss_mb"] for s in samples),
                   "last": samples[-1]["rss_mb"]},
        "rss_outside_rocksdb_mb": {"first": samples[0]["rss_outside_rocksdb_mb"], "q2_median": rss_q2,
                                   "q4_median": rss_q4},
        "rocksdb_mb": {"first": samples[0]["rocksdb_mb"], "last": samples[-1]["rocksdb_mb"],
                       "budget": budget},
        "lag": {"second_half_first_quarter_median": statistics.median(head),
                "second_half_last_quarter_median": statistics.median(tail), "max": max(lags)},
        "cpu_cores": samples[-1]["cpu_cores"],
        "error_lines": errors[:20],
        "checks": checks,
        "samples": samples,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "soak.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "soak.md").write_text(markdown(result))
    print(markdown(result))
    return 0 if all(checks.values()) else 1


def markdown(r: dict) -> str:
    m = r["machine"]
    lines = [
        f"# Soak, {r['when']}",
        "",
        f"Machine: {m.get('cpu_model', '?')}, {m.get('cores', '?')} cores; one worker, RocksDB store, "
        f"GeoIP: {r['geoip']}.",
        "",
        f"{r['minutes']:g} min at {r['rate']:,} events/s (half of the measured maximum "
        f"{r['max_events_per_s'] or '?':,} events/s): sent {r['sent']:,}, outputs {r['outputs']:,} "
        f"of {r['expected_outputs']:,} expected.",
        "",
        "| check | result |",
        "|---|---|",
        *(f"| {k} | {'ok' if v else 'FAILED'} |" for k, v in r["checks"].items()),
        "",
        f"RSS MB: first {r['rss_mb']['first']}, last {r['rss_mb']['last']}, max {r['rss_mb']['max']}; "
        f"of it RocksDB (its block cache fills up to the fixed budget as dedupe keys accumulate) "
        f"{r['rocksdb_mb']['first']} -> {r['rocksdb_mb']['last']} of {r['rocksdb_mb']['budget']}; "
        f"the rest (must stay flat): median {r['rss_outside_rocksdb_mb']['q2_median']} in the second "
        f"quarter, {r['rss_outside_rocksdb_mb']['q4_median']} in the last. "
        f"Lag (events): median {r['lag']['second_half_first_quarter_median']} at the start of the "
        f"second half, {r['lag']['second_half_last_quarter_median']} at its end, max {r['lag']['max']}. "
        f"Worker CPU: {r['cpu_cores']} cores. Error log lines: {len(r['error_lines'])}.",
        "",
        "| t s | RSS MB | RocksDB MB | RSS outside RocksDB | lag | outputs | error lines |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in r["samples"][::6]:  # one a minute
        lines.append(f"| {s['t_s']:.0f} | {s['rss_mb']} | {s['rocksdb_mb']} | {s['rss_outside_rocksdb_mb']} "
                     f"| {s['lag']} | {s['outputs']:,} | {s['error_lines']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
