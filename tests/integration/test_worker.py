"""The worker end to end on the real broker: every input reaches exactly one output."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import orjson
import pytest

from pipeline.core.avro_check import compile_schema
from pipeline.core.deadletter import dead_letter_key
from pipeline.produce import produce
from pipeline.settings import Settings
from pipeline.traffic import TrafficProfile, generate
from tests.integration import kafka_helpers
from tests.integration.kafka_helpers import (
    REPO,
    WorkerProcess,
    consume_all,
    make_topology,
    topic_size,
    wait_for_total,
)

pytestmark = pytest.mark.kafka

HOSTILE = [
    (b"k1", b"\xff\xfe\x00garbage"),
    (b"k2", b"not json at all"),
    (b"k3", b"[1, 2, 3]"),
    (b"k4", b'{"event": "page_viewed", "timestamp": "yesterday", "user_id": "u"}'),
    (None, b'{"event": 42}'),
    (b"k5", b"NaN"),
    (b"k6", b"{" * 5000 + b"}" * 5000),
    (b"k7", b""),
]

DEAD_LETTER_SCHEMA = compile_schema(orjson.loads((REPO / "avro" / "dead_letter.avsc").read_bytes()))
ROUTES = {"purchase_completed": "revenue_events", "error_occurred": "error_events"}
_SHARED_GEOIP = REPO.parent / "shared" / "data" / "geoip" / "test-data" / "GeoIP2-City-Test.mmdb"
GEOIP_DB = _SHARED_GEOIP if _SHARED_GEOIP.is_file() else None


def expected_topic(record: dict) -> str:
    if record.get("context", {}).get("bot", {}).get("is_bot"):
        return "bot_events"
    event = record["event"]
    if event in ROUTES:
        return ROUTES[event]
    if event.startswith(("subscription_", "refund_")):
        return "revenue_events"
    if event.startswith("error_"):
        return "error_events"
    return "processed_events"


def send(topology, records, *, rate: float | None = None) -> int:
    # The broker as the helpers see it now (a test may run a broker of its own).
    settings = Settings.from_env(env={}, broker=kafka_helpers.BOOTSTRAP)
    result = produce(settings, topology.source, records, rate=rate)
    assert result.failed == 0, result.first_error
    return result.sent


def ensure_source(topology) -> None:
    from pipeline.runtime.admin import ensure_topics
    from pipeline.topology import load_topology

    ensure_topics(load_topology(topology.path), Settings.from_env(env={}, broker=kafka_helpers.BOOTSTRAP))


def check_outputs_match_inputs(
    topology, *, allow_duplicates: bool = False, with_geo: bool = False
) -> dict[str, int]:
    inputs = consume_all([topology.source])
    outputs = consume_all(topology.outputs)
    by_position = {(r.partition, r.offset): r for r in inputs}
    per_topic = Counter(r.topic.removeprefix(topology.prefix) for r in outputs)

    dead = [r for r in outputs if r.topic == topology.dead_letter]
    valid = [r for r in outputs if r.topic != topology.dead_letter]
    dead_positions = Counter()
    for r in dead:
        record = orjson.loads(r.value)
        assert DEAD_LETTER_SCHEMA(record, "") is None, record
        src = record["source"]
        assert src["topic"] == topology.source
        original = by_position[(src["partition"], src["offset"])]
        # The original key (its SHA-256 when longer than 4 KiB: deadletter.py).
        assert r.key == dead_letter_key(original.key), "dead letter keeps the original key"
        assert record["topology"] == {"name": "ecommerce", "version": "1"}
        # Invalid input (validate), or valid but too large to send on once enriched (route).
        assert record["stage"] == "validate" or (
            record["stage"], record["reason"]) == ("route", "output_too_large"), record
        assert record["reason"] and record["message"]
        assert record["payload_size"] == len(original.value or b"")
        dead_positions[(src["partition"], src["offset"])] += 1

    expected_valid = Counter()
    for position, r in by_position.items():
        if position in dead_positions:
            continue
        event = orjson.loads(r.value)
        # Dedupe: every event_id once, however often it was sent.
        expected_valid[(r.key, event["event_id"])] = 1
    got_valid = Counter()
    for r in valid:
        event = orjson.loads(r.value)
        got_valid[(r.key, event["event_id"])] += 1
        assert r.topic == topology.prefix + expected_topic(event), event["event"]
        # Every routed event is stamped and enriched.
        assert event["pipeline"]["topology"] == "ecommerce" and event["processed_at"] > 0
        context = event["context"]
        if context.get("user_agent"):
            assert context["device"]["browser_family"], context
        if "ip" in context:
            assert context.get("ip_anonymized") is True
            if with_geo:
                assert context["geo"]["ip_type"] in ("public", "private", "reserved", "invalid", "loopback", "link_local", "multicast", "unspecified")

    if allow_duplicates:
        assert set(got_valid) == set(expected_valid), "an input event is missing from the outputs"
        assert set(dead_positions) | set(expected_valid) and all(n >= 1 for n in dead_positions.values())
    else:
        assert got_valid == expected_valid, "each valid event_id appears exactly once"
        assert all(n == 1 for n in dead_positions.values()), "each invalid input dead-lettered once"
        assert len(dead) + len(valid) == len(dead_positions) + len(expected_valid)
    return dict(per_topic)


def test_every_input_reaches_exactly_one_output(kafka_broker: str, tmp_path: Path) -> None:
    topology = make_topology(tmp_path)
    ensure_source(topology)
    profile = TrafficProfile(seed=7, invalid_fraction=0.05, duplicate_fraction=0.05)
    generated = list(generate(3000, profile))
    london = orjson.dumps({
        "event_id": "london-1", "event": "page_viewed", "timestamp": int(time.time() * 1000),
        "user_id": "u_london", "context": {"ip": "81.2.69.142", "user_agent": "Mozilla/5.0"},
    })
    records = [(r.key, r.value) for r in generated] + HOSTILE + [(b"u_london", london)]
    sent = send(topology, records)
    expected = sent - sum(1 for r in generated if r.kind == "duplicate")

    geo_env = {"GEOIP_CITY_DB": str(GEOIP_DB)} if GEOIP_DB else {}
    worker = WorkerProcess(topology).start(tmp_path, env=geo_env)
    try:
        total = wait_for_total(topology.outputs, expected, timeout=120)
        assert total == expected, worker.log()[-3000:]
        assert worker.terminate() == 0, worker.log()[-3000:]
    finally:
        worker.kill()

    per_topic = check_outputs_match_inputs(topology, with_geo=GEOIP_DB is not None)
    assert per_topic["invalid_events"] >= len(HOSTILE)
    assert per_topic["bot_events"] > 0, "the generator's crawlers are routed to bot_events"
    if GEOIP_DB is not None:
        london = [r for r in consume_all(topology.outputs) if b'"London"' in r.value]
        assert london and all(orjson.loads(r.value)["context"]["geo"]["country_code"] == "GB" for r in london)
    assert per_topic["revenue_events"] > 0 and per_topic["error_events"] > 0
    assert per_topic["processed_events"] > per_topic["revenue_events"]


def test_sigterm_mid_stream_then_restart_loses_nothing(kafka_broker: str, tmp_path: Path) -> None:
    topology = make_topology(tmp_path)
    ensure_source(topology)
    generated = list(generate(60_000, TrafficProfile(seed=11)))
    sent = send(topology, ((r.key, r.value) for r in generated))
    expected = sent - sum(1 for r in generated if r.kind == "duplicate")

    first = WorkerProcess(topology)
    # Small batches so the stop lands in the middle of the stream.
    import os

    os.environ["PIPELINE_BATCH_MAX_EVENTS"] = "500"
    try:
        first.start(tmp_path)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and sum(topic_size(t) for t in topology.outputs) < 2000:
            time.sleep(0.2)
        assert first.terminate() == 0, first.log()[-3000:]
        stopped_at = sum(topic_size(t) for t in topology.outputs)
        assert 0 < stopped_at < expected, "the stop should land mid-stream"

        second = WorkerProcess(topology).start(tmp_path)
        try:
            total = wait_for_total(topology.outputs, expected, timeout=180)
            assert total >= expected, second.log()[-3000:]
            assert second.terminate() == 0
        finally:
            second.kill()
    finally:
        os.environ.pop("PIPELINE_BATCH_MAX_EVENTS", None)
        first.kill()
    # A graceful stop finishes, delivers and commits the batch in hand: no loss, no duplicate.
    stop_report = [line for line in first.log().splitlines() if "Committed offsets" in line]
    assert stop_report and "NOT committed" not in stop_report[-1], stop_report
    try:
        check_outputs_match_inputs(topology)
    except AssertionError as exc:
        # Records processed twice: where the first worker said it committed, against the
        # source positions dead-lettered more than once.
        dead = Counter(
            (record["source"]["partition"], record["source"]["offset"])
            for record in (orjson.loads(r.value) for r in consume_all([topology.dead_letter]))
        )
        twice = sorted(position for position, n in dead.items() if n > 1)
        raise AssertionError(
            f"{exc}\nfirst worker on stop: {stop_report}\n"
            f"dead-lettered twice (partition, offset): {twice[:20]} ({len(twice)} in all)"
        ) from exc


@pytest.mark.parametrize("store", ["memory", "rocksdb"])
def test_duplicates_before_and_after_a_restart_are_dropped(
    kafka_broker: str, tmp_path: Path, store: str
) -> None:
    """Dedupe state lives in a Faust table and is recovered from its changelog on restart.

    Resends arrive keyed as the original, keyed by another identity, and unkeyed: all are caught
    (the worker forwards mis-partitioned events through the repartition topic first).
    """
    topology = make_topology(tmp_path)
    ensure_source(topology)
    originals = [r for r in generate(2000, TrafficProfile(seed=21, invalid_fraction=0, duplicate_fraction=0))]
    first_half = [(r.key, r.value) for r in originals]
    # Resent in the same run: same key, another key, no key.
    resends_before = [(r.key, r.value) for r in originals[:100]]
    resends_before += [(b"someone-else", r.value) for r in originals[100:150]]
    resends_before += [(None, r.value) for r in originals[150:200]]
    send(topology, first_half + resends_before)

    worker = WorkerProcess(topology).start(tmp_path, env={"PIPELINE_STORE": store})
    try:
        assert wait_for_total(topology.outputs, len(originals), timeout=120) >= len(originals)
        time.sleep(3)  # let any wrongly kept duplicate arrive before counting
        assert sum(topic_size(t) for t in topology.outputs) == len(originals), worker.log()[-3000:]
        assert worker.terminate() == 0
    finally:
        worker.kill()

    # After a restart the state comes back from the changelog: resends are still dropped.
    resends_after = [(r.key, r.value) for r in originals[200:300]]
    resends_after += [(b"another-key", r.value) for r in originals[300:350]]
    fresh = list(generate(200, TrafficProfile(seed=22, invalid_fraction=0, duplicate_fraction=0)))
    send(topology, resends_after + [(r.key, r.value) for r in fresh])
    expected = len(originals) + len(fresh)
    worker = WorkerProcess(topology).start(tmp_path, env={"PIPELINE_STORE": store})
    try:
        assert wait_for_total(topology.outputs, expected, timeout=120) >= expected
        time.sleep(3)
        assert sum(topic_size(t) for t in topology.outputs) == expected, worker.log()[-3000:]
        assert worker.terminate() == 0
    finally:
        worker.kill()

    outputs = consume_all(topology.outputs)
    ids = Counter(orjson.loads(r.value)["event_id"] for r in outputs)
    assert all(n == 1 for n in ids.values())
    assert len(ids) == expected


def test_a_geoip_database_written_after_start_is_picked_up_without_a_restart(
    kafka_broker: str, tmp_path: Path
) -> None:
    """The optional geo stage starts disabled (no file yet, as when geoipupdate runs late),
    the events before the file appears leave without ``context.geo``, and the stage starts at
    its next attempt after the file appears: later events have it, and so does the metric."""
    import urllib.request

    from tests.enrichers.mmdb_fixtures import city_record, write_city_db

    topology = make_topology(tmp_path)
    text = topology.path.read_text()
    assert "    retry_interval: 60s\n" in text
    topology.path.write_text(text.replace("    retry_interval: 60s\n", "    retry_interval: 1s\n"))
    ensure_source(topology)
    database = tmp_path / "geoip" / "city.mmdb"

    def event(n: int) -> tuple[bytes, bytes]:
        return b"u_geo", orjson.dumps({
            "event_id": f"geo-{n}", "event": "page_viewed", "timestamp": int(time.time() * 1000),
            "user_id": "u_geo", "context": {"ip": "81.2.69.142", "user_agent": "Mozilla/5.0"},
        })

    def geo_enabled() -> str:
        url = f"http://127.0.0.1:{worker.web_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            body = response.read().decode()
        [value] = [
            line.rsplit(" ", 1)[1] for line in body.splitlines()
            if line.startswith("pipeline_enricher_enabled{") and 'stage="geo"' in line
        ]
        return value

    worker = WorkerProcess(topology).start(tmp_path, env={"GEOIP_CITY_DB": str(database)})
    try:
        send(topology, [event(1)])
        assert wait_for_total(topology.outputs, 1, timeout=120) == 1, worker.log()[-3000:]
        assert geo_enabled() == "0.0"
        assert f"is disabled: city database {database} does not exist" in worker.log()

        database.parent.mkdir()
        write_city_db(database, {"81.2.69.0/24": city_record("GB", "United Kingdom", city="London")})
        deadline = time.monotonic() + 60
        sent = 1
        while time.monotonic() < deadline:  # batches drive the attempts
            time.sleep(1)
            sent += 1
            send(topology, [event(sent)])
            if geo_enabled() == "1.0":
                break
        assert geo_enabled() == "1.0", worker.log()[-3000:]
        sent += 1
        send(topology, [event(sent)])
        assert wait_for_total(topology.outputs, sent, timeout=60) == sent, worker.log()[-3000:]
        assert worker.terminate() == 0, worker.log()[-3000:]
    finally:
        worker.kill()

    records = sorted(
        (orjson.loads(r.value) for r in consume_all(topology.outputs)),
        key=lambda r: int(r["event_id"].split("-")[1]),
    )
    assert [r["event_id"] for r in records] == [f"geo-{n}" for n in range(1, sent + 1)]
    assert "geo" not in records[0]["context"]
    assert records[-1]["context"]["geo"]["city"] == "London"
    assert "enricher geoip (stage geo) has started (it was disabled: " in worker.log()
