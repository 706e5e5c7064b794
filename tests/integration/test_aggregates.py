"""Windowed aggregates in the worker, on the real broker: two workers, four partitions, a
restart in the middle; every final record and every live window equals a recomputation from
the routed events."""

from __future__ import annotations

import math
import subprocess
import sys
import time
import urllib.request
import uuid
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from pipeline.core.identity import canonical_identity
from pipeline.core.measures import MeasureSpec, distinct_key
from pipeline.runtime.partitioning import kafka_partition
from pipeline.traffic import TrafficProfile, generate
from tests.integration.kafka_helpers import (
    REPO,
    WorkerProcess,
    consume_all,
    make_topology,
    topic_size,
    wait_for_total,
)
from tests.integration.test_worker import ensure_source, send

pytestmark = pytest.mark.kafka

MINUTE = 60_000
DAY = 86_400_000
GRACE_MS = 60_000


def late_topic(prefix: str, aggregate: str) -> str:
    return f"{prefix}late_{aggregate}"


def _tune(path: Path) -> None:
    """Quick live updates; a grace period that covers the reordering a repartitioning dedupe
    adds (a few batches of event time); and a late-events topic per aggregate.

    No grace period covers every pause: when a worker dies, its source partitions wait for the
    session timeout and a rebalance while the others' events move every repartitioned stream's
    time on, and on a busy machine that can outlast the grace period. The events then late are
    counted and copied to the aggregate's late-events topic instead of being added, by design;
    the checks below hold the pipeline to exactly that: each event is in its window's final
    record or in the late topic, never lost silently.
    """
    doc = yaml.safe_load(path.read_text())
    prefix = doc["source"]["topic"].removesuffix("raw_events")
    for stage in doc["stages"]:
        if stage["type"] == "aggregate":
            stage["live_interval"] = "0.5s"
            stage["window"]["grace"] = "60s"
            topic = late_topic(prefix, stage["id"])
            stage["late_events"] = {"topic": topic}
            doc["topics"][topic] = {"partitions": 1}
    path.write_text(yaml.safe_dump(doc, sort_keys=False))


def late_events(topology: Any) -> dict[str, set[str]]:
    """Event ids each aggregate reported late (copied to its late-events topic)."""
    late: dict[str, set[str]] = {}
    for name in _aggregate_names(topology):
        topic = late_topic(topology.prefix, name)
        late[name] = (
            {orjson.loads(r.value)["event_id"] for r in consume_all([topic])} if topic_size(topic) else set()
        )
    return late


def _aggregate_names(topology: Any) -> list[str]:
    doc = yaml.safe_load(topology.path.read_text())
    return [s["id"] for s in doc["stages"] if s["type"] == "aggregate"]


def _flush_events(template: bytes, timestamp: int, partitions: int) -> list[tuple[bytes, bytes]]:
    """One valid event per partition, later than everything sent: every partition's stream time
    passes the earlier windows' end + grace, so they close by event time (no idle wait)."""
    out = []
    for p in range(partitions):
        key = next(
            k for k in (f"flush-user-{i}".encode() for i in range(10_000))
            if kafka_partition(k, partitions) == p
        )
        event = orjson.loads(template)
        event.update(event_id=str(uuid.uuid4()), timestamp=timestamp, user_id=key.decode())
        out.append((key, orjson.dumps(event)))
    return out


def _hll(identities: set[str]) -> Any:
    measure = MeasureSpec(id="users", kind="distinct", field="identity", method="hll").new()
    for identity in identities:
        measure.update(distinct_key(identity))
    return measure.result()


