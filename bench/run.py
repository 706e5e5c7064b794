"""The benchmark of issue 4: this pipeline against a passthrough ceiling and two simpler designs.

    .venv/bin/python bench/run.py            # full (make bench): ~15 minutes
    .venv/bin/python bench/run.py --quick    # ~2 minutes (make bench-quick)
    .venv/bin/python bench/run.py --only ceiling,pipeline --events 100000

Against the real local broker, with generated traffic (``pipeline.traffic``: skewed user agents,
IPv4/IPv6, sessions, 1% resent duplicates, 2% invalid), one contender at a time:

  ceiling      confluent-kafka consume → json.loads → produce, no processing (bench/common.py)
  pipeline     ``python -m pipeline worker`` on topologies/ecommerce.yaml (GeoIP on MaxMind's
               test databases, or generated ones when ../shared/data is absent)
  classic      kafka-python, one event at a time (bench/contenders/classic.py)
  naive_faust  a plain per-event Faust agent (bench/contenders/naive_faust.py)

Each contender gets fresh topics. Two phases on the same process:

1. Throughput. N events are produced to a fresh 4-partition source topic *before* the contender
   starts. The harness watches the output topics' high watermarks: events/s = outputs delivered
   between the first output seen and the last one, over that time; so start-up (Faust needs
   seconds) is not counted. CPU = utime+stime of the contender process (/proc/<pid>/stat)
   between those two moments, per million events.
2. Latency at half of its own maximum rate. Fresh events are sent at a steady rate of half the
   events/s just measured, for a fixed time, each with Kafka timestamp = wall-clock send time.
   Output topics use LogAppendTime, so latency = broker write time of the output − send time of
   its input (matched by ``event_id``; the pipeline's dead letters carry the input timestamp).

Peak RSS = VmHWM of the contender process at the end. The classic and naive Faust contenders run
at ~700 events/s, so they get fewer events (``--slow-events``): events counted per contender are
in the JSON. Then: scaling (one worker vs two on a 2-partition source) and dedupe memory
(``bench/dedupe_memory.py``). Results: ``<out>/latest.json`` and ``<out>/latest.md`` (also printed).
Figures depend on the machine (and its neighbours): compare the ratios.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (
    REPO,
    Watermarks,
    admin,
    broker_pid,
    cpu_seconds,
    create_topics,
    delete_groups_with_prefix,
    delete_topics_with_prefix,
    geoip_databases,
    latencies_ms,
    log,
    machine,
    new_sent_index,
    peak_rss_mb,
    percentile,
    read_range,
    start_ceiling,
)
from pipeline.produce import new_producer, produce
from pipeline.settings import Settings
from pipeline.traffic import GeneratedRecord, TrafficProfile, generate
from tests.integration.kafka_helpers import TestTopology, WorkerProcess, make_topology

CONTENDERS = ("ceiling", "pipeline", "classic", "naive_faust")
EXTRAS = ("scaling", "dedupe_memory")
PII_KEY = "bench-only-pii-key-0123456789abcdef0123456789"

# events: ceiling and pipeline (the same N); slow_events: classic and naive Faust (~700/s);
# latency_s: length of the half-rate phase; scale_events: per scaling phase.
SIZES = {
    "full": {"events": 300_000, "slow_events": 20_000, "latency_s": 20.0,
             "scale_events": 200_000, "dedupe_keys": 5_000_000},
    "quick": {"events": 40_000, "slow_events": 1_500, "latency_s": 3.0,
              "scale_events": 20_000, "dedupe_keys": 200_000},
}

TARGETS = [
    # (name, key into the flat figures, comparison, target)
    ("pipeline events/s", "pipeline_eps", ">=", 50_000),
    ("pipeline/ceiling", "pipeline/ceiling", ">=", 0.4),
    ("pipeline/classic", "pipeline/classic", ">=", 15),
    ("pipeline/naive_faust", "pipeline/naive_faust", ">=", 8),
    ("pipeline p99 ms", "pipeline_p99_ms", "<=", 250),
    ("dedupe peak RSS MB at 5M keys", "dedupe_peak_rss_mb", "<=", 400),
    ("scaling two/one workers", "scaling_ratio", ">=", 1.7),
]


class ContenderFailed(Exception):
    pass


# --------------------------------------------------------------------------------------------
# Traffic
# --------------------------------------------------------------------------------------------


def traffic(n: int, seed: int, *, per_second: float = 200.0) -> list[GeneratedRecord]:
    """N generated records whose event times end two minutes before now: the pipeline's
    validator rejects events from more than 5 min in the future or more than 30 days ago.
    Event time advances ``per_second`` records per second: the generator's 200 for a backlog,
    the send rate when records are sent at a pace (the windows then close as they would live)."""
    span_ms = int(n / per_second * 1000) + 120_000
    start_ms = int(time.time() * 1000) - min(span_ms, 29 * 86_400_000)
    profile = TrafficProfile(seed=seed, start_ms=start_ms, events_per_second_of_event_time=per_second)
    return list(generate(n, profile))


def distinct(records: list[GeneratedRecord]) -> int:
    """Outputs of a contender that drops resent duplicates (the pipeline's dedupe stage)."""
    return sum(1 for r in records if r.kind != "duplicate")


def event_id_of(value: bytes) -> str | None:
    try:
        doc = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    event_id = doc.get("event_id") if isinstance(doc, dict) else None
    return event_id if isinstance(event_id, str) else None


# --------------------------------------------------------------------------------------------
# Contenders
# --------------------------------------------------------------------------------------------

SIMPLE_OUTPUTS = {"revenue_events": 4, "error_events": 4, "processed_events": 4, "invalid_events": 1}
PIPELINE_OUTPUTS = {**SIMPLE_OUTPUTS, "bot_events": 1}  # as topologies/ecommerce.yaml declares


@dataclass
class Running:
    """A started contender: the process measured, and how to stop it."""

    name: str
    proc: subprocess.Popen
    stop_signal: int = signal.SIGTERM
    worker: WorkerProcess | None = None
    log_path: Path | None = None

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_text(self) -> str:
        if self.log_path and self.log_path.exists():
            return self.log_path.read_text(errors="replace")
        return ""

    def log_tail(self) -> str:
        return self.log_text()[-3000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(self.stop_signal)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)


@dataclass
class Env:
    settings: Settings
    tmp: Path
    city_db: Path
    asn_db: Path
    prefixes: list[str] = field(default_factory=list)

    def worker_env(self) -> dict[str, str]:
        return {"PIPELINE_PII_KEY": PII_KEY, "GEOIP_CITY_DB": str(self.city_db),
                "GEOIP_ASN_DB": str(self.asn_db)}


def output_topics(name: str, topology: TestTopology) -> dict[str, int]:
    if name == "ceiling":
        return {topology.topic("ceiling_out"): 4}
    names = PIPELINE_OUTPUTS if name == "pipeline" else SIMPLE_OUTPUTS
    return {topology.topic(n): p for n, p in names.items()}


def start(name: str, topology: TestTopology, env: Env) -> Running:
    log_path = env.tmp / f"{name}-{topology.prefix}log"
    if name == "ceiling":
        proc = start_ceiling(topology.source, topology.topic("ceiling_out"), log_path)
        return Running(name, proc, log_path=log_path)
    if name == "pipeline":
        state = env.tmp / f"state-{topology.prefix}"
        state.mkdir()
        worker = WorkerProcess(topology).start(state, env=env.worker_env())
        return Running(name, worker.proc, worker=worker, log_path=worker.log_path)
    # classic / naive_faust: told to expect far more events than they get, so they keep
    # consuming through both phases; the harness stops them.
    cmd = [sys.executable, str(REPO / "bench" / "contenders" / f"{name}.py"),
           "--source", topology.source, "--prefix", topology.prefix,
           "--expected", str(10**12), "--geoip", str(env.city_db),
           "--group", topology.topic(name)]
    with log_path.open("ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
    # kafka-python installs no signal handler (SIGTERM ends it at once); Faust stops gracefully.
    return Running(name, proc, log_path=log_path)


# --------------------------------------------------------------------------------------------
# Phases
# --------------------------------------------------------------------------------------------


def broker_cpu() -> float | None:
    """CPU seconds of the local broker: it shares the machine with the contender, and a busy
    broker explains a slow contender."""
    pid = broker_pid()
    return cpu_seconds(pid) if pid else None


def cores(cpu_before: float | None, cpu_after: float | None, seconds: float) -> float | None:
    """CPU seconds per second: 1.0 = one core busy all the time."""
    if cpu_before is None or cpu_after is None or seconds <= 0:
        return None
    return round((cpu_after - cpu_before) / seconds, 2)


def watch_outputs(running: Running, marks: Watermarks, base: int, expected: int,
                  *, stall_s: float = 120.0) -> dict:
    """Poll the outputs until ``expected`` more than ``base`` are there. Returns the first and
    last moments outputs were seen, with the count and the CPU of the contender and the broker
    at each."""
    first = None
    last_total, last_change = base, time.monotonic()
    while True:
        total = marks.total() - base
        now = time.monotonic()
        if total and first is None:
            first = {"t": now, "n": total, "cpu": cpu_seconds(running.proc.pid), "broker": broker_cpu()}
        if total >= expected:
            return {"first": first, "last": {"t": now, "n": total, "cpu": cpu_seconds(running.proc.pid),
                                             "broker": broker_cpu()}}
        if total != last_total:
            last_total, last_change = total, now
        if not running.alive():
            raise ContenderFailed(f"{running.name} exited (rc {running.proc.returncode}) after "
                                  f"{total} of {expected} outputs:\n{running.log_tail()}")
        if now - last_change > stall_s:
            raise ContenderFailed(f"{running.name}: no new output for {stall_s:.0f}s "
                                  f"({total} of {expected}):\n{running.log_tail()}")
        time.sleep(0.05)


def throughput(running: Running, marks: Watermarks, expected: int) -> dict:
    seen = watch_outputs(running, marks, 0, expected)
    first, last = seen["first"], seen["last"]
    # Count only what was delivered after the first sighting: the first batch's outputs were
    # processed before the clock started.
    counted = last["n"] - first["n"]
    seconds = last["t"] - first["t"]
    if counted <= 0 or seconds <= 0:
        raise ContenderFailed(f"{running.name}: all {expected} outputs appeared at once; "
                              "use more events to measure a rate")
    return {
        "events_per_s": round(counted / seconds),
        "cpu_s_per_million": round((last["cpu"] - first["cpu"]) / counted * 1e6, 1),
        "measured_outputs": counted,
        "measured_seconds": round(seconds, 3),
        # Diagnostics: how busy the contender and the broker were in that window (cores).
        "cores_used": cores(first["cpu"], last["cpu"], seconds),
        "broker_cores_used": cores(first["broker"], last["broker"], seconds),
    }


def half_rate_latency(running: Running, marks: Watermarks, source: str, rate: float,
                      seconds: float, settings: Settings, *, dedupes: bool, seed: int) -> dict:
    """Send at ``rate`` events/s for ``seconds``, then match outputs to send times."""
    n = max(50, int(rate * seconds))
    # Event time at the pace of sending (at 200 per second, as for a backlog, the windows
    # closed ~20x faster than the wall clock at a few thousand events/s).
    records = traffic(n, seed, per_second=rate)
    ids = [event_id_of(r.value) for r in records]  # parsed before the clock starts
    expected = distinct(records) if dedupes else n
    # linger.ms=1: the harness's own batching counts as latency, keep it small.
    producer = new_producer(settings, **{"linger.ms": 1})
    # Warm-up, not measured: connects the producer (and gets its idempotent producer id) and
    # shows the contender is consuming, so neither shows up as latency.
    warmup = [r for r in traffic(20, seed + 1) if r.kind == "valid"]
    base = marks.total()
    for r in warmup:
        producer.produce(source, r.value, r.key)
    producer.flush(30)
    watch_outputs(running, marks, base, len(warmup))
    base_offsets = marks.offsets()
    base = sum(base_offsets.values())
    sent = new_sent_index()
    began = time.monotonic()
    for i, (record, event_id) in enumerate(zip(records, ids)):
        ahead = began + i / rate - time.monotonic()
        if ahead > 0.002:
            producer.poll(0)
            time.sleep(ahead)
        now_ms = time.time_ns() // 1_000_000
        while True:
            try:
                producer.produce(source, record.value, record.key, timestamp=now_ms)
                break
            except BufferError:
                producer.poll(0.01)
        if event_id is not None:
            sent[event_id].append(now_ms)
        if i % 1000 == 0:
            producer.poll(0)
    producer.flush(60)
    send_seconds = time.monotonic() - began
    note = None
    try:
        watch_outputs(running, marks, base, expected, stall_s=max(60.0, seconds * 3))
    except ContenderFailed as exc:
        if not running.alive():
            raise
        note = str(exc).splitlines()[0]  # measure what did arrive
    outputs = read_range(base_offsets, marks.offsets())
    pairs, unmatched = latencies_ms(outputs, sent)
    lat = [ms for _, ms in pairs]
    # p50 per quarter of the sending time: flat when the contender keeps up, rising when a
    # backlog builds (then the rate was more than it could sustain at that moment).
    quarters: list[list[int]] = [[], [], [], []]
    began_ms = min((s for s, _ in pairs), default=0)
    for sent_ms, ms in pairs:
        quarters[min(3, int((sent_ms - began_ms) / (send_seconds * 1000) * 4))].append(ms)
    result = {
        "p50_ms": percentile(lat, 50),
        "p99_ms": percentile(lat, 99),
        "latency": {
            "target_rate_eps": round(rate),
            "achieved_send_rate_eps": round(n / send_seconds),
            "seconds": round(send_seconds, 2),
            "sent": n,
            "outputs": len(outputs),
            "outputs_expected": expected,
            "matched": len(lat),
            "unmatched": unmatched,
            "max_ms": max(lat) if lat else None,
            "p50_ms_by_quarter": [percentile(q, 50) for q in quarters],
        },
    }
    if note:
        result["latency"]["note"] = note
    return result


def run_contender(name: str, n: int, records: list[GeneratedRecord], env: Env,
                  latency_s: float) -> dict:
    """Both phases for one contender, on fresh topics; returns its figures (or an error)."""
    topology = make_topology(env.tmp, partitions=4)  # unique topic names for this contender
    env.prefixes.append(topology.prefix)
    outputs = output_topics(name, topology)
    create_topics(outputs, log_append_time=True)
    create_topics({topology.source: 4})
    records = records[:n]
    dedupes = name == "pipeline"
    expected = distinct(records) if dedupes else n
    log(f"{name}: producing {n:,} events to {topology.source}")
    produced = produce(env.settings, topology.source, [(r.key, r.value) for r in records])
    if produced.failed:
        raise ContenderFailed(f"producing the input failed: {produced.first_error}")
    marks = Watermarks(list(outputs))
    running = start(name, topology, env)
    result: dict = {"events": n, "outputs_expected": expected}
    try:
        log(f"{name}: started (pid {running.proc.pid}); waiting for {expected:,} outputs")
        result.update(throughput(running, marks, expected))
        log(f"{name}: {result['events_per_s']:,} events/s, "
            f"{result['cpu_s_per_million']} CPU s per million events; cores used "
            f"{result['cores_used']}, by the broker {result['broker_cores_used']}")
        rate = result["events_per_s"] / 2
        log(f"{name}: latency phase, {rate:,.0f} events/s for {latency_s:g}s")
        result.update(half_rate_latency(running, marks, topology.source, rate, latency_s,
                                        env.settings, dedupes=dedupes, seed=1000 + len(env.prefixes)))
        log(f"{name}: p50 {result['p50_ms']:g} ms, p99 {result['p99_ms']:g} ms "
            f"({result['latency']['matched']:,} events matched)")
        result["peak_rss_mb"] = round(peak_rss_mb(running.proc.pid), 1)
        if name == "pipeline":
            # Say whether GeoIP really ran (the stage is optional in the example topology).
            geo = [ln for ln in running.log_text().splitlines() if "stage geo:" in ln]
            result["geo_stage"] = geo[0].split("stage geo:", 1)[1].strip() if geo else "unknown"
    finally:
        marks.close()
        running.stop()
    return result


# --------------------------------------------------------------------------------------------
# Scaling: one worker vs two on a 2-partition source
# --------------------------------------------------------------------------------------------


def wait_for_group(group: str, source: str, members: int, timeout: float = 180.0) -> None:
    """Until the group is stable with ``members`` members, each owning a source partition."""
    from confluent_kafka import ConsumerGroupState, KafkaException

    client = admin()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            desc = client.describe_consumer_groups([group])[group].result(timeout=10)
        except KafkaException:
            desc = None
        if desc is not None and desc.state == ConsumerGroupState.STABLE and len(desc.members) == members:
            owned = [sum(tp.topic == source for tp in m.assignment.topic_partitions) for m in desc.members]
            if all(owned):
                return
        time.sleep(0.5)
    raise ContenderFailed(f"group {group} did not settle with {members} member(s) in {timeout:.0f}s")


def scaling_phase(workers: list[Running], marks: Watermarks, topology: TestTopology,
                  n: int, env: Env, seed: int) -> tuple[float, list[float]]:
    """Warm the group up, then give it a backlog of N events and measure the workers' rate.

    The workers are paused (SIGSTOP) while the N events are produced and resumed together
    (SIGCONT): like the single-process comparison they find the whole input waiting (events
    produced while they run would arrive as a trickle of small batches), and neither start-up
    nor the rebalance that adds a worker is counted. The pause (seconds) is far below the
    group's session timeout (Faust: 60 s), so the group does not rebalance.
    """
    warmup = traffic(200, seed + 500)
    base = marks.total()
    produce(env.settings, topology.source, [(r.key, r.value) for r in warmup])
    watch_outputs(workers[-1], marks, base, distinct(warmup))
    records = traffic(n, seed)
    expected = distinct(records)
    base = marks.total()
    for w in workers:
        os.kill(w.proc.pid, signal.SIGSTOP)
    try:
        produced = produce(env.settings, topology.source, [(r.key, r.value) for r in records])
    finally:
        for w in workers:
            os.kill(w.proc.pid, signal.SIGCONT)
    if produced.failed:
        raise ContenderFailed(f"producing the input failed: {produced.first_error}")
    before = [cpu_seconds(w.proc.pid) for w in workers], broker_cpu(), time.monotonic()
    seen = watch_outputs(workers[-1], marks, base, expected)
    for w in workers:
        if not w.alive():
            raise ContenderFailed(f"a worker died:\n{w.log_tail()}")
    # Cores each worker (and the broker) used while the backlog was processed: workers near 1.0
    # are CPU-bound and scale with cores; well below, they waited on something else.
    elapsed = time.monotonic() - before[2]
    used = [cores(c, cpu_seconds(w.proc.pid), elapsed) for w, c in zip(workers, before[0])]
    used.append(cores(before[1], broker_cpu(), elapsed))
    first, last = seen["first"], seen["last"]
    return (last["n"] - first["n"]) / (last["t"] - first["t"]), used


def run_scaling(n: int, env: Env) -> dict:
    topology = make_topology(env.tmp, partitions=2)
    env.prefixes.append(topology.prefix)
    workers: list[Running] = []
    marks = None
    eps: dict[int, float] = {}
    used: dict[int, list[float | None]] = {}  # cores per worker, then the broker's
    try:
        for count in (1, 2):
            # The second worker joins the first one's group: Faust rebalances, moving one
            # partition (and its dedupe state, restored from the changelog) to the new worker.
            state = env.tmp / f"state-{topology.prefix}{count}"
            state.mkdir()
            worker = WorkerProcess(topology).start(state, env=env.worker_env())
            workers.append(Running("pipeline", worker.proc, worker=worker, log_path=worker.log_path))
            log(f"scaling: starting worker {count}, waiting for the group to settle")
            wait_for_group(topology.group_id, topology.source, count)
            if marks is None:
                marks = Watermarks(topology.outputs)
            eps[count], used[count] = scaling_phase(workers, marks, topology, n, env, seed=2000 + count)
            log(f"scaling: {count} worker(s): {eps[count]:,.0f} events/s; cores used by each "
                f"worker {used[count][:-1]}, by the broker {used[count][-1]}")
    finally:
        if marks is not None:
            marks.close()
        for w in workers:
            w.stop()
    return {"events_per_phase": n, "partitions": 2, "one_worker_eps": round(eps[1]),
            "two_workers_eps": round(eps[2]), "ratio": round(eps[2] / eps[1], 3),
            "worker_cores_used": {"one": used[1][:-1], "two": used[2][:-1]},
            "broker_cores_used": {"one": used[1][-1], "two": used[2][-1]}}


# --------------------------------------------------------------------------------------------
# Dedupe memory (bench/dedupe_memory.py, its own process)
# --------------------------------------------------------------------------------------------


def run_dedupe_memory(keys: int) -> dict:
    script = REPO / "bench" / "dedupe_memory.py"
    if not script.exists():
        return {"error": f"{script.relative_to(REPO)} not found"}
    log(f"dedupe_memory: {keys:,} keys (bench/dedupe_memory.py, progress below)")
    try:
        proc = subprocess.run([sys.executable, str(script), "--keys", str(keys)], cwd=REPO,
                              stdout=subprocess.PIPE, text=True, timeout=4 * 3600, check=False)
    except subprocess.TimeoutExpired:
        return {"error": "timed out"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    if proc.returncode != 0 or not lines:
        return {"error": f"exit status {proc.returncode}; last output: {lines[-1] if lines else ''}"[:500]}
    try:
        return json.loads(lines[-1])
    except ValueError:
        return {"error": f"last line is not JSON: {lines[-1][:300]}"}


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def ratios(contenders: dict) -> dict:
    def eps(name: str) -> float | None:
        return contenders.get(name, {}).get("events_per_s")

    out = {}
    for other in ("ceiling", "classic", "naive_faust"):
        p, o = eps("pipeline"), eps(other)
        out[f"pipeline/{other}"] = round(p / o, 3) if p and o else None
    return out


def evaluate_targets(result: dict) -> dict:
    pipeline = result["contenders"].get("pipeline", {})
    dedupe = result.get("dedupe_memory", {})
    figures = {
        "pipeline_eps": pipeline.get("events_per_s"),
        "pipeline_p99_ms": pipeline.get("p99_ms"),
        "dedupe_peak_rss_mb": dedupe.get("peak_rss_mb"),
        "scaling_ratio": result.get("scaling", {}).get("ratio"),
        **result["ratios"],
    }
    targets = {}
    for name, key, op, target in TARGETS:
        value = figures.get(key)
        note = None
        if value is None or (isinstance(value, float) and math.isnan(value)):
            met, note = None, "not measured"
        elif key == "dedupe_peak_rss_mb" and dedupe.get("keys", 0) < 5_000_000:
            # The target is at 5M keys: a smaller run (quick) is reported, not judged.
            met, note = None, f"not judged: {dedupe.get('keys', 0):,} keys"
        else:
            met = value >= target if op == ">=" else value <= target
        targets[name] = {"value": value, "target": f"{op} {target:g}", "met": met}
        if note:
            targets[name]["note"] = note
    return targets


def fmt(value, digits: int = 0) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, (int, float)):
        return f"{value:,.{digits}f}"
    return str(value)


def markdown(result: dict) -> str:
    m = result["machine"]
    load = " / ".join(str(x) for x in m["load_avg_at_start"])
    about = (
        f"Machine: {m['cpu_model']}, {m['cores']} cores, {m['ram_gb']} GB RAM, "
        f"Python {m['python']}, kernel {m['kernel']}, Kafka {m['kafka']} (local, one broker), "
        f"load average at start {load}. GeoIP: {result['geoip']}. "
        f"Wall time {result['wall_s']:.0f} s."
    )
    lines = [
        f"# Benchmark ({result['mode']}), {result['started_at']}",
        "",
        about,
        "",
        "| contender | events | events/s | p50 ms | p99 ms | latency at (events/s) | CPU s / M events | peak RSS MB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name in CONTENDERS:
        c = result["contenders"].get(name)
        if c is None:
            continue
        if "error" in c:
            lines.append(f"| {name} | {fmt(c.get('events'))} | failed: {c['error'].splitlines()[0][:120]} |||||")
            continue
        lat = c.get("latency", {})
        lines.append(
            f"| {name} | {fmt(c['events'])} | {fmt(c['events_per_s'])} | {fmt(c.get('p50_ms'))} | "
            f"{fmt(c.get('p99_ms'))} | {fmt(lat.get('achieved_send_rate_eps'))} | "
            f"{fmt(c.get('cpu_s_per_million'), 1)} | {fmt(c.get('peak_rss_mb'), 1)} |"
        )
    detail = [(n, c) for n, c in result["contenders"].items() if "error" not in c]
    if detail:
        # How to read the figures: cores used show whether a contender was CPU-bound (or the
        # broker busy); a p50 that rises over the latency phase means a backlog built up.
        header = ("| detail | cores used (contender / broker) | latency events matched / unmatched "
                  "| latency p50 by quarter of the phase, ms |")
        lines += ["", header, "|---|---:|---:|---:|"]
        for name, c in detail:
            lat = c.get("latency", {})
            quarters = " / ".join(fmt(q) for q in lat.get("p50_ms_by_quarter", []))
            lines.append(f"| {name} | {fmt(c.get('cores_used'), 2)} / {fmt(c.get('broker_cores_used'), 2)} | "
                         f"{fmt(lat.get('matched'))} / {fmt(lat.get('unmatched'))} | {quarters} |")
    slow = [n for n in ("classic", "naive_faust") if n in result["contenders"]]
    if slow:
        lines += ["", (f"{' and '.join(slow)} run at ~700 events/s, so they get fewer events "
                       "(column *events*); ceiling and pipeline get the same N.")]
    lines += ["", "| ratio | value |", "|---|---:|"]
    lines += [f"| {k} | {fmt(v, 2)} |" for k, v in result["ratios"].items()]
    if "scaling" in result:
        s = result["scaling"]
        lines += ["", "| scaling (2-partition source) | value |", "|---|---:|"]
        if "error" in s:
            lines.append(f"| failed | {s['error'].splitlines()[0][:120]} |")
        else:
            lines += [f"| one worker events/s | {fmt(s['one_worker_eps'])} |",
                      f"| two workers events/s | {fmt(s['two_workers_eps'])} |",
                      f"| ratio | {fmt(s['ratio'], 2)} |"]
    if "dedupe_memory" in result:
        d = result["dedupe_memory"]
        lines += ["", "| dedupe memory | value |", "|---|---:|"]
        if "error" in d:
            lines.append(f"| failed | {d['error'].splitlines()[0][:120]} |")
        else:
            lines += [f"| {k} | {fmt(v, 1) if isinstance(v, float) else fmt(v)} |"
                      for k, v in d.items() if not isinstance(v, (dict, list))]
    lines += ["", "| target | value | wanted | met |", "|---|---:|---:|---|"]
    for name, t in result["targets"].items():
        met = {True: "yes", False: "**no**", None: t.get("note", "")}[t["met"]]
        value = t["value"]
        digits = 2 if isinstance(value, float) and abs(value) < 100 else 0
        lines.append(f"| {name} | {fmt(value, digits)} | {t['target']} | {met} |")
    return "\n".join(lines) + "\n"


def write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer events, shorter phases (~1 min)")
    parser.add_argument("--events", type=int, help="events for ceiling and pipeline")
    parser.add_argument("--slow-events", type=int, help="events for classic and naive_faust")
    parser.add_argument("--latency-seconds", type=float, help="length of the half-rate phase")
    parser.add_argument("--only", help=f"comma-separated subset of: {', '.join(CONTENDERS + EXTRAS)}")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results", help="results directory")
    args = parser.parse_args()

    size = dict(SIZES["quick" if args.quick else "full"])
    if args.events:
        size["events"] = args.events
    if args.slow_events:
        size["slow_events"] = args.slow_events
    if args.latency_seconds:
        size["latency_s"] = args.latency_seconds
    selected = list(CONTENDERS + EXTRAS)
    if args.only:
        selected = [s.strip() for s in args.only.split(",") if s.strip()]
        unknown = set(selected) - set(CONTENDERS + EXTRAS)
        if unknown:
            parser.error(f"unknown in --only: {', '.join(sorted(unknown))}")

    began = time.monotonic()
    result: dict = {
        "mode": "quick" if args.quick else "full",
        "started_at": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "sizes": size,
        "method": ("events/s: outputs delivered between the first and the last output seen "
                   "(start-up excluded), input pre-produced to a 4-partition topic; latency: "
                   "output LogAppendTime - input send time at half the contender's own events/s; "
                   "CPU: utime+stime of the contender process over the throughput window; "
                   "peak RSS: VmHWM of the contender process at the end"),
        "contenders": {},
    }
    log(f"{result['mode']} run: {', '.join(selected)}; load average {result['machine']['load_avg_at_start']}")
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp_dir:
        tmp = Path(tmp_dir)
        city_db, asn_db, result["geoip"] = geoip_databases(tmp)
        env = Env(settings=Settings.from_env(env={}), tmp=tmp, city_db=city_db, asn_db=asn_db)
        try:
            wanted = [c for c in CONTENDERS if c in selected]
            if wanted:
                n_max = max(size["events"] if c in ("ceiling", "pipeline") else size["slow_events"]
                            for c in wanted)
                log(f"generating {n_max:,} events")
                records = traffic(n_max, seed=5)
            for name in wanted:
                n = size["events"] if name in ("ceiling", "pipeline") else size["slow_events"]
                try:
                    result["contenders"][name] = run_contender(name, n, records, env, size["latency_s"])
                except Exception as exc:  # noqa: BLE001 - record it, measure the others
                    log(f"{name} FAILED: {exc!r}")
                    result["contenders"][name] = {"events": n, "error": str(exc) or repr(exc)}
            if "scaling" in selected:
                try:
                    result["scaling"] = run_scaling(size["scale_events"], env)
                except Exception as exc:  # noqa: BLE001
                    log(f"scaling FAILED: {exc!r}")
                    result["scaling"] = {"error": str(exc) or repr(exc)}
        finally:
            log("deleting the bench's topics and consumer groups")
            delete_topics_with_prefix(env.prefixes)
            delete_groups_with_prefix(env.prefixes)
    if "dedupe_memory" in selected:  # after the others: it is the memory-hungry one
        result["dedupe_memory"] = run_dedupe_memory(size["dedupe_keys"])
    result["ratios"] = ratios(result["contenders"])
    result["targets"] = evaluate_targets(result)
    result["wall_s"] = round(time.monotonic() - began, 1)

    args.out.mkdir(parents=True, exist_ok=True)
    write_atomically(args.out / "latest.json", json.dumps(result, indent=2) + "\n")
    table = markdown(result)
    write_atomically(args.out / "latest.md", table)
    print(table)
    log(f"done in {result['wall_s']:.0f}s: {args.out / 'latest.json'}, {args.out / 'latest.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