def recompute(
    events: list[dict[str, Any]], late: dict[str, set[str]] | None = None
) -> dict[tuple[str, int, tuple[str, ...]], dict[str, Any]]:
    """(aggregate, window start, group values) -> measures, from the routed events, written
    independently of the pipeline's aggregator (except the HyperLogLog itself). ``late``: the
    event ids each aggregate reported late, which it does not add."""
    late = late or {}
    no_late: set[str] = set()

    def counted(aggregate: str, event: dict[str, Any]) -> bool:
        return event["event_id"] not in late.get(aggregate, no_late)

    counts: dict[tuple[str, int, tuple[str, ...]], Counter[str]] = defaultdict(Counter)
    revenue: dict[tuple[str, int, tuple[str, ...]], list[float]] = defaultdict(list)
    users: dict[tuple[str, int, tuple[str, ...]], set[str]] = defaultdict(set)
    for event in events:
        ts = event["timestamp"]
        minute = ts - ts % MINUTE
        properties = event.get("properties") or {}
        if counted("events_per_minute", event):
            counts[("events_per_minute", minute, (event["event"],))]["events"] += 1
        if event["event"] == "purchase_completed" and counted("revenue_per_minute", event):
            key = ("revenue_per_minute", minute, (str(properties.get("currency") or ""),))
            counts[key]["orders"] += 1
            value = properties.get("revenue")
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                revenue[key].append(float(value))
        if event["event"] == "error_occurred" and counted("errors_per_minute", event):
            key = ("errors_per_minute", minute, (str(properties.get("error_type") or ""),))
            counts[key]["errors"] += 1
        if (event.get("context") or {}).get("bot", {}).get("is_bot") is not True:
            identity = canonical_identity(event)
            if identity is not None:
                if counted("active_users_per_minute", event):
                    users[("active_users_per_minute", minute, ())].add(identity)
                if counted("active_users_per_day", event):
                    users[("active_users_per_day", ts - ts % DAY, ())].add(identity)
    expected: dict[tuple[str, int, tuple[str, ...]], dict[str, Any]] = {}
    for key, measures in counts.items():
        expected[key] = dict(measures)
    for key, values in revenue.items():
        expected[key]["revenue"] = math.fsum(values)
    for key, identities in users.items():
        expected[key] = {"users": _hll(identities), "_exact": len(identities)}
    return expected


def _group_values(record: dict[str, Any]) -> tuple[str, ...]:
    return tuple(record["group"].values())


def _check_measures(key: Any, got: dict[str, Any], want: dict[str, Any]) -> None:
    for measure, value in want.items():
        if measure == "_exact":
            assert abs(got["users"] - value) <= max(2, 0.03 * value), (key, got, value)
        elif measure == "revenue":
            assert math.isclose(got[measure] or 0.0, value, rel_tol=1e-9, abs_tol=1e-6), (key, got, want)
        else:
            assert got[measure] == value, (key, got, want)


def _get(port: int, path: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
            return response.status, orjson.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, orjson.loads(exc.read() or b"null")


def _show(*argv: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", "aggregates", "show", *argv],
        capture_output=True, text=True, cwd=REPO, timeout=60, check=False,
    )
    assert result.returncode == 0, result.stderr
    return result


def _wait_ready(*ports: int, timeout: float = 90.0) -> None:
    """Until every worker has partitions and its state recovered (``/ready``)."""
    deadline = time.monotonic() + timeout
    waiting = {p: "not started" for p in ports}
    while waiting and time.monotonic() < deadline:
        waiting = {p: answer for p in waiting if (answer := _ready(p)) is not True}
        time.sleep(0.5)
    assert not waiting, f"workers not ready: {waiting}"


def _ready(port: int) -> bool | object:
    try:
        status, body = _get(port, "/ready")
    except OSError as exc:
        return repr(exc)
    return True if status == 200 else body


def check_final_windows(
    topology: Any, flush_ts: int, *, partitions: int
) -> tuple[dict[Any, dict[str, Any]], set[Any]]:
    """Every window the flush events' event time closed has exactly one final record, equal to
    a recomputation from the routed events (each event_id once) less the events its aggregate
    reported late. Returns (the recomputation, the closed windows)."""
    routed = {}
    for r in consume_all([t for t in topology.outputs if t != topology.dead_letter]):
        event = orjson.loads(r.value)
        routed[event["event_id"]] = event
    late = late_events(topology)
    strays = {name: ids - routed.keys() for name, ids in late.items() if ids - routed.keys()}
    assert not strays, f"late events that were never routed: {strays}"
    print("late events per aggregate:", {name: len(ids) for name, ids in late.items()})
    expected = recompute(list(routed.values()), late)
    closed_by_now = {
        k for k in expected if k[1] + (DAY if k[0] == "active_users_per_day" else MINUTE) + GRACE_MS
        <= flush_ts
    }
    assert len(closed_by_now) > 20

    deadline = time.monotonic() + 120
    finals: dict[Any, list[dict[str, Any]]] = {}
    while time.monotonic() < deadline:
        finals = defaultdict(list)
        if topic_size(topology.aggregates):
            for r in consume_all([topology.aggregates]):
                record = orjson.loads(r.value)
                finals[(record["aggregate"], record["window_start"], _group_values(record))].append(record)
        if closed_by_now <= set(finals):
            break
        time.sleep(2)
    missing = closed_by_now - set(finals)
    assert not missing, sorted(missing)[:10]
    assert set(finals) <= set(expected), sorted(set(finals) - set(expected))[:10]
    for key in closed_by_now:
        records = finals[key]
        assert len(records) == 1, f"one final record per window and group: {key} {records}"
        assert records[0]["partitions"] and set(records[0]["partitions"]) <= set(range(partitions))
        _check_measures(key, records[0]["measures"], expected[key])
    return expected, closed_by_now


def test_two_workers_with_a_restart_match_a_recomputation(kafka_broker: str, tmp_path: Path) -> None:
    topology = make_topology(tmp_path, partitions=4)
    _tune(topology.path)
    ensure_source(topology)
    profile = TrafficProfile(seed=5, events_per_second_of_event_time=100.0)
    generated = list(generate(16_000, profile))
    first_half, second_half = generated[:8_000], generated[8_000:]
    duplicates = sum(1 for r in generated if r.kind == "duplicate")

    a = WorkerProcess(topology).start(tmp_path)
    b = WorkerProcess(topology).start(tmp_path)
    try:
        _wait_ready(a.web_port, b.web_port)  # both own partitions: the restart moves state
        sent = send(topology, ((r.key, r.value) for r in first_half))
        assert wait_for_total(topology.outputs, sent - sum(1 for r in first_half if r.kind == "duplicate"), timeout=180) > 0
        # A restart in the middle: b's partitions (and maybe the combiners) move to a and back.
        assert b.terminate() == 0, b.log()[-3000:]
        sent += send(topology, ((r.key, r.value) for r in second_half))
        b = WorkerProcess(topology, web_port=b.web_port).start(tmp_path)
        template = next(r.value for r in generated if r.kind == "valid" and b'"page_viewed"' in r.value)
        last_ts = max(orjson.loads(r.value)["timestamp"] for r in generated if r.kind == "valid"
                      and isinstance(orjson.loads(r.value)["timestamp"], int))
        flush_ts = last_ts + 5 * MINUTE
        sent += send(topology, _flush_events(template, flush_ts, 4))
        expected_outputs = sent - duplicates
        total = wait_for_total(topology.outputs, expected_outputs, timeout=240)
        assert total == expected_outputs, (a.log()[-2000:], b.log()[-2000:])

        expected, closed_by_now = check_final_windows(topology, flush_ts, partitions=4)

        # Live: the day window is still open; either worker answers (one forwards to the other),
        # merged over every partition.
        today = [k for k in expected if k[0] == "active_users_per_day" and k not in closed_by_now]
        for port in (a.web_port, b.web_port):
            status, listing = _get(port, "/aggregates")
            assert status == 200 and {x["aggregate"] for x in listing["aggregates"]} >= {
                "events_per_minute", "active_users_per_day"
            }
            for key in today:
                for _ in range(30):
                    status, view = _get(port, "/aggregates/active_users_per_day")
                    windows = {w["window_start"]: w for w in view.get("windows", [])} if status == 200 else {}
                    window = windows.get(key[1])
                    if window and window["groups"] and window["groups"][0]["measures"]["users"] == expected[key]["users"]:
                        break
                    time.sleep(1)
                assert status == 200, view
                assert window is not None and not window["final"], view
                _check_measures(key, window["groups"][0]["measures"], expected[key])
        status, _ = _get(a.web_port, "/aggregates/no_such_thing")
        assert status == 404

        # `pipeline aggregates show` prints the same live window, and lists every aggregate.
        _, view = _get(b.web_port, "/aggregates/active_users_per_day")
        live = {w["window_start"]: w for w in view["windows"]}[today[-1][1]]
        users = live["groups"][0]["measures"]["users"]
        shown = _show(str(topology.path), "active_users_per_day", "--url", f"http://127.0.0.1:{b.web_port}")
        assert shown.stdout.startswith("aggregate active_users_per_day: partitions reporting 0, 1, 2, 3")
        assert any(line.split()[-2:] == ["pending", str(users)] for line in shown.stdout.splitlines()), shown.stdout
        listing = _show(str(topology.path), "--url", f"127.0.0.1:{a.web_port}")
        assert [line.split()[0] for line in listing.stdout.splitlines()[2:]] == [
            "events_per_minute", "revenue_per_minute", "errors_per_minute", "active_users_per_minute",
            "active_users_per_day",
        ], listing.stdout
        assert listing.stderr == ""

        # The gauge of the current window comes from the one worker combining the aggregate.
        exported = []
        for port in (a.web_port, b.web_port):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
                text = response.read().decode()
            exported += [
                line for line in text.splitlines()
                if line.startswith('pipeline_aggregate_value{aggregate="active_users_per_day"')
            ]
        latest_day = max(k for k in expected if k[0] == "active_users_per_day")
        assert len(exported) == 1, exported
        assert 'measure="users"' in exported[0] and 'group=""' in exported[0]
        assert float(exported[0].rsplit(" ", 1)[1]) == expected[latest_day]["users"]
    finally:
        a.kill()
        b.kill()
